"""Data sources behind one interface: a dict of source name -> how to recognise, name and load it.

A dataset is found under a data root as `<root>/<folder>/` where the folder is one of the names the
registry gives it (or the wds name); the folder's layout says which source reads it. A dataset with
a clip-benchmark wds name is also found in the local Hugging Face cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.datasets import elevater, imagefolder, retrieval, wds
from bench.datasets.base import SplitData
from bench.datasets.registry import DatasetSpec, ad_hoc_spec, find_dataset, list_datasets
from bench.errors import BenchError


@dataclass(frozen=True)
class Source:
    name: str
    layout: str  # for people: shown in errors and `bench datasets list`
    detect: Callable[[Path], bool]
    load: Callable[[DatasetSpec, Path, str], SplitData]
    spec_for_folder: Callable[[Path], DatasetSpec]  # for folders the registry does not know
    task: str = "classification"  # the DatasetSpec.task of what it loads (retrieval: a RetrievalSplit)


@dataclass(frozen=True)
class DatasetRef:
    spec: DatasetSpec
    folder: Path
    source: str = "elevater"


def _is_elevater(path: Path) -> bool:
    if not elevater.is_dataset_folder(path):
        return False
    if any((path / f).is_file() for f in elevater.LABEL_FILES.values()):
        return True
    return not imagefolder.is_image_folder(path)


def _wds_spec(folder: Path) -> DatasetSpec:
    return ad_hoc_spec(folder.name, wds.read_classnames(folder))


# Detection order matters: retrieval layouts first (a retrieval webdataset is also a folder of tar shards),
# then classification tar shards, then numbered class folders, then named ones.
SOURCES: dict[str, Source] = {
    "cn-clip": Source("cn-clip", "<dir>/<split>_texts.jsonl + <dir>/<split>_imgs.tsv or <split>_imgs/ "
                      "(Chinese CLIP retrieval)", retrieval.is_cnclip_folder, retrieval.load_cnclip,
                      retrieval.spec_for_folder, "retrieval"),
    "wds-retrieval": Source("wds-retrieval", "<dir>/dataset_type.txt (retrieval) + <dir>/<split>/*.tar with "
                            "image + txt captions (clip-benchmark retrieval webdataset)",
                            retrieval.is_wds_retrieval_folder, retrieval.load_wds, retrieval.spec_for_folder,
                            "retrieval"),
    "captions": Source("captions", "<dir>/<split>/<image> + <dir>/<split>_captions.csv of image,caption "
                       "(plain folder with a captions file)", retrieval.is_captions_folder,
                       retrieval.load_captions, retrieval.spec_for_folder, "retrieval"),
    "wds": Source("wds", "<dir>/classnames.txt + <dir>/<split>/*.tar (clip-benchmark webdataset)",
                  wds.is_wds_folder, wds.load_split, _wds_spec),
    "elevater": Source("elevater", "<dir>/<split>/<class id>/<image> + label.txt/label_cn.txt (ELEVATER-CN)",
                       _is_elevater, elevater.load_split, elevater.spec_for_folder),
    "folder": Source("folder", "<dir>/<split>/<class name>/<image> (plain image folder)",
                     imagefolder.is_image_folder, imagefolder.load_split, imagefolder.spec_for_folder),
}

# Names that look like ours but are a different task: refused, never silently substituted.
REJECTED = {
    "voc2007": "clip-benchmark's voc2007 is a single-label task on cropped objects, not ELEVATER's "
               "multi-label VOC-2007 (11-point mAP); use voc-2007 (wds source: wds_voc2007_multilabel)",
}
REJECTED["wds_voc2007"] = REJECTED["voc2007"]


def check_not_rejected(name: str) -> None:
    reason = REJECTED.get(Path(name).name.lower())
    if reason:
        raise BenchError(f"{name}: {reason}")


def by_wds_name(name: str) -> DatasetSpec | None:
    """The dataset a webdataset folder is a copy of, by its clip-benchmark or DataComp name (with or without
    the `wds_` prefix): `wds_vtab-cifar10`, `wds_cifar10_test`."""
    wanted = name.lower().removeprefix("wds_")
    return next((s for s in list_datasets(task=None) for copy in wds.COPIES
                 if s.sources.get(copy, "").lower().removeprefix("wds_") == wanted), None)


def detect(path: Path) -> str | None:
    """The source whose layout `path` has, or None."""
    return next((name for name, src in SOURCES.items() if src.detect(path)), None)


def folder_names(spec: DatasetSpec, prefer: str = "") -> tuple[str, ...]:
    """Folder names `spec` may have under a data root; `prefer` (a wds copy, e.g. `datacomp`) first."""
    names = [spec.sources[prefer]] if prefer and spec.sources.get(prefer) else []
    names += list(spec.folder_names)
    for copy in wds.COPIES:
        if spec.sources.get(copy):
            names += [spec.sources[copy], spec.sources[copy].removeprefix("wds_")]
    return tuple(dict.fromkeys(names))


def locate(spec: DatasetSpec, data_root: Path, use_hub_cache: bool = True, prefer: str = "") -> DatasetRef | None:
    """Where `spec` is: a folder under `data_root` in any source's layout, else the HF cache (wds).
    `prefer`: the webdataset copy a protocol expects (`datacomp`), looked for first, on disk and in the cache."""
    if prefer:
        name = spec.sources.get(prefer)
        if name and detect(data_root / name) == "wds":
            return DatasetRef(spec, data_root / name, "wds")
        snapshot = wds.hub_snapshot(spec, prefer) if use_hub_cache else None
        if snapshot:
            return DatasetRef(spec, snapshot, "wds")
    for name in folder_names(spec):
        source = detect(data_root / name)
        if source is not None and SOURCES[source].task == spec.task:
            return DatasetRef(spec, data_root / name, source)
    snapshot = next((p for copy in wds.COPIES if (p := wds.hub_snapshot(spec, copy))), None) if use_hub_cache else None
    if snapshot and spec.task == "retrieval":
        return DatasetRef(spec, snapshot, "wds-retrieval") if retrieval.is_wds_retrieval_folder(snapshot) else None
    return DatasetRef(spec, snapshot, "wds") if snapshot else None


def ref_for_path(path: Path) -> DatasetRef:
    """A dataset folder given directly on the command line."""
    check_not_rejected(str(path))
    source = detect(path)
    if source is None:
        layouts = "; ".join(s.layout for s in SOURCES.values())
        raise BenchError(f"{path}: not a dataset folder (expected {path}/test/<class id>/<image>; layouts: {layouts})")
    spec = find_dataset(path.name) or by_wds_name(path.name)
    if spec is None or spec.task != SOURCES[source].task:  # a folder named like a set of another kind
        spec = SOURCES[source].spec_for_folder(path)
    return DatasetRef(spec, path, source)


def load(ref: DatasetRef, split: str) -> SplitData:
    """One split of `ref`; a multi-label dataset must come with multi-label targets."""
    data = SOURCES[ref.source].load(ref.spec, ref.folder, split)
    if ref.spec.multilabel and any(isinstance(t, int) for t in data.targets):
        # one folder per image cannot say that an image holds several classes: scoring its single
        # labels with mAP would be a different task under the official metric's name
        raise BenchError(f"{ref.folder}: {ref.spec.name} is multi-label ({ref.spec.metric} over all labels of "
                         f"each image), but the {ref.source} source gives one label per image; use a multi-label "
                         f"source ({ref.spec.sources.get('wds', 'wds')} webdataset)")
    return data
