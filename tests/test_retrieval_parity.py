"""Parity: bench's recall equals Chinese CLIP's cn_clip/eval/evaluation{,_tr}.py on the same scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.retrieval import retrieval_metrics
from tests.test_retrieval_metrics import _data

evaluation = pytest.importorskip("cn_clip.eval.evaluation")
evaluation_tr = pytest.importorskip("cn_clip.eval.evaluation_tr")


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_equals_cn_clip_evaluation(tmp_path):
    img, txt, ti = _data(seed=3, n_img=25, per=4)
    ti[7] = [1, 2, 3]  # a caption shared by three images, like MUGE
    s = txt @ img.T
    # Top-10 files written in the format of cn_clip's make_topk_predictions{,_tr}.py (ids as ints).
    _jsonl(tmp_path / "t_gold.jsonl", [{"text_id": t, "image_ids": list(ims)} for t, ims in enumerate(ti)])
    _jsonl(tmp_path / "t_pred.jsonl",
           [{"text_id": t, "image_ids": np.argsort(-s[t], kind="stable")[:10].tolist()} for t in range(len(ti))])
    caps = {i: [t for t, ims in enumerate(ti) if i in ims] for i in range(len(img))}
    _jsonl(tmp_path / "i_gold.jsonl", [{"image_id": i, "text_ids": c} for i, c in caps.items()])
    _jsonl(tmp_path / "i_pred.jsonl",
           [{"image_id": i, "text_ids": np.argsort(-s[:, i], kind="stable")[:10].tolist()} for i in caps])
    ours = retrieval_metrics(img, txt, ti, block_size=5)
    for mod, gold, pred, d in ((evaluation, "t_gold", "t_pred", "t2i"), (evaluation_tr, "i_gold", "i_pred", "i2t")):
        mean, r1, r5, r10 = mod.compute_score(str(tmp_path / f"{gold}.jsonl"), str(tmp_path / f"{pred}.jsonl"))
        assert [r1, r5, r10] == pytest.approx([100 * ours[f"{d}_r@{k}"] for k in (1, 5, 10)])
    assert 0 < ours["t2i_r@1"] < 1 and 0 < ours["i2t_r@1"] < 1


def test_equals_clip_benchmark_zeroshot_retrieval():
    zr = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")
    torch = pytest.importorskip("torch")
    img, txt, ti = _data(seed=5, n_img=25, per=5)
    ti[3] = [0, 4]  # CLIP_benchmark's positive_pairs matrix allows several images per caption
    scores = torch.from_numpy(txt @ img.T)
    pos = torch.zeros_like(scores, dtype=torch.bool)
    for t, ims in enumerate(ti):
        pos[t, ims] = True
    ours = retrieval_metrics(img, txt, ti, block_size=4)
    for k in (1, 5, 10):
        # Same reduction as clip_benchmark's evaluate(): recall_at_k > 0, averaged over queries.
        t2i = (zr.batchify(zr.recall_at_k, scores, pos, 7, "cpu", k=k) > 0).float().mean().item()
        i2t = (zr.batchify(zr.recall_at_k, scores.T, pos.T, 7, "cpu", k=k) > 0).float().mean().item()
        assert ours[f"t2i_r@{k}"] == pytest.approx(t2i)
        assert ours[f"i2t_r@{k}"] == pytest.approx(i2t)
