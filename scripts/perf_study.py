"""Cost of a prompt-sensitivity study vs one zero-shot run (cold caches, same data, ratio in one process).

A study over 90 templates must cost at most 1.5x one zero-shot run with the same 90-template set: it encodes
the images once (plus a small validation hold-out for greedy selection), never once per template.

    python scripts/perf_study.py                      # demo model (trained briefly; weights do not matter)
    python scripts/perf_study.py --arch ViT-B-32       # random-init open_clip ViT-B-32 (slower, heavier encoders)

Prints the ratio and writes results/perf/study.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MAX_RATIO = 1.5
PREFIXES = ["一张", "一幅", "一个", "这是", "照片：", "图片：", "看，", "清晰的", "模糊的", "手写的"]
SUFFIXES = ["的照片。", "的图片。", "。", "的特写。", "的样子。", "的图像。", "，很好看。", "的草图。", "的扫描件。"]


def make_prompts(path: Path, language: str) -> int:
    """90 distinct templates (10 prefixes x 9 suffixes)."""
    import yaml

    templates = [f"{p}{{{{ label }}}}{s}" for p in PREFIXES for s in SUFFIXES]
    if language == "en":
        templates = [f"{p} photo {i} of a {{{{ label }}}}." for i, p in enumerate(["a", "the"] * 45)]
    path.write_text(yaml.safe_dump({"name": "perf-90", "language": language, "templates": templates},
                                   allow_unicode=True), encoding="utf-8")
    return len(templates)


def make_data(root: Path, n_test: int, n_train: int, seed: int = 0) -> None:
    """Noisy generated images in the digits layout (10 classes)."""
    rng = np.random.default_rng(seed)
    folder = root / "digits"
    for split, n in (("test", n_test), ("train", n_train)):
        for i in range(n):
            d = folder / split / str(i % 10)
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i:05d}.png")
    (folder / "label.txt").write_text("\n".join(map(str, range(10))) + "\n", encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default=None, help="open_clip architecture, random init (default: the demo model)")
    ap.add_argument("--images", type=int, default=300, help="test images (default 300)")
    ap.add_argument("--train", type=int, default=300, help="train images; greedy holds out 20%% (default 300)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "perf" / "study.json")
    args = ap.parse_args()

    from bench.cache import atomic_write_json
    from bench.runner import RunOptions, run
    from bench.studies.study import run_study

    work = Path(tempfile.mkdtemp(prefix="bench-perf-study-"))
    try:
        models = work / "models-cache"
        if args.arch:
            model = work / "model.yaml"
            model.write_text(f"name: random-{args.arch}\nbackend: open_clip\nmodel: {args.arch}\nlanguage: en\n",
                             encoding="utf-8")
            model_name, language = str(model), "en"
        else:
            from bench.demo.train import train

            train(models / "models" / "demo-digits-v1", steps=20)
            model_name, language = "demo", "zh"
        prompts = work / "perf-90.yaml"
        n_templates = make_prompts(prompts, language)
        make_data(work / "data", args.images, args.train)

        def opts(name: str, limit: int | None = None) -> RunOptions:
            cache = work / f"cache-{name}"  # cold: no image or text features, only the model weights
            if models.exists():
                shutil.copytree(models / "models", cache / "models")
            return RunOptions(out=work / f"out-{name}", cache_dir=cache, data_root=work / "data",
                              prompts=str(prompts), workers=0, progress=False, limit=limit)

        run([model_name], ["digits"], opts("warmup", limit=20))  # one-time costs (imports, lazy init) go here

        t = time.perf_counter()
        zs = run([model_name], ["digits"], opts("zeroshot"))[0]
        t_run = time.perf_counter() - t
        t = time.perf_counter()
        study = run_study("prompts", [model_name], ["digits"], opts("study"))[0]
        t_study = time.perf_counter() - t
        t = time.perf_counter()
        run_study("prompts", [model_name], ["digits"], opts("study-nogreedy"), greedy=False)
        t_nogreedy = time.perf_counter() - t
        assert abs(study["ensemble"]["primary"] - zs["metrics"]["primary"]) < 1e-12
        ratio = t_study / t_run
        result = {
            "model": args.arch or "demo", "n_templates": n_templates, "n_images": args.images,
            "n_val": study["greedy"]["n_val"], "zeroshot_s": round(t_run, 3), "study_s": round(t_study, 3),
            "study_no_greedy_s": round(t_nogreedy, 3), "ratio": round(ratio, 3),
            "ratio_no_greedy": round(t_nogreedy / t_run, 3), "max_ratio": MAX_RATIO,
            "naive_estimate_ratio": n_templates,  # one image pass per template
            "pass": ratio <= MAX_RATIO,
        }
        atomic_write_json(args.out, result)
        print(f"prompt study over {n_templates} templates on {args.images} images ({result['model']}): "
              f"zero-shot run {t_run:.2f}s, study {t_study:.2f}s (no greedy {t_nogreedy:.2f}s) -> "
              f"ratio {ratio:.2f}x (limit {MAX_RATIO}x); wrote {args.out}")
        return 0 if result["pass"] else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
