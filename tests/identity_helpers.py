"""Find the result a test's run just wrote, whatever name its experiment identity gave it."""

from __future__ import annotations

from pathlib import Path


def latest_result(folder: Path, task: str, suffix: str = ".json") -> Path:
    """The most recently written ``<task>[@…|-…]<suffix>`` in folder (results are named by experiment)."""
    files = [p for p in Path(folder).glob(f"{task}*{suffix}")
             if p.name != "index.json" and (suffix != ".json" or not p.name.endswith(".predictions.json"))]
    if suffix == ".json":
        files = [p for p in files if not p.name.endswith(".predictions.csv")]
    if not files:
        raise FileNotFoundError(f"no {task}*{suffix} in {folder}")
    return max(files, key=lambda p: p.stat().st_mtime_ns)
