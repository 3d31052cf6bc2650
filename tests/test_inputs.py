"""Inputs a user would give must work or fail in one line (issue 15)."""

from __future__ import annotations

import pytest

from bench import __version__
from bench.backends.base import resolve_device
from bench.cli import main
from bench.errors import BenchError


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "nonsense"])
def test_bad_device_is_one_line_error(device):
    with pytest.raises(BenchError, match="--device"):
        resolve_device(device)


def test_unreadable_archive_member_message_is_stable(tmp_path):
    from bench.datasets.base import ImageFiles
    (tmp_path / "shard-0.tar").write_bytes(b"x" * 64)
    ds = ImageFiles(tmp_path, ("shard-0.tar/0001.jpg",), transform=lambda im: im, spans=(("shard-0.tar", 0, 32),))
    _, i, err = ds[0]
    assert i == 0 and "0001.jpg" in err
    assert "0x" not in err and "BytesIO" not in err

