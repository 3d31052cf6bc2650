"""Backends are looked up by name from this table (lazy "module:Class" entries), never branched on."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.backends.base import Backend
    from bench.models import ModelSpec

BACKENDS: dict[str, str] = {
    "open_clip": "bench.backends.openclip:OpenClipBackend",
    "transformers": "bench.backends.hf:TransformersBackend",
    "cn_clip": "bench.backends.cnclip:CnClipBackend",
    "demo": "bench.demo.backend:DemoBackend",
}


def load_backend(spec: ModelSpec, device: str = "cpu", cache_dir=None) -> Backend:
    """Instantiate the backend named by `spec.backend` (imports its optional dependency lazily)."""
    module_name, cls_name = BACKENDS[spec.backend].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(spec, device=device, cache_dir=cache_dir)
