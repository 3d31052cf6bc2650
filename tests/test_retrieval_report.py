"""The report's retrieval section and its published comparison, from constructed retrieval results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from report_helpers import NASTY, write, zeroshot

from bench.report import build_report
from bench.report.published import load_published

sys.path.insert(0, str(Path(__file__).parent))
from test_report import parse  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KEYS = [f"{d}_r@{k}" for d in ("t2i", "i2t") for k in (1, 5, 10)]


def retrieval(root: Path, model: str, dataset: str, values: list[float], split: str = "test", **ident) -> Path:
    metrics = dict(zip(KEYS, values))
    metrics["mean_recall"] = metrics["primary"] = sum(values) / 6
    metrics["t2i_mean_recall"] = sum(values[:3]) / 3
    experiment = {"task": "retrieval", "split": split, "language": None, "prompts": None, "labels": None,
                  "limit": None, "skip_bad_images": False, "protocol": "bench", "precision": "auto", "id": "x",
                  **ident}
    return write(root, model, dataset, "retrieval", {
        "split": split, "language": "zh", "n_samples": 1000, "n_images": 1000, "n_texts": 5000,
        "metric": "mean_recall", "metrics": metrics, "experiment": experiment,
        "manifest": {"created": "2026-11-24T10:00:00+00:00", "dataset": {"fingerprint": "f"}}})


@pytest.fixture(scope="module")
def published():
    return load_published(REPO / "results" / "published")


def test_retrieval_table_beside_classification_and_published_deltas(tmp_path, published):
    runs = tmp_path / "runs"
    zeroshot(runs, "cn-clip/vit-h14", "cifar-10", 0.951)
    # Flickr30K-CN ViT-H/14 published: T→I 71.2/91.4/95.5, I→T 81.6/97.5/98.8
    retrieval(runs, "cn-clip/vit-h14", "flickr30k-cn", [0.712, 0.910, 0.955, 0.78, 0.975, 0.988])
    # MUGE is published on valid: a result on valid is the published experiment, T→I only
    retrieval(runs, "cn-clip/vit-h14", "muge", [0.63, 0.841, 0.892, 0.5, 0.6, 0.7], split="valid")
    retrieval(runs, "openclip/vit-h14", "mscoco", [0.49, 0.73, 0.81, 0.66, 0.86, 0.92], limit=100)
    build_report([runs], tmp_path / "out", fmt="both", published=published)
    page = parse(tmp_path / "out" / "report.html")
    order = list(page.tables)
    assert order.index("matrix") < order.index("retrieval") < order.index("published")
    table = page.tables["retrieval"]
    assert table[0][:3] == ["model", "dataset", "split"] and table[0][-1] == "mean recall"
    rows = {r[1].rstrip("0123456789"): r for r in table[1:]}
    assert rows["flickr30k-cn"][5:11] == ["71.2", "91.0", "95.5", "78.0", "97.5", "98.8"]
    assert rows["muge"][2] == "valid"
    pub = {(r[0].split(" [")[0], r[1], r[3]): r for r in page.tables["published"][1:]}
    assert pub[("cn-clip/vit-h14", "flickr30k-cn", "t2i_r@5")][4:7] == ["91.4", "91.0", "-0.4"]
    flagged = pub[("cn-clip/vit-h14", "flickr30k-cn", "i2t_r@1")]
    assert flagged[6] == "-3.6" and "|Δ| > 2 points" in flagged[7]
    muge = pub[("cn-clip/vit-h14", "muge", "t2i_mean_recall")]
    assert muge[4:6] == ["78.8", "78.8"] and abs(float(muge[6])) < 0.1
    assert "not like-for-like" not in muge[7]  # valid is the split MUGE is published on
    assert not any(k[1] == "muge" and k[2].startswith("i2t") for k in pub)  # MUGE publishes T→I only
    coco = pub[("openclip/vit-h14", "mscoco", "t2i_r@1")]
    assert "not like-for-like (limit=100)" in coco[7]
    text = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "validation split" in text  # the MUGE caveat is printed


def test_retrieval_labels_are_escaped(tmp_path, published):
    runs = tmp_path / "runs"
    path = retrieval(runs, "m", "flickr30k", [0.5] * 6)
    data = json.loads(path.read_text(encoding="utf-8"))
    data["model"] = data["dataset"] = NASTY  # markup in names must render as text in both formats
    path.write_text(json.dumps(data), encoding="utf-8")
    build_report([runs], tmp_path / "out", fmt="both", published=published)
    html_text = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "<script>alert" not in html_text and "&lt;script&gt;alert" in html_text
    assert NASTY in parse(tmp_path / "out" / "report.html").tables["retrieval"][1][0]
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "<script>" not in md and r"\<script\>" in md
