"""Paired significance for the report: each zero-shot result against the best in its matrix column.

Two results are paired only when they scored the same images: same dataset (the column), same split, same
dataset fingerprint and the same image list and targets (the digest each run records in ``per_image``). The
test itself is ``bench.stats.paired_compare`` on the per-image records (``<stem>.per_image.npz``) the runs wrote
beside their result JSON; a result without one is reported as not paired, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench import stats
from bench.experiment import per_image_path
from bench.per_image import read_per_image

__all__ = ["Comparison", "column_comparisons", "pairing_problem", "read_record"]


@dataclass(frozen=True)
class Comparison:
    """One row's result compared with the best row of its column (A = this row, B = the best)."""

    dataset: str
    row: str
    best: str
    test: dict | None = None  # bench.stats.paired_compare's answer
    reason: str = ""  # why the two are not paired (test is None)

    @property
    def significant(self) -> bool | None:
        if self.test is None:
            return None
        return self.test["p"] < stats.SIGNIFICANCE


def _get(d: object, *keys: str) -> object:
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def pairing_problem(a: dict, b: dict) -> str:
    """Why results ``a`` and ``b`` did not score the same images ("" when they did, as far as recorded)."""
    if a.get("dataset") != b.get("dataset"):
        return f"different datasets ({a.get('dataset')} vs {b.get('dataset')})"
    if a.get("split") != b.get("split"):
        return f"different splits ({a.get('split')} vs {b.get('split')})"
    if a.get("metric") != b.get("metric"):
        return f"different primary metrics ({a.get('metric')} vs {b.get('metric')})"
    fa, fb = _get(a, "manifest", "dataset", "fingerprint"), _get(b, "manifest", "dataset", "fingerprint")
    if fa and fb and fa != fb:
        return "different dataset fingerprints (the image files or the subset differ)"
    ia, ib = _get(a, "per_image", "images"), _get(b, "per_image", "images")
    missing = [r.get("_file") or r.get("model") for r, i in ((a, ia), (b, ib)) if not i]
    if missing:
        return f"no per-image record for {', '.join(map(str, missing))} (re-run it with this version of bench)"
    if ia != ib:
        return "different image lists or targets"
    return ""


class _Records:
    """Per-image records by result, read once each (None plus a reason when missing or damaged)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[dict | None, str]] = {}

    def get(self, result: dict) -> tuple[dict | None, str]:
        path = result.get("_path")
        name = _get(result, "per_image", "file")
        if not path or not name:
            return None, f"no per-image record for {result.get('_file') or result.get('model')}"
        name = str(name)
        # a plain file name beside the result is read; anything else (a path) is not followed
        file = Path(path).with_name(name) if Path(name).name == name else per_image_path(Path(path))
        key = str(file)
        if key not in self._cache:
            try:
                self._cache[key] = read_per_image(file), ""
            except (OSError, ValueError, KeyError) as exc:
                self._cache[key] = None, f"per-image record {file.name} unreadable ({type(exc).__name__}: {exc})"
        return self._cache[key]


def column_comparisons(matrix, n_boot: int = stats.DEFAULT_BOOTSTRAP) -> dict[tuple[str, str], Comparison]:
    """For every matrix column with two or more rows: each row other than the best against the best
    (the first best row on a tie), keyed by (row, dataset)."""
    records = _Records()
    out: dict[tuple[str, str], Comparison] = {}
    for d in matrix.datasets:
        rows = [m for m in matrix.models if (m, d) in matrix.cells]
        best = [m for m in rows if m in matrix.best(d)]
        if len(rows) < 2 or not best:
            continue
        ref = best[0]
        b = matrix.cells[(ref, d)]
        for m in rows:
            if m == ref:
                continue
            a = matrix.cells[(m, d)]
            reason = pairing_problem(a, b)
            test = None
            if not reason:
                (ra, why_a), (rb, why_b) = records.get(a), records.get(b)
                reason = why_a or why_b
                if not reason:
                    try:
                        test = stats.paired_compare(ra, rb, str(a.get("metric") or "accuracy"), n_boot=n_boot)
                    except (ValueError, KeyError) as exc:
                        reason = f"cannot be compared: {exc}"
            out[(m, d)] = Comparison(d, m, ref, test, reason)
    return out


def read_record(result: dict) -> dict | None:
    """A result's per-image record, or None when it has none or it cannot be read."""
    return _Records().get(result)[0]
