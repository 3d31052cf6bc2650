"""Torch probe vs scikit-learn reference: speed-up on a 50k × 1024, 100-class problem, accuracy within 0.5 points.

Standalone (run by `make perf`): generates the features, fits both implementations at the same C from a
zero start (one fit each: a full sweep with the reference would take far too long at this size), scores
both on a held-out set, prints one line and writes results/perf/probe.json. The ratio is measured within
this run, so it holds for this machine only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cache import atomic_write_json
from bench.probe import Split, evaluate, fit_sklearn, fit_torch


def generate(n: int, d: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian class clusters, L2-normalised like CLIP features; neighbouring class means sit about 3.5 noise
    standard deviations apart whatever `d` is, so accuracy stays well below 100%."""
    rng = np.random.default_rng(seed)
    means = (2.5 / np.sqrt(d)) * rng.standard_normal((c, d), dtype=np.float32)
    y = rng.integers(0, c, n)
    x = means[y] + rng.standard_normal((n, d), dtype=np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--c", type=float, default=1.0, help="regularisation C used by both")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-iter", type=int, default=1000)
    p.add_argument("--out", type=Path, default=Path("results/perf/probe.json"))
    args = p.parse_args(argv)

    x, y = generate(args.n + args.n // 5, args.dim, args.classes, seed=0)
    train, test = Split(x[:args.n], y[:args.n]), Split(x[args.n:], y[args.n:])
    timings, accuracy, iters = {}, {}, {}
    for name, fit in (("torch", fit_torch), ("sklearn", fit_sklearn)):
        device = args.device if name == "torch" else "cpu"
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        head = fit(train.x, train.y, args.c, args.classes, device=device, max_iter=args.max_iter)
        timings[name] = time.perf_counter() - t
        accuracy[name] = evaluate(head, test, "accuracy")["top1"]
        iters[name] = head.n_iter
    speedup = timings["sklearn"] / timings["torch"]
    gap = 100 * abs(accuracy["torch"] - accuracy["sklearn"])
    result = {
        "problem": {"n_train": args.n, "n_test": len(test), "dim": args.dim, "classes": args.classes, "C": args.c},
        "device": args.device, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "seconds": {k: round(v, 3) for k, v in timings.items()}, "iterations": iters,
        "test_accuracy": accuracy, "accuracy_gap_points": round(gap, 3), "speedup": round(speedup, 2),
        "within_half_point": gap <= 0.5,
    }
    atomic_write_json(args.out, result)
    print(f"probe {args.n}x{args.dim}, {args.classes} classes, C={args.c}: torch ({args.device}) "
          f"{timings['torch']:.1f}s vs sklearn {timings['sklearn']:.1f}s = {speedup:.2f}x; test accuracy "
          f"{100 * accuracy['torch']:.2f} vs {100 * accuracy['sklearn']:.2f} (gap {gap:.2f} points) -> {args.out}")
    return 0 if gap <= 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
