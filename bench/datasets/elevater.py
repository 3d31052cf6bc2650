"""ELEVATER-CN folder source (contract): `<root>/<name>/{train,test}/<class id>/<image>` + label files.

The class index is the integer value of the folder name (often zero-padded); `label.txt` (English)
and `label_cn.txt` (Chinese) sit beside `train/`/`test/`, one name per line in class-index order.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from bench.datasets.base import SplitData
from bench.datasets.registry import DatasetSpec, ad_hoc_spec, find_dataset
from bench.errors import BenchError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
LABEL_FILES = {"en": "label.txt", "zh": "label_cn.txt"}


def read_label_file(path: Path) -> tuple[str, ...]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise BenchError(f"{path}: not UTF-8 text") from None
    return tuple(line.strip() for line in lines if line.strip())


def is_dataset_folder(path: Path) -> bool:
    return path.is_dir() and any((path / s).is_dir() for s in ("test", "train", "val"))


def spec_for_folder(folder: Path) -> DatasetSpec:
    """The registry spec whose name matches the folder, else an ad-hoc spec from its label files."""
    spec = find_dataset(folder.name)
    if spec is not None:
        return spec
    for lang in ("en", "zh"):
        label_file = folder / LABEL_FILES[lang]
        if label_file.is_file():
            return ad_hoc_spec(folder.name, list(read_label_file(label_file)))
    split = next((folder / s for s in ("test", "train", "val") if (folder / s).is_dir()), None)
    ids = sorted(int(p.name) for p in split.iterdir() if p.is_dir() and p.name.isdigit()) if split else []
    if not ids:
        raise BenchError(f"{folder}: no label.txt/label_cn.txt and no numbered class folders; "
                         "expected <dataset>/{train,test}/<class id>/<image>")
    return ad_hoc_spec(folder.name, [str(i) for i in range(max(ids) + 1)])


def load_split(spec: DatasetSpec, folder: Path, split: str) -> SplitData:
    """Scan one split folder, check its class folders against the spec, fingerprint its contents."""
    split_dir = folder / split
    if not split_dir.is_dir():
        have = [s for s in ("train", "val", "test") if (folder / s).is_dir()]
        raise BenchError(f"{folder}: no '{split}' split (found: {', '.join(have) or 'none'})")
    class_dirs: dict[int, Path] = {}
    for entry in sorted(split_dir.iterdir()):
        if not entry.is_dir():
            continue
        if not entry.name.isdigit():
            raise BenchError(f"{entry}: class folders must be named by class index (0, 1, … or 000, 001, …)")
        idx = int(entry.name)
        if idx in class_dirs:
            raise BenchError(f"{entry}: class index {idx} appears twice ({class_dirs[idx].name} and {entry.name})")
        class_dirs[idx] = entry
    expected = set(range(spec.num_classes))
    missing, extra = sorted(expected - set(class_dirs)), sorted(set(class_dirs) - expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing class folder(s) {_ids(missing)}")
        if extra:
            parts.append(f"unexpected class folder(s) {_ids(extra)}")
        raise BenchError(f"{split_dir}: {spec.name} has {spec.num_classes} classes but found "
                         f"{len(class_dirs)} class folders: {'; '.join(parts)}")
    h = hashlib.sha256(f"{spec.name}|{split}|{spec.num_classes}".encode())
    paths, targets = scan_classes(spec, [(idx, class_dirs[idx], str(idx)) for idx in sorted(class_dirs)], h)
    class_names = {}
    for lang, fname in LABEL_FILES.items():
        if (folder / fname).is_file():
            class_names[lang] = read_label_file(folder / fname)
            h.update(f"{lang}:{'|'.join(class_names[lang])}".encode())
    return SplitData(spec=spec, split=split, root=split_dir, paths=tuple(paths), targets=tuple(targets),
                     source="elevater", class_names=class_names, fingerprint=h.hexdigest())


def scan_classes(spec: DatasetSpec, classes: list[tuple[int, Path, str]], h) -> tuple[list[str], list[int]]:
    """Image files of (class index, folder, label for errors) in that order, as paths relative to the
    split folder and targets; every file's name, size and mtime go into the fingerprint hash `h`."""
    paths: list[str] = []
    targets: list[int] = []
    for idx, folder, label in classes:
        files = sorted((e for e in os.scandir(folder)
                        if e.is_file() and Path(e.name).suffix.lower() in IMAGE_EXTS), key=lambda e: e.name)
        if not files:
            raise BenchError(f"{folder}: class folder {label} of {spec.name} has no images")
        for e in files:
            rel = f"{folder.name}/{e.name}"
            st = e.stat()
            h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            paths.append(rel)
            targets.append(idx)
    return paths, targets


def _ids(ids: list[int]) -> str:
    shown = ", ".join(map(str, ids[:10]))
    return shown + (f" … ({len(ids)} in all)" if len(ids) > 10 else "")
