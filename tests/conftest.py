"""Shared offline fixtures: a trained demo model, the generated digits dataset, a CLI runner."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEMO_TEST_STEPS = 200  # fewer steps than the real demo: fast, still far above chance


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> Path:
    """A cache dir holding a trained demo model (trained once per test session)."""
    from bench.demo.train import train

    cache = tmp_path_factory.mktemp("cache-template")
    train(cache / "models" / "demo-digits-v1", steps=DEMO_TEST_STEPS)
    return cache


@pytest.fixture
def cache_dir(demo_cache, tmp_path) -> Path:
    """A fresh per-test cache dir that already has the demo model (no features cached)."""
    cache = tmp_path / "cache"
    shutil.copytree(demo_cache / "models", cache / "models")
    return cache


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory) -> Path:
    """A data root with the generated digits dataset (ELEVATER-CN layout)."""
    from bench.datasets.digits import prepare_digits

    root = tmp_path_factory.mktemp("data")
    prepare_digits(root / "digits")
    return root


@pytest.fixture
def bench_cli(capsys):
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""
    from bench.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def count_images(monkeypatch) -> dict:
    """Counts images passed through any backend's image encoder: `count_images["n"]`."""
    from bench.backends.base import Backend

    seen = {"n": 0}
    original = Backend.encode_images

    def counting(self, pixels, compiled=False):
        seen["n"] += pixels.shape[0]
        return original(self, pixels, compiled)

    monkeypatch.setattr(Backend, "encode_images", counting)
    return seen
