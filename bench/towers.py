"""Compiled image towers, built once per model and reused: in memory across the datasets of one run, and
on disk (AOTInductor packages under <cache-dir>/compiled/) across runs.

A package is keyed by everything that changes the compiled code or its constants: the model's identity
(weights hash, transform, precision), bench's code that builds it (this module included), the library and
torch versions, the device kind, the CPU's vector ISA and instruction flags, the OpenMP thread count, the
GPU's architecture, and the input's image shape and dtype. Only the batch dimension is dynamic. On CPU
the package is built with inductor's freezing (weights as constants pre-packed for oneDNN: most of the
CPU speed-up), which AOTInductor packages along with the code.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bench.cache import content_key

if TYPE_CHECKING:
    from bench.backends.base import Backend

MAX_BATCH = 1 << 16  # the dynamic batch dimension's upper bound (export needs one)


@functools.cache  # the CPU does not change under a running process
def cpu_features() -> str:
    """The CPU's instruction-set flags, hashed. Inductor builds its C++ with -march=native, so a package can
    use any instruction this CPU has: two "AVX512" CPUs (Skylake-X, Zen 4) must not share one, or the
    second dies on an illegal instruction that no fallback can catch."""
    import platform

    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    flags = next((line.split(":", 1)[1] for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    return content_key({"machine": platform.machine(), "flags": sorted(set(flags.split())),
                        "fallback": platform.processor() if not flags else ""})


def hardware(device: torch.device | None = None) -> dict:
    """What compiled code is specific to besides torch: the CPU's ISA and flags, the GPU's architecture."""
    gpu = None
    if device is not None and device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        gpu = f"sm_{major}{minor}"
    return {"cpu_isa": torch.backends.cpu.get_cpu_capability(), "cpu_features": cpu_features(), "gpu_arch": gpu}


def tower_key(backend: Backend, shape: tuple[int, ...], dtype: torch.dtype) -> str:
    """The stored tower's key for `backend` fed [N, *shape] pixels of `dtype`."""
    from bench.backends.base import _version

    hw = hardware(backend.device)
    return content_key({
        "kind": "compiled-image-tower", "model": backend.identity(),
        "code": backend._code_fingerprint(), "builder": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "package": _version(backend.PACKAGE) if backend.PACKAGE else None,
        "torch": torch.__version__, "device": backend.device.type, **hw,
        # CPU kernels bake the OpenMP thread count in (num_threads(N)): a package built on 1 thread (e.g.
        # under torchrun) would run every later 2-core run on one
        "threads": torch.get_num_threads() if backend.device.type == "cpu" else None,
        "shape": list(shape), "dtype": str(dtype), "autocast": backend.autocast_id()})


def store_dir(cache_dir: Path | None) -> Path | None:
    return Path(cache_dir) / "compiled" if cache_dir is not None else None


class _Tower(torch.nn.Module):
    """The backend's image encoding as a module, so export lifts the model's weights as parameters."""

    def __init__(self, backend: Backend):
        super().__init__()
        self.model = backend.model  # the same module _encode_images reads
        self.encode = backend._encode_images

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encode(pixels)


def build_package(backend: Backend, example: torch.Tensor, path: Path) -> None:
    """Export the image tower with a dynamic batch dimension and AOT-compile it into `path`, atomically
    (a temporary file beside it, then a rename: a concurrent run reads either nothing or a whole one)."""
    import torch._inductor

    path.parent.mkdir(parents=True, exist_ok=True)
    # unique across processes and hosts sharing the cache; aoti wants the .pt2 suffix
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp.pt2")
    configs = {"freezing": True} if backend.device.type == "cpu" else {}
    try:
        # export traces outside inference mode (inference tensors cannot be traced through)
        with torch.inference_mode(False), torch.no_grad(), backend.autocast():
            x = example.detach().clone()
            batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
            program = torch.export.export(_Tower(backend).eval(), (x,), dynamic_shapes=({0: batch},))
            torch._inductor.aoti_compile_and_package(program, package_path=str(tmp), inductor_configs=configs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_package(path: Path, device: torch.device) -> Callable:
    """A stored package, loaded for `device`."""
    import torch._inductor

    index = device.index if device.type == "cuda" and device.index is not None else -1
    # cpp_extension warns "No CUDA runtime is found" on every CPU load: noise, not a problem with the package
    quiet = logging.getLogger("torch.utils.cpp_extension")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return torch._inductor.aoti_load_package(str(path), device_index=index)
    finally:
        quiet.setLevel(level)


def agrees(got: torch.Tensor, want: torch.Tensor, device: str) -> bool:
    """Whether a stored tower's features match eager ones: float32 rounding on CPU (observed ~1e-6
    relative), half-precision rounding under GPU autocast."""
    got, want = got.float(), want.float()
    if got.shape != want.shape or not torch.isfinite(got).all():
        return False
    rtol = 1e-3 if device == "cpu" else 5e-2
    return bool(torch.allclose(got, want, rtol=rtol, atol=rtol * float(want.abs().max())))
