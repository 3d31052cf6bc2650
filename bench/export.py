"""`bench export csv|parquet`: every result as a tidy table; `bench export elevater-submission`: the ELEVATER
leaderboard's submission files from saved scores.

The tidy table has one row per result × metric (columns ``TABLE_COLUMNS``, docs/analysis.md#tidy-export).

The format is the one the ELEVATER toolkit defines (Elevater_Toolkit_IC `submission_file_readme.md`,
`vision_benchmark/commands/zeroshot.py --save-predictions`, `commands/prepare_submit.py` and the
checks of `vision_benchmark/common/prediction_submission.py`): one JSON per dataset

    {"model_name", "dataset_name", "num_trainable_params": 0, "num_params", "num_visual_params",
     "num_backbone_params", "n_shot": 0, "rnd_seeds": [0], "predictions": [[[p, ...], ...]]}

with the predictions a (1, #test images, #classes) probability tensor whose floats are rounded to
6 decimals, and ``all_predictions.zip`` holding ``all_predictions.json`` = ``{"data": [those dicts]}``.
The inputs are runs made with ``bench run --save-logits`` under a protocol whose scores are
probabilities (``elevater``, ``cn-clip``)."""

from __future__ import annotations

import argparse
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.cache import atomic_write_bytes
from bench.cli_common import examples
from bench.errors import BenchError
from bench.experiment import logits_path

__all__ = ["TABLE_COLUMNS", "collect_runs", "load_results", "register_cli", "result_rows", "submission_entry",
           "write_submission", "write_table"]

PRECISION = 6  # decimals, as the toolkit's json_prec_dump


def _round(obj: Any) -> str:
    # the toolkit's json_prec_dump: dump, re-parse with every float rounded, dump again
    return json.dumps(json.loads(json.dumps(obj), parse_float=lambda x: round(float(x), PRECISION)))


def collect_runs(paths: list[Path]) -> list[Path]:
    """Result JSONs (given, or found under the given folders) that have a saved ``.logits.npz``."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            if not logits_path(p).is_file():
                raise BenchError(f"{p}: no saved scores beside it (expected {logits_path(p).name}); "
                                 "re-run it with `bench run --save-logits`")
            found.append(p)
        elif p.is_dir():
            found += sorted(r for r in p.rglob("*.json") if logits_path(r).is_file())
        else:
            raise BenchError(f"{p}: no such result file or runs folder")
    if not found:
        raise BenchError(f"no result with saved scores under {', '.join(map(str, paths))}; "
                         "run `bench run --save-logits` first (under --protocol elevater or cn-clip)")
    return found


def _check_probabilities(scores: np.ndarray, multilabel: bool, where: str) -> None:
    """The server's checks (PredictionSubmission.validate_predictions): every value in [0, 1], and
    for multi-class each row sums to 1 (rel. tolerance 1e-3). Logits fail them: refuse early."""
    if scores.ndim != 2 or not np.all(np.isfinite(scores)) or scores.min() < 0.0 or scores.max() > 1.0:
        raise BenchError(f"{where}: the saved scores are not probabilities in [0, 1] (min {scores.min():.4g}, "
                         f"max {scores.max():.4g}); the ELEVATER server scores probabilities: run with "
                         "--protocol elevater or cn-clip (softmax(100·cos) scores)")
    if not multilabel:
        sums = scores.sum(axis=1)
        bad = np.flatnonzero(~np.isclose(sums, 1.0, rtol=1e-3, atol=0.0))
        if bad.size:
            raise BenchError(f"{where}: row {int(bad[0])} of the saved scores sums to {sums[bad[0]]:.6g}, expected 1 "
                             "for a multi-class dataset; run with --protocol elevater or cn-clip")


def submission_entry(result_path: Path, *, model_name: str | None = None,
                     params: dict[str, int | None] | None = None) -> dict:
    """One dataset's prediction dict, from a result JSON and its saved scores."""
    from bench.datasets.registry import find_dataset

    result = json.loads(Path(result_path).read_text(encoding="utf-8"))
    with np.load(logits_path(result_path), allow_pickle=False) as z:
        scores = np.asarray(z["scores"], dtype=np.float64)
        targets = np.asarray(z["targets"])
    spec = find_dataset(result.get("dataset", ""))
    if spec is None or not spec.elevater_id:
        raise BenchError(f"{result_path}: dataset {result.get('dataset')!r} is not an ELEVATER dataset "
                         "(no elevater_id in bench's dataset registry)")
    if result.get("task") != "zeroshot":
        raise BenchError(f"{result_path}: task {result.get('task')!r}; only zero-shot runs are exported")
    if result.get("limit") is not None:
        raise BenchError(f"{result_path}: a --limit {result['limit']} run covers part of the test set; the "
                         "server needs a prediction for every test image")
    if scores.shape[1] != spec.num_classes:
        raise BenchError(f"{result_path}: saved scores have {scores.shape[1]} classes, "
                         f"{spec.elevater_id} has {spec.num_classes}")
    _check_probabilities(scores, targets.ndim == 2, str(logits_path(result_path)))
    params = params or {}
    return {
        "model_name": model_name or result["model"],
        "dataset_name": spec.elevater_id,
        "num_trainable_params": 0,  # zero-shot: the model is frozen
        "num_params": params.get("num_params"),
        "num_visual_params": params.get("num_visual_params"),
        "num_backbone_params": params.get("num_backbone_params"),
        "n_shot": 0,
        "rnd_seeds": [0],
        "predictions": [scores.tolist()],
    }


def write_submission(results: list[Path], out: Path, *, model_name: str | None = None,
                     params: dict[str, int | None] | None = None) -> list[Path]:
    """Write ``<dataset_name>.json`` per run and ``all_predictions.zip`` into ``out``; returns the files.
    Every entry is checked before anything is written, so bad input leaves no partial submission."""
    entries = [submission_entry(r, model_name=model_name, params=params) for r in results]
    seen: dict[str, Path] = {}
    for r, e in zip(results, entries, strict=True):
        if e["dataset_name"] in seen:
            raise BenchError(f"two runs for {e['dataset_name']}: {seen[e['dataset_name']]} and {r}; "
                             "a zero-shot submission has one prediction tensor per dataset")
        seen[e["dataset_name"]] = r
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for e in entries:
        path = out / f"{e['dataset_name']}.json"
        atomic_write_bytes(path, _round(e).encode("utf-8"))
        written.append(path)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("all_predictions.json", _round({"data": entries}))
    atomic_write_bytes(out / "all_predictions.zip", buf.getvalue())
    written.append(out / "all_predictions.zip")
    return written


# ----------------------------------------------------------------------------- the tidy table

TABLE_COLUMNS = ("model", "dataset", "task", "split", "protocol", "precision", "language", "prompts", "labels",
                 "n", "metric", "value", "ci_low", "ci_high", "primary_metric", "limit", "settings", "experiment",
                 "created", "file")
_FLOATS = ("value", "ci_low", "ci_high")
_INTS = ("n", "limit")
TABLE_FORMATS = ("csv", "parquet")


def _number(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def result_rows(runs: list[Path]) -> list[dict]:
    """One dict per result × metric (keys ``TABLE_COLUMNS``) from every result JSON under ``runs``.

    Results with a ``metrics`` mapping (zero-shot, linear probe) give a row per numeric metric; a metric that
    is null (top-5 on a set of 5 classes or fewer) gives none. Values and interval bounds are fractions in
    [0, 1], as in the result JSON. A file that cannot be read or parsed is skipped with a warning naming it."""
    from bench.report import load_results as load_result_files
    from bench.report.sections import settings_text

    rows = []
    for r in load_result_files(list(map(Path, runs))):
        metrics = r.get("metrics")
        if not isinstance(metrics, dict):
            continue
        ci = r.get("ci95") if isinstance(r.get("ci95"), dict) else {}
        ident = r.get("experiment") if isinstance(r.get("experiment"), dict) else {}
        manifest = r.get("manifest") if isinstance(r.get("manifest"), dict) else {}
        base = {"model": r["model"], "dataset": r["dataset"], "task": r["task"], "split": r.get("split"),
                "protocol": r.get("protocol"), "precision": r.get("precision"), "language": r.get("language"),
                "prompts": r.get("prompts"), "labels": r.get("labels"), "n": r.get("n_samples"),
                "primary_metric": r.get("metric"), "limit": r.get("limit"), "settings": settings_text(r),
                "experiment": ident.get("id"), "created": manifest.get("created"), "file": r.get("_path")}
        for name, value in metrics.items():
            v = _number(value)
            if v is None:
                continue
            bounds = ci.get(name)
            lo, hi = (bounds if isinstance(bounds, (list, tuple)) and len(bounds) == 2 else (None, None))
            rows.append({**base, "metric": name, "value": v, "ci_low": _number(lo), "ci_high": _number(hi)})
    for row in rows:
        for k in _INTS:
            row[k] = None if _number(row[k]) is None else int(row[k])
        for k in TABLE_COLUMNS:
            if k not in _FLOATS and k not in _INTS and row[k] is not None:
                row[k] = str(row[k])
    return [{k: row[k] for k in TABLE_COLUMNS} for row in rows]


def load_results(runs: list[Path] | Path) -> Any:
    """Every result under ``runs`` as a pandas DataFrame, one row per result × metric (``result_rows``).

    Always a DataFrame (pandas is required; ``result_rows`` gives the same rows as dicts without it)."""
    try:
        import pandas as pd
    except ImportError:
        raise BenchError("bench.load_results returns a pandas DataFrame: pip install pandas "
                         "(or use bench.result_rows for a list of dicts)") from None
    runs = [runs] if isinstance(runs, (str, Path)) else list(runs)
    frame = pd.DataFrame(result_rows(runs), columns=list(TABLE_COLUMNS))
    for k in _FLOATS:
        frame[k] = frame[k].astype("float64")
    for k in _INTS:
        frame[k] = frame[k].astype("Int64")
    return frame


def write_table(rows: list[dict], out: Path, fmt: str) -> Path:
    """Write the rows as CSV (UTF-8, empty cell for a missing value) or Parquet, atomically."""
    out = Path(out)
    if fmt == "csv":
        import csv

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(TABLE_COLUMNS), lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow({k: "" if v is None else v for k, v in row.items()})  # str(float) round-trips
        data = buf.getvalue().encode("utf-8")
    elif fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise BenchError("parquet export needs pyarrow: pip install pyarrow (or export csv)") from None
        types = {k: pa.float64() if k in _FLOATS else pa.int64() if k in _INTS else pa.string() for k in TABLE_COLUMNS}
        table = pa.table({k: pa.array([r[k] for r in rows], type=types[k]) for k in TABLE_COLUMNS})
        sink = io.BytesIO()
        pq.write_table(table, sink)
        data = sink.getvalue()
    else:
        raise BenchError(f"table format must be one of {', '.join(TABLE_FORMATS)}, got '{fmt}'")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, data)
    return out


def _cmd_table(args: argparse.Namespace) -> int:
    rows = result_rows(args.runs)
    if not rows:
        raise BenchError(f"no result with metrics under {', '.join(map(str, args.runs))} "
                         "(expected <model>/<dataset>/<task>.json files from `bench run`)")
    path = write_table(rows, args.out, args.export)
    print(f"wrote {path} ({len(rows)} rows)")
    return 0


def _cmd_elevater_submission(args: argparse.Namespace) -> int:
    params = {"num_params": args.num_params, "num_visual_params": args.num_visual_params,
              "num_backbone_params": args.num_backbone_params}
    written = write_submission(collect_runs(args.runs), args.out, model_name=args.model_name, params=params)
    for p in written:
        print(p)
    return 0


TABLE_EXAMPLES = {"csv": "bench export csv results/runs --out results.csv",
                  "parquet": "bench export parquet results/runs --out results.parquet   # needs pyarrow"}
SUBMISSION_EXAMPLE = ("bench export elevater-submission results/runs --out submission/ --model-name my-clip"
                      "   # from runs saved with --save-logits")


def register_cli(subparsers) -> None:
    """`bench export elevater-submission RUNS --out DIR`."""
    export = subparsers.add_parser("export", help="export saved runs for other tools", **examples(
        *(TABLE_EXAMPLES[fmt] for fmt in TABLE_FORMATS), SUBMISSION_EXAMPLE))
    sub = export.add_subparsers(dest="export", required=True, metavar="FORMAT")
    for fmt in TABLE_FORMATS:
        t = sub.add_parser(fmt, help=f"every result as a tidy {fmt} table: one row per result × metric"
                           + (" (needs pyarrow)" if fmt == "parquet" else ""), **examples(TABLE_EXAMPLES[fmt]))
        t.add_argument("runs", nargs="+", type=Path, metavar="RUNS", help="result JSONs or runs folders")
        t.add_argument("--out", type=Path, required=True, help=f"the .{fmt} file to write")
        t.set_defaults(func=_cmd_table)
    p = sub.add_parser("elevater-submission",
                       help="the ELEVATER leaderboard's prediction files from runs saved with --save-logits",
                       **examples(SUBMISSION_EXAMPLE))
    p.add_argument("runs", nargs="+", type=Path, metavar="RUNS", help="result JSONs or runs folders")
    p.add_argument("--out", type=Path, required=True, help="folder for <dataset>.json and all_predictions.zip")
    p.add_argument("--model-name", default=None, help="model_name in the files (default: the run's model)")
    for name in ("num-params", "num-visual-params", "num-backbone-params"):
        p.add_argument(f"--{name}", type=int, default=None,
                       help=f"{name.replace('-', '_')} in the files (see the toolkit's submission_file_readme)")
    p.set_defaults(func=_cmd_elevater_submission)


