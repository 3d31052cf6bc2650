"""Published reference numbers (`results/published/*.csv`) and their caveats, compared with our results."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import BenchError
from bench.paths import resource_root
from bench.registry import from_mapping, load_yaml

FLAG_POINTS = 2.0  # a delta larger than this (in points) is flagged
COLUMNS = ("model", "dataset", "metric", "value", "source")

# Published metric name -> the key of our result's `metrics` holding the same quantity.
METRIC_KEYS = {
    "top1": "top1",
    "acc1": "top1",
    "accuracy": "top1",
    "mean_per_class_recall": "mean_per_class",
    "mean_per_class": "mean_per_class",
    "11point_mAP": "11point_mAP",
    "roc_auc": "roc_auc",
    # retrieval (results/published/*_retrieval.csv): text->image, image->text, and one direction's mean
    **{f"{d}_r@{k}": f"{d}_r@{k}" for d in ("t2i", "i2t") for k in (1, 5, 10)},
    "t2i_mean_recall": "t2i_mean_recall",
    "i2t_mean_recall": "i2t_mean_recall",
    "mean_recall": "mean_recall",
}
DELTA_MODES = ("show", "flag", "hide")


def default_published_dir() -> Path:
    return resource_root() / "results" / "published"


@dataclass(frozen=True)
class Caveat:
    """A known caveat of some published numbers; `delta` says whether a delta against them means anything."""

    id: str
    note: str
    files: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    delta: str = "show"

    def applies(self, file: str, model: str, dataset: str) -> bool:
        return ((not self.files or file in self.files) and (not self.datasets or dataset in self.datasets)
                and (not self.models or model in self.models))


@dataclass(frozen=True)
class PublishedRow:
    model: str
    dataset: str
    metric: str
    value: float  # percent, 0-100
    source: str
    file: str  # CSV stem, e.g. "chinese_clip"
    caveats: tuple[Caveat, ...] = ()

    @property
    def delta_mode(self) -> str:
        modes = {c.delta for c in self.caveats}
        return "hide" if "hide" in modes else "flag" if "flag" in modes else "show"


@dataclass(frozen=True)
class Published:
    rows: tuple[PublishedRow, ...] = ()
    caveats: tuple[Caveat, ...] = ()
    index: dict = field(default_factory=dict)  # (model, dataset) -> [PublishedRow]

    def lookup(self, model: str, dataset: str) -> list[PublishedRow]:
        """Published rows for one model on one dataset (several files may have one each)."""
        return list(self.index.get((model, dataset), ()))


def load_caveats(path: Path) -> tuple[Caveat, ...]:
    if not path.exists():
        return ()
    data = load_yaml(path) or {}
    items = data.get("caveats", []) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise BenchError(f"{path}: expected a mapping with a list under 'caveats'")
    out = []
    for i, item in enumerate(items):
        where = f"{path}: caveats[{i}]"
        if isinstance(item, dict):
            item = {k: tuple(v) if isinstance(v, list) else v for k, v in item.items()}
        cav = from_mapping(Caveat, item, where)
        if cav.delta not in DELTA_MODES:
            raise BenchError(f"{where}: delta must be one of {', '.join(DELTA_MODES)}, got '{cav.delta}'")
        out.append(cav)
    return tuple(out)


def _read_csv(path: Path, caveats: tuple[Caveat, ...]) -> list[PublishedRow]:
    rows = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise BenchError(f"{path}: expected columns {','.join(COLUMNS)}, got {','.join(reader.fieldnames or [])}")
        for line, rec in enumerate(reader, start=2):
            if rec["metric"] not in METRIC_KEYS:
                raise BenchError(f"{path}:{line}: unknown metric '{rec['metric']}'; known: {', '.join(METRIC_KEYS)}")
            try:
                value = float(rec["value"])
            except ValueError:
                raise BenchError(f"{path}:{line}: value '{rec['value']}' is not a number") from None
            if not 0 <= value <= 100:
                raise BenchError(f"{path}:{line}: value {value} is outside 0-100 (published values are percentages)")
            model, dataset = rec["model"], rec["dataset"]
            rows.append(PublishedRow(model, dataset, rec["metric"], value, rec["source"], path.stem,
                                     tuple(c for c in caveats if c.applies(path.stem, model, dataset))))
    return rows


def load_published(folder: Path | None = None) -> Published:
    """Every `*.csv` in the folder (columns model,dataset,metric,value,source) plus `caveats.yaml`.

    A missing folder gives no references (the report then omits the section) rather than an error.
    """
    folder = Path(folder) if folder is not None else default_published_dir()
    if not folder.is_dir():
        return Published()
    caveats = load_caveats(folder / "caveats.yaml")
    rows = [r for path in sorted(folder.glob("*.csv")) for r in _read_csv(path, caveats)]
    index: dict = {}
    for r in rows:
        index.setdefault((r.model, r.dataset), []).append(r)
    return Published(tuple(rows), caveats, index)


@dataclass(frozen=True)
class Comparison:
    """Our number next to a published one, in points; `delta` is None when it would mean nothing."""

    ref: PublishedRow
    ours: float | None  # percent, the same metric as the published value
    delta: float | None
    flags: tuple[str, ...]


def compare(result: dict, ref: PublishedRow) -> Comparison:
    """Compare one of our zero-shot results with a published row, metric for metric."""
    metrics = result.get("metrics") or {}
    raw = metrics.get(METRIC_KEYS[ref.metric])
    ours = None if raw is None else round(100 * float(raw), 2)
    flags = []
    delta = None
    if ref.delta_mode == "hide":
        ours = None  # our number would invite the comparison the caveat rules out
        flags.append("not comparable")
    elif ours is not None:
        delta = round(ours - ref.value, 2)
        if abs(delta) > FLAG_POINTS:
            flags.append(f"|Δ| > {FLAG_POINTS:g} points")
        if ref.delta_mode == "flag":
            flags.append("caveat: see note")
    return Comparison(ref, ours, delta, tuple(flags))
