"""Retrieval metrics: blocked ranks equal a brute-force full-matrix ranking."""

from __future__ import annotations

import numpy as np
import pytest

from bench.errors import BenchError
from bench.retrieval import block_rows, query_ranks, retrieval_metrics


def _brute(img, txt, text_images, k):
    s = txt @ img.T
    t2i = []
    for t, imgs in enumerate(text_images):
        order = np.argsort(-s[t], kind="stable")[:k]
        t2i.append(bool(set(order) & set(imgs)))
    i2t = []
    for i in range(len(img)):
        caps = [t for t, imgs in enumerate(text_images) if i in imgs]
        if not caps:
            continue
        order = np.argsort(-s[:, i], kind="stable")[:k]
        i2t.append(bool(set(order) & set(caps)))
    return float(np.mean(t2i)), float(np.mean(i2t))


def _data(seed=0, n_img=30, per=3, d=8):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(n_img, d)).astype(np.float32)
    text_images = []
    for i in range(n_img):
        for _ in range(per):
            text_images.append([i])
    text_images[0] = [0, 5]  # a caption shared by two images
    txt = np.stack([img[ims[0]] + rng.normal(scale=1.5, size=d) for ims in text_images]).astype(np.float32)
    return img, txt, text_images


@pytest.mark.parametrize("block", [1, 7, 1024])
def test_blocked_equals_brute_force(block):
    img, txt, ti = _data()
    m = retrieval_metrics(img, txt, ti, block_size=block)
    for k in (1, 5, 10):
        t2i, i2t = _brute(img, txt, ti, k)
        assert m[f"t2i_r@{k}"] == pytest.approx(t2i)
        assert m[f"i2t_r@{k}"] == pytest.approx(i2t)
    assert 0 < m["t2i_r@1"] < 1 and m["t2i_r@1"] <= m["t2i_r@10"]
    recalls = [v for k, v in m.items() if "_r@" in k]
    assert len(recalls) == 6 and m["mean_recall"] == pytest.approx(np.mean(recalls))
    assert m["t2i_mean_recall"] == pytest.approx(np.mean([m[f"t2i_r@{k}"] for k in (1, 5, 10)]))
    assert m["i2t_mean_recall"] == pytest.approx(np.mean([m[f"i2t_r@{k}"] for k in (1, 5, 10)]))


def test_ties_go_to_lower_index():
    cand = np.ones((4, 2), dtype=np.float32)  # all candidates score the same
    q = np.ones((2, 2), dtype=np.float32)
    assert query_ranks(q, cand, [[0], [3]]).tolist() == [0, 3]


def test_any_positive_counts():
    cand = np.eye(3, dtype=np.float32)
    q = np.array([[0, 0, 1]], dtype=np.float32)
    assert query_ranks(q, cand, [[0, 2]]).tolist() == [0]


def test_bad_image_index_is_a_bench_error():
    img, txt, ti = _data()
    ti[1] = [999]
    with pytest.raises(BenchError, match="999"):
        retrieval_metrics(img, txt, ti)


def test_block_rows_caps_the_scores_per_block():
    assert block_rows(1024, 150_000, max_scores=1 << 24) == (1 << 24) // 150_000  # 111 rows, not 1024
    assert block_rows(1024, 10, max_scores=1 << 24) == 1024
    assert block_rows(1024, 10**9, max_scores=1000) == 1  # never zero rows
    with pytest.raises(BenchError):
        block_rows(0, 10)


@pytest.mark.parametrize("max_scores", [1, 29, 30 * 7, 10**9])
def test_score_budget_chunks_equal_unchunked(max_scores, monkeypatch):
    """Chunked by a score budget (down to one query per block) gives exactly the one-block numbers, and no
    block ever holds more than max(budget, one row) scores."""
    import bench.retrieval as r

    img, txt, ti = _data(seed=3, n_img=30, per=4)
    whole = retrieval_metrics(img, txt, ti, block_size=10**6, max_scores=10**12)
    biggest = []
    real_matmul = np.matmul

    class Spy(np.ndarray):
        def __matmul__(self, other):
            out = real_matmul(np.asarray(self), other)
            biggest.append(out.size)
            return out

    monkeypatch.setattr(r.np, "asarray", lambda a, dtype=None: np.array(a, dtype=dtype).view(Spy))
    chunked = retrieval_metrics(img, txt, ti, block_size=10**6, max_scores=max_scores)
    assert chunked == whole
    n_txt = len(ti)
    assert biggest and max(biggest) <= max(max_scores, n_txt)
