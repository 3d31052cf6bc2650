"""The one small interface every model backend implements."""

from __future__ import annotations

import contextlib
import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.errors import BenchError
from bench.models import ModelSpec


@dataclass(frozen=True)
class TextCheck:
    """How a tokenizer sees one text: token count, truncation at the context length, unknown tokens."""

    n_tokens: int
    context_length: int
    unknown: tuple[str, ...] = ()

    @property
    def truncated(self) -> bool:
        return self.n_tokens > self.context_length


def fingerprint_module(module: torch.nn.Module) -> str:
    """A content hash of every parameter and buffer: changes whenever the weights do."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {device} asked for, but no CUDA GPU is available; use --device cpu")
    return torch.device(device)


def missing_dependency(package: str, install: str) -> BenchError:
    return BenchError(f"this model needs the '{package}' package, which is not installed: run `{install}`")


class Backend(ABC):
    """Encode images and texts into one embedding space.

    Subclasses set `model` (an nn.Module), `preprocess` (a picklable PIL → tensor callable, run in
    DataLoader workers) and `context_length`, and implement `tokenize`, `_encode_images`,
    `_encode_texts` and `check_text`.
    """

    model: torch.nn.Module
    preprocess: Callable
    context_length: int

    def __init__(self, spec: ModelSpec, device: str = "cpu", cache_dir: Path | None = None):
        self.spec = spec
        self.device = resolve_device(device)
        self.cache_dir = cache_dir
        self._weights: str | None = None
        self._compiled: Callable | None = None

    def _adopt(self, model: torch.nn.Module) -> None:
        """Take a loaded model: eval mode, weights hashed on the CPU, then moved to the device."""
        self.model = model.eval()
        self._weights = fingerprint_module(self.model)
        self.model.to(self.device)

    # -- identity -----------------------------------------------------------------------------
    @property
    def weights_fingerprint(self) -> str:
        if self._weights is None:
            self._weights = fingerprint_module(self.model)
        return self._weights

    @property
    def preprocess_id(self) -> str:
        """A stable description of the image transform (sizes, interpolation, crop, mean/std).

        Memory addresses in reprs (`<function f at 0x7f...>`) are dropped: they differ per process and
        would make the feature cache miss on every new run and across torchrun ranks."""
        return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(self.preprocess))

    def identity(self) -> dict:
        """Everything that changes image features: for cache keys and result manifests."""
        return {
            "name": self.spec.name,
            "backend": self.spec.backend,
            "model": self.spec.model,
            "pretrained": self.spec.pretrained,
            "weights": self.weights_fingerprint,
            "preprocess": self.preprocess_id,
        }

    # -- encoding -----------------------------------------------------------------------------
    def autocast(self):
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast("cpu", enabled=False)

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor, compiled: bool = False) -> torch.Tensor:
        """[N, 3, H, W] preprocessed pixels → [N, D] float32 features (not normalised).

        `compiled`: run the image tower through torch.compile (built on the first such call, which
        takes seconds to minutes; errors from the compiler surface from that call)."""
        pixels = pixels.to(self.device, non_blocking=True)
        if compiled:
            # Only the batch size varies; a fully dynamic graph would also guard on "batch == image size"
            # (duck sizing) and compile again for a batch that differs.
            torch._dynamo.maybe_mark_dynamic(pixels, 0)
        encode = self._compiled_image_tower() if compiled else self._encode_images
        with self.autocast(), self._compile_config(compiled):
            out = encode(pixels)
        return out.float()

    def _compile_config(self, compiled: bool):
        """Inductor settings for compiled calls, scoped to them (compiling happens lazily inside a call).

        freezing (CPU): weights become constants that inductor pre-packs for oneDNN, which is where most
        of the CPU speed-up comes from (MKL's sgemm is the slow part of an eager ViT here). It must be
        set this way: passed as torch.compile(options=...) it was not applied (half the speed-up)."""
        if not compiled or self.device.type != "cpu":
            return contextlib.nullcontext()
        import torch._inductor.config as inductor_config

        return inductor_config.patch(freezing=True)

    def _compiled_image_tower(self) -> Callable:
        if self._compiled is None:
            self._compiled = torch.compile(self._encode_images)
        return self._compiled

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Texts → [M, D] float32 features (not normalised)."""
        with self.autocast():
            out = self._encode_texts(list(texts))
        return out.float()

    @abstractmethod
    def _encode_images(self, pixels: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _encode_texts(self, texts: list[str]) -> torch.Tensor: ...

    @abstractmethod
    def check_text(self, text: str) -> TextCheck:
        """Tokenize one text for linting: token count and unknown tokens."""
