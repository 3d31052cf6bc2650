"""Bootstrap CI cost: top-1 of 50k images × 1000 resamples, and every metric of a 50k × 1000-class set.

Standalone (run by `make perf`): prints one line and writes results/perf/stats.json. Not a timed test: the
figures hold for this machine only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cache import atomic_write_json
from bench.stats import bootstrap_ci, bootstrap_top1


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--out", type=Path, default=Path("results/perf/stats.json"))
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    correct = rng.random(args.n) < 0.8
    top1_s = best_of(lambda: bootstrap_top1(correct, args.resamples))
    targets = rng.integers(0, args.classes, args.n)
    scores = rng.standard_normal((args.n, args.classes), dtype=np.float32)
    all_s = best_of(lambda: bootstrap_ci(scores, targets, "mean_per_class", args.resamples), repeats=1)
    figures = {"n": args.n, "classes": args.classes, "resamples": args.resamples, "top1_s": round(top1_s, 4),
               "all_metrics_s": round(all_s, 3)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, figures)
    print(f"bootstrap CI, {args.n} images × {args.resamples} resamples: top-1 {1000 * top1_s:.1f} ms; "
          f"top-1 + top-5 + mean-per-class over {args.classes} classes {all_s:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
