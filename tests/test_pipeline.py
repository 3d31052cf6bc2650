"""The image pipeline's speed-ups change nothing: split transforms are bit-identical, threads come back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bench import features
from bench.features import ThreadTuner
from bench.preprocess import BatchToFloat, split_for_workers, squash_transform


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    out = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(40, 64), (97, 31), (32, 32)]]
    out.append(Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8)))  # grayscale
    out.append(Image.fromarray(rng.integers(0, 256, (45, 45, 4), dtype=np.uint8)))  # RGBA
    return out


def _transforms():
    import open_clip

    _, _, oc = open_clip.create_model_and_transforms(
        "ViT-B-32", pretrained=None)  # its eval transform: resize, crop, convert, MaybeToTensor, Normalize
    return {"open_clip": oc, "cn-clip squash": squash_transform(32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))}


@pytest.mark.parametrize("name", ["open_clip", "cn-clip squash"])
def test_split_transform_is_bit_identical(name):
    transform = _transforms()[name]
    per_image, per_batch = split_for_workers(transform)
    assert isinstance(per_batch, BatchToFloat)
    for img in _images():
        whole = transform(img)
        part = per_image(img)
        assert part.dtype == torch.uint8
        split = per_batch(part.unsqueeze(0))[0]
        assert split.dtype == whole.dtype and torch.equal(split, whole), img.mode


def test_transforms_that_do_not_end_in_to_tensor_normalize_run_whole():
    from torchvision import transforms as T

    odd = T.Compose([T.Resize(8), T.ToTensor()])
    assert split_for_workers(odd) == (odd, None)
    fn = lambda img: img  # noqa: E731
    assert split_for_workers(fn) == (fn, None)


@pytest.fixture
def two_threads(monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(features.os, "cpu_count", lambda: 2)
    yield
    torch.set_num_threads(before)


def _feed(tuner: ThreadTuner, wait_share: float, batches: int = 12) -> None:
    for _ in range(batches):
        tuner.batch_done(wait_s=wait_share * 0.1, total_s=0.1)


def test_decoding_bound_runs_give_the_workers_their_cores_and_restore_after(two_threads):
    with ThreadTuner(workers=1, device="cpu") as tuner:
        _feed(tuner, wait_share=0.3)
        assert torch.get_num_threads() == 1 and tuner.threads == 1
    assert torch.get_num_threads() == 2


def test_encoder_bound_gpu_or_workerless_runs_keep_their_threads(two_threads):
    for kwargs, share in [({"workers": 1, "device": "cpu"}, 0.01), ({"workers": 1, "device": "cuda"}, 0.5),
                          ({"workers": 0, "device": "cpu"}, 0.5)]:
        with ThreadTuner(**kwargs) as tuner:
            _feed(tuner, wait_share=share)
            assert torch.get_num_threads() == 2 and tuner.threads == 2, kwargs
