"""Retrieval memory: peak RSS of R@1/5/10 both ways on 5k images × 20k/40k/80k captions (random features).

Each size runs in a fresh process (numpy only, no torch), so its peak RSS is its own. Similarities are
computed in blocks of at most bench.retrieval.MAX_BLOCK_SCORES scores, so the peak does not grow with the
caption count (only the features do), while the whole similarity matrix would. Standalone (run by
`make perf`): prints one line and writes results/perf/retrieval.json. Not a timed test.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mib() -> float:
    """Current resident set size (Linux /proc), MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def one(n_images: int, n_texts: int, dim: int, per_image: int) -> dict:
    from bench.retrieval import MAX_BLOCK_SCORES, retrieval_metrics

    rng = np.random.default_rng(0)
    img = rng.standard_normal((n_images, dim), dtype=np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    owner = np.arange(n_texts) % n_images  # every image captioned, ~per_image captions each
    txt = img[owner] + 0.3 * rng.standard_normal((n_texts, dim), dtype=np.float32)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    text_images = [[int(i)] for i in owner]
    base = rss_mib()
    start = time.perf_counter()
    m = retrieval_metrics(img, txt, text_images)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"images": n_images, "captions": n_texts, "dim": dim, "seconds": round(seconds, 2),
            "rss_with_features_mib": round(base, 1), "peak_rss_mib": round(peak, 1),
            "peak_minus_features_mib": round(peak - base, 1), "full_matrix_mib": round(n_images * n_texts * 4 / 2**20, 1),
            "budget_scores_mib": round(MAX_BLOCK_SCORES * 4 / 2**20, 1), "t2i_r@1": round(m["t2i_r@1"], 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--captions", type=int, nargs="+", default=[20_000, 40_000, 80_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child: one size, JSON to stdout
    p.add_argument("--out", type=Path, default=ROOT / "results" / "perf" / "retrieval.json")
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.images, args.captions[0], args.dim, 5)))
        return 0
    from bench.cache import atomic_write_json  # imports torch: only here, never in the measured child

    runs = []
    for n in args.captions:
        child = subprocess.run([sys.executable, __file__, "--one", "--images", str(args.images), "--captions", str(n),
                                "--dim", str(args.dim)], check=True, capture_output=True, text=True)
        runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, {"runs": runs})
    print("retrieval memory, " + f"{args.images} images: " + "; ".join(
        f"{r['captions']} captions peak {r['peak_rss_mib']:.0f} MiB (process with features {r['rss_with_features_mib']:.0f} MiB; "
        f"the full similarity matrix alone would be {r['full_matrix_mib']:.0f} MiB, {r['seconds']:.1f} s)" for r in runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
