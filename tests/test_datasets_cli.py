"""`bench datasets list|verify|prepare` through the in-process CLI."""

from __future__ import annotations

import json
import tarfile

from bench.datasets.registry import get_dataset
from tests.test_sources import write_wds

ELEVATER_20 = {"caltech-101", "cifar-10", "cifar-100", "country211", "dtd", "eurosat", "fer-2013", "fgvc-aircraft",
               "food-101", "gtsrb", "hateful-memes", "kitti-distance", "mnist", "oxford-flowers-102",
               "oxford-iiit-pets", "patch-camelyon", "rendered-sst2", "resisc-45", "stanford-cars", "voc-2007"}


def test_list_json_has_all_twenty(bench_cli, tmp_path):
    code, out, _ = bench_cli("datasets", "list", "--json", "--data-root", tmp_path)
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    core = {n for n, r in rows.items() if not r["optional"] and not r["demo"] and r["task"] == "classification"}
    assert core == ELEVATER_20
    retrieval = {n for n, r in rows.items() if r["task"] == "retrieval" and not r["demo"]}
    assert retrieval == {"muge", "flickr30k-cn", "coco-cn", "flickr30k", "mscoco"}
    assert rows["muge"]["test"] == 29806 and rows["muge"]["captions"] == {"valid": 5008}
    assert rows["voc-2007"]["metric"] == "11point_mAP" and rows["voc-2007"]["multilabel"]
    assert rows["hateful-memes"]["metric"] == "roc_auc" and rows["caltech-101"]["classes"] == 102


def test_list_shows_found_source(bench_cli, digits_root):
    code, out, _ = bench_cli("datasets", "list", "--data-root", digits_root)
    line = next(row for row in out.splitlines() if row.startswith("digits "))
    assert code == 0 and "elevater:" in line


def test_verify_elevater_counts(bench_cli, digits_root):
    code, out, err = bench_cli("datasets", "verify", "digits", "--data-root", digits_root, "--json")
    assert code == 0, err
    report = json.loads(out)
    test = next(s for s in report["splits"] if s["split"] == "test")
    spec = get_dataset("digits")
    assert test["n"] == spec.splits["test"] == sum(test["per_class"].values())
    assert report["problems"] == [] and len(test["fingerprint"]) == 64


def test_verify_reports_unreadable_and_empty(bench_cli, tmp_path):
    spec = get_dataset("cifar-10")
    folder = write_wds(tmp_path / "wds_vtab-cifar10", list(spec.classes), [0, 1, 2, 3, 4, 6, 7, 8, 9], per_shard=9)
    # corrupt one image member in place: same size, garbage bytes
    shard = folder / "test" / "0.tar"
    with tarfile.open(shard) as tar:
        member = tar.getmember("s0000001.png")
    raw = bytearray(shard.read_bytes())
    raw[member.offset_data:member.offset_data + member.size] = b"x" * member.size
    shard.write_bytes(bytes(raw))
    code, out, _ = bench_cli("datasets", "verify", "cifar-10", "--data-root", tmp_path)
    assert code == 1
    assert "1 unreadable image(s)" in out and "s0000001.png" in out and "no samples for dog" in out


def test_verify_class_mismatch_is_one_line_error(bench_cli, tmp_path):
    spec = get_dataset("cifar-10")
    write_wds(tmp_path / "cifar-10", list(spec.classes[1:]) + ["aeroplane"], [0])
    code, _, err = bench_cli("datasets", "verify", "cifar-10", "--data-root", tmp_path)
    assert code == 2 and err.startswith("error: ") and "'aeroplane'" in err and len(err.strip().splitlines()) == 1


def test_prepare_offline_message(bench_cli, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    code, _, err = bench_cli("datasets", "prepare", "kitti-distance")
    assert code == 2 and "clip-benchmark/wds_vtab-kitti_closest_vehicle_distance" in err
    assert "no network" in err and len(err.strip().splitlines()) == 1


def test_prepare_without_source_says_where_to_put_it(bench_cli, tmp_path):
    code, _, err = bench_cli("datasets", "prepare", "hateful-memes", "--data-root", tmp_path)
    assert code == 2 and "hateful-memes/test/<class id>/<image>" in err
