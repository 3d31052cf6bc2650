"""One split of one dataset, as every source adapter presents it."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from bench.datasets.registry import DatasetSpec


@dataclass(frozen=True)
class SplitData:
    """Samples of one split: paths relative to `root` (forward slashes) and class-index targets."""

    spec: DatasetSpec
    split: str
    root: Path
    paths: tuple[str, ...]
    targets: tuple  # int per sample, or a tuple of ints per sample for multi-label sets
    source: str
    class_names: dict[str, tuple[str, ...]] = field(default_factory=dict)  # the source's own labels
    fingerprint: str = ""
    # Per sample (archive path relative to root, byte offset, byte size[, "base64"]) for sources that keep
    # images inside archives (webdataset tar shards; Chinese CLIP's tsv of base64 strings, marked "base64");
    # empty when every path is an image file of its own.
    spans: tuple = ()

    def images(self, transform, indices: list[int] | None = None) -> ImageFiles:
        """A lazy torch Dataset over this split's images (decoded in DataLoader workers)."""
        return ImageFiles(self.root, self.paths, transform, indices, self.spans)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: list[int]) -> SplitData:
        paths = tuple(self.paths[i] for i in indices)
        targets = tuple(self.targets[i] for i in indices)
        fp = hashlib.sha256(json.dumps([self.fingerprint, list(indices)]).encode()).hexdigest()
        spans = tuple(self.spans[i] for i in indices) if self.spans else ()
        return SplitData(self.spec, self.split, self.root, paths, targets, self.source, self.class_names, fp, spans)


def stratified_limit(targets: tuple, limit: int) -> list[int]:
    """The first `limit` sample indices taken round-robin over classes (deterministic, sorted)."""
    by_class: dict = {}
    for i, t in enumerate(targets):
        key = t if isinstance(t, int) else (t[0] if t else -1)
        by_class.setdefault(key, []).append(i)
    queues = [by_class[k] for k in sorted(by_class)]
    picked: list[int] = []
    depth = 0
    while len(picked) < limit and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(picked) < limit:
                picked.append(q[depth])
        depth += 1
    return sorted(picked)


class ImageFiles(torch.utils.data.Dataset):
    """Opens images lazily (in DataLoader workers); a failure is returned, not raised, with the path.

    With `spans`, sample i is the byte range (offset, size) of archive `spans[i][0]` under `root`: only
    that member is read, so a 200k-image tar-sharded set is never held in memory.
    """

    def __init__(self, root: Path, paths: tuple[str, ...], transform, indices: list[int] | None = None,
                 spans: tuple = ()):
        self.root = Path(root)
        self.paths = paths
        self.transform = transform
        self.indices = list(range(len(paths))) if indices is None else list(indices)
        self.spans = spans

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        i = self.indices[k]
        try:
            with self._open(i) as img:
                img.load()
                return self.transform(img), i, ""
        except Exception as exc:  # noqa: BLE001 - any decoder failure is reported with its path
            return None, i, image_error(self.root / self.paths[i], exc)

    def _open(self, i: int) -> Image.Image:
        if not self.spans:
            return Image.open(self.root / self.paths[i])
        return Image.open(io.BytesIO(self.read_bytes(i)))

    def read_bytes(self, i: int) -> bytes:
        """The encoded bytes of sample i (its file, or its member of an archive)."""
        if not self.spans:
            return (self.root / self.paths[i]).read_bytes()
        archive, offset, size, *encoding = self.spans[i]
        with open(self.root / archive, "rb") as f:
            f.seek(offset)
            raw = f.read(size)
        if len(raw) != size:
            raise OSError(f"archive truncated: wanted {size} bytes at offset {offset}, got {len(raw)}")
        if encoding and encoding[0] == "base64":
            # as Chinese CLIP reads its tsv: the URL-safe alphabet, which also accepts standard base64
            raw = base64.urlsafe_b64decode(raw)
        return raw


def image_error(path: Path, exc: BaseException) -> str:
    """How a failure to read the image at `path` is reported (and cached with --skip-bad-images)."""
    # PIL names in-memory members by their repr (<_io.BytesIO object at 0x...>), which differs per run
    msg = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the member's bytes", str(exc))
    return f"{path}: {type(exc).__name__}: {msg}"


def collate(items):
    """Stack the images that decoded; keep indices and error messages of those that did not."""
    good = [(x, i) for x, i, err in items if not err]
    errors = [(i, err) for _, i, err in items if err]
    pixels = torch.stack([x for x, _ in good]) if good else None
    return pixels, [i for _, i in good], errors
