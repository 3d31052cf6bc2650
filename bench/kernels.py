"""Eager CPU kernels: fp32 linear layers through oneDNN instead of aten's BLAS.

aten runs an fp32 `linear` as a BLAS sgemm (MKL in the PyTorch wheels). MKL picks its fast code paths by
CPU vendor; on an AMD EPYC it reached 167 GFLOP/s on a ViT-B's MLP shape, where oneDNN's
`mkldnn._linear_pointwise` (the kernel inductor itself emits for frozen CPU graphs) reached 318 GFLOP/s.
A ViT spends ~85% of its eager time in those GEMMs, so routing them through oneDNN made eager encoding
1.7x faster there with nothing to build. The results are the same fp32 products summed in another order:
features agree with aten's to float32 rounding (~1e-6 relative), as a compiled tower's do.

That EPYC had AVX-512. On an AVX2-only AMD EPYC the two reached the same GFLOP/s on that shape (110-129
against 112) and a ViT-B-32 batch took as long either way (oneDNN 5.8-6.8 s, aten 6.1-6.8 s in repeated
runs on a noisy machine), so `--cpu-gemm auto` (the default) takes oneDNN only on AMD CPUs with AVX-512;
Intel CPUs, where MKL takes its own fast paths, and everything else keep aten (not measured on Intel).
`--cpu-gemm onednn|aten` (bench run, study, prompts eval) forces one, e.g. aten to compare bit for bit with
another tool's eager run.

How: a TorchFunctionMode sees every `F.linear` (nn.Linear, Hugging Face layers). nn.MultiheadAttention's
fused fast path would hide its projections inside one C++ op; with a function mode active it takes its
Python path instead, and a TorchDispatchMode scoped to that call catches the `aten.linear` inside it (a
function mode is switched off while its own handler runs, so it cannot see them itself).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

log = logging.getLogger(__name__)

CPU_GEMMS = ("auto", "onednn", "aten")
_aten = torch.ops.aten


def _routable(x: object, w: object, b: object) -> bool:
    """Whether oneDNN computes this linear the way aten would: dense fp32 CPU tensors, a [out, in] weight."""
    tensors = [t for t in (x, w, b) if t is not None]
    return (all(isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.device.type == "cpu"
                and t.layout == torch.strided for t in tensors)
            and w.dim() == 2 and w.is_contiguous() and x.dim() >= 1 and x.shape[-1] == w.shape[1]
            and (b is None or (b.dim() == 1 and b.shape[0] == w.shape[0] and b.is_contiguous())))


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), w, b, "none", [], "")


def _args(args: tuple, kwargs: dict) -> tuple:
    return args[0], args[1], args[2] if len(args) > 2 else kwargs.get("bias")


class _InnerLinears(TorchDispatchMode):
    """The aten.linear calls inside one Python-level function (MultiheadAttention's projections)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _aten.linear.default:
            x, w, b = _args(args, kwargs)
            if _routable(x, w, b):
                return _linear(x, w, b)
        return func(*args, **kwargs)


class _OneDNNLinears(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, w, b = _args(args, kwargs)
            if _routable(x, w, b):
                return _linear(x, w, b)
        elif func is F.multi_head_attention_forward:
            with _InnerLinears():
                return func(*args, **kwargs)
        return func(*args, **kwargs)


@functools.cache  # the build's oneDNN does not change under a running process
def onednn_works() -> bool:
    """Whether this torch build has oneDNN's linear kernel and it computes a linear as aten does (checked
    once per process on a small case; a build without it falls back to aten)."""
    try:
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*s, generator=gen) for s in ((3, 5, 64), (48, 64), (48,)))
        with torch.inference_mode():
            got, want = _linear(x, w, b), F.linear(x, w, b)
        return bool(torch.allclose(got, want, rtol=1e-4, atol=1e-4))
    except (RuntimeError, AttributeError, NotImplementedError) as exc:
        log.debug("oneDNN linear unavailable (%s); CPU linears stay on aten", exc)
        return False


@functools.cache  # read once: `auto` is resolved for every batch
def _cpu_vendor() -> str:
    """The CPU's vendor id (AuthenticAMD, GenuineIntel, ...) from /proc/cpuinfo; "" where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def auto_choice(vendor: str | None = None, capability: str | None = None) -> str:
    """`--cpu-gemm auto`: onednn on AMD CPUs with AVX-512 (measured 1.6-1.9x faster than MKL there), aten
    elsewhere (level or slower on AVX2-only AMD; MKL's home ground on Intel)."""
    vendor = _cpu_vendor() if vendor is None else vendor
    return "onednn" if vendor == "AuthenticAMD" and has_avx512(capability) else "aten"


def has_avx512(capability: str | None = None) -> bool:
    """Whether torch's CPU kernels run AVX-512 here (or in `capability`, as torch names it), the CPUs on
    which oneDNN's linears and compiled towers were measured to beat MKL's eager kernels."""
    capability = torch.backends.cpu.get_cpu_capability() if capability is None else capability
    return capability.startswith("AVX512")


def resolve(choice: str, device: torch.device) -> str | None:
    """The GEMM kernels eager encoding uses on `device` for `--cpu-gemm choice`: onednn | aten, or None
    off the CPU (a GPU's linears are cuBLAS either way)."""
    if choice not in CPU_GEMMS:
        from bench.errors import BenchError

        raise BenchError(f"--cpu-gemm must be one of {', '.join(CPU_GEMMS)}, got '{choice}'")
    if device.type != "cpu":
        return None
    if choice == "auto":
        choice = auto_choice()
    return "onednn" if choice == "onednn" and onednn_works() else "aten"


@contextlib.contextmanager
def using(gemm: str | None) -> Iterator[None]:
    """Run the enclosed eager model code with `gemm`'s linear kernels (see resolve)."""
    if gemm != "onednn":
        yield
        return
    with _OneDNNLinears():
        yield
