"""Webdataset source: clip-benchmark `wds_*` folders (local, or a Hugging Face cache snapshot).

Layout (what CLIP_benchmark's exporter writes and `datasets.load_dataset('webdataset', ...)` reads):
`<dir>/classnames.txt`, optional `<dir>/dataset_type.txt` (`multilabel`), `<dir>/<split>/*.tar`; a
sample is the tar members sharing a key: an image (`webp`/`png`/`jpg`/`jpeg`) and its label, `cls`
(class index as text) or, for multi-label sets, `npy` (a multi-hot vector over the classes).

Only tar headers and the small label members are read here; each sample keeps its shard and the
byte span of its image, which DataLoader workers read and decode on demand.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.datasets.base import SplitData
from bench.datasets.classes import class_order
from bench.datasets.registry import DatasetSpec
from bench.errors import BenchError

IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")
HUB_OWNER = "clip-benchmark"
# Webdataset copies by registry `sources:` key -> Hugging Face owner: clip-benchmark's (`wds: wds_vtab-cifar10`)
# and DataComp's (`datacomp: wds_cifar10_test`, what its download_evalsets.py fetches for open_clip's table).
COPIES = {"wds": HUB_OWNER, "datacomp": "djghosh"}
# Label member per dataset type; the type comes from dataset_type.txt (default classification).
LABEL_EXT = {"classification": "cls", "multilabel": "npy"}


def shards(split_dir: Path) -> list[Path]:
    """Tar shards of one split in numeric order (0.tar, 1.tar, …, 10.tar)."""
    def key(p: Path):
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]
    return sorted(split_dir.glob("*.tar"), key=key)


def is_wds_folder(path: Path) -> bool:
    return path.is_dir() and any(shards(path / s) for s in ("test", "train", "val") if (path / s).is_dir())


def dataset_type(folder: Path) -> str:
    f = folder / "dataset_type.txt"
    kind = f.read_text(encoding="utf-8").strip().lower() if f.is_file() else "classification"
    if kind not in LABEL_EXT:
        raise BenchError(f"{f}: dataset type '{kind}' is not an image-classification set "
                         f"(expected one of {', '.join(LABEL_EXT)})")
    return kind


def read_classnames(folder: Path) -> list[str]:
    f = folder / "classnames.txt"
    if not f.is_file():
        raise BenchError(f"{folder}: no classnames.txt, so its class order cannot be checked; "
                         "clip-benchmark wds folders have one beside the split folders")
    return [line.strip() for line in f.read_text(encoding="utf-8-sig").splitlines() if line.strip()]


def _decode_label(raw: bytes, ext: str, where: str, n_classes: int) -> int | tuple[int, ...]:
    try:
        if ext == "cls":
            return int(raw.decode("ascii").strip())
        vec = np.load(io.BytesIO(raw), allow_pickle=False).reshape(-1)
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise BenchError(f"{where}: unreadable {ext} label ({exc})") from None
    if vec.size != n_classes:
        raise BenchError(f"{where}: multi-label vector has {vec.size} entries for {n_classes} classes")
    return tuple(int(j) for j in np.flatnonzero(vec > 0))


def load_split(spec: DatasetSpec, folder: Path, split: str) -> SplitData:
    """Index one split's shards (headers and labels only) and map its classes onto the canonical order."""
    split_dir = folder / split
    parts = shards(split_dir) if split_dir.is_dir() else []
    if not parts:
        have = [s for s in ("train", "val", "test") if (folder / s).is_dir() and shards(folder / s)]
        raise BenchError(f"{folder}: no '{split}' split of .tar shards (found: {', '.join(have) or 'none'})")
    kind = dataset_type(folder)
    if spec.multilabel != (kind == "multilabel"):
        want = "multi-label (dataset_type.txt 'multilabel', npy labels)" if spec.multilabel else "single-label"
        raise BenchError(f"{folder}: a {kind} webdataset cannot stand in for {spec.name}, which is {want}; "
                         + ("use clip-benchmark/wds_voc2007_multilabel, never the cropped-object wds_voc2007"
                            if spec.multilabel else "check that this folder is the right dataset"))
    names = read_classnames(folder)
    order = class_order(spec, names, str(folder / "classnames.txt"))
    label_ext = LABEL_EXT[kind]
    paths: list[str] = []
    targets: list = []
    spans: list[tuple[str, int, int]] = []
    h = hashlib.sha256(f"wds|{spec.name}|{split}|{'|'.join(names)}|{kind}".encode())
    for shard in parts:
        st = shard.stat()
        h.update(f"{shard.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        for key, image, label in _samples(shard, label_ext, len(names)):
            where = f"{shard}:{key}"
            if image is None or label is None:
                raise BenchError(f"{where}: sample has no {'image' if image is None else label_ext} member")
            paths.append(f"{shard.name}/{image.name}")
            spans.append((shard.name, image.offset_data, image.size))
            if isinstance(label, int):
                if not 0 <= label < len(names):
                    raise BenchError(f"{where}: class index {label} outside 0..{len(names) - 1}")
                targets.append(order[label])
            else:
                targets.append(tuple(sorted(order[j] for j in label)))
    inverse = sorted(range(len(order)), key=lambda j: order[j])
    return SplitData(spec=spec, split=split, root=split_dir, paths=tuple(paths), targets=tuple(targets),
                     source="wds", class_names={"en": tuple(names[j] for j in inverse)},
                     fingerprint=h.hexdigest(), spans=tuple(spans))


def tar_samples(shard: Path, extra_ext: str, decode: Callable[[bytes, str], object] | None = None):
    """(key, image TarInfo, the `extra_ext` member decoded, or its raw bytes) per sample, in shard order.

    Members are grouped by key as webdataset groups them (directory + name up to the first dot); a sample
    without the member gets None. `decode(raw, where)` receives `shard:member` for its error messages."""
    current, image, extra = None, None, None
    try:
        with tarfile.open(shard, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = os.path.basename(member.name)
                if "." not in base:
                    continue
                stem, ext = base.split(".", 1)
                key = f"{os.path.dirname(member.name)}/{stem}"
                if key != current:
                    if current is not None:
                        yield current, image, extra
                    current, image, extra = key, None, None
                ext = ext.lower()
                if ext in IMAGE_EXTS:
                    image = member
                elif ext == extra_ext:
                    raw = tar.extractfile(member).read()
                    extra = decode(raw, f"{shard}:{member.name}") if decode else raw
    except tarfile.TarError as exc:
        raise BenchError(f"{shard}: not a readable tar shard ({exc}); re-download it") from None
    if current is not None:
        yield current, image, extra


def _samples(shard: Path, label_ext: str, n_classes: int):
    """(key, image TarInfo, decoded label) per sample, in shard order."""
    return tar_samples(shard, label_ext, lambda raw, where: _decode_label(raw, label_ext, where, n_classes))


def hub_repo(spec: DatasetSpec, copy: str = "wds") -> str | None:
    """The Hugging Face dataset repo of one of `spec`'s webdataset copies (registry `sources:` key)."""
    name = spec.sources.get(copy)
    return f"{COPIES[copy]}/{name}" if name and copy in COPIES else None


def hub_snapshot(spec: DatasetSpec, copy: str = "wds") -> Path | None:
    """One of the dataset's webdataset copies in the local Hugging Face cache, without the network."""
    repo = hub_repo(spec, copy)
    if repo is None:
        return None
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo, repo_type="dataset", local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not in the cache"
        return None
    return path if is_wds_folder(path) else None
