"""`bench run` end to end on the demo: result JSON and predictions CSV exactly as the contract says."""

from __future__ import annotations

import csv
import json

import pytest


@pytest.fixture
def demo_run(tmp_path, digits_root, cache_dir, bench_cli):
    out = tmp_path / "runs"
    code, stdout, err = bench_cli("run", "--model", "demo demo-en", "--dataset", "digits", "--data-root", digits_root,
                                  "--cache-dir", cache_dir, "--out", out, "--workers", "0", "--save-predictions")
    assert code == 0, err
    return out, stdout


def test_result_json_contract(demo_run):
    out, stdout = demo_run
    for model, language, prompts in (("demo", "zh", "demo-zh"), ("demo-en", "en", "demo-en")):
        res = json.loads((out / model / "digits" / "zeroshot.json").read_text(encoding="utf-8"))
        for key in ("model", "dataset", "split", "task", "language", "prompts", "labels", "n_samples", "metric",
                    "metrics", "manifest"):
            assert key in res, key
        assert (res["model"], res["dataset"], res["split"], res["task"]) == (model, "digits", "test", "zeroshot")
        assert (res["language"], res["prompts"]) == (language, prompts)
        assert res["n_samples"] == 539
        assert res["metric"] == "accuracy"
        m = res["metrics"]
        for key in ("top1", "top5", "mean_per_class", "primary"):
            assert 0.0 <= m[key] <= 1.0
        assert m["primary"] == m["top1"] == m["accuracy"]
        # the demo is far above chance (10 classes → 0.1)
        assert m["top1"] > 0.6
        assert m["top5"] >= m["top1"]
        man = res["manifest"]
        assert man["versions"]["torch"].startswith("2.14")
        assert man["model"]["weights"] and man["model"]["preprocess"]
    assert "demo-en" in stdout and "digits" in stdout


def test_predictions_csv_contract(demo_run):
    out, _ = demo_run
    with open(out / "demo" / "digits" / "zeroshot.predictions.csv", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    assert header == ["path", "target", "prediction"]
    assert len(rows) == 539
    for path, target, pred in rows:
        assert "\\" not in path and not path.startswith("/")
        assert path.split("/")[0] == target  # relative to the split folder: <class folder>/<file>
        assert 0 <= int(pred) < 10
    res = json.loads((out / "demo" / "digits" / "zeroshot.json").read_text())
    acc = sum(int(t) == int(p) for _, t, p in rows) / len(rows)
    assert acc == pytest.approx(res["metrics"]["top1"])


def test_report_from_runs(demo_run, tmp_path, bench_cli):
    out, _ = demo_run
    code, stdout, err = bench_cli("report", out, "--out", tmp_path / "report")
    assert code == 0, err
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "demo-en" in md and "digits" in md
    assert (tmp_path / "report" / "report.html").is_file()
