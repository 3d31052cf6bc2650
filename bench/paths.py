"""Where things live: shipped resources, data root, cache and output defaults."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def resource_root() -> Path:
    """The folder holding `prompts/` and `label_translations/` (the repo root; overridable)."""
    env = os.environ.get("BENCH_RESOURCES")
    return Path(env) if env else PACKAGE_DIR.parent


def prompts_dir() -> Path:
    return resource_root() / "prompts"


def labels_dir() -> Path:
    return resource_root() / "label_translations"


def default_data_root() -> Path:
    return Path(os.environ.get("BENCH_DATA", "data"))


def default_cache_dir() -> Path:
    env = os.environ.get("BENCH_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "bench"
