"""Files and folders bench writes follow the umask (a report can be served, a shared cache shared)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch


def modes(root: Path) -> tuple[set[int], set[int]]:
    """(file modes, folder modes) of everything under `root`, root excluded."""
    files, dirs = set(), set()
    for p in root.rglob("*"):
        if p.is_symlink():
            continue
        (dirs if p.is_dir() else files).add(stat.S_IMODE(p.stat().st_mode))
    return files, dirs


@pytest.fixture
def umask():
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask):
    from bench.cache import FeatureCache, TextCache, atomic_write_bytes, atomic_write_json

    umask(mask)
    atomic_write_bytes(tmp_path / "a" / "report.md", b"x")
    atomic_write_json(tmp_path / "a" / "zeroshot.json", {"a": 1})
    FeatureCache(tmp_path / "c", shard_size=4).save_shard("ab" * 32, 0, torch.zeros(2, 3), torch.arange(2), [])
    TextCache(tmp_path / "c").save("cd" * 32, torch.zeros(2, 3))
    files, dirs = modes(tmp_path)
    assert files == {0o666 & ~mask}
    assert dirs == {0o777 & ~mask}


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_generated_digits_follow_the_umask(tmp_path, umask, mask):
    from bench.datasets.digits import prepare_digits

    umask(mask)
    folder = prepare_digits(tmp_path / "digits")
    files, dirs = modes(tmp_path)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~mask
    assert files == {0o666 & ~mask}
    assert dirs == {0o777 & ~mask}


def test_a_run_and_its_report_follow_the_umask(bench_cli, cache_dir, digits_root, tmp_path, umask):
    """Results, predictions, caches, the report and its charts: all readable by the group and others."""
    umask(0o022)
    out = tmp_path / "runs"
    code, _, err = bench_cli("-q", "run", "--model", "demo", "--dataset", "digits", "--data-root", digits_root,
                             "--cache-dir", cache_dir, "--out", out, "--workers", "0", "--save-predictions",
                             "--no-progress")
    assert code == 0, err
    code, _, err = bench_cli("-q", "report", out, "--out", tmp_path / "report")
    assert code == 0, err
    for root in (out, tmp_path / "report", cache_dir / "features", cache_dir / "text"):
        files, dirs = modes(root)
        assert files and files == {0o644}, (root, sorted(map(oct, files)))
        assert dirs <= {0o755}, (root, sorted(map(oct, dirs)))
