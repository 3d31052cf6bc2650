"""End to end: `bench run --task all` on the demo model and digits; a second probe run encodes nothing."""

from __future__ import annotations

import json

from identity_helpers import latest_result

from bench.backends.base import Backend
from bench.probe import comparison


def _counting(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = Backend.encode_images

    def encode_images(self, pixels, compiled=False):
        calls.append(len(pixels))
        return original(self, pixels, compiled)

    monkeypatch.setattr(Backend, "encode_images", encode_images)
    return calls


def test_task_all_then_probe_reuses_cached_features(bench_cli, cache_dir, digits_root, tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    out = tmp_path / "runs"
    common = ("--model", "demo", "--dataset", "digits", "--data-root", digits_root, "--cache-dir", cache_dir,
              "--out", out, "--workers", "0", "--shots", "1,4", "--seeds", "0,1")
    code, stdout, stderr = bench_cli("run", *common, "--task", "all")
    assert code == 0, stderr
    n_train = len(list((digits_root / "digits" / "train").rglob("*.png")))
    n_test = len(list((digits_root / "digits" / "test").rglob("*.png")))
    assert sum(calls) == n_train + n_test  # train and test each encoded once, shared by both tasks

    folder = out / "demo" / "digits"
    zs = json.loads(latest_result(folder, "zeroshot").read_text())
    lp = json.loads(latest_result(folder, "linear_probe").read_text())
    assert lp["task"] == "linear_probe" and lp["split"] == "test" and lp["n_samples"] == n_test
    assert lp["implementation"] == "torch" and lp["regularization"]["name"] == "C"
    assert lp["n_train"] + lp["n_val"] == n_train and lp["n_val"] > 0  # digits has no val: held out of train
    assert lp["regularization"]["value"] in [s["value"] for s in lp["sweep"]]
    assert max(s["val_score"] for s in lp["sweep"]) == next(
        s["val_score"] for s in lp["sweep"] if s["value"] == lp["regularization"]["value"])
    assert [f["k"] for f in lp["few_shot"]] == [1, 4] and all(f["seeds"] == [0, 1] for f in lp["few_shot"])
    assert lp["metrics"]["primary"] > 0.5  # 10 classes: far above chance
    assert {"sweep_s", "final_fit_s", "few_shot_s", "total_s"} <= set(lp["timings"])
    assert "linear_probe" in stdout and "zeroshot" in stdout

    row = comparison([zs, lp])[0]
    assert row["zeroshot"] == zs["metrics"]["primary"] and row["linear_probe"] == lp["metrics"]["primary"]

    calls.clear()
    code, _, stderr = bench_cli("run", *common, "--task", "linear-probe", "--shots", "0")
    assert code == 0, stderr
    assert calls == []  # everything came from the feature cache
    again = json.loads(latest_result(folder, "linear_probe").read_text())
    assert set(again["cache"]["images_encoded"].values()) == {0}
    assert again["few_shot"] == []
    assert again["metrics"] == lp["metrics"]  # same features, same protocol, same seeds


def test_shots_beyond_the_training_part_are_clamped_recorded_and_warned(bench_cli, cache_dir, digits_root, tmp_path,
                                                                         caplog):
    out = tmp_path / "runs"
    code, _, stderr = bench_cli("run", "--model", "demo", "--dataset", "digits", "--data-root", digits_root,
                                "--cache-dir", cache_dir, "--out", out, "--workers", "0", "--task", "linear-probe",
                                "--shots", "2,500", "--seeds", "0")
    assert code == 0, stderr
    lp = json.loads(latest_result(out / "demo" / "digits", "linear_probe").read_text())
    largest = max(len(list(d.glob("*.png"))) for d in (digits_root / "digits" / "train").iterdir())
    assert [f["k"] for f in lp["few_shot"]][0] == 2 and "requested_k" not in lp["few_shot"][0]
    clamped = lp["few_shot"][1]
    assert clamped["requested_k"] == 500 and 0 < clamped["k"] < largest  # the training part, not all of train
    assert lp["experiment"]["shots"] == [2, 500]  # the identity keeps what was asked for
    assert f"--shots 500 asks for more images per class than the training part has (largest class: {clamped['k']})" \
        in caplog.text


def test_probe_needs_a_train_split(bench_cli, cache_dir, digits_root, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(digits_root / "digits" / "test", data / "digits" / "test")
    for name in ("label.txt", "label_cn.txt"):
        shutil.copy(digits_root / "digits" / name, data / "digits" / name)
    code, _, stderr = bench_cli("run", "--model", "demo", "--dataset", "digits", "--data-root", data,
                                "--cache-dir", cache_dir, "--out", tmp_path / "runs", "--workers", "0",
                                "--task", "linear-probe")
    assert code == 2 and "train" in stderr and "digits" in stderr
    assert not (tmp_path / "runs" / "demo").exists()
