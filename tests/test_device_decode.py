"""`--decode device` (bench.device_decode): JPEGs decoded by torchvision and resized in batches on the
encoding device give the CPU path's pixels to rounding, every other image takes the CPU path unchanged,
bad files are reported as before, and the features and results are kept apart from the CPU path's.
The CPU runs the device path here (decode_jpeg on the CPU); the CUDA tests run only where there is a GPU."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from bench.cache import FeatureCache
from bench.datasets.base import ImageFiles, collate
from bench.device_decode import (
    CpuStage,
    DeviceDecoder,
    RawImageFiles,
    collate_raw,
    device_decodable,
    plan_transform,
    staged,
)
from bench.errors import BenchError
from bench.preprocess import resize_crop_transform, split_for_workers, squash_transform
from tests.identity_helpers import latest_result
from tests.tiny_models import CLIP_MEAN, CLIP_STD, make_chinese_clip_dir, make_open_clip_dir, write_model_yaml

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _photo(h: int, w: int, seed: int) -> Image.Image:
    """Smooth colour blobs plus noise: resizing it exercises the filter, like a photo does."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (h // 6 + 2, w // 6 + 2, 3), dtype=np.uint8))
    arr = np.asarray(small.resize((w, h), Image.BICUBIC)).astype(int) + rng.integers(-12, 12, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _encoded(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# (name, height, width, how it is saved): downscaled and upscaled, square, grey, progressive, and files the
# device does not decode (PNG, CMYK JPEG)
IMAGES = [("wide", 40, 60, {}), ("tall", 64, 48, {}), ("square", 32, 32, {}), ("big", 97, 71, {}),
          ("small", 20, 28, {}), ("grey", 50, 40, {"mode": "L"}), ("progressive", 45, 66, {"progressive": True}),
          ("png", 44, 30, {"fmt": "PNG"}), ("cmyk", 36, 52, {"mode": "CMYK"})]


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = []
    for n, (name, h, w, how) in enumerate(IMAGES):
        how = dict(how)
        img, fmt = _photo(h, w, n), how.pop("fmt", "JPEG")
        if "mode" in how:
            img = img.convert(how.pop("mode"))
        ext = "png" if fmt == "PNG" else "jpg"
        (folder / f"{name}.{ext}").write_bytes(_encoded(img, fmt, **({"quality": 90} | how if fmt == "JPEG" else {})))
        paths.append(f"{name}.{ext}")
    return folder, tuple(paths)


def _transforms():
    import open_clip

    return {"open_clip": open_clip.image_transform(32, is_train=False, mean=CLIP_MEAN, std=CLIP_STD),
            "squash": squash_transform(32, CLIP_MEAN, CLIP_STD),
            "elevater": resize_crop_transform(32, CLIP_MEAN, CLIP_STD)}


def _both_paths(folder, paths, transform, **decoder):
    """(CPU path's pixels, indices, errors), (device path's, on the CPU), and the RawBatch of the latter."""
    per_image, per_batch = split_for_workers(transform)
    cpu_items = [ImageFiles(folder, paths, per_image)[k] for k in range(len(paths))]
    cpu = CpuStage(per_batch, torch.device("cpu"))(collate(cpu_items))
    files = RawImageFiles(folder, paths, per_image)
    raw = collate_raw([files[k] for k in range(len(paths))])
    dev = DeviceDecoder(plan_transform(transform, "tiny"), files, torch.device("cpu"), **decoder)(raw)
    return cpu, dev, raw


def _with_adobe_transform(jpeg: bytes, transform: int) -> bytes:
    """The JPEG with an APP14 "Adobe" segment saying how its channels are coded (0: as stored, RGB)."""
    body = b"Adobe" + b"\x00\x64" + b"\x00\x00" + b"\x00\x00" + bytes([transform])
    return jpeg[:2] + b"\xff\xee" + (len(body) + 2).to_bytes(2, "big") + body + jpeg[2:]


def test_jpeg_headers_say_which_files_the_device_decodes():
    photo = _photo(30, 40, 0)
    jpeg = _encoded(photo)
    assert device_decodable(jpeg) == (30, 40)
    assert device_decodable(_encoded(photo.convert("L"))) == (30, 40)
    assert device_decodable(_encoded(photo, progressive=True)) == (30, 40)
    assert device_decodable(jpeg + b"\0" * 9) == (30, 40)  # zero padding after the end marker
    assert device_decodable(_with_adobe_transform(jpeg, 1)) == (30, 40)  # YCbCr, said explicitly
    Image.open(io.BytesIO(_with_adobe_transform(jpeg, 1))).load()  # the crafted segment is valid JPEG
    # the CPU path (PIL) decodes these, as --decode cpu does
    assert device_decodable(_with_adobe_transform(jpeg, 0)) is None  # RGB-coded: a GPU may read it as YCbCr
    assert device_decodable(_encoded(photo.convert("CMYK"))) is None
    assert device_decodable(_encoded(photo, "PNG")) is None
    assert device_decodable(jpeg[:-300]) is None  # cut off: nvJPEG would decode what PIL refuses
    assert device_decodable(b"\xff\xd8\xff\xe0\x00\xff\xd9") is None
    assert device_decodable(b"") is None


@pytest.mark.parametrize("kind", ["open_clip", "squash", "elevater"])
def test_device_path_gives_the_cpu_path_s_pixels_to_rounding(kind, photos):
    folder, paths = photos
    (cpu, cpu_idx, cpu_err), (dev, dev_idx, dev_err), raw = _both_paths(folder, paths, _transforms()[kind])
    assert cpu_idx == dev_idx == list(range(len(paths))) and cpu_err == dev_err == []
    kinds = [type(x).__name__ for x, _ in raw.items]
    assert kinds == ["RawImage"] * 7 + ["Tensor", "Tensor"]  # PNG and CMYK take the CPU path in the workers
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    levels = ((dev - cpu) * std * 255).abs()  # back in 0-255 steps
    assert levels.max() <= 1.01, levels.amax(dim=(1, 2, 3))  # one step of 255 at most
    assert (levels > 0.5).float().mean() < 0.1  # torch and PIL round differently on some pixels
    # what the device does not decode is the CPU path's, bit for bit; so is a JPEG that needs no resize
    assert torch.equal(dev[7:], cpu[7:]) and torch.equal(dev[2], cpu[2])


def test_bad_files_are_reported_as_the_cpu_path_reports_them(photos):
    folder, paths = photos
    (folder / "cut.jpg").write_bytes(_encoded(_photo(30, 30, 9))[:200])  # a valid header, then cut off
    (folder / "text.jpg").write_bytes(b"not an image at all")
    paths = (*paths[:2], "cut.jpg", *paths[2:4], "text.jpg", *paths[4:])
    (cpu, cpu_idx, cpu_err), (dev, dev_idx, dev_err), _ = _both_paths(folder, paths, _transforms()["open_clip"])
    assert cpu_idx == dev_idx and len(dev_idx) == len(paths) - 2 and dev.shape == cpu.shape
    assert dev_err == cpu_err and [i for i, _ in dev_err] == [2, 5]
    assert str(folder / "cut.jpg") in dev_err[0][1] and str(folder / "text.jpg") in dev_err[1][1]


def test_a_jpeg_the_device_fails_on_gets_the_cpu_path_s_pixels(photos, monkeypatch):
    folder, paths = photos
    real = DeviceDecoder._decode

    def failing_the_first(self, raws):
        return [None, *real(self, raws[1:])]

    monkeypatch.setattr(DeviceDecoder, "_decode", failing_the_first)
    (cpu, cpu_idx, _), (dev, dev_idx, dev_err), _ = _both_paths(folder, paths, _transforms()["squash"])
    assert dev_idx == cpu_idx and dev_err == [] and torch.equal(dev[0], cpu[0])  # decoded by PIL, bit for bit


def test_decoding_in_chunks_under_a_pixel_budget_changes_nothing(photos, monkeypatch):
    folder, paths = photos
    calls = []
    real = DeviceDecoder._decode
    monkeypatch.setattr(DeviceDecoder, "_decode", lambda self, raws: calls.append(len(raws)) or real(self, raws))
    _, (whole, idx, _), _ = _both_paths(folder, paths, _transforms()["open_clip"])
    assert calls == [7]
    _, (chunked, chunked_idx, _), _ = _both_paths(folder, paths, _transforms()["open_clip"], pixel_budget=5000)
    assert len(calls) > 3 and max(calls[1:]) <= 2 and sum(calls[1:]) == 7  # 97 x 71 alone is over the budget
    assert chunked_idx == idx and torch.equal(chunked, whole)


def test_transforms_bench_cannot_run_on_the_device_are_named(tmp_path):
    from torchvision import transforms as T

    norm = T.Normalize(CLIP_MEAN, CLIP_STD)
    with pytest.raises(BenchError, match=r"RandomHorizontalFlip.*--decode cpu"):
        plan_transform(T.Compose([T.Resize(32), T.RandomHorizontalFlip(), T.ToTensor(), norm]), "m")
    with pytest.raises(BenchError, match="max_size"):
        plan_transform(T.Compose([T.Resize(32, max_size=40), T.ToTensor(), norm]), "m")
    with pytest.raises(BenchError, match="not a torchvision Compose"):
        plan_transform(lambda img: img, "m")
    plan = plan_transform(_transforms()["open_clip"], "m")
    assert [s[0] for s in plan.steps] == ["resize", "crop"]


def test_a_device_that_cannot_decode_is_an_error_before_any_work(monkeypatch):
    from bench import device_decode

    monkeypatch.setattr(device_decode, "_device_decode_error", lambda device: "no nvJPEG")
    with pytest.raises(BenchError, match=r"cannot decode JPEGs on cpu here \(no nvJPEG\); use --decode cpu"):
        DeviceDecoder(plan_transform(_transforms()["squash"], "m"), None, torch.device("cpu"))


def _jpeg_dataset(root, n_classes=3, per_class=4):
    for c in range(n_classes):
        d = root / "test" / f"{c:03d}"
        d.mkdir(parents=True)
        for i in range(per_class):
            h, w = [(40, 60), (64, 48), (32, 32), (70, 50)][i % 4]
            (d / f"img{i}.jpg").write_bytes(_encoded(_photo(h, w, 10 * c + i), quality=90))
    (root / "label.txt").write_text("".join(f"class {c}\n" for c in range(n_classes)))
    return root


def test_bench_run_keeps_device_decoded_features_and_results_apart(tmp_path, bench_cli, count_images):
    model_dir = make_open_clip_dir(tmp_path / "oc")
    data = _jpeg_dataset(tmp_path / "data" / "toy")
    yml = write_model_yaml(tmp_path / "tiny.yaml", name="tiny-oc", backend="open_clip",
                           model=f"local-dir:{model_dir}", language="en")
    args = ["run", "--model", yml, "--dataset", data, "--labels", "dataset", "--prompts", "simple-en", "--out",
            tmp_path / "runs", "--cache-dir", tmp_path / "cache", "--compile", "off", "--no-progress"]
    results = {}
    for decode, workers in (("cpu", "0"), ("device", "0"), ("device", "2")):
        code, _, err = bench_cli(*args, "--decode", decode, "--workers", workers)
        assert code == 0, err
        folder = tmp_path / "runs" / "tiny-oc" / "toy"
        files = [p for p in folder.glob("zeroshot*.json") if ("decode=device" in p.name) == (decode == "device")]
        (path,) = files
        results[decode, workers] = json.loads(path.read_text())
    cpu, dev, again = results["cpu", "0"], results["device", "0"], results["device", "2"]
    assert count_images["n"] == 24  # 12 images per decode path; the third run read the device path's cache
    assert cpu["encoder"]["decode"] == "cpu" and dev["encoder"]["decode"] == "device"
    assert dev["experiment"]["decode"] == "device" and "decode" not in cpu["experiment"]
    assert cpu["cache"]["image_features"] != dev["cache"]["image_features"] == again["cache"]["image_features"]
    cache = FeatureCache(tmp_path / "cache")
    a = cache.load_shard(cpu["cache"]["image_features"], 0)["features"]
    b = cache.load_shard(dev["cache"]["image_features"], 0)["features"]
    assert not torch.equal(a, b)  # pixels differ by rounding ...
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.9999  # ... features by less than bf16 does
    index = json.loads((tmp_path / "runs" / "tiny-oc" / "toy" / "index.json").read_text())
    assert len(index) == 2 and latest_result(tmp_path / "runs" / "tiny-oc" / "toy", "zeroshot").exists()


def test_a_processor_transform_is_refused_under_decode_device(tmp_path, bench_cli):
    model_dir = make_chinese_clip_dir(tmp_path / "hf")
    data = _jpeg_dataset(tmp_path / "data" / "toy", per_class=1)
    yml = write_model_yaml(tmp_path / "hf.yaml", name="tiny-hf", backend="transformers", model=str(model_dir),
                           language="en")
    code, _, err = bench_cli("run", "--model", yml, "--dataset", data, "--labels", "dataset", "--prompts",
                             "simple-en", "--out", tmp_path / "runs", "--cache-dir", tmp_path / "cache",
                             "--workers", "0", "--no-progress", "--decode", "device")
    assert code != 0 and "not a torchvision Compose" in err and "--decode cpu" in err
    assert not list((tmp_path / "runs").rglob("zeroshot*.json"))


def test_staging_on_the_cpu_is_the_stage_in_order():
    seen = []
    out = list(staged(range(5), lambda b: (seen.append(b), b * 2)[1], torch.device("cpu")))
    assert out == [0, 2, 4, 6, 8] and seen == [0, 1, 2, 3, 4]


@needs_cuda
def test_double_buffered_staging_on_cuda_gives_every_batch_in_order():
    batches = [(torch.full((4, 3, 8, 8), k, dtype=torch.uint8), [k], []) for k in range(6)]
    stage = CpuStage(split_for_workers(squash_transform(8, CLIP_MEAN, CLIP_STD))[1], torch.device("cuda"))
    got = [(p.cpu(), i) for p, i, _ in staged(batches, stage, torch.device("cuda"))]
    want = [(CpuStage(stage.to_float, torch.device("cpu"))(b)[0], b[1]) for b in batches]
    assert all(torch.equal(g, w) and gi == wi for (g, gi), (w, wi) in zip(got, want, strict=True))


@needs_cuda
def test_nvjpeg_pixels_match_the_cpu_path_within_jpeg_and_rounding_tolerance(photos):
    folder, paths = photos
    transform = _transforms()["open_clip"]
    per_image, per_batch = split_for_workers(transform)
    cpu = CpuStage(per_batch, torch.device("cpu"))(collate([ImageFiles(folder, paths, per_image)[k]
                                                            for k in range(len(paths))]))[0]
    files = RawImageFiles(folder, paths, per_image)
    raw = collate_raw([files[k] for k in range(len(paths))])
    dev = DeviceDecoder(plan_transform(transform, "tiny"), files, torch.device("cuda"))(raw)[0].cpu()
    levels = ((dev - cpu) * torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255).abs()
    assert levels.mean() < 1.0 and levels.max() <= 8  # nvJPEG's IDCT and float resize, not a wrong image


@needs_cuda
def test_double_buffered_device_decoding_equals_decoding_one_batch_at_a_time(tmp_path):
    """Staging the next batch on the side stream while this one is used must not change any pixel
    (decode_jpeg's own stream and the caching allocator: pytorch/vision#9606)."""
    folder = tmp_path / "big"
    folder.mkdir()
    paths = []
    for n in range(48):
        (folder / f"{n}.jpg").write_bytes(_encoded(_photo(600 + 8 * (n % 5), 800, n), quality=90))
        paths.append(f"{n}.jpg")
    transform = _transforms()["open_clip"]
    files = RawImageFiles(folder, tuple(paths), split_for_workers(transform)[0])
    decoder = DeviceDecoder(plan_transform(transform, "tiny"), files, torch.device("cuda"))
    batches = [collate_raw([files[k] for k in range(b, b + 8)]) for b in range(0, 48, 8)]
    alone = []
    for batch in batches:
        alone.append(decoder(batch)[0].cpu())
        torch.cuda.synchronize()
    got = []
    for pixels, _, _ in staged(batches, decoder, torch.device("cuda")):
        (pixels.float() @ pixels.float().transpose(-1, -2)).sum()  # keep the main stream busy meanwhile
        got.append(pixels.cpu())
    assert len(got) == 6 and all(torch.equal(g, a) for g, a in zip(got, alone, strict=True))


def test_the_cli_offers_exactly_the_decode_paths_there_are():
    import argparse

    from bench.cli_common import add_encoding_args
    from bench.device_decode import DECODES

    p = argparse.ArgumentParser()
    add_encoding_args(p)
    (action,) = [a for a in p._actions if a.dest == "decode"]
    assert tuple(action.choices) == DECODES and action.default == "cpu"
