"""scripts/perf_gpu.py's dry run on the CPU: the same code a GPU run takes, on a tiny model, so the script
that measures the GPU path the day a GPU is lent is known to run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import perf_gpu  # noqa: E402


def test_peak_table_matches_device_names():
    assert perf_gpu.peak_tflops("NVIDIA H200", None) == 989.0
    assert perf_gpu.peak_tflops("NVIDIA A100-SXM4-80GB", None) == 312.0
    assert perf_gpu.peak_tflops("Some New GPU", None) is None
    assert perf_gpu.peak_tflops("Some New GPU", 123.0) == 123.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the skip line is for machines without CUDA")
def test_without_cuda_it_says_so_and_succeeds():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "perf_gpu.py")], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0 and "skipped, no CUDA GPU" in proc.stdout


def test_dry_run_measures_both_decode_paths(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "perf_gpu.py"), "--device", "cpu", "--arch", "tiny",
                           "--images", "24", "--long-side", "80", "--steps", "1", "--batch-size", "8",
                           "--no-compiled", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu-dryrun.json").read_text())
    (row,) = report["archs"]
    assert row["arch"] == "tiny" and row["gflops_per_image"] > 0 and row["model_alone"]["eager"]["images_per_s"] > 0
    assert [r["decode"] for r in row["with_data"]] == ["cpu", "device"]
    assert [r["encoder"]["decode"] for r in row["with_data"]] == ["cpu", "device"]  # what bench run recorded
    assert all(r["images"] == 24 and r["images_per_s"] > 0 for r in row["with_data"])
    jpegs = list((tmp_path / "work" / "data-24-80").rglob("*.jpg"))  # the measured set, besides the warm-up set
    assert len(jpegs) == 24 and jpegs[0].read_bytes()[:2] == b"\xff\xd8"
    assert len(list((tmp_path / "work" / "data-16-80").rglob("*.jpg"))) == 16
    assert "bench run, decode device" in proc.stdout
