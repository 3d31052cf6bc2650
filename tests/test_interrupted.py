"""Killed runs, corrupted shards and concurrent runs on one cache: nothing lost beyond one shard, nothing wrong."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARD = 16


def bench_cmd(data_root: Path, cache: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "bench", "-q", "run", "--model", "demo", "--dataset", "digits",
            "--data-root", str(data_root), "--cache-dir", str(cache), "--out", str(out), "--workers", "0",
            "--batch-size", "4", "--save-predictions", "--no-progress"]


def env() -> dict:
    return {**os.environ, "BENCH_SHARD_SIZE": str(SHARD), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


def result(out: Path) -> dict:
    return json.loads((out / "demo" / "digits" / "zeroshot.json").read_text())


def predictions(out: Path) -> str:
    return (out / "demo" / "digits" / "zeroshot.predictions.csv").read_text()


def finished_shards(cache: Path) -> list[Path]:
    return sorted(cache.rglob("shard-*.json"))


@pytest.fixture
def reference(tmp_path_factory, demo_cache, digits_root):
    """An uninterrupted run in its own cache."""
    import shutil

    cache = tmp_path_factory.mktemp("ref") / "cache"
    shutil.copytree(demo_cache / "models", cache / "models")
    out = cache.parent / "runs"
    subprocess.run(bench_cmd(digits_root, cache, out), env=env(), check=True, capture_output=True, timeout=600)
    return out


def test_sigkill_resumes_from_finished_shards(cache_dir, digits_root, tmp_path, reference):
    out = tmp_path / "runs"
    proc = subprocess.Popen(bench_cmd(digits_root, cache_dir, out), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not finished_shards(cache_dir):
        assert proc.poll() is None, "the run ended before writing its first shard"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = finished_shards(cache_dir)
    assert not list(cache_dir.rglob("index.json")), "killed too late: the entry was already complete"
    reference_n = result(reference)["n_samples"]
    assert len(kept) * SHARD < reference_n

    proc = subprocess.run(bench_cmd(digits_root, cache_dir, out), env=env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    resumed = result(out)
    # Every finished shard was reused: only the images of unfinished shards were encoded again.
    assert resumed["cache"]["images_encoded"] == reference_n - len(kept) * SHARD
    assert resumed["metrics"] == result(reference)["metrics"]
    assert predictions(out) == predictions(reference)


def test_corrupted_shard_is_detected_and_reencoded(cache_dir, digits_root, tmp_path, reference):
    out = tmp_path / "runs"
    subprocess.run(bench_cmd(digits_root, cache_dir, out), env=env(), check=True, capture_output=True, timeout=600)
    shard = sorted(cache_dir.rglob("shard-00002.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])  # flip bytes inside the feature values
    shard.write_bytes(bytes(data))
    proc = subprocess.run(bench_cmd(digits_root, cache_dir, out), env=env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"shard-00002\.safetensors is corrupted .*re-encoded", proc.stderr), proc.stderr
    assert result(out)["cache"]["images_encoded"] == SHARD
    assert result(out)["metrics"] == result(reference)["metrics"]
    assert predictions(out) == predictions(reference)


def test_concurrent_runs_share_one_cache(cache_dir, digits_root, tmp_path, reference):
    outs = [tmp_path / "runs-a", tmp_path / "runs-b"]
    procs = [subprocess.Popen(bench_cmd(digits_root, cache_dir, o), env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for o in outs]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    for o in outs:
        assert result(o)["metrics"] == result(reference)["metrics"]
        assert predictions(o) == predictions(reference)
    # The lock made one run encode and the other read: the images were encoded once in all.
    n = result(reference)["n_samples"]
    assert sorted(result(o)["cache"]["images_encoded"] for o in outs) == [0, n]
    # The entry is whole: every shard passes its checksum and one more run encodes nothing.
    from bench.cache import FeatureCache

    key = result(outs[0])["cache"]["image_features"]
    fc = FeatureCache(cache_dir, shard_size=SHARD)
    assert fc.is_complete(key)
    assert all(fc.load_shard(key, s) is not None for s in range(-(-n // SHARD)))


def test_cache_holds_only_safetensors_and_json(cache_dir, digits_root, tmp_path):
    subprocess.run(bench_cmd(digits_root, cache_dir, tmp_path / "runs") + ["--limit", "40"], env=env(), check=True,
                   capture_output=True, timeout=600)
    files = [p for p in cache_dir.rglob("*") if p.is_file() and "models" not in p.relative_to(cache_dir).parts]
    assert files
    suffixes = {p.suffix for p in files if p.parent.name != "locks"}
    assert suffixes <= {".safetensors", ".json"}, suffixes
    assert {p.suffix for p in files if p.parent.name == "locks"} <= {".lock"}
    from safetensors.torch import load_file

    for p in files:  # each file parses as what its name says: nothing else (a pickle) could hide there
        if p.suffix == ".safetensors":
            assert load_file(p)
        elif p.suffix == ".json":
            json.loads(p.read_text())


def test_no_unpickling_anywhere_in_the_package():
    """torch.load only with weights_only=True; no pickle, no unsafe YAML, jinja2 only through the sandbox."""
    bad = []
    for path in (REPO / "bench").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                bad.append(f"{path}: {m.group(0)}")
        for pattern in (r"\bimport pickle\b", r"\bpickle\.loads?\(", r"yaml\.(unsafe_)?load\(", r"yaml\.full_load",
                        r"yaml\.Loader\b", r"\bdill\b", r"\bjoblib\.load\("):
            bad += [f"{path}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert not bad, bad
