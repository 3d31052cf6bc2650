"""Per-image records of a zero-shot result, and the per-class summary derived from them.

Every zero-shot run writes ``<result stem>.per_image.npz`` beside its result JSON (see docs/results.md): for
each test image, in result row order, its path, target(s), top-1 prediction and whether top-1 (and top-5) were
right; for a ranking primary metric (ROC-AUC, 11-point mAP) also the scores that metric ranks. That is what a
paired test of two results on the same images needs (``bench.stats.paired_compare``), at a few bytes per image
rather than the full score matrix of ``--save-logits``.

The record functions are pure (arrays in, arrays out); reading and writing are the two I/O edges.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from bench.cache import atomic_write_bytes
from bench.metrics import _as_scores, _as_targets
from bench.stats import _outcomes

__all__ = ["FORMAT", "TOP_CONFUSIONS", "images_digest", "per_class_summary", "read_per_image", "record",
           "write_per_image"]

FORMAT = 1  # bump when a field changes meaning
TOP_CONFUSIONS = 50  # off-diagonal confusion-matrix cells kept in a result JSON, largest first


def record(scores: np.ndarray, targets: np.ndarray, metric: str) -> dict[str, np.ndarray]:
    """Per-image arrays of one result: ``prediction`` (top-1 class, ties to the lower index as in
    ``bench.metrics``), ``correct`` (top-1 hit; multi-label: the top class is a positive), ``correct_top5``
    (sets with more than 5 classes), ``targets`` (int [N], or uint8 [N, C] for multi-label) and, for a
    ranking primary metric, ``scores``: ROC-AUC's decision score (s1 − s0, [N]) or 11-point mAP's [N, C]."""
    s = _as_scores(scores)
    t, multilabel = _as_targets(targets, s)
    outcome = _outcomes(s, t, multilabel)  # 2: top-1 hit, 1: top-5 hit only, 0: miss (no full sort)
    out: dict[str, np.ndarray] = {
        "targets": t.astype(np.uint8) if multilabel else t.astype(np.int64),
        "prediction": s.argmax(axis=1).astype(np.int32),  # the first maximum: the lower index on ties
        "correct": outcome == 2,
    }
    if s.shape[1] > 5:
        out["correct_top5"] = outcome >= 1
    if metric == "roc_auc":
        out["scores"] = (s[:, 1] - s[:, 0] if s.shape[1] == 2 else s[:, 0]).astype(np.float32)
    elif metric == "11point_mAP":
        out["scores"] = s.astype(np.float32)
    return out


def images_digest(paths: list[str], targets: np.ndarray) -> str:
    """sha256[:16] of the image list and targets in row order: two results with the same digest scored the
    same images in the same order, which is what a paired test needs."""
    h = hashlib.sha256()
    h.update("\n".join(map(str, paths)).encode("utf-8"))
    t = np.ascontiguousarray(np.asarray(targets, dtype=np.int64))
    h.update(str(t.shape).encode())
    h.update(t.tobytes())
    return h.hexdigest()[:16]


def write_per_image(path: Path, paths: list[str], rec: dict[str, np.ndarray]) -> None:
    """Write the record (plus ``paths`` and ``format``) as one compressed .npz, atomically; plain arrays
    only, so ``np.load(path, allow_pickle=False)`` reads it."""
    buf = io.BytesIO()
    np.savez_compressed(buf, paths=np.asarray([str(p) for p in paths], dtype=str),
                        format=np.asarray(FORMAT), **rec)
    atomic_write_bytes(Path(path), buf.getvalue())


def read_per_image(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a per-image record (OSError / ValueError on a missing or damaged file)."""
    with np.load(Path(path), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def per_class_summary(targets: np.ndarray, prediction: np.ndarray, num_classes: int) -> dict:
    """Single-label per-class view for a result JSON: ``recall`` and ``support`` per class (recall None
    without images), the class each is most often mistaken for (``confused_with``, None when never wrong)
    with its count, and the ``TOP_CONFUSIONS`` largest off-diagonal confusion cells as [target, predicted,
    count] (the full matrix is derivable from the per-image record)."""
    t = np.asarray(targets, dtype=np.int64)
    p = np.asarray(prediction, dtype=np.int64)
    k = int(num_classes)
    cm = np.bincount(t * k + p, minlength=k * k).reshape(k, k)
    support = cm.sum(axis=1)
    diag = np.diag(cm)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    worst = off.argmax(axis=1)
    worst_n = off[np.arange(k), worst]
    flat = np.flatnonzero(off)
    order = flat[np.lexsort((flat, -off.ravel()[flat]))][:TOP_CONFUSIONS]  # largest first, ties by cell
    return {
        "recall": [float(diag[c] / support[c]) if support[c] else None for c in range(k)],
        "support": support.astype(int).tolist(),
        "confused_with": [int(worst[c]) if worst_n[c] else None for c in range(k)],
        "confused_count": worst_n.astype(int).tolist(),
        "confusions": [[int(i // k), int(i % k), int(off.ravel()[i])] for i in order],
    }
