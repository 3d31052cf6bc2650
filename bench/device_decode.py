"""`--decode device`: JPEGs decoded on the encoding device and resized there in batches, and the staging of
batches one ahead of the encoder (pinned memory, a side CUDA stream) that both decode paths use on a GPU.

On a GPU the DataLoader workers can be the bottleneck: a ViT-B/16 (about 23 GFLOP an image) could encode
thousands of images a second, while a CPU core decodes and resizes about 180 photo-sized JPEGs (500 x 375,
PIL). With `--decode device` the workers only read bytes; `torchvision.io.decode_jpeg(device=...)`
decodes a whole batch (nvJPEG on CUDA), and the model's own
resize and centre crop run on the decoded batch, grouped by image size. Images that are not 8-bit
baseline or progressive JPEGs with 1 or 3 YCbCr channels (PNGs; CMYK, RGB-coded or arithmetic-coded
JPEGs), files cut off before their end marker, and any JPEG the device cannot decode, go through the CPU
path instead, so every image is read and a bad one is reported as before.

The pixels are not the CPU path's bit for bit: torch's antialiased resize rounds differently from PIL's
(on the CPU by at most 1 of 255, in under 1% of the pixels of most images and up to a quarter of some;
the float resize CUDA runs differed from PIL on about a fifth of them, run on the CPU), and nvJPEG's
inverse DCT differs from libjpeg's. So features computed this way are cached apart, and a
result records `decode: device` in its identity (tests/test_device_decode.py measures the agreement).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

import torch

from bench.datasets.base import ImageFiles, image_error
from bench.errors import BenchError, first_line
from bench.preprocess import BatchToFloat, tensor_tail

DECODES = ("cpu", "device")
# SOF markers of the JPEG processes decode_jpeg (libjpeg-turbo, nvJPEG) handles: baseline, extended and
# progressive Huffman; lossless and arithmetic-coded files take the CPU path
_DEVICE_SOF = {0xC0, 0xC1, 0xC2}
_OTHER_SOF = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_RGB_STEPS = ("_to_rgb", "_convert_to_rgb")  # bench's and open_clip's convert("RGB") functions


def device_decodable(raw: bytes) -> tuple[int, int] | None:
    """(height, width) of a JPEG the device path decodes, read from its headers; None for any file the CPU
    path should decode instead: not a JPEG, not 8-bit baseline or progressive Huffman, not 1 or 3 channels
    (CMYK), 3 channels stored as RGB rather than YCbCr (an Adobe marker with transform 0, or components
    named R, G, B: a GPU decoder may convert them as YCbCr), or cut off (no end-of-image marker: nvJPEG
    decodes a truncated file that PIL refuses)."""
    if raw[:2] != b"\xff\xd8" or not raw.rstrip(b"\0").endswith(b"\xff\xd9"):
        return None
    i, n, rgb_coded = 2, len(raw), False
    while i + 4 <= n:
        if raw[i] != 0xFF:
            return None
        marker = raw[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            i += 2
            continue
        if marker == 0xDA or marker in _OTHER_SOF:  # scan data before a frame header, or another process
            return None
        length = int.from_bytes(raw[i + 2:i + 4], "big")
        body = raw[i + 4:i + 2 + length]
        if marker == 0xEE and body[:5] == b"Adobe" and len(body) >= 12:
            rgb_coded = body[11] == 0  # APP14: colour transform 0 = none (RGB or CMYK as stored)
        if marker in _DEVICE_SOF:
            if len(body) < 6:
                return None
            precision, height, width, channels = body[0], int.from_bytes(body[1:3], "big"), int.from_bytes(
                body[3:5], "big"), body[5]
            ids = bytes(body[6 + 3 * c] for c in range(channels) if 6 + 3 * c < len(body))
            if precision != 8 or channels not in (1, 3) or height == 0 or width == 0:
                return None
            if channels == 3 and (rgb_coded or ids == b"RGB"):
                return None
            return height, width
        i += 2 + length
    return None


@dataclass(frozen=True)
class DevicePlan:
    """A model's transform as steps on decoded uint8 batches: ("resize", size, interpolation) with size
    [short side] or [h, w] as torchvision takes it, ("crop", [h, w]); then `to_float` (ToTensor + Normalize)."""

    steps: tuple
    to_float: BatchToFloat

    def apply(self, batch: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] uint8 images of one size → the transform's uint8 output, before ToTensor."""
        from torchvision.transforms.v2 import functional as F

        for step in self.steps:
            if step[0] == "resize":
                batch = F.resize(batch, list(step[1]), interpolation=step[2], antialias=True)
            else:
                batch = F.center_crop(batch, list(step[1]))
        return batch


def plan_transform(transform, model: str) -> DevicePlan:
    """The device plan of a model's image transform (a torchvision Compose of Resize, CenterCrop, a
    convert to RGB, ToTensor and Normalize); BenchError naming the step when it has another."""
    from torchvision import transforms as T

    if not isinstance(transform, T.Compose):
        raise BenchError(f"--decode device: the image transform of {model} is not a torchvision Compose "
                         f"({type(transform).__name__}), so it cannot run on the device; use --decode cpu")
    tail = tensor_tail(transform)
    if tail is None:
        raise BenchError(f"--decode device: the image transform of {model} does not end in ToTensor and "
                         "Normalize; use --decode cpu")
    head, norm = tail
    plan = []
    for step in head:
        if isinstance(step, T.Resize) and step.max_size is None and step.interpolation in (
                T.InterpolationMode.BILINEAR, T.InterpolationMode.BICUBIC):
            size = [step.size] if isinstance(step.size, int) else list(step.size)
            plan.append(("resize", tuple(size), step.interpolation))
        elif isinstance(step, T.CenterCrop):
            plan.append(("crop", tuple(step.size)))
        elif getattr(step, "__name__", "") in _RGB_STEPS or (
                type(step).__name__ == "MaybeConvertMode" and getattr(step, "mode", "") == "RGB"):
            continue  # decode_jpeg gives RGB already (a grey JPEG's one channel repeated, as PIL converts it)
        else:
            raise BenchError(f"--decode device: the image transform of {model} has a step bench does not run "
                             f"on the device ({step!r}); use --decode cpu")
    return DevicePlan(tuple(plan), BatchToFloat(norm.mean, norm.std))


class RawImageFiles(ImageFiles):
    """Worker side of `--decode device`: a device-decodable JPEG as its bytes (a uint8 tensor) and its size,
    any other image decoded and transformed here as ImageFiles does (the CPU path's `transform`: PIL →
    uint8 at the model's size), so its pixels and its error message are the CPU path's."""

    def __getitem__(self, k: int):
        i = self.indices[k]
        try:
            raw = self.read_bytes(i)
            size = device_decodable(raw)
        except Exception as exc:  # noqa: BLE001 - any failure is reported with its path, as ImageFiles does
            return None, i, image_error(self.root / self.paths[i], exc)
        if size is None:
            return self.on_cpu(k)
        return RawImage(torch.frombuffer(bytearray(raw), dtype=torch.uint8), size, k), i, ""

    def on_cpu(self, k: int):
        """Item k through the CPU path: (uint8 pixels, index, "") or (None, index, error)."""
        return super().__getitem__(k)


@dataclass
class RawImage:
    """An encoded JPEG, its (height, width), and its position `k` in the RawImageFiles (for the CPU path)."""

    data: torch.Tensor
    size: tuple[int, int]
    k: int


class RawBatch:
    """A batch of RawImageFiles items (RawImage or CPU-decoded uint8 pixels), in sample order."""

    def __init__(self, items: list):
        self.items = [(x, i) for x, i, err in items if not err]
        self.errors = [(i, err) for _, i, err in items if err]

    def pin_memory(self) -> RawBatch:  # called by the DataLoader (pin_memory=True) in its pinning thread
        self.items = [(replace(x, data=x.data.pin_memory()) if isinstance(x, RawImage) else x.pin_memory(), i)
                      for x, i in self.items]
        return self


def collate_raw(items: list) -> RawBatch:
    return RawBatch(items)


@functools.cache
def _device_decode_error(device: str) -> str:
    """Why decode_jpeg cannot decode on `device` ("" when it can), tried once per process on a tiny JPEG."""
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    buf = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 30, 90)).save(buf, "JPEG")
    try:
        out = decode_jpeg([torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)],
                          mode=ImageReadMode.RGB, device=device)
        return "" if tuple(out[0].shape) == (3, 8, 16) else f"decoded to shape {tuple(out[0].shape)}"
    except Exception as exc:  # noqa: BLE001 - torchvision without nvJPEG, no image extension, ...
        return first_line(exc) or type(exc).__name__


class DeviceDecoder:
    """Main-process side of `--decode device`: a RawBatch → (float pixels on the device, indices, errors).

    `files` is the RawImageFiles the batch came from: a JPEG the device fails to decode is decoded there by
    the CPU path (PIL, the CPU path's transform), or reported as unreadable with the CPU path's message.
    JPEGs are decoded in chunks of at most `pixel_budget` pixels (the decoded batch, its stacked copy and
    the float resize of a batch of 12-megapixel photos would not fit on a smaller GPU otherwise)."""

    def __init__(self, plan: DevicePlan, files: RawImageFiles, device: torch.device,
                 pixel_budget: int = 64 * 2**20):
        self.plan, self.files, self.device, self.pixel_budget = plan, files, device, pixel_budget
        reason = _device_decode_error(str(device))
        if reason:
            raise BenchError(f"--decode device: torchvision {_tv_version()} cannot decode JPEGs on {device} here "
                             f"({reason}); use --decode cpu")

    def __call__(self, batch: RawBatch) -> tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]:
        errors = list(batch.errors)
        images: dict[int, torch.Tensor] = {}
        jpegs = [(n, x.size[0] * x.size[1]) for n, (x, _) in enumerate(batch.items) if isinstance(x, RawImage)]
        for chunk in self._chunks(jpegs):
            decoded: dict[int, torch.Tensor] = {}
            for n, img in zip(chunk, self._decode([batch.items[n][0].data for n in chunk]), strict=True):
                if img is not None:
                    decoded[n] = img
                    continue
                pixels, _, err = self.files.on_cpu(batch.items[n][0].k)  # the device failed: the CPU path decides
                if err:
                    errors.append((batch.items[n][1], err))
                else:
                    images[n] = pixels.to(self.device)
            by_shape: dict[tuple, list[int]] = {}
            for n, img in decoded.items():
                by_shape.setdefault(tuple(img.shape), []).append(n)
            for group in by_shape.values():  # one resize per image size: most datasets have few sizes
                # pop: each full-size image is freed once it is in its group's stack
                out = self.plan.apply(torch.stack([decoded.pop(n) for n in group]))
                images.update(zip(group, out, strict=True))
        for n, (x, _) in enumerate(batch.items):
            if not isinstance(x, RawImage):
                images[n] = x.to(self.device, non_blocking=True)
        order = sorted(images)
        idxs = [batch.items[n][1] for n in order]
        errors.sort()
        if not order:
            return None, idxs, errors
        return self.plan.to_float(torch.stack([images[n] for n in order])), idxs, errors

    def _chunks(self, jpegs: list[tuple[int, int]]) -> Iterator[list[int]]:
        """Positions of the (position, pixel count) pairs, in runs of at most pixel_budget pixels."""
        chunk: list[int] = []
        pixels = 0
        for n, area in jpegs:
            if chunk and pixels + area > self.pixel_budget:
                yield chunk
                chunk, pixels = [], 0
            chunk.append(n)
            pixels += area
        if chunk:
            yield chunk

    def _decode(self, raws: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Decoded images (None for each one the device could not decode)."""
        from torchvision.io import ImageReadMode, decode_jpeg

        if self.device.type == "cuda":
            # decode_jpeg allocates its outputs on the current (side) stream but decodes on a stream of its
            # own that does not wait for it: memory freed by the previous batch's resize, still queued on the
            # side stream, could be overwritten (pytorch/vision#9606). Drain the side stream first.
            torch.cuda.current_stream(self.device).synchronize()
        try:
            # .to: decode_jpeg decodes on CUDA only, and on the CPU for any other device
            return [x.to(self.device) for x in decode_jpeg(raws, mode=ImageReadMode.RGB, device=self.device)]
        except Exception:  # noqa: BLE001 - one bad file fails the whole batched call: find it
            out: list[torch.Tensor | None] = []
            for raw in raws:
                try:
                    out.append(decode_jpeg([raw], mode=ImageReadMode.RGB, device=self.device)[0].to(self.device))
                except Exception:  # noqa: BLE001
                    out.append(None)
            return out


def _tv_version() -> str:
    import torchvision

    return torchvision.__version__


class CpuStage:
    """`--decode cpu`'s per-batch step in the main process: ToTensor's scaling and Normalize on the CPU (into
    pinned memory on a GPU run), then the copy to the device."""

    def __init__(self, to_float: BatchToFloat | None, device: torch.device):
        self.to_float, self.device = to_float, device

    def __call__(self, batch: tuple) -> tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]:
        pixels, idxs, errors = batch
        if pixels is not None:
            if self.to_float is not None:
                # on the CPU, where it is ToTensor + Normalize bit for bit (tested); on a GPU it has not been
                # compared with them
                pixels = self.to_float(pixels, pin=self.device.type == "cuda")
            pixels = pixels.to(self.device, non_blocking=True)
        return pixels, idxs, errors


def staged(batches: Iterable, stage: Callable, device: torch.device) -> Iterator:
    """stage(batch) for each batch, in order. On CUDA the next batch is staged (copied, or decoded) on a side
    stream while the caller encodes the current one on the main stream: double buffering."""
    if device.type != "cuda":
        yield from map(stage, batches)
        return
    side, main = torch.cuda.Stream(device), torch.cuda.current_stream(device)

    def launch(batch):
        with torch.cuda.stream(side):
            out = stage(batch)
        event = torch.cuda.Event()
        event.record(side)
        return out, event

    def ready(item):
        out, event = item
        main.wait_event(event)
        if isinstance(out[0], torch.Tensor):
            out[0].record_stream(main)  # made on the side stream, used on the main one
        return out

    ahead = None
    for batch in batches:
        current = launch(batch)
        if ahead is not None:
            yield ready(ahead)
        ahead = current
    if ahead is not None:
        yield ready(ahead)
