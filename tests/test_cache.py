"""The image-feature cache: hits equal fresh encodes; anything that changes features changes the key."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from identity_helpers import latest_result
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import make_image_dataset, make_open_clip_dir, write_model_yaml  # noqa: E402

from bench.backends import load_backend  # noqa: E402
from bench.cache import FeatureCache  # noqa: E402
from bench.datasets import elevater  # noqa: E402
from bench.features import feature_key, image_features  # noqa: E402
from bench.models import resolve_model  # noqa: E402


@pytest.fixture
def toy(tmp_path):
    data = make_image_dataset(tmp_path / "data" / "toy", per_class=3)
    spec = elevater.spec_for_folder(data)
    return data, spec


def _backend(tmp_path, name="oc", seed=0, preprocess="model"):
    model_dir = tmp_path / f"oc-{seed}"
    if not model_dir.exists():
        make_open_clip_dir(model_dir, seed=seed)
    yml = write_model_yaml(tmp_path / f"{name}.yaml", name=name, backend="open_clip", model=f"local-dir:{model_dir}",
                           language="en", preprocess=preprocess)
    return load_backend(resolve_model(str(yml)))


def test_cache_hit_equals_fresh_encode(tmp_path, toy):
    data_dir, spec = toy
    data = elevater.load_split(spec, data_dir, "test")
    backend = _backend(tmp_path)
    cache = FeatureCache(tmp_path / "cache", shard_size=4)  # several shards
    cold = image_features(backend, data, cache, batch_size=5, workers=0, progress=False)
    assert cold.n_encoded == len(data) == 9
    warm = image_features(backend, data, cache, batch_size=5, workers=0, progress=False)
    assert warm.n_encoded == 0
    assert torch.equal(warm.features, cold.features)
    assert torch.equal(warm.indices, cold.indices)
    fresh = image_features(backend, data, FeatureCache(tmp_path / "other"), batch_size=9, workers=0, progress=False)
    assert torch.allclose(fresh.features, cold.features, atol=1e-5)


def test_weights_change_invalidates(tmp_path, toy):
    data_dir, spec = toy
    data = elevater.load_split(spec, data_dir, "test")
    a = _backend(tmp_path, seed=0)
    b = _backend(tmp_path, name="oc-b", seed=1)
    assert a.weights_fingerprint != b.weights_fingerprint
    assert feature_key(a, data) != feature_key(b, data)
    # the same weights under another name/file still hash the same weights
    assert _backend(tmp_path, name="again", seed=0).weights_fingerprint == a.weights_fingerprint


def test_weights_file_edit_invalidates(tmp_path, toy):
    from safetensors.torch import load_file, save_file

    data_dir, spec = toy
    data = elevater.load_split(spec, data_dir, "test")
    before = feature_key(_backend(tmp_path, seed=0), data)
    path = tmp_path / "oc-0" / "open_clip_model.safetensors"
    sd = load_file(path)
    key = next(k for k in sd if k.startswith("visual"))
    sd[key] = sd[key] + 1e-3
    save_file(sd, path)
    assert feature_key(_backend(tmp_path, seed=0), data) != before


def test_preprocess_change_invalidates(tmp_path, toy):
    data_dir, spec = toy
    data = elevater.load_split(spec, data_dir, "test")
    a = _backend(tmp_path, preprocess="model")
    b = _backend(tmp_path, name="oc-squash", preprocess="cn-clip")
    assert a.preprocess_id != b.preprocess_id
    assert feature_key(a, data) != feature_key(b, data)


def test_single_image_change_invalidates(tmp_path, toy):
    data_dir, spec = toy
    before = elevater.load_split(spec, data_dir, "test")
    img = data_dir / "test" / "001" / "img1.png"
    arr = np.asarray(Image.open(img)).copy()
    arr[0, 0] = 255 - arr[0, 0]
    Image.fromarray(arr).save(img)
    os.utime(img, ns=(1, 1_000_000_000))
    after = elevater.load_split(spec, data_dir, "test")
    assert after.fingerprint != before.fingerprint
    backend = _backend(tmp_path)
    assert feature_key(backend, after) != feature_key(backend, before)


def test_second_run_with_other_prompts_or_labels_encodes_no_image(tmp_path, digits_root, cache_dir, bench_cli,
                                                                  count_images):
    calls = count_images
    common = ["--model", "demo", "--dataset", "digits", "--data-root", digits_root, "--cache-dir", cache_dir,
              "--workers", "0", "--limit", "60"]
    assert bench_cli("run", *common, "--out", tmp_path / "a")[0] == 0
    assert calls["n"] == 60
    assert bench_cli("run", *common, "--out", tmp_path / "b", "--prompts", "simple-zh")[0] == 0
    assert bench_cli("run", *common, "--out", tmp_path / "c", "--labels", "numerals")[0] == 0
    assert calls["n"] == 60
    res = json.loads(latest_result(tmp_path / "c" / "demo" / "digits", "zeroshot").read_text())
    assert res["label_variant"] == "numerals"
    assert res["cache"]["images_encoded"] == 0


def test_interrupted_shards_are_reused(tmp_path, toy, monkeypatch):
    """A run that dies part-way keeps its finished shards; the next run encodes only the rest."""
    from bench.backends.base import Backend

    data_dir, spec = toy
    data = elevater.load_split(spec, data_dir, "test")
    backend = _backend(tmp_path)
    cache = FeatureCache(tmp_path / "cache", shard_size=4)
    original = Backend.encode_images
    seen = {"n": 0}

    def dying(self, pixels, compiled=False):
        seen["n"] += 1
        if seen["n"] == 3:
            raise KeyboardInterrupt
        return original(self, pixels, compiled)

    monkeypatch.setattr(Backend, "encode_images", dying)
    with pytest.raises(KeyboardInterrupt):
        image_features(backend, data, cache, batch_size=2, workers=0, progress=False)
    monkeypatch.setattr(Backend, "encode_images", original)
    assert not cache.is_complete(feature_key(backend, data))
    resumed = image_features(backend, data, cache, batch_size=2, workers=0, progress=False)
    assert resumed.n_encoded == 9 - 4  # shard 0 (4 images) survived
    full = image_features(backend, data, FeatureCache(tmp_path / "c2", shard_size=4), batch_size=2, workers=0,
                          progress=False)
    assert torch.allclose(resumed.features, full.features, atol=1e-6)
