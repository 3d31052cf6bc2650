"""Timed flushes: a run killed part-way through a shard keeps what it encoded, not only finished shards."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import make_image_dataset, make_open_clip_dir, write_model_yaml  # noqa: E402

from bench.backends import load_backend  # noqa: E402
from bench.backends.base import Backend  # noqa: E402
from bench.cache import FeatureCache  # noqa: E402
from bench.datasets import elevater  # noqa: E402
from bench.errors import BenchError  # noqa: E402
from bench.features import feature_key, image_features  # noqa: E402
from bench.models import resolve_model  # noqa: E402

BATCH = 2


@pytest.fixture
def setup(tmp_path):
    folder = make_image_dataset(tmp_path / "data" / "toy", n_classes=3, per_class=4)  # 12 test images
    data = elevater.load_split(elevater.spec_for_folder(folder), folder, "test")
    make_open_clip_dir(tmp_path / "oc")
    yml = write_model_yaml(tmp_path / "oc.yaml", name="oc", backend="open_clip", model=f"local-dir:{tmp_path / 'oc'}",
                           language="en")
    return load_backend(resolve_model(str(yml))), data


def encode(backend, data, cache):
    return image_features(backend, data, cache, batch_size=BATCH, workers=0, progress=False)


def die_after(monkeypatch, batches: int) -> None:
    """The encoder raises (like Ctrl-C) on batch number `batches` + 1."""
    original, seen = Backend.encode_images, {"n": 0}

    def dying(self, pixels, compiled=False):
        seen["n"] += 1
        if seen["n"] > batches:
            raise KeyboardInterrupt
        return original(self, pixels, compiled)

    monkeypatch.setattr(Backend, "encode_images", dying)


def test_a_kill_inside_the_only_shard_resumes_from_the_last_flush(setup, tmp_path, monkeypatch):
    backend, data = setup
    n = len(data)
    cold = encode(backend, data, FeatureCache(tmp_path / "cold"))
    monkeypatch.setenv("BENCH_FLUSH_SECONDS", "0")  # flush after every batch
    cache = FeatureCache(tmp_path / "cache")  # default shard size: the whole set is one unfinished shard
    with monkeypatch.context() as m:
        die_after(m, 3)
        with pytest.raises(KeyboardInterrupt):
            encode(backend, data, cache)
    assert not cache.is_complete(feature_key(backend, data))
    resumed = encode(backend, data, cache)
    assert resumed.n_encoded == n - 3 * BATCH  # only what the killed run had not encoded
    assert torch.equal(resumed.indices, cold.indices)
    assert torch.allclose(resumed.features, cold.features, atol=1e-6)
    # the finished shard replaces its partial file; a third run encodes nothing
    entry = cache.entry_dir(feature_key(backend, data))
    assert sorted(p.name for p in entry.iterdir()) == ["index.json", "shard-00000.json", "shard-00000.safetensors"]
    assert encode(backend, data, cache).n_encoded == 0


def test_flush_interval_is_time_based(setup, tmp_path, monkeypatch):
    """With a long interval nothing is flushed before the shard is done: the kill loses the shard."""
    backend, data = setup
    monkeypatch.setenv("BENCH_FLUSH_SECONDS", "3600")
    cache = FeatureCache(tmp_path / "cache")
    with monkeypatch.context() as m:
        die_after(m, 3)
        with pytest.raises(KeyboardInterrupt):
            encode(backend, data, cache)
    assert encode(backend, data, cache).n_encoded == len(data)


def test_a_damaged_partial_is_re_encoded(setup, tmp_path, monkeypatch):
    backend, data = setup
    monkeypatch.setenv("BENCH_FLUSH_SECONDS", "0")
    cache = FeatureCache(tmp_path / "cache")
    with monkeypatch.context() as m:
        die_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            encode(backend, data, cache)
    (partial,) = cache.entry_dir(feature_key(backend, data)).glob("*.partial.safetensors")
    blob = bytearray(partial.read_bytes())
    blob[-3] ^= 0xFF
    partial.write_bytes(bytes(blob))
    assert encode(backend, data, cache).n_encoded == len(data)


def test_a_bad_flush_interval_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("BENCH_FLUSH_SECONDS", "soon")
    with pytest.raises(BenchError, match="BENCH_FLUSH_SECONDS"):
        FeatureCache(tmp_path)
