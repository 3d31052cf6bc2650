"""`--save-logits` files and `bench export elevater-submission` on hand-made runs."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from bench.errors import BenchError
from bench.experiment import logits_path
from bench.export import collect_runs, write_submission
from bench.runner import write_logits


def _probs(rng, n, c):
    e = np.exp(rng.normal(size=(n, c)) * 3)
    return e / e.sum(axis=1, keepdims=True)


def _run(root, model, dataset, scores, targets, stem="zeroshot@protocol=elevater", **extra):
    folder = root / model / dataset
    folder.mkdir(parents=True, exist_ok=True)
    result = folder / f"{stem}.json"
    result.write_text(json.dumps({"model": model, "dataset": dataset, "task": "zeroshot", "limit": None, **extra}))
    write_logits(logits_path(result), scores, targets, [f"img/{i}.jpg" for i in range(len(scores))])
    return result


def test_logits_path_is_derived_from_the_result_name(tmp_path):
    assert logits_path(tmp_path / "zeroshot@protocol=cn-clip.json") == tmp_path / "zeroshot@protocol=cn-clip.logits.npz"
    assert logits_path(tmp_path / "zeroshot.json").name == "zeroshot.logits.npz"


def test_write_logits_round_trips_without_pickle(tmp_path):
    rng = np.random.default_rng(0)
    s, t = _probs(rng, 5, 3), np.array([0, 2, 1, 1, 0])
    path = tmp_path / "zeroshot.logits.npz"
    write_logits(path, s, t, ["a/1.jpg", "b/2.jpg", "c/3.jpg", "d/4.jpg", "e/5.jpg"])
    with np.load(path, allow_pickle=False) as z:
        assert np.array_equal(z["scores"], s) and np.array_equal(z["targets"], t)
        assert z["paths"].tolist() == ["a/1.jpg", "b/2.jpg", "c/3.jpg", "d/4.jpg", "e/5.jpg"]
    assert [p.name for p in tmp_path.iterdir()] == ["zeroshot.logits.npz"]  # no temp file left


def test_export_writes_the_toolkit_format(tmp_path, bench_cli):
    rng = np.random.default_rng(1)
    cifar = _probs(rng, 7, 10)
    voc_t = (rng.random((4, 20)) < 0.2).astype(np.int64)
    voc = rng.random((4, 20))  # multi-label: independent probabilities, rows need not sum to 1
    _run(tmp_path / "runs", "cn-clip-rn50", "cifar-10", cifar, rng.integers(0, 10, 7))
    _run(tmp_path / "runs", "cn-clip-rn50", "voc-2007", voc, voc_t)
    (tmp_path / "runs" / "cn-clip-rn50" / "cifar-10" / "zeroshot.json").write_text("{}")  # no logits: ignored
    out = tmp_path / "sub"
    code, stdout, err = bench_cli("export", "elevater-submission", tmp_path / "runs", "--out", out,
                                  "--model-name", "CN-CLIP-RN50", "--num-params", "77000000")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["all_predictions.zip", "cifar-10.json",
                                                    "voc-2007-classification.json"]
    entry = json.loads((out / "cifar-10.json").read_text())
    assert list(entry) == ["model_name", "dataset_name", "num_trainable_params", "num_params", "num_visual_params",
                           "num_backbone_params", "n_shot", "rnd_seeds", "predictions"]
    assert (entry["model_name"], entry["dataset_name"], entry["num_params"]) == ("CN-CLIP-RN50", "cifar-10", 77000000)
    assert (entry["num_trainable_params"], entry["n_shot"], entry["rnd_seeds"]) == (0, 0, [0])
    pred = np.array(entry["predictions"])
    assert pred.shape == (1, 7, 10)  # (1, #test images, #classes)
    assert np.allclose(pred[0], cifar, atol=5e-7) and np.array_equal(pred[0], np.round(cifar, 6))
    # the server's multi-class check (prediction_submission.validate_predictions)
    assert all(np.isclose(sum(row), 1.0, rtol=1e-3) for row in entry["predictions"][0])
    with zipfile.ZipFile(out / "all_predictions.zip") as zf:
        assert zf.namelist() == ["all_predictions.json"]
        merged = json.loads(zf.read("all_predictions.json"))
    assert sorted(d["dataset_name"] for d in merged["data"]) == ["cifar-10", "voc-2007-classification"]
    assert next(d for d in merged["data"] if d["dataset_name"] == "cifar-10") == entry


def test_export_refuses_logits_and_writes_nothing(tmp_path):
    rng = np.random.default_rng(2)
    good = _run(tmp_path / "runs", "m", "cifar-10", _probs(rng, 6, 10), rng.integers(0, 10, 6))
    bad = _run(tmp_path / "runs", "m", "mnist", rng.normal(size=(6, 10)) * 20, rng.integers(0, 10, 6))
    with pytest.raises(BenchError, match="not probabilities.*--protocol elevater or cn-clip"):
        write_submission([good, bad], tmp_path / "sub")
    assert not (tmp_path / "sub").exists()


def test_export_refuses_partial_runs_and_duplicate_datasets(tmp_path):
    rng = np.random.default_rng(3)
    a = _run(tmp_path / "runs", "m", "cifar-10", _probs(rng, 6, 10), rng.integers(0, 10, 6))
    b = _run(tmp_path / "runs", "m", "cifar-10", _probs(rng, 6, 10), rng.integers(0, 10, 6), stem="zeroshot@x=1")
    with pytest.raises(BenchError, match="two runs for cifar-10"):
        write_submission([a, b], tmp_path / "sub")
    c = _run(tmp_path / "runs2", "m", "cifar-10", _probs(rng, 6, 10), rng.integers(0, 10, 6), limit=6)
    c.write_text(json.dumps({"model": "m", "dataset": "cifar-10", "task": "zeroshot", "limit": 6}))
    with pytest.raises(BenchError, match="--limit 6"):
        write_submission([c], tmp_path / "sub")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match="--save-logits"):
        collect_runs([tmp_path / "empty"])
    lone = tmp_path / "lone.json"
    lone.write_text("{}")
    with pytest.raises(BenchError, match="lone.logits.npz"):
        collect_runs([lone])


def test_run_save_logits_holds_the_scores_the_metrics_saw(tmp_path, digits_root, cache_dir, bench_cli):
    from bench.metrics import compute_metrics

    out = tmp_path / "runs"
    code, _, err = bench_cli("run", "--model", "demo", "--dataset", "digits", "--data-root", digits_root,
                             "--cache-dir", cache_dir, "--out", out, "--workers", "0", "--limit", "30",
                             "--save-logits")
    assert code == 0, err
    (result,) = (p for p in (out / "demo" / "digits").glob("zeroshot*.json"))
    res = json.loads(result.read_text(encoding="utf-8"))
    assert res["metrics_implementation"] == "bench"
    with np.load(logits_path(result), allow_pickle=False) as z:
        scores, targets, paths = z["scores"], z["targets"], z["paths"].tolist()
    assert scores.shape == (res["n_samples"], res["n_classes"]) and len(paths) == len(targets) == res["n_samples"]
    assert len(set(paths)) == len(paths)  # one row per image
    assert compute_metrics(scores, targets, res["metric"]) == res["metrics"]
