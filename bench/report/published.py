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
    # protocols that remove the caveat: a result run under one of them is not concerned (open_clip's other split
    # and other class names are no caveat for a result under --protocol datacomp, which reads its copy)
    unless_protocols: tuple[str, ...] = ()

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
    caveats: tuple[Caveat, ...] = ()  # the ones that concern this result (its protocol may remove some)


def file_protocols() -> dict[str, str]:
    """Published file stem -> the protocol that made its numbers (the protocol registry's `published:`)."""
    from bench.protocols import list_protocols

    return {p.published: p.name for p in list_protocols() if p.published}


def protocol_caveat(file: str, ours: str, theirs: str) -> Caveat:
    """The note beside a comparison across protocols: its Δ mixes the model and the protocol."""
    return Caveat(f"protocol-{file}-{ours}", f"Run under protocol '{ours}', while the {file} numbers were made "
                  f"under '{theirs}' (other templates, class names, preprocessing or metric), so the Δ mixes the "
                  f"model with the protocol; `bench run --protocol {theirs}` compares like for like.",
                  files=(file,), delta="flag")


def registry_mismatch(result: dict) -> str | None:
    """Why a result is not the registered model its name says (None: it is, or the result cannot tell).

    A model YAML may take a registry name (`openai/vit-b16`) with another backend, architecture or weights;
    published numbers belong to the registry's model, so such a result is never compared with them."""
    from bench.models import list_models

    ran = (result.get("manifest") or {}).get("model")
    spec = next((m for m in list_models() if m.name == result.get("model")), None)
    if not isinstance(ran, dict) or spec is None:
        return None
    differ = [f"{k} {ran.get(k)!r} (registry: {getattr(spec, k)!r})" for k in ("backend", "model", "pretrained")
              if ran.get(k) != getattr(spec, k)]
    return f"not the registry's {spec.name}: " + ", ".join(differ) if differ else None


def compare(result: dict, ref: PublishedRow, protocol_of: dict[str, str] | None = None) -> Comparison:
    """Compare one of our zero-shot results with a published row, metric for metric.

    The published number belongs to one protocol (`protocol_of`, default: the registry's): a result under it
    is compared like for like; one under another protocol keeps its Δ, flagged "different protocol", with a
    caveat that says which. A result that is not the registry's model of its name gets no Δ."""
    protocol_of = file_protocols() if protocol_of is None else protocol_of
    protocol = result.get("protocol") or "bench"
    caveats = tuple(c for c in ref.caveats if protocol not in c.unless_protocols)
    expected = protocol_of.get(ref.file)
    if expected and protocol != expected:
        caveats += (protocol_caveat(ref.file, protocol, expected),)
    modes = {c.delta for c in caveats}
    mode = "hide" if "hide" in modes else "flag" if "flag" in modes else "show"
    metrics = result.get("metrics") or {}
    raw = metrics.get(METRIC_KEYS[ref.metric])
    ours = None if raw is None else round(100 * float(raw), 2)
    flags = []
    delta = None
    mismatch = registry_mismatch(result)
    if mismatch:
        ours = None
        flags.append(mismatch)
    elif mode == "hide":
        ours = None  # our number would invite the comparison the caveat rules out
        flags.append("not comparable")
    elif ours is not None:
        delta = round(ours - ref.value, 2)
        if abs(delta) > FLAG_POINTS:
            flags.append(f"|Δ| > {FLAG_POINTS:g} points")
        if expected and protocol != expected:
            flags.append(f"different protocol ({protocol}; published: {expected})")
        if any(c.delta == "flag" and not c.id.startswith("protocol-") for c in caveats):
            flags.append("caveat: see note")
    return Comparison(ref, ours, delta, tuple(flags), caveats)
