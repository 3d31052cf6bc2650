"""Zero-shot image-text retrieval metrics: R@1/5/10 in both directions and mean recall.

Pure functions on numpy arrays (no I/O, no torch).  The similarity matrix is computed in
blocks of queries, so a 5k-image x 25k-caption set never holds more than
``block_size x n_candidates`` scores in memory.

Definitions
-----------
* ``text_images[t]`` lists the images caption ``t`` belongs to (one for Flickr30k/COCO, possibly
  several for MUGE-style sets where a caption names several images).
* text->image: a caption query is right at k when any of its images is among the top k images.
* image->text: an image query is right at k when any of its captions is among the top k captions
  (as CLIP_benchmark and Chinese CLIP do).  Images with no caption are not image queries.
* Ties: candidates are ranked by descending score, equal scores ordered by ascending candidate
  index (a stable sort); the rank of a query is the best rank of any of its positives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bench.errors import BenchError

__all__ = ["KS", "MAX_BLOCK_SCORES", "block_rows", "query_ranks", "recall_at_k", "retrieval_metrics"]

KS: tuple[int, ...] = (1, 5, 10)
# At most this many similarity scores are alive per block (16M float32 = 64 MiB, plus a few same-sized
# temporaries while ranking): with 150k captions an image block is about 110 rows, never the whole matrix.
MAX_BLOCK_SCORES = 1 << 24


def block_rows(block_size: int, n_candidates: int, max_scores: int = MAX_BLOCK_SCORES) -> int:
    """Queries per block: ``block_size``, fewer when ``block_size x n_candidates`` would exceed ``max_scores``."""
    if block_size < 1 or max_scores < 1:
        raise BenchError(f"retrieval: block_size and max_scores must be >= 1, got {block_size} and {max_scores}")
    return max(1, min(block_size, max_scores // max(n_candidates, 1)))


def _positive_lists(text_images: Sequence[Sequence[int]], n_images: int) -> list[list[int]]:
    """Validate ``text_images`` and return it as lists of ints."""
    out: list[list[int]] = []
    for t, imgs in enumerate(text_images):
        ids = [int(i) for i in imgs]
        if not ids:
            raise BenchError(f"caption {t} has no image: expected at least one image index per caption")
        bad = [i for i in ids if not 0 <= i < n_images]
        if bad:
            raise BenchError(f"caption {t} names image index {bad[0]}, expected 0..{n_images - 1}")
        out.append(sorted(set(ids)))
    return out


def query_ranks(
    queries: np.ndarray,
    candidates: np.ndarray,
    positives: Sequence[Sequence[int]],
    block_size: int = 1024,
    max_scores: int = MAX_BLOCK_SCORES,
) -> np.ndarray:
    """0-based rank of each query's best positive among ``candidates`` (scores = queries @ candidates.T).

    Scores are computed ``block_rows(block_size, len(candidates), max_scores)`` queries at a time, so at
    most about ``max_scores`` of them exist at once.  A query with no positive gets rank -1.
    """
    q = np.asarray(queries, dtype=np.float32)
    c = np.asarray(candidates, dtype=np.float32)
    if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1]:
        raise BenchError(f"retrieval features: expected [N, D] and [M, D], got {q.shape} and {c.shape}")
    if len(positives) != len(q):
        raise BenchError(f"retrieval: {len(q)} queries but {len(positives)} positive lists")
    n_cand = len(c)
    block_size = block_rows(block_size, n_cand, max_scores)
    ranks = np.full(len(q), -1, dtype=np.int64)
    idx = np.arange(n_cand)
    for start in range(0, len(q), block_size):
        stop = min(start + block_size, len(q))
        scores = q[start:stop] @ c.T  # [b, M]: the only similarity block alive
        if not np.isfinite(scores).all():
            raise BenchError("retrieval: features give non-finite similarities (NaN/inf in the embeddings)")
        pair_q = np.array([i for i in range(start, stop) for _ in positives[i]], dtype=np.int64)
        pair_p = np.array([p for i in range(start, stop) for p in positives[i]], dtype=np.int64)
        if len(pair_q) == 0:
            continue
        # Chunk the (query, positive) pairs too, so queries with many positives stay bounded.
        for ps in range(0, len(pair_q), block_size):
            pq, pp = pair_q[ps : ps + block_size], pair_p[ps : ps + block_size]
            rows = scores[pq - start]
            sp = rows[np.arange(len(pq)), pp][:, None]
            rank = (rows > sp).sum(1) + ((rows == sp) & (idx[None, :] < pp[:, None])).sum(1)
            cur = ranks[pq]
            ranks_new = np.where(cur < 0, rank, np.minimum(cur, rank))
            # several pairs of one query may sit in one chunk: reduce with minimum.at
            ranks[pq] = np.iinfo(np.int64).max
            np.minimum.at(ranks, pq, ranks_new)
    return ranks


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Fraction of queries (rank >= 0) whose best positive is in the top ``k``."""
    valid = ranks[ranks >= 0]
    if len(valid) == 0:
        raise BenchError("retrieval: no queries with a positive")
    return float((valid < k).mean())


def retrieval_metrics(
    image_features: np.ndarray,
    text_features: np.ndarray,
    text_images: Sequence[Sequence[int]],
    ks: Sequence[int] = KS,
    block_size: int = 1024,
    max_scores: int = MAX_BLOCK_SCORES,
) -> dict[str, float]:
    """R@k for text->image (``t2i_r@k``) and image->text (``i2t_r@k``), their mean (``mean_recall``) and
    each direction's mean (``t2i_mean_recall``, ``i2t_mean_recall``: Chinese CLIP's "MR" for MUGE).

    Features are used as given (L2-normalise them first for cosine similarity).
    """
    n_images = len(image_features)
    pos_t2i = _positive_lists(text_images, n_images)
    if len(pos_t2i) != len(text_features):
        raise BenchError(f"retrieval: {len(text_features)} caption features but {len(pos_t2i)} caption entries")
    pos_i2t: list[list[int]] = [[] for _ in range(n_images)]
    for t, imgs in enumerate(pos_t2i):
        for i in imgs:
            pos_i2t[i].append(t)
    r_t2i = query_ranks(text_features, image_features, pos_t2i, block_size, max_scores)
    r_i2t = query_ranks(image_features, text_features, pos_i2t, block_size, max_scores)
    out: dict[str, float] = {}
    for k in ks:
        out[f"t2i_r@{k}"] = recall_at_k(r_t2i, k)
    for k in ks:
        out[f"i2t_r@{k}"] = recall_at_k(r_i2t, k)
    vals = [out[f"t2i_r@{k}"] for k in ks] + [out[f"i2t_r@{k}"] for k in ks]
    out["mean_recall"] = float(np.mean(vals))
    out["t2i_mean_recall"] = float(np.mean([out[f"t2i_r@{k}"] for k in ks]))
    out["i2t_mean_recall"] = float(np.mean([out[f"i2t_r@{k}"] for k in ks]))
    return out
