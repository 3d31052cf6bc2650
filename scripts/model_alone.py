"""The image tower alone, eager: the same batches as a `bench run`, already decoded and preprocessed,
through bench's own backend (run by scripts/perf.py; prints one JSON line). The eager limit that the
image loop of `bench run --compile off` is measured against."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import kernels  # noqa: E402
from bench.backends import load_backend  # noqa: E402
from bench.models import resolve_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="a model YAML or registry name")
    p.add_argument("--split-dir", type=Path, required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cpu-gemm", choices=kernels.CPU_GEMMS, default="auto")
    a = p.parse_args()
    backend = load_backend(resolve_model(a.model), device="cpu")
    backend.cpu_gemm = a.cpu_gemm
    files = sorted(f for f in a.split_dir.rglob("*") if f.is_file())
    with Image.open(files[0]) as im:
        backend.encode_images(backend.preprocess(im.convert("RGB"))[None])  # warm-up (allocator, oneDNN)
    pixels = torch.stack([backend.preprocess(Image.open(f).convert("RGB")) for f in files])
    start = time.perf_counter()
    for batch in pixels.split(a.batch_size):
        backend.encode_images(batch)
    seconds = time.perf_counter() - start
    print(json.dumps({"images": len(files), "seconds": seconds, "threads": torch.get_num_threads(),
                      "cpu_gemm": backend.gemm}))


if __name__ == "__main__":
    main()
