"""GPU throughput of random-init ViT-B/16, ViT-L/14 and ViT-H/14 image towers at bf16: images/s and MFU
(part of `make perf`, which elsewhere prints one skip line).

Per architecture:
  model alone   batches of random pixels already on the GPU, eager and torch.compile'd;
  with data     `bench run --compile off` over generated JPEGs (photo-sized, 500 x 375 and 375 x 500), once
                with `--decode cpu` (PIL in DataLoader workers, pinned memory, double-buffered copies) and
                once with `--decode device` (workers read bytes; nvJPEG decodes and the resize runs batched
                on the GPU): timings.image_features_s of the measured set, after a warm-up set of two
                batches in the same process (model load, CUDA and nvJPEG start-up are not counted; the
                measured set's own DataLoader start-up is).
MFU = images/s x FLOPs per image (torch.utils.flop_counter on one image, 2 per multiply-add) / the GPU's
dense bf16 peak (a table of known GPUs, or --peak-tflops). Without CUDA it prints one line and exits 0,
unless --device cpu is given: a dry run of the same code (`--arch tiny --device cpu`, tested).
Figures go to results/perf/gpu.json (gpu-dryrun.json for a CPU dry run).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
from perf import OUT, TINY_CFG, env, save_model  # noqa: E402

from bench.cache import atomic_write_json  # noqa: E402

ARCHS = ("ViT-B-16", "ViT-L-14", "ViT-H-14")
DECODES = ("cpu", "device")
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


def _jpeg(args: tuple[int, int, int, int]) -> bytes:
    """One photo-like JPEG: smooth colour blobs plus noise (so it neither compresses to nothing nor is
    all noise), landscape or portrait."""
    seed, h, w, cls = args
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8))
    arr = np.asarray(small.resize((w, h), Image.BICUBIC)).astype(np.int16)
    arr[..., cls % 3] += 40
    arr += rng.integers(-10, 10, (h, w, 3), dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_jpegs(folder: Path, n: int, long_side: int, classes: int = 10) -> Path:
    """An ELEVATER-layout dataset of `n` JPEGs, long side `long_side`, 4:3 both ways (made once)."""
    if (folder / "test").is_dir() and sum(1 for _ in (folder / "test").rglob("*.jpg")) == n:
        return folder
    short = long_side * 3 // 4
    jobs = [(i, *((short, long_side) if i % 2 else (long_side, short)), i % classes) for i in range(n)]
    for c in range(classes):
        (folder / "test" / f"{c:02d}").mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for (i, _, _, c), raw in zip(jobs, pool.map(_jpeg, jobs, chunksize=64), strict=True):
            (folder / "test" / f"{c:02d}" / f"{i:06d}.jpg").write_bytes(raw)
    (folder / "label.txt").write_text("".join(f"class {c}\n" for c in range(classes)))
    return folder


def with_data(work: Path, name: str, model_dir: Path, warm: Path, data: Path, images: int, batch: int,
              device: str, decode: str) -> dict:
    yaml = work / f"{name}.yaml"
    yaml.write_text(f"name: perf-gpu-{name}\nbackend: open_clip\nmodel: local-dir:{model_dir}\nlanguage: en\n")
    cache, out = work / f"cache-{name}-{decode}", work / f"runs-{name}-{decode}"
    subprocess.run(["rm", "-rf", str(cache), str(out)], check=True)
    cmd = [sys.executable, "-m", "bench", "-q", "run", "--model", str(yaml), "--dataset", str(warm), "--dataset",
           str(data), "--cache-dir",
           str(cache), "--out", str(out), "--batch-size", str(batch), "--device", device, "--no-progress",
           "--labels", "dataset", "--prompts", "simple-en", "--compile", "off", "--decode", decode]
    proc = subprocess.run(cmd, env=env(os.cpu_count() or 1), capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"bench run failed:\n{proc.stderr[-3000:]}")
    result = json.loads(next((out / f"perf-gpu-{name}").glob(f"{data.name}/zeroshot*.json")).read_text())
    seconds = result["timings"]["image_features_s"]
    return {"decode": decode, "images": images, "encoder": result["encoder"], "image_features_s": seconds,
            "images_per_s": images / seconds}


def measure(arch: str, a: argparse.Namespace, warm: Path, data: Path, peak: float | None) -> dict:
    import open_clip

    cfg = TINY_CFG if arch == "tiny" else arch
    size = TINY_CFG["vision_cfg"]["image_size"] if arch == "tiny" else open_clip.get_model_config(arch)[
        "vision_cfg"]["image_size"]
    model_dir = save_model(a.work / f"model-{arch}", cfg)
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    model = model.eval().to(a.device)
    flops = flops_per_image(model, size, a.device)
    mfu = (lambda ips: ips * flops / (peak * 1e12) if peak else None)  # noqa: E731
    alone = {}
    for compiled in (False, True) if a.compiled else (False,):
        ips, warmup = model_alone(model, size, a.batch_size, a.steps, a.device, compiled)
        alone["compiled" if compiled else "eager"] = {"images_per_s": ips, "warmup_s": warmup,
                                                      "tflops": ips * flops / 1e12, "mfu": mfu(ips)}
    del model
    if a.device == "cuda":
        torch.cuda.empty_cache()
    pipeline = [with_data(a.work, arch, model_dir, warm, data, a.images, a.batch_size, a.device, d) for d in DECODES]
    for r in pipeline:
        r["mfu"] = mfu(r["images_per_s"])
        r["of_model_alone"] = r["images_per_s"] / alone["eager"]["images_per_s"]
    return {"arch": arch, "image_size": size, "gflops_per_image": flops / 1e9, "model_alone": alone,
            "with_data": pipeline}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default=",".join(ARCHS), help="open_clip architectures, comma-separated, or 'tiny' "
                                                            "for a dry run")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--images", type=int, default=5000, help="generated JPEGs for the with-data figures")
    p.add_argument("--long-side", type=int, default=500, help="the generated JPEGs' long side in pixels")
    p.add_argument("--no-compiled", dest="compiled", action="store_false",
                   help="skip the compiled model-alone figure (compiling a ViT-H takes minutes)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not in the table")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench-perf-gpu"))
    p.add_argument("--out", type=Path, default=OUT, help="folder for gpu.json")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        print("perf_gpu: skipped, no CUDA GPU here (run it on a GPU machine; `--device cpu --arch tiny` dry-runs it)")
        return 0
    # the data first: its process pool forks, which is safest before this process starts CUDA
    data = make_jpegs(a.work / f"data-{a.images}-{a.long_side}" / "perf-gpu", a.images, a.long_side)
    warm = make_jpegs(a.work / f"data-{2 * a.batch_size}-{a.long_side}" / "perf-gpu-warm", 2 * a.batch_size,
                      a.long_side)
    name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    peak = peak_tflops(name, a.peak_tflops) if a.device == "cuda" else None
    report = {"device": name, "precision": "bf16 autocast" if a.device == "cuda" else "fp32",
              "batch_size": a.batch_size, "peak_tflops": peak, "images": a.images, "long_side": a.long_side,
              "archs": [],
              "how": "model alone: pixels on the device, 3 warm-up batches, then --steps batches timed with a "
                     "synchronize; with data: `bench run --compile off` image_features_s over generated JPEGs "
                     "after a two-batch warm-up set, --decode cpu and device; FLOPs by torch.utils.flop_counter "
                     "(2 per multiply-add) on one image"}
    a.out.mkdir(parents=True, exist_ok=True)
    for arch in a.arch.split(","):  # written after each architecture: a run cut short keeps what it measured
        report["archs"].append(measure(arch, a, warm, data, peak))
        atomic_write_json(a.out / ("gpu.json" if a.device == "cuda" else "gpu-dryrun.json"), report)
    rows = report["archs"]
    fmt = lambda m: f"{m:6.1%}" if m is not None else "   n/a"  # noqa: E731
    print(f"perf_gpu · {name} · {report['precision']} · batch {a.batch_size} · peak {peak} TFLOP/s · "
          f"{a.images} JPEGs, long side {a.long_side}")
    print(f"  {'arch':10} {'GFLOP/img':>9}  {'run':24} {'img/s':>9}  {'MFU':>6}  {'of alone':>8}")
    for r in rows:
        lines = [(f"alone, {k}", m["images_per_s"], m["mfu"], None) for k, m in r["model_alone"].items()]
        lines += [(f"bench run, decode {d['decode']}", d["images_per_s"], d["mfu"], d["of_model_alone"])
                  for d in r["with_data"]]
        for n, (label, ips, m, of) in enumerate(lines):
            head = f"{r['arch']:10} {r['gflops_per_image']:9.2f}" if n == 0 else " " * 20
            print(f"  {head}  {label:24} {ips:9.1f}  {fmt(m)}  {f'{of:8.0%}' if of is not None else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
