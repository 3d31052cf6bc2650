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
