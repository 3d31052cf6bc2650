"""Per-image records (bench.per_image) and paired tests between two results on the same images
(bench.stats.paired_compare): what a run writes, and that a real difference is found and a non-difference is not."""

from __future__ import annotations

import json

import numpy as np
import pytest
from identity_helpers import latest_result
from report_helpers import scores_at_accuracy

from bench import per_image, stats
from bench.experiment import per_image_path
from bench.metrics import compute_metrics, confusion_matrix, per_class_recall


def test_record_matches_the_metrics_with_ties():
    s = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 0.0, 1.0]])
    t = np.array([1, 1, 0])
    rec = per_image.record(s, t, "accuracy")
    assert rec["prediction"].tolist() == [0, 1, 0]  # ties go to the lower class index, as in bench.metrics
    assert rec["correct"].tolist() == [False, True, True]
    assert rec["correct"].mean() == pytest.approx(compute_metrics(s, t, "accuracy")["top1"])
    assert "correct_top5" not in rec and "scores" not in rec  # 3 classes: top-5 is not a measurement
    rng = np.random.default_rng(0)
    t10 = rng.integers(0, 10, 200)
    s10 = rng.standard_normal((200, 10))
    r10 = per_image.record(s10, t10, "mean_per_class")
    m = compute_metrics(s10, t10, "mean_per_class")
    assert r10["correct"].mean() == pytest.approx(m["top1"]) and r10["correct_top5"].mean() == pytest.approx(m["top5"])
    binary = per_image.record(s[:, :2], np.array([0, 1, 0]), "roc_auc")
    assert binary["scores"].tolist() == pytest.approx((s[:, 1] - s[:, 0]).tolist())
    ml_t = (rng.random((50, 20)) < 0.2).astype(np.int64)
    ml = per_image.record(rng.standard_normal((50, 20)), ml_t, "11point_mAP")
    assert ml["targets"].dtype == np.uint8 and ml["scores"].shape == (50, 20)


def test_per_image_file_round_trips_without_pickle(tmp_path):
    rec = per_image.record(np.eye(4)[[0, 1, 3, 3]], np.array([0, 1, 2, 3]), "accuracy")
    path = per_image_path(tmp_path / "zeroshot@limit=4.json")
    assert path.name == "zeroshot@limit=4.per_image.npz"
    per_image.write_per_image(path, ["a/1.jpg", "b/2.jpg", "c/3.jpg", "d/4.jpg"], rec)
    back = per_image.read_per_image(path)  # allow_pickle=False inside
    assert back["paths"].tolist() == ["a/1.jpg", "b/2.jpg", "c/3.jpg", "d/4.jpg"]
    assert back["correct"].tolist() == [True, True, False, True] and int(back["format"]) == per_image.FORMAT
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left


def test_images_digest_changes_with_order_and_targets():
    t = np.array([0, 1, 2])
    d = per_image.images_digest(["a", "b", "c"], t)
    assert d == per_image.images_digest(["a", "b", "c"], t.copy())
    assert d != per_image.images_digest(["b", "a", "c"], t)
    assert d != per_image.images_digest(["a", "b", "c"], np.array([0, 1, 1]))


def test_per_class_summary_matches_confusion_matrix():
    rng = np.random.default_rng(3)
    t = rng.integers(0, 6, 300)
    p = np.where(rng.random(300) < 0.6, t, rng.integers(0, 6, 300))
    p[t == 5] = 2  # class 5 always mistaken for class 2
    out = per_image.per_class_summary(t, p, 7)  # class 6 has no image
    cm = confusion_matrix(p, t, 7)
    assert out["recall"][:6] == pytest.approx(per_class_recall(p, t, 7)[:6].tolist())
    assert out["recall"][6] is None and out["support"] == cm.sum(axis=1).tolist()
    assert out["confused_with"][5] == 2 and out["confused_count"][5] == int((t == 5).sum())
    counts = [c[2] for c in out["confusions"]]
    assert counts == sorted(counts, reverse=True) and all(c[0] != c[1] for c in out["confusions"])
    assert out["confusions"][0][2] == cm[~np.eye(7, dtype=bool)].max()
    json.dumps(out)  # plain JSON types


@pytest.mark.parametrize("metric", ["accuracy", "mean_per_class"])
def test_paired_single_label_better_model_is_significant_identical_is_not(metric):
    rng = np.random.default_rng(1)
    t = rng.integers(0, 10, 2000)
    good = per_image.record(scores_at_accuracy(t, 10, 0.85, seed=2), t, metric)
    bad = per_image.record(scores_at_accuracy(t, 10, 0.70, seed=3), t, metric)
    out = stats.paired_compare(good, bad, metric, n_boot=500)
    assert out["p"] < stats.SIGNIFICANCE and out["ci95"][0] > 0 and out["delta"] > 0.1
    assert out["ci95"][0] <= out["delta"] <= out["ci95"][1]
    same = stats.paired_compare(good, good, metric, n_boot=500)
    assert same["delta"] == 0.0 and same["p"] == 1.0 and same["ci95"] == [0.0, 0.0]
    # two equally good models that err on different images: a real but tiny chance difference is not flagged
    twin = per_image.record(scores_at_accuracy(t, 10, 0.85, seed=4), t, metric)
    assert stats.paired_compare(good, twin, metric, n_boot=500)["p"] > 0.01


def test_paired_mcnemar_counts_and_accuracy_delta():
    t = np.zeros(100, dtype=np.int64)
    s_a = np.tile([1.0, 0.0], (100, 1))
    s_b = s_a.copy()
    s_b[:30] = [0.0, 1.0]  # B wrong on the first 30 images
    s_a[95:] = [0.0, 1.0]  # A wrong on the last 5
    out = stats.paired_compare(per_image.record(s_a, t, "accuracy"), per_image.record(s_b, t, "accuracy"), "accuracy")
    assert (out["b"], out["c"]) == (30, 5) and out["delta"] == pytest.approx(0.25)
    assert out["test"] == "McNemar (chi-square)" and out["p"] < 1e-4


@pytest.mark.parametrize("metric", ["roc_auc", "11point_mAP"])
def test_paired_ranking_metrics(metric):
    rng = np.random.default_rng(5)
    if metric == "roc_auc":
        t = rng.integers(0, 2, 600)
        onehot = np.eye(2)[t]
    else:
        t = (rng.random((600, 6)) < 0.3).astype(np.int64)
        onehot = t
    noise = rng.standard_normal(onehot.shape)
    strong, weak = onehot * 2.0 + noise, onehot * 0.3 + rng.standard_normal(onehot.shape)
    a, b = per_image.record(strong, t, metric), per_image.record(weak, t, metric)
    out = stats.paired_compare(a, b, metric, n_boot=200)
    expected = compute_metrics(strong, t, metric)["primary"] - compute_metrics(weak, t, metric)["primary"]
    assert out["delta"] == pytest.approx(expected, abs=1e-6)
    assert out["p"] < stats.SIGNIFICANCE and out["ci95"][0] > 0 and out["test"] == "paired bootstrap"
    same = stats.paired_compare(a, a, metric, n_boot=200)
    assert same["delta"] == 0.0 and same["p"] == 1.0


def test_paired_compare_refuses_other_images():
    t = np.array([0, 1, 1, 0])
    a = per_image.record(np.eye(2)[t], t, "accuracy")
    b = per_image.record(np.eye(2)[t], np.array([0, 1, 0, 0]), "accuracy")
    with pytest.raises(ValueError, match="same targets"):
        stats.paired_compare(a, b, "accuracy")
    with pytest.raises(ValueError, match="scores"):
        stats.paired_compare(a, a, "roc_auc")


def test_run_writes_per_image_record_and_per_class(bench_cli, cache_dir, digits_root, tmp_path):

    args = ("run", "--model", "demo", "--dataset", "digits", "--data-root", digits_root, "--cache-dir", cache_dir,
            "--workers", "0", "--limit", "120", "--out", tmp_path / "runs", "--bootstrap", "0")
    assert bench_cli(*args)[0] == 0
    path = latest_result(tmp_path / "runs" / "demo" / "digits", "zeroshot")
    result = json.loads(path.read_text(encoding="utf-8"))
    rec = per_image.read_per_image(per_image_path(path))
    assert result["per_image"]["file"] == per_image_path(path).name and result["per_image"]["n"] == 120
    assert rec["correct"].mean() == pytest.approx(result["metrics"]["top1"])
    assert result["per_image"]["images"] == per_image.images_digest(rec["paths"].tolist(), rec["targets"])
    assert len(result["class_names"]) == len(result["per_class"]["recall"]) == result["n_classes"]
    assert sum(result["per_class"]["support"]) == 120
    weighted = sum(r * n for r, n in zip(result["per_class"]["recall"], result["per_class"]["support"]))
    assert weighted / 120 == pytest.approx(result["metrics"]["top1"])


def test_studies_flag_a_worse_prompt_set_and_not_an_equal_one():
    import torch

    from bench.studies import compute

    rng = np.random.default_rng(11)
    classes, dim, n = 5, 16, 600
    mu = rng.standard_normal((classes, dim))
    t = rng.integers(0, classes, n)
    features = torch.tensor(mu[t] + 1.2 * rng.standard_normal((n, dim)), dtype=torch.float32)
    good = torch.tensor(mu[:, None, :] + 0.05 * rng.standard_normal((classes, 2, dim)), dtype=torch.float32)
    # a deliberately worse set: its prompts point mostly away from their class
    bad = torch.tensor(0.4 * mu[:, None, :] + rng.standard_normal((classes, 2, dim)), dtype=torch.float32)
    lg, lb = compute.ensemble_logits(features, good), compute.ensemble_logits(features, bad)
    assert compute.evaluate(features, good, t, "accuracy")["top1"] == pytest.approx((lg.argmax(1) == t).mean())
    worse = compute.paired(lb, lg, t, "accuracy")
    assert worse["delta"] < 0 and worse["p"] < stats.SIGNIFICANCE and worse["ci95"][1] < 0
    same = compute.paired(lg, compute.ensemble_logits(features, good.clone()), t, "accuracy")
    assert same["delta"] == 0.0 and same["p"] == 1.0


def test_sets_study_records_paired_tests_and_report_shows_them(bench_cli, cache_dir, digits_root, tmp_path):
    import yaml

    from bench.report import build_report
    from bench.report.published import load_published

    sets = []
    for name in ("set-a", "set-a-again"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, "language": "zh", "templates": ["一张数字{{ label }}的照片。"]},
                                       allow_unicode=True), encoding="utf-8")
        sets.append(path)
    out = tmp_path / "study"
    code, _, err = bench_cli("study", "sets", "--model", "demo", "--dataset", "digits", "--data-root", digits_root,
                             "--cache-dir", cache_dir, "--out", out, "--workers", "0", "--limit", "60",
                             "--no-progress", "--sets", *sets)
    assert code == 0, err
    study = json.loads(latest_result(out / "demo" / "digits", "study-sets").read_text(encoding="utf-8"))
    assert study["sets"][0]["paired"] is None  # the first set is what the others are compared with
    same = study["sets"][1]["paired"]
    assert same["delta"] == 0.0 and same["p"] == 1.0 and same["test"].startswith("McNemar")
    assert study["union"]["paired"]["p"] == 1.0  # the union of two identical sets is the same classifier
    build_report([out], tmp_path / "report", "html", published=load_published(tmp_path / "none"))
    from test_report import parse

    rows = parse(tmp_path / "report" / "report.html").tables["prompt-sets"][1:]
    assert [r[8] for r in rows] == ["—", "not significant", "not significant"]
