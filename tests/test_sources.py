"""Dataset sources: ELEVATER-CN folders, clip-benchmark webdataset shards, plain image folders."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from identity_helpers import latest_result
from PIL import Image

from bench.datasets import sources, wds
from bench.datasets.classes import class_order, normalise
from bench.datasets.registry import get_dataset, list_datasets
from bench.errors import BenchError
from bench.runner import load_data, resolve_datasets

KITTI_SENTENCES = ["a photo i took of a car on my left or right side.", "a photo i took with a car nearby.",
                   "a photo i took with a car in the distance.", "a photo i took with no car."]


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (value % 256, 0, 0)).save(buf, format="png")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_wds(folder: Path, classnames: list[str], labels: list, split: str = "test", per_shard: int = 3,
              multilabel: bool = False, images: list[bytes] | None = None) -> Path:
    """A clip-benchmark style webdataset: classnames.txt + <split>/<n>.tar (png + cls, or png + npy)."""
    (folder / split).mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("\n".join(classnames) + "\n", encoding="utf-8")
    if multilabel:
        (folder / "dataset_type.txt").write_text("multilabel\n")
    for s in range(0, len(labels), per_shard):
        with tarfile.open(folder / split / f"{s // per_shard}.tar", "w") as tar:
            for i in range(s, min(s + per_shard, len(labels))):
                _add(tar, f"s{i:07d}.png", images[i] if images else _png(i))
                if multilabel:
                    vec = np.zeros(len(classnames), dtype=np.float32)
                    vec[list(labels[i])] = 1
                    buf = io.BytesIO()
                    np.save(buf, vec)
                    _add(tar, f"s{i:07d}.npy", buf.getvalue())
                else:
                    _add(tar, f"s{i:07d}.cls", str(labels[i]).encode())
    return folder


# --- class-order mapping -----------------------------------------------------------------

def test_normalise_ignores_case_underscores_and_final_dot():
    assert normalise("Cheese_Plate.") == normalise("cheese plate") == "cheese plate"
    assert normalise("A  b") != normalise("ab")


def test_class_order_maps_by_name_not_position():
    spec = get_dataset("cifar-10")
    shuffled = list(reversed(spec.classes))
    order = class_order(spec, shuffled, "x")
    assert [spec.classes[i] for i in order] == shuffled


def test_class_order_errors_name_unmatched_and_uncovered():
    spec = get_dataset("cifar-10")
    names = list(spec.classes[:-1]) + ["zebra"]
    with pytest.raises(BenchError) as err:
        class_order(spec, names, "somewhere/classnames.txt")
    msg = str(err.value)
    assert "somewhere/classnames.txt" in msg and "'zebra'" in msg and f"'{spec.classes[-1]}'" in msg
    assert "class_map" in msg


def test_class_order_rejects_duplicates_and_wrong_count():
    spec = get_dataset("cifar-10")
    with pytest.raises(BenchError, match="all map to class 0"):
        class_order(spec, [spec.classes[0]] + list(spec.classes[:-1]), "x")
    with pytest.raises(BenchError, match="9 source classes for 10 registered"):
        class_order(spec, list(spec.classes[:-1]), "x")


def test_kitti_class_order_is_pinned():
    spec = get_dataset("kitti-distance")
    # classes 0..3: < 8 m (left/right side), 8-20 m (nearby), > 20 m (in the distance), no vehicle
    assert spec.classes == ("a car on my left or right side", "a car nearby", "a car in the distance", "no car")
    # CLIP's sentence names, in any order, land on the same indices
    shuffled = [KITTI_SENTENCES[i] for i in (3, 1, 0, 2)]
    assert class_order(spec, shuffled, "x") == (3, 1, 0, 2)


def test_registry_class_maps_target_real_classes():
    for spec in list_datasets():
        assert set(spec.class_map.values()) <= set(spec.classes), spec.name


# --- webdataset source -------------------------------------------------------------------

def test_wds_split_maps_labels_and_reads_images_lazily(tmp_path):
    spec = get_dataset("kitti-distance")
    wds_order = [KITTI_SENTENCES[i] for i in (2, 0, 3, 1)]  # the shard's own class order
    labels = [0, 1, 2, 3, 0, 1, 2]
    folder = write_wds(tmp_path / "wds_vtab-kitti_closest_vehicle_distance", wds_order, labels)
    ref = sources.locate(spec, tmp_path, use_hub_cache=False)
    assert ref is not None and ref.source == "wds"
    data = load_data(ref, "test", None)
    assert data.targets == tuple((2, 0, 3, 1)[x] for x in labels)
    assert data.class_names["en"] == tuple(KITTI_SENTENCES)
    assert len(wds.shards(folder / "test")) == 3 and data.paths[3] == "1.tar/s0000003.png"
    ds = data.images(lambda img: np.asarray(img)[0, 0, 0])
    assert [ds[k][0] for k in range(len(ds))] == list(range(len(labels)))


def test_wds_index_agrees_with_datasets_webdataset_loader(tmp_path):
    datasets = pytest.importorskip("datasets")
    spec = get_dataset("cifar-10")
    labels = [3, 1, 4, 1, 5, 9, 2, 6]
    folder = write_wds(tmp_path / "wds_vtab-cifar10", list(spec.classes), labels, per_shard=4)
    hf = datasets.load_dataset("webdataset", data_files={"test": str(folder / "test" / "*.tar")}, split="test",
                               cache_dir=str(tmp_path / "hf"))
    data = load_data(sources.DatasetRef(spec, folder, "wds"), "test", None)
    assert list(data.targets) == [int(x) for x in hf["cls"]] == labels


def test_wds_multilabel_voc(tmp_path):
    spec = get_dataset("voc-2007")
    labels = [(0, 14), (6,), (14, 11, 7), (19,)]
    folder = write_wds(tmp_path / "wds_voc2007_multilabel", list(spec.classes), labels, multilabel=True)
    data = load_data(sources.DatasetRef(spec, folder, "wds"), "test", None)
    assert data.targets == ((0, 14), (6,), (7, 11, 14), (19,))


def test_voc_single_label_variant_is_refused(tmp_path):
    spec = get_dataset("voc-2007")
    folder = write_wds(tmp_path / "x", list(spec.classes), [0, 1, 2])  # cls labels: cropped single-label
    with pytest.raises(BenchError, match="wds_voc2007_multilabel"):
        load_data(sources.DatasetRef(spec, folder, "wds"), "test", None)
    with pytest.raises(BenchError, match="single-label task on cropped objects"):
        resolve_datasets(["voc2007"], tmp_path)
    with pytest.raises(BenchError, match="cropped"):
        sources.ref_for_path(tmp_path / "wds_voc2007")


def test_multilabel_dataset_from_single_label_folders_is_refused(tmp_path):
    spec = get_dataset("voc-2007")
    for i in range(spec.num_classes):
        d = tmp_path / "voc-2007-classification" / "test" / f"{i:02d}"
        d.mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(d / "a.png")
    ref = sources.locate(spec, tmp_path, use_hub_cache=False)
    assert ref.source == "elevater"
    with pytest.raises(BenchError, match="one label per image.*wds_voc2007_multilabel"):
        load_data(ref, "test", None)


def test_wds_wrong_classnames_fail_clearly(tmp_path):
    spec = get_dataset("cifar-10")
    folder = write_wds(tmp_path / "wds_vtab-cifar10", list(spec.classes[:9]) + ["plane"], [0, 1])
    with pytest.raises(BenchError, match=r"no registered class for 'plane'.*'truck'"):
        load_data(sources.DatasetRef(spec, folder, "wds"), "test", None)


def test_wds_found_in_hub_cache(tmp_path, monkeypatch):
    spec = get_dataset("cifar-10")
    cache = tmp_path / "hub"
    repo = cache / "datasets--clip-benchmark--wds_vtab-cifar10"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    write_wds(repo / "snapshots" / commit, list(spec.classes), [0, 1, 2])
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    ref = sources.locate(spec, tmp_path / "empty-root")
    assert ref is not None and ref.source == "wds" and ref.folder.name == commit
    assert load_data(ref, "test", None).targets == (0, 1, 2)


# --- plain image folder ------------------------------------------------------------------

def test_image_folder_maps_names(tmp_path):
    spec = get_dataset("cifar-10")
    for i, name in enumerate(reversed(spec.classes)):
        d = tmp_path / "cifar-10" / "test" / name.replace(" ", "_")
        d.mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(d / f"{i}.png")
    ref = sources.locate(spec, tmp_path, use_hub_cache=False)
    assert ref.source == "folder"
    data = load_data(ref, "test", None)
    assert data.targets == tuple(range(10))
    assert [p.split("/")[0].replace("_", " ") for p in data.paths] == list(spec.classes)


def test_image_folder_unknown_class_fails(tmp_path):
    spec = get_dataset("cifar-10")
    for name in list(spec.classes[:9]) + ["lorry"]:
        d = tmp_path / "cifar-10" / "test" / name
        d.mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(d / "a.png")
    with pytest.raises(BenchError, match=r"cifar-10/test \(class folders\).*'lorry'"):
        load_data(sources.locate(spec, tmp_path, use_hub_cache=False), "test", None)


# --- end to end: one run per source ------------------------------------------------------

def _digits_as(tmp_path: Path, digits_root: Path, source: str) -> Path:
    """A copy of the digits test split (first 8 per class) in the given source's layout."""
    spec = get_dataset("digits")
    src = digits_root / "digits" / "test"
    root = tmp_path / f"root-{source}"
    files = [(int(d.name), sorted(d.iterdir())[:8]) for d in sorted(src.iterdir())]
    if source == "wds":
        order = list(reversed(range(10)))  # the shards' own class order differs from ours
        labels, images = [], []
        for c, paths in files:
            for p in paths:
                labels.append(order.index(c))
                images.append(p.read_bytes())
        write_wds(root / "digits", [spec.classes[i] for i in order], labels, per_shard=25, images=images)
    else:
        for c, paths in files:
            d = root / "digits" / "test" / spec.classes[c].upper()
            d.mkdir(parents=True)
            for p in paths:
                (d / p.name).write_bytes(p.read_bytes())
    return root


@pytest.mark.parametrize("source", ["elevater", "wds", "folder"])
def test_run_from_each_source(source, tmp_path, digits_root, cache_dir, bench_cli):
    root = digits_root if source == "elevater" else _digits_as(tmp_path, digits_root, source)
    code, out, err = bench_cli("run", "--model", "demo", "--dataset", "digits", "--data-root", root,
                               "--cache-dir", cache_dir, "--out", tmp_path / "runs", "--workers", "0",
                               "--limit", "80", "--no-progress")
    assert code == 0, err
    result = json.loads(latest_result(tmp_path / "runs" / "demo" / "digits", "zeroshot").read_text())
    assert result["source"] == source and result["metric"] == "accuracy" and result["n_samples"] == 80
    assert result["metrics"]["primary"] == result["metrics"]["top1"] > 0.3  # chance is 0.1


def test_multilabel_run_writes_map(tmp_path, digits_root, cache_dir, bench_cli, monkeypatch):
    """A multi-label digits set (each image also tagged with (label+1) % 10) scores 11-point mAP."""
    import bench.datasets.registry as reg

    base = get_dataset("digits")
    multi = replace(base, multilabel=True, metric="11point_mAP")
    monkeypatch.setitem(reg._registry(), "digits", multi)
    src = digits_root / "digits" / "test"
    labels, images = [], []
    for d in sorted(src.iterdir()):
        for p in sorted(d.iterdir())[:5]:
            labels.append((int(d.name), (int(d.name) + 1) % 10))
            images.append(p.read_bytes())
    write_wds(tmp_path / "root" / "digits", list(base.classes), labels, multilabel=True, images=images)
    code, out, err = bench_cli("run", "--model", "demo", "--dataset", "digits", "--data-root", tmp_path / "root",
                               "--cache-dir", cache_dir, "--out", tmp_path / "runs", "--workers", "0", "--no-progress")
    assert code == 0, err
    result = json.loads(latest_result(tmp_path / "runs" / "demo" / "digits", "zeroshot").read_text())
    assert result["metric"] == "11point_mAP" and result["source"] == "wds"
    assert result["metrics"]["primary"] == result["metrics"]["11point_mAP"]
    assert 0.2 < result["metrics"]["primary"] <= 1.0


def test_all_finds_each_source_and_lists_the_rest(tmp_path):
    write_wds(tmp_path / "wds_vtab-cifar10", list(get_dataset("cifar-10").classes), [0])
    for name in KITTI_SENTENCES:
        d = tmp_path / "kitti" / "test" / name.rstrip(".")
        d.mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(d / "a.png")
    refs, missing = resolve_datasets(["all"], tmp_path)
    assert {(r.spec.name, r.source) for r in refs} >= {("cifar-10", "wds"), ("kitti-distance", "folder")}
    assert any(m.startswith("food-101: not found") and "bench datasets prepare food-101" in m for m in missing)
    kitti = next(r for r in refs if r.spec.name == "kitti-distance")
    data = load_data(kitti, "test", None)
    assert [p.split("/")[0] for p in data.paths] == [s.rstrip(".") for s in KITTI_SENTENCES]
    assert data.targets == (0, 1, 2, 3)
