"""GPU throughput of a random-init ViT-H/14 image tower at bf16, in images/s and as MFU (part of `make perf`).

Two figures, as issue 9 asks:
  model alone   batches of random pixels already on the GPU, eager and torch.compile'd;
  with data     `bench run` over generated PNGs (decode + preprocess in DataLoader workers, pinned
                memory, non-blocking copies, cache writes), timings.image_features_s.
MFU = images/s x FLOPs per image (counted by torch.utils.flop_counter on one image) / the GPU's peak dense
bf16 FLOP/s (a table of known GPUs, or --peak-tflops). Without CUDA it prints one line and exits 0, unless
--device cpu is given (a dry run of the same code on a small model: `--arch tiny --device cpu`).
Figures go to results/perf/gpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
from perf import OUT, TINY_CFG, env, make_images, save_model  # noqa: E402

from bench.cache import atomic_write_json  # noqa: E402

# Dense bf16 peak (no sparsity), TFLOP/s, from the vendors' data sheets; matched on the device name.
PEAK_BF16_TFLOPS = {"H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0,
                    "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    hits = [v for k, v in PEAK_BF16_TFLOPS.items() if k.lower() in name.lower()]
    return max(hits) if hits else None


def flops_per_image(model: torch.nn.Module, size: int, device: str) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, size, size, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.encode_image(x)
    return float(counter.get_total_flops())


def model_alone(model, size: int, batch: int, steps: int, device: str, compiled: bool) -> tuple[float, float]:
    """(images/s, seconds spent compiling/warming up) with pixels already on the device."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    fn = torch.compile(model.encode_image) if compiled else model.encode_image
    x = torch.randn(batch, 3, size, size, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
        start = time.perf_counter()
        for _ in range(3):
            fn(x)
        sync()
        warmup = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps):
            fn(x)
        sync()
    return batch * steps / (time.perf_counter() - start), warmup


def with_data(work: Path, model_dir: Path, images: int, size: int, batch: int, device: str, compile: str) -> dict:
    data = make_images(work / f"data-gpu-{size}-{images}" / f"perf-gpu-{size}", images, size)
    yaml = work / "gpu.yaml"
    yaml.write_text(f"name: perf-gpu\nbackend: open_clip\nmodel: local-dir:{model_dir}\nlanguage: en\n")
    cache, out = work / f"cache-gpu-{compile}", work / f"runs-gpu-{compile}"
    subprocess.run(["rm", "-rf", str(cache), str(out)], check=True)
    cmd = [sys.executable, "-m", "bench", "-q", "run", "--model", str(yaml), "--dataset", str(data), "--cache-dir",
           str(cache), "--out", str(out), "--batch-size", str(batch), "--device", device, "--no-progress",
           "--labels", "dataset", "--prompts", "simple-en", "--compile", compile]
    proc = subprocess.run(cmd, env=env(os.cpu_count() or 1), capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"bench run failed:\n{proc.stderr[-3000:]}")
    result = json.loads(max((p for p in out.rglob("zeroshot*.json") if not p.name.endswith(".predictions.json")),
                            key=lambda p: p.stat().st_mtime_ns).read_text())  # results are named by experiment
    seconds, enc = result["timings"]["image_features_s"], result["encoder"]
    # the first compiled call compiles and encodes one batch: the rest is the steady state
    steady = (images - batch) / (seconds - enc["compile_s"]) if enc["compiled"] and images > batch else None
    return {"images": images, "compile": compile, "encoder": enc, "image_features_s": seconds,
            "images_per_s": images / seconds, "images_per_s_after_compile": steady}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="ViT-H-14", help="open_clip architecture, or 'tiny' for a dry run")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--images", type=int, default=5000, help="generated images for the with-data figure")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not in the table")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench-perf-gpu"))
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        print("perf_gpu: skipped, no CUDA GPU here (run it on a GPU machine; `--device cpu --arch tiny` dry-runs it)")
        return 0
    import open_clip

    arch = TINY_CFG if a.arch == "tiny" else a.arch
    size = TINY_CFG["vision_cfg"]["image_size"] if a.arch == "tiny" else open_clip.get_model_config(a.arch)[
        "vision_cfg"]["image_size"]
    model_dir = save_model(a.work / f"model-{a.arch}", arch)
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    model = model.eval().to(a.device)
    name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    flops = flops_per_image(model, size, a.device)
    peak = peak_tflops(name, a.peak_tflops) if a.device == "cuda" else None
    rows = {}
    for compiled in (False, True):
        ips, warm = model_alone(model, size, a.batch_size, a.steps, a.device, compiled)
        rows["compiled" if compiled else "eager"] = {
            "images_per_s": ips, "warmup_s": warm, "tflops": ips * flops / 1e12,
            "mfu": ips * flops / (peak * 1e12) if peak else None}
    pipeline = [with_data(a.work, model_dir, a.images, size, a.batch_size, a.device, c) for c in ("off", "on")]
    for r in pipeline:
        best = r["images_per_s_after_compile"] or r["images_per_s"]
        r["mfu"] = best * flops / (peak * 1e12) if peak else None
    report = {"device": name, "arch": a.arch, "precision": "bf16 autocast" if a.device == "cuda" else "fp32",
              "batch_size": a.batch_size, "gflops_per_image": flops / 1e9, "peak_tflops": peak,
              "model_alone": rows, "with_data": pipeline,
              "how": "model alone: pixels on the device, 3 warm-up batches, then --steps batches timed with a "
                     "synchronize; with data: `bench run` image_features_s over generated PNGs; "
                     "FLOPs by torch.utils.flop_counter (2 per multiply-add) on one image"}
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT / ("gpu.json" if a.device == "cuda" else "gpu-dryrun.json"), report)
    fmt = lambda m: f"{m:.1%}" if m is not None else "n/a"  # noqa: E731
    print(f"perf_gpu · {name} · {a.arch} · {report['precision']} · {flops / 1e9:.1f} GFLOP/image · peak {peak}")
    for k, r in rows.items():
        print(f"  model alone, {k:8}  {r['images_per_s']:9.1f} img/s  {r['tflops']:7.1f} TFLOP/s  MFU {fmt(r['mfu'])}")
    for r in pipeline:
        after = r["images_per_s_after_compile"]
        print(f"  with data, compile {r['compile']:3}  {r['images_per_s']:9.1f} img/s"
              + (f" ({after:.1f} after compiling)" if after else "") + f"  MFU {fmt(r['mfu'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
