"""Plain image-folder source: `<dir>/<split>/<class name>/<image>`, class names matched by name."""

from __future__ import annotations

import hashlib
from pathlib import Path

from bench.datasets.base import SplitData
from bench.datasets.classes import class_order
from bench.datasets.elevater import scan_classes
from bench.datasets.registry import DatasetSpec, ad_hoc_spec
from bench.errors import BenchError

SPLITS = ("test", "train", "val")


def class_dirs(split_dir: Path) -> list[Path]:
    return sorted((p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def is_image_folder(path: Path) -> bool:
    """Split folders whose class folders are named (not numbered, which is the ELEVATER-CN layout)."""
    return path.is_dir() and any(
        (path / s).is_dir() and any(not d.name.isdigit() for d in class_dirs(path / s)) for s in SPLITS)


def spec_for_folder(folder: Path) -> DatasetSpec:
    """An ad-hoc spec (accuracy) whose classes are the first split's class folders, sorted."""
    split = next(folder / s for s in SPLITS if (folder / s).is_dir())
    return ad_hoc_spec(folder.name, [d.name for d in class_dirs(split)])


def load_split(spec: DatasetSpec, folder: Path, split: str) -> SplitData:
    """Scan `<folder>/<split>/<class name>/`, map class names onto the canonical order, fingerprint."""
    split_dir = folder / split
    if not split_dir.is_dir():
        have = [s for s in SPLITS if (folder / s).is_dir()]
        raise BenchError(f"{folder}: no '{split}' split (found: {', '.join(have) or 'none'})")
    dirs = class_dirs(split_dir)
    order = class_order(spec, [d.name for d in dirs], f"{split_dir} (class folders)")
    h = hashlib.sha256(f"folder|{spec.name}|{split}".encode())
    ranked = sorted(zip(order, dirs))
    paths, targets = scan_classes(spec, [(idx, d, repr(d.name)) for idx, d in ranked], h)
    names = tuple(d.name for _, d in ranked)
    return SplitData(spec=spec, split=split, root=split_dir, paths=tuple(paths), targets=tuple(targets),
                     # the folder names serve `--labels dataset` in either language (Chinese folder names
                     # in zh); check_language refuses names in the wrong language
                     source="folder", class_names={"en": names, "zh": names}, fingerprint=h.hexdigest())
