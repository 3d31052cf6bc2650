"""`make perf`: speed and memory of bench, as ratios measured within one run (not a timed test).

1. image-encoding throughput: `bench run` vs CLIP_benchmark's loop (same weights, data, batch size,
   workers and threads) on a tiny open_clip ViT and a random-init ViT-B/16, CPU, fp32;
2. warm re-run (all image features cached) vs the cold run;
3. any other scripts/perf_*.py (prompt study, linear probe, ...), their printed lines included;
4. peak RSS of a run over generated 5k- and 50k-image datasets (demo model): bounded by batch.

CLIP_benchmark goes into its own venv (.venv-perf) that reuses this interpreter's packages, so both
sides run the same torch/open_clip builds. Figures go to results/perf/*.json and a table to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.cache import atomic_write_json  # noqa: E402 (after the sys.path insert)

OUT = ROOT / "results" / "perf"
PERF_VENV = ROOT / ".venv-perf"
CLIP_BENCHMARK = "clip_benchmark==1.6.2"
TINY_CFG = {  # a small open_clip ViT: real code paths, seconds on CPU
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def env(threads: int) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def perf_python() -> str:
    """.venv-perf/bin/python with clip_benchmark installed (no deps: torch etc. come from this interpreter)."""
    py = PERF_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PERF_VENV)], check=True)
        site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
        Path(site, "bench-base.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    if subprocess.run([str(py), "-c", "import clip_benchmark"], capture_output=True, check=False).returncode:
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", CLIP_BENCHMARK], check=True)
    return str(py)


def make_images(folder: Path, n: int, size: int, classes: int = 10, seed: int = 0) -> Path:
    """An ELEVATER-layout dataset of random images (`folder`/test/<class>/<i>.png + label files)."""
    if (folder / "test").is_dir() and sum(1 for _ in (folder / "test").rglob("*.png")) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (folder / "test" / f"{c:02d}").mkdir(parents=True)
    base = rng.integers(0, 256, size=(classes, size, size, 3), dtype=np.uint8)
    for i in range(n):
        c = i % classes
        noise = rng.integers(-40, 40, size=(size, size, 3))
        Image.fromarray(np.clip(base[c] + noise, 0, 255).astype(np.uint8)).save(folder / "test" / f"{c:02d}" / f"{i:06d}.png")
    names = [f"class {c}" for c in range(classes)]
    (folder / "label.txt").write_text("\n".join(names) + "\n")
    (folder / "label_cn.txt").write_text("\n".join(f"类别{c}" for c in range(classes)) + "\n")
    return folder


def save_model(folder: Path, arch: str | dict) -> Path:
    """A random-init open_clip model in local-dir layout, loadable by both tools."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    if (folder / "open_clip_model.safetensors").is_file():
        return folder
    torch.manual_seed(0)
    cfg = open_clip.get_model_config(arch) if isinstance(arch, str) else arch
    model = open_clip.create_model(arch) if isinstance(arch, str) else open_clip.CLIP(**cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def bench_run(model: str, dataset: Path, cache: Path, out: Path, *, batch: int, workers: int, threads: int,
              prompts: str | None = None, extra: tuple[str, ...] = ()) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "bench", "-q", "run", "--model", model, "--dataset", str(dataset), "--cache-dir",
           str(cache), "--out", str(out), "--batch-size", str(batch), "--workers", str(workers), "--no-progress",
           "--labels", "dataset", *extra]
    if prompts:
        cmd += ["--prompts", prompts]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env(threads), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"bench run failed:\n{proc.stderr[-3000:]}")
    return json.loads(newest_result(out).read_text()), wall


def newest_result(out: Path) -> Path:
    """The newest zero-shot result under `out` (results are named by experiment: zeroshot[@…].json)."""
    found = [p for p in out.rglob("zeroshot*.json") if not p.name.endswith(".predictions.json")]
    if not found:
        raise SystemExit(f"no zero-shot result under {out}")
    return max(found, key=lambda p: p.stat().st_mtime_ns)


def throughput(work: Path, label: str, arch, n: int, size: int, batch: int, workers: int, threads: int) -> dict:
    model_dir = save_model(work / f"model-{label}", arch)
    data = make_images(work / f"data-{label}-{n}" / f"perf-{label}", n, size)
    yaml = work / f"{label}.yaml"
    yaml.write_text(f"name: perf-{label}\nbackend: open_clip\nmodel: local-dir:{model_dir}\nlanguage: en\n")
    knobs = {"batch": batch, "workers": workers, "threads": threads, "prompts": "simple-en"}

    def fresh_run(tag: str, *extra: str) -> tuple[dict, float]:
        cache, out = work / f"cache-{label}{tag}", work / f"runs-{label}{tag}"
        for p in (cache, out):
            shutil.rmtree(p, ignore_errors=True)
        return bench_run(str(yaml), data, cache, out, **knobs, extra=extra)

    cold, cold_wall = fresh_run("")  # bench's defaults: --compile auto
    warm, warm_wall = bench_run(str(yaml), data, work / f"cache-{label}", work / f"runs-{label}", **knobs)
    assert warm["cache"]["images_encoded"] == 0 and warm["metrics"] == cold["metrics"]
    # the same pipeline without torch.compile: what the data path alone does against theirs
    eager = fresh_run("-eager", "--compile", "off")[0] if cold["encoder"]["compiled"] else cold
    assert eager["metrics"] == cold["metrics"]
    proc = subprocess.run([perf_python(), str(ROOT / "scripts" / "clipbench_loop.py"), "--model-dir", str(model_dir),
                           "--split-dir", str(data / "test"), "--batch-size", str(batch), "--workers", str(workers)],
                          env=env(threads), capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"clip_benchmark loop failed:\n{proc.stderr[-3000:]}")
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    ours_ips = n / cold["timings"]["image_features_s"]
    eager_ips = n / eager["timings"]["image_features_s"]
    theirs_ips = theirs["images"] / theirs["seconds"]
    return {
        "model": label, "arch": arch if isinstance(arch, str) else TINY_CFG, "images": n, "image_size": size,
        "batch_size": batch, "workers": workers, "threads": threads, "device": "cpu", "precision": "fp32",
        "bench_images_per_s": ours_ips, "bench_eager_images_per_s": eager_ips,
        "clip_benchmark_images_per_s": theirs_ips, "speedup": ours_ips / theirs_ips,
        "speedup_eager": eager_ips / theirs_ips, "encoder": cold["encoder"],
        "cold": {"image_features_s": cold["timings"]["image_features_s"], "total_s": cold["timings"]["total_s"],
                 "process_wall_s": cold_wall},
        "warm": {"image_features_s": warm["timings"]["image_features_s"], "total_s": warm["timings"]["total_s"],
                 "process_wall_s": warm_wall},
        "warm_speedup_features": cold["timings"]["image_features_s"] / max(warm["timings"]["image_features_s"], 1e-3),
        "warm_speedup_total": cold["timings"]["total_s"] / max(warm["timings"]["total_s"], 1e-3),
        "warm_speedup_process": cold_wall / warm_wall,
        "how": "bench: timings.image_features_s of a cold `bench run` (decode + preprocess + encode + cache write, "
               "and torch.compile when --compile auto chose it: encoder.compile_s); bench eager: the same with "
               "--compile off; clip_benchmark 1.6.2: run_classification over ImageFolder, amp=False; same "
               "OMP_NUM_THREADS, DataLoader workers and batch size, same local-dir weights. Warm: the same "
               "command again on the filled cache (timings floored at 1 ms)",
    }


def whole(cmd: list[str], threads: int) -> tuple[float, str]:
    """Wall seconds of one command as a whole process (Python start-up and imports included), and its stdout."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env(threads), capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} … failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start, proc.stdout


def compile_once(work: Path, n: int, batch: int, workers: int, threads: int) -> dict:
    """Issue 19's run: a random-init ViT-B-32, n images at 224 px, whole commands against CLIP_benchmark.

    A0: the model's first run with aten's eager kernels (`--cpu-gemm aten`, what CLIP_benchmark runs);
    A: the model's first run (fresh cache, defaults: `--compile auto`, `--cpu-gemm auto`); B: `--compile on` on a
    second dataset, which builds and stores the compiled tower; C: `--compile auto` on a third dataset, which
    finds it stored. Also the image tower alone (same batches, already decoded) against each eager loop."""
    model_dir = save_model(work / "model-vit-b32", "ViT-B-32")
    yaml = work / "vit-b32.yaml"
    yaml.write_text(f"name: perf-vit-b32\nbackend: open_clip\nmodel: local-dir:{model_dir}\nlanguage: en\n")
    data = [make_images(work / f"data-b32-{i}" / f"b32-{i}", n, 224, seed=i) for i in range(3)]
    cache, cache_aten, out = work / "cache-b32", work / "cache-b32-aten", work / "runs-b32"
    for p in (cache, cache_aten, out):
        shutil.rmtree(p, ignore_errors=True)
    theirs_cmd = [perf_python(), str(ROOT / "scripts" / "clipbench_loop.py"), "--model-dir", str(model_dir),
                  "--split-dir", str(data[0] / "test"), "--batch-size", str(batch), "--workers", str(workers)]
    knobs = {"batch": batch, "workers": workers, "threads": threads, "prompts": "simple-en"}

    def ours(i: int, *extra: str, store: Path = cache) -> dict:
        result, wall = bench_run(str(yaml), data[i], store, out / f"run-{i}{'-'.join(extra)}", **knobs, extra=extra)
        return {"whole_s": wall, "image_features_s": result["timings"]["image_features_s"],
                "total_s": result["timings"]["total_s"], "encoder": result["encoder"]}

    def theirs() -> dict:
        wall, stdout = whole(theirs_cmd, threads)
        return {"whole_s": wall, **json.loads(stdout.strip().splitlines()[-1])}

    def alone(gemm: str) -> dict:
        cmd = [sys.executable, str(ROOT / "scripts" / "model_alone.py"), "--model", str(yaml), "--split-dir",
               str(data[0] / "test"), "--batch-size", str(batch), "--cpu-gemm", gemm]
        return json.loads(whole(cmd, threads)[1].strip().splitlines()[-1])

    def loop_ratio(run: dict, tower: dict) -> float | None:
        return None if run["encoder"]["compiled"] else tower["seconds"] / run["image_features_s"]

    theirs_runs = [theirs()]  # one before and one after ours: the mean evens out drift on a shared machine
    first_aten = ours(0, "--cpu-gemm", "aten", store=cache_aten)  # A0
    first = ours(0)  # A
    # the tower alone with the kernels the default run resolved to (onednn on AMD with AVX-512, else aten)
    alone_aten, alone_default = alone("aten"), alone(first["encoder"]["cpu_gemm"] or "aten")
    build = ours(1, "--compile", "on")  # B
    reuse = ours(2)  # C
    theirs_runs.append(theirs())
    theirs_whole = sum(r["whole_s"] for r in theirs_runs) / 2
    theirs_images = sum(r["seconds"] for r in theirs_runs) / 2
    return {
        "model": "ViT-B-32 (random init)", "images": n, "image_size": 224, "batch_size": batch, "workers": workers,
        "threads": threads, "device": "cpu", "precision": "fp32",
        "clip_benchmark": {"whole_s": theirs_whole, "image_loop_s": theirs_images, "runs": theirs_runs},
        "model_alone": alone_default, "model_alone_aten": alone_aten,
        "first_run_aten": first_aten, "first_run": first, "build_run": build, "reuse_run": reuse,
        "speedup_first_run_aten": theirs_whole / first_aten["whole_s"],
        "speedup_first_run": theirs_whole / first["whole_s"],
        "speedup_build_run": theirs_whole / build["whole_s"],
        "speedup_reused_tower": theirs_whole / reuse["whole_s"],
        "eager_loop_vs_model_alone": loop_ratio(first, alone_default),
        "eager_loop_vs_model_alone_aten": loop_ratio(first_aten, alone_aten),
        "how": "whole commands as processes (start-up, imports, load, text, images, metrics, writing): bench run "
               "vs scripts/clipbench_loop.py (CLIP_benchmark 1.6.2's load_open_clip, ImageFolder, "
               "zero_shot_classifier and run_classification, amp=False), mean of one run before and one after "
               "bench's; same weights, images, batch size, DataLoader workers and OMP_NUM_THREADS. Model alone: "
               "scripts/model_alone.py, the same batches preprocessed in advance through bench's backend, with "
               "the same --cpu-gemm as the loop it is compared with.",
    }


def peak_rss(work: Path, n: int, batch: int, workers: int, threads: int) -> dict:
    """Peak RSS of a cold run over n images (demo model), then the same run warm."""
    data = make_images(work / f"data-rss-{n}" / f"perf-rss-{n}", n, 32)
    cache, out = work / f"cache-rss-{n}", work / f"runs-rss-{n}"
    for p in (cache, out):
        shutil.rmtree(p, ignore_errors=True)
    shutil.copytree(demo_models(work), cache / "models")  # training the demo is not what we measure
    # a wrapper process so RUSAGE_CHILDREN covers only this run (max over the run and its loader workers)
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    cmd = [sys.executable, "-c", code, sys.executable, "-m", "bench", "-q", "run", "--model", "demo", "--dataset",
           str(data), "--cache-dir", str(cache), "--out", str(out), "--batch-size", str(batch), "--workers",
           str(workers), "--no-progress", "--labels", "dataset"]
    walls, rss = [], []
    for _ in ("cold", "warm"):
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env(threads), capture_output=True, text=True, check=False)
        if proc.returncode:
            raise SystemExit(f"RSS run failed:\n{proc.stderr[-3000:]}")
        walls.append(time.perf_counter() - start)
        rss.append(int(proc.stdout.strip().splitlines()[-1]) / 1024)
    result = json.loads(newest_result(out).read_text())
    assert result["cache"]["images_encoded"] == 0
    return {"images": n, "peak_rss_mb": rss[0], "wall_s": walls[0], "warm_wall_s": walls[1],
            "warm_total_s": result["timings"]["total_s"], "warm_speedup_process": walls[0] / walls[1]}


def demo_models(work: Path) -> Path:
    """A `models/` folder holding the demo model (trained briefly once; accuracy is not measured here)."""
    from bench.demo.train import train

    models = work / "demo-cache" / "models"
    if not (models / "demo-digits-v1").is_dir():
        train(models / "demo-digits-v1", steps=200)
    return models


def other_scripts() -> list[dict]:
    found = []
    for script in sorted((ROOT / "scripts").glob("perf_*.py")):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, str(script)], env=env(os.cpu_count() or 1), capture_output=True,
                              text=True, cwd=ROOT, check=False)
        found.append({"script": script.name, "returncode": proc.returncode, "wall_s": time.perf_counter() - start,
                      "lines": proc.stdout.strip().splitlines()[-20:],
                      "stderr_tail": proc.stderr.strip().splitlines()[-5:] if proc.returncode else []})
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-perf")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: bench's own choice)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--tiny-images", type=int, default=2000)
    p.add_argument("--vit-images", type=int, default=640,
                   help="a small ELEVATER test set's size; compiling pays off from a few hundred images on CPU")
    p.add_argument("--rss-images", type=int, nargs=2, default=(5000, 50000))
    p.add_argument("--b32-images", type=int, default=512, help="issue 19's run: ViT-B-32, 512 images, 2 workers")
    p.add_argument("--b32-workers", type=int, default=2)
    p.add_argument("--skip", nargs="*", default=[], choices=["throughput", "compile", "others", "rss"])
    a = p.parse_args()
    from bench.features import default_workers

    workers = default_workers() if a.workers is None else a.workers
    a.work.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    lines = [f"perf · {os.cpu_count()} cores · threads {a.threads} · workers {workers} · batch {a.batch_size} · CPU fp32"]
    if "throughput" not in a.skip:
        rows = [throughput(a.work, "tiny", TINY_CFG, a.tiny_images, 64, a.batch_size, workers, a.threads),
                throughput(a.work, "vit-b16", "ViT-B-16", a.vit_images, 224, a.batch_size, workers, a.threads)]
        atomic_write_json(OUT / "throughput.json", rows)
        lines.append("1. image encoding, images/s      bench (compile)   ratio (goal ≥ 1.2×)   bench eager   ratio   "
                     "clip_benchmark")
        for r in rows:
            enc = r["encoder"]
            how = f"compiled, {enc['compile_s']:.0f} s" if enc["compiled"] else "eager: auto chose"
            lines.append(f"   {r['model']:8} ({r['images']:5} imgs)   {r['bench_images_per_s']:7.1f} ({how:>15})   "
                         f"{r['speedup']:5.2f}×   {r['bench_eager_images_per_s']:11.1f}   {r['speedup_eager']:5.2f}×   "
                         f"{r['clip_benchmark_images_per_s']:14.1f}")
        lines.append("2. warm (cached) vs cold run   features   run (zeroshot)   whole process (goal ≥ 50×)")
        for r in rows:
            lines.append(f"   {r['model']:8}                   {r['warm_speedup_features']:7.0f}×   "
                         f"{r['warm_speedup_total']:13.0f}×   {r['warm_speedup_process']:.1f}×  "
                         f"({r['cold']['process_wall_s']:.1f} s → {r['warm']['process_wall_s']:.1f} s)")
    if "compile" not in a.skip:
        c = compile_once(a.work, a.b32_images, a.batch_size, a.b32_workers, a.threads)
        atomic_write_json(OUT / "compile_once.json", c)
        theirs = c["clip_benchmark"]["whole_s"]
        lines.append(f"2b. whole command vs CLIP_benchmark ({theirs:.1f} s), {c['model']}, {c['images']} imgs, "
                     f"workers {c['workers']}")
        for label, key, speedup, goal in (
                ("first run, aten eager kernels (--cpu-gemm aten)", "first_run_aten", "speedup_first_run_aten", ""),
                ("first run of the model (defaults)", "first_run", "speedup_first_run", "≥ 1.2×"),
                ("--compile on: builds + stores the tower", "build_run", "speedup_build_run", ""),
                ("next dataset, stored tower (auto)", "reuse_run", "speedup_reused_tower", "≥ 1.5×")):
            r, ratio = c[key], c[speedup]
            enc = r["encoder"]
            how = f"tower {enc['tower']}, {enc['compile_s']:.0f} s" if enc["compiled"] else f"eager {enc['cpu_gemm']}"
            lines.append(f"    {label:48} {r['whole_s']:6.1f} s  {ratio:5.2f}×  {('goal ' + goal) if goal else '':10} "
                         f"({how}; images {r['image_features_s']:.1f} s)")
        for gemm, run, tower, ratio in ((f"defaults, {c['first_run']['encoder']['cpu_gemm']}", "first_run",
                                         "model_alone", "eager_loop_vs_model_alone"),
                                        ("aten", "first_run_aten", "model_alone_aten",
                                         "eager_loop_vs_model_alone_aten")):
            if c[ratio] is not None:
                lines.append(f"    eager image loop vs model alone ({gemm}): {c[tower]['seconds']:.1f} s / "
                             f"{c[run]['image_features_s']:.1f} s = {c[ratio]:.2f} (goal ≥ 0.95)")
    if "others" not in a.skip:
        others = other_scripts()
        atomic_write_json(OUT / "others.json", others)
        lines.append("3. other perf scripts (scripts/perf_*.py)")
        for o in others or [{"script": "(none found)", "lines": [], "returncode": 0}]:
            lines.append(f"   {o['script']}" + (f"  FAILED rc={o['returncode']}: {' | '.join(o['stderr_tail'])}"
                                                  if o["returncode"] else ""))
            lines.extend(f"     {line}" for line in o["lines"])
    if "rss" not in a.skip:
        small, large = (peak_rss(a.work, n, a.batch_size, workers, a.threads) for n in a.rss_images)
        rss = {"small": small, "large": large, "rss_ratio": large["peak_rss_mb"] / small["peak_rss_mb"],
               "size_ratio": large["images"] / small["images"], "model": "demo",
               "how": "ru_maxrss of RUSAGE_CHILDREN in a wrapper process: the largest single process of the run"}
        atomic_write_json(OUT / "memory.json", rss)
        lines.append(f"4. peak RSS  {small['images']} imgs: {small['peak_rss_mb']:.0f} MB   "
                     f"{large['images']} imgs: {large['peak_rss_mb']:.0f} MB   ratio {rss['rss_ratio']:.2f} "
                     f"for {rss['size_ratio']:.0f}× the images")
        for r in (small, large):
            lines.append(f"   warm re-run, demo, {r['images']} imgs: whole process {r['warm_speedup_process']:.1f}× "
                         f"({r['wall_s']:.1f} s → {r['warm_wall_s']:.1f} s; {r['warm_total_s']:.2f} s in the run)")
    print("\n".join(lines))
    (OUT / "summary.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
