"""Report content as plain data (sections of tables, charts and notes) built from result JSON only.

Templates render these objects and nothing else, so both formats show the same numbers and a missing
value is "—" everywhere. Result files written by features still in progress may lack keys: every
lookup here tolerates that, and a section without data is not built at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.report import charts
from bench.report.published import Caveat, Published, compare, file_protocols
from bench.stats import SIGNIFICANCE

MISSING = "—"
NOT_SIGNIFICANT = "n.s."  # beside a matrix number not significantly different from its column's best


# ----------------------------------------------------------------------------- view objects


@dataclass(frozen=True)
class Cell:
    text: str
    sort: float | str | None = None  # what the browser sorts by (numbers sort numerically)
    classes: tuple[str, ...] = ()  # "best", "flag", "num"
    marks: tuple[int, ...] = ()  # caveat note numbers shown next to the cell
    title: str = ""


@dataclass(frozen=True)
class Table:
    id: str
    headers: list[str]
    rows: list[list[Cell]]
    caption: str = ""
    sortable: bool = True
    kind: str = "table"
    summary: str = ""  # HTML: the table is collapsed under this line (a <details> element)


@dataclass(frozen=True)
class Figure:
    chart: charts.Chart
    caption: str = ""
    kind: str = "chart"
    summary: str = ""  # HTML: the chart is collapsed under this line (a <details> element)


@dataclass
class Section:
    id: str
    title: str
    intro: str = ""
    blocks: list = field(default_factory=list)
    notes: list[tuple[int, str]] = field(default_factory=list)


class Notes:
    """Numbers caveats in order of first use, so one caveat keeps one number across the report."""

    def __init__(self) -> None:
        self.numbers: dict[str, int] = {}
        self.texts: dict[int, str] = {}

    def mark(self, caveat: Caveat) -> int:
        if caveat.id not in self.numbers:
            n = len(self.numbers) + 1
            self.numbers[caveat.id] = n
            self.texts[n] = caveat.note
        return self.numbers[caveat.id]

    def listing(self, marks) -> list[tuple[int, str]]:
        return [(n, self.texts[n]) for n in sorted(set(marks))]


# ----------------------------------------------------------------------------- helpers


def get(d: Any, *keys: Any, default: Any = None) -> Any:
    """Nested lookup that returns `default` for any missing key, index or wrong type on the way."""
    for k in keys:
        try:
            d = d[k]
        except (KeyError, IndexError, TypeError):
            return default
    return default if d is None else d


def num(x: Any) -> float | None:
    try:
        return None if x is None or isinstance(x, bool) else float(x)
    except (TypeError, ValueError):
        return None


def pct(x: Any) -> str:
    """A fraction as a percentage with one decimal, or "—"."""
    v = num(x)
    return MISSING if v is None else f"{100 * v:.1f}"


def pct_cell(x: Any, classes: tuple[str, ...] = (), marks: tuple[int, ...] = ()) -> Cell:
    v = num(x)
    return Cell(pct(v), None if v is None else 100 * v, ("num", *classes), marks)


def ci_text(r: Any, key: str = "primary") -> str:
    """" ±x.x": half the width of a result's 95% bootstrap interval of one metric, in points; "" without one."""
    ci = get(r, "ci95", key)
    if not isinstance(ci, (list, tuple)) or len(ci) != 2 or num(ci[0]) is None or num(ci[1]) is None:
        return ""
    return f" ±{50 * (num(ci[1]) - num(ci[0])):.1f}"


def points_cell(x: Any, signed: bool = False, classes: tuple[str, ...] = ()) -> Cell:
    v = num(x)
    if v is None:
        return Cell(MISSING, None, ("num", *classes))
    return Cell(f"{v:+.1f}" if signed else f"{v:.1f}", v, ("num", *classes))


def text_cell(x: Any) -> Cell:
    if x is None or x == "":
        return Cell(MISSING)
    s = ", ".join(map(str, x)) if isinstance(x, (list, tuple)) else str(x)
    return Cell(s, s)


def int_cell(x: Any) -> Cell:
    v = num(x)
    return Cell(MISSING, None, ("num",)) if v is None else Cell(f"{int(v)}", v, ("num",))


def elevater_datasets() -> tuple[str, ...]:
    from bench.datasets.registry import list_datasets

    return tuple(s.name for s in list_datasets(include_optional=False, include_demo=False))


TASK_NAMES = {"zeroshot": "zero-shot", "linear_probe": "linear probe", "retrieval": "retrieval"}


def task_name(task: Any) -> str:
    """A task as the report names it: ``zero-shot``, ``linear probe``, ``study: prompts`` (files keep their ids)."""
    t = str(task)
    if t.startswith("study-"):
        return f"study: {t.removeprefix('study-')}"
    return TASK_NAMES.get(t, t.replace("_", " "))


def by_task(results: list[dict], task: str) -> list[dict]:
    return [r for r in results if r.get("task") == task]


def settings_text(r: dict, ignore: tuple[str, ...] = ()) -> str:
    """What makes a result not the default experiment (split, limit, skipped images, language, prompts,
    labels, protocol, precision), as shown next to its number; "" for the default experiment.
    `ignore`: identity fields left out (a split that is the published one)."""
    from bench.experiment import non_default  # late: keeps report imports light

    ident = r.get("experiment")
    if isinstance(ident, dict):
        diff = {k: v for k, v in non_default(ident).items() if k not in ignore}
    else:  # results written before identities were recorded: what the file itself says
        diff = {k: r[k] for k in ("split",) if r.get(k) not in (None, "test") and k not in ignore}
        if r.get("limit") is not None:
            diff["limit"] = r["limit"]
    skipped = r.get("skipped_images")
    if isinstance(skipped, int) and skipped > 0:
        diff["skip_bad_images"] = f"{skipped} skipped"
    return ", ".join(f"{k}={'+'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in diff.items())


def row_labels(results: list[dict]) -> dict[int, str]:
    """A row name per result: the model, plus language/prompts/labels when one model ran several ways,
    plus every non-default setting, so no subset or other-split number reads as the full test result."""
    configs: dict[str, set] = {}
    for r in results:
        configs.setdefault(r["model"], set()).add((r.get("language"), r.get("prompts"), r.get("labels")))
    out = {}
    for r in results:
        name = r["model"]
        if len(configs[r["model"]]) > 1:
            extra = ", ".join(str(x) for x in (r.get("language"), r.get("prompts"), r.get("labels")) if x)
            name = f"{r['model']} ({extra})"
        settings = settings_text(r)
        out[id(r)] = f"{name} [{settings}]" if settings else name
    return out


# ----------------------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class Matrix:
    """Zero-shot results as rows (models, or model + settings) × datasets."""

    models: list[str]
    datasets: list[str]
    cells: dict  # (row, dataset) -> result
    means: dict  # row -> mean primary over the datasets it has (fraction) or None
    elevater_means: dict  # row -> (mean primary over ELEVATER datasets or None, count)
    elevater: tuple[str, ...] = ()

    def primary(self, model: str, dataset: str) -> float | None:
        return num(get(self.cells.get((model, dataset)), "metrics", "primary"))

    def best(self, dataset: str) -> set[str]:
        """Rows with the highest primary metric on a dataset (all of them on a tie)."""
        vals = {m: self.primary(m, dataset) for m in self.models}
        vals = {m: v for m, v in vals.items() if v is not None}
        if not vals:
            return set()
        top = max(vals.values())
        return {m for m, v in vals.items() if v == top}


def _mean(vals: list[float]) -> float | None:
    return sum(vals) / len(vals) if vals else None


def zeroshot_matrix(results: list[dict], elevater: tuple[str, ...] | None = None) -> Matrix:
    """The model × dataset matrix of zero-shot results (later files win on duplicates)."""
    zs = by_task(results, "zeroshot")
    elevater = elevater_datasets() if elevater is None else elevater
    labels = row_labels(zs)
    models = list(dict.fromkeys(labels[id(r)] for r in zs))
    order = {d: i for i, d in enumerate(elevater)}
    datasets = sorted(dict.fromkeys(r["dataset"] for r in zs), key=lambda d: (d not in order, order.get(d, 0), d))
    cells = {(labels[id(r)], r["dataset"]): r for r in zs}
    matrix = Matrix(models, datasets, cells, {}, {}, elevater)
    for m in models:
        vals = {d: matrix.primary(m, d) for d in datasets}
        matrix.means[m] = _mean([v for v in vals.values() if v is not None])
        ev = [v for d, v in vals.items() if v is not None and d in elevater]
        matrix.elevater_means[m] = (_mean(ev), len(ev))
    return matrix


def p_text(test: dict) -> str:
    """A p-value as shown: 3 significant digits; a bootstrap p of 0 as below its resolution."""
    p = num(test.get("p"))
    if p is None:
        return MISSING
    if p == 0 and test.get("test") == "paired bootstrap" and test.get("resamples"):
        return f"< {1 / int(test['resamples']):.2g}"
    return f"{p:.3g}"


def comparison_text(comp: Any) -> str:
    """One line on a paired comparison with the column's best (a matrix cell's tooltip)."""
    if comp.test is None:
        return f"not paired with {comp.best}: {comp.reason}"
    t = comp.test
    lo, hi = (100 * num(v) for v in t["ci95"])
    verdict = "significant" if comp.significant else "not significant"
    return (f"vs {comp.best}: Δ {100 * t['delta']:+.1f} pts, 95% CI [{lo:+.1f}, {hi:+.1f}], {t['test']} "
            f"p {p_text(t) if p_text(t).startswith('<') else '= ' + p_text(t)} ({verdict} at 5%)")


def matrix_section(matrix: Matrix, published: Published, notes: Notes, paired: dict | None = None) -> Section | None:
    if not matrix.cells:
        return None
    paired = paired or {}
    has_elevater = any(d in matrix.elevater for d in matrix.datasets)
    has_other = any(d not in matrix.elevater for d in matrix.datasets)
    headers = ["model", *matrix.datasets]
    if has_elevater:
        headers.append(f"ELEVATER mean (of {len(matrix.elevater)})")
    if has_other or not has_elevater:
        headers.append("mean (all shown)")
    rows, used = [], []
    for m in matrix.models:
        row = [text_cell(m)]
        for d in matrix.datasets:
            r = matrix.cells.get((m, d))
            if r is None:
                row.append(Cell(MISSING, None, ("num", "missing")))
                continue
            marks = tuple(notes.mark(c) for ref in published.lookup(r["model"], d) for c in ref.caveats if c.datasets)
            used += marks
            p, t = num(get(r, "metrics", "primary")), num(get(r, "metrics", "top1"))
            text = (pct(p) + ci_text(r) if r.get("metric") in (None, "accuracy")
                    else f"{pct(p)}{ci_text(r)} ({pct(t)}{ci_text(r, 'top1')})")
            title = f"{r.get('metric', 'primary')} {pct(p)}, top-1 {pct(t)}, n={r.get('n_samples', '?')}"
            comp = paired.get((m, d))
            extra: tuple[str, ...] = ()
            if comp is not None:
                title += "; " + comparison_text(comp)
                if comp.significant is False:
                    text += " " + NOT_SIGNIFICANT
                    extra = ("ns",)
            row.append(Cell(text, None if p is None else 100 * p,
                            ("num", *(("best",) if m in matrix.best(d) else ()), *extra),
                            tuple(dict.fromkeys(marks)), title))
        if has_elevater:
            mean, n = matrix.elevater_means[m]
            cell = pct_cell(mean)
            row.append(Cell(f"{cell.text} ({n})" if mean is not None else MISSING, cell.sort, cell.classes))
        if has_other or not has_elevater:
            row.append(pct_cell(matrix.means[m]))
        rows.append(row)
    metrics = sorted({f"{d}: {matrix.cells[k].get('metric')}" for k in matrix.cells for d in [k[1]]
                      if matrix.cells[k].get("metric") not in (None, "accuracy")})
    intro = ("Primary metric in %; where it is not accuracy, top-1 follows in parentheses "
             f"({'; '.join(metrics)}). " if metrics else "Accuracy in %. ")
    if any(get(r, "ci95") for r in matrix.cells.values()):
        intro += "± is half the width of the 95% bootstrap confidence interval over test images. "
    intro += "Best per dataset in bold. "
    if any(c.test is not None for c in paired.values()):
        intro += (f"{NOT_SIGNIFICANT}: not significantly different from the best of its column (paired test on the "
                  "same images, p ≥ 0.05; see Paired comparisons). ")
    intro += "ELEVATER mean: mean over the ELEVATER datasets a row has (count in parentheses)."
    sec = Section("matrix", "Zero-shot results", intro, [Table("matrix", headers, rows)])
    sec.notes = notes.listing(used)
    return sec


# ----------------------------------------------------------------------------- retrieval

RETRIEVAL_COLUMNS = tuple(f"{d}_r@{k}" for d in ("t2i", "i2t") for k in (1, 5, 10))


def retrieval_section(results: list[dict], published: Published, notes: Notes) -> Section | None:
    """Models × retrieval datasets: R@1/5/10 text→image and image→text and mean recall (%)."""
    rs = by_task(results, "retrieval")
    if not rs:
        return None
    labels = row_labels(rs)
    cells = {(labels[id(r)], r["dataset"]): r for r in rs}  # later files win, as in the matrix
    best: dict[str, float] = {}
    for (_, d), r in cells.items():
        v = num(get(r, "metrics", "mean_recall"))
        if v is not None:
            best[d] = max(best.get(d, v), v)
    rows, used = [], []
    for (label, d), r in cells.items():
        marks = tuple(dict.fromkeys(notes.mark(c) for ref in published.lookup(r["model"], d)
                                    for c in ref.caveats if c.datasets))
        used += marks
        mr = num(get(r, "metrics", "mean_recall"))
        rows.append([text_cell(label), Cell(str(d), str(d), (), marks), text_cell(r.get("split")),
                     int_cell(r.get("n_images", r.get("n_samples"))), int_cell(r.get("n_texts")),
                     *(pct_cell(get(r, "metrics", k)) for k in RETRIEVAL_COLUMNS),
                     pct_cell(mr, ("best",) if mr is not None and mr == best.get(d) else ())])
    headers = ["model", "dataset", "split", "images", "captions", "T→I R@1", "T→I R@5", "T→I R@10",
               "I→T R@1", "I→T R@5", "I→T R@10", "mean recall"]
    sec = Section("retrieval", "Zero-shot retrieval",
                  "Recall at k in %: T→I, a caption finds one of its images among the k most similar images; "
                  "I→T, an image finds one of its captions among the k most similar captions. Mean recall: the "
                  "mean of the six; best per dataset in bold. Published numbers, where they exist, are compared "
                  "metric for metric under “Against published numbers”.",
                  [Table("retrieval", headers, rows)])
    sec.notes = notes.listing(used)
    return sec


def paired_section(paired: dict) -> Section | None:
    """Every paired comparison behind the matrix's n.s. marks, with Δ, its 95% CI and p (or why not paired)."""
    # results from before per-image records would only fill the table with "not paired" rows
    if not any(c.test is not None or "no per-image record" not in c.reason for c in paired.values()):
        return None
    rows = []
    for comp in paired.values():
        t = comp.test
        if t is None:
            rows.append([text_cell(comp.dataset), text_cell(comp.row), text_cell(comp.best), Cell(MISSING),
                         Cell(MISSING, None, ("num",)), Cell(MISSING), Cell(MISSING, None, ("num",)), Cell(MISSING),
                         Cell(f"not paired: {comp.reason}", comp.reason, ("flag",))])
            continue
        lo, hi = (100 * num(v) for v in t["ci95"])
        verdict = "significant" if comp.significant else "not significant"
        rows.append([text_cell(comp.dataset), text_cell(comp.row), text_cell(comp.best), text_cell(t.get("metric")),
                     points_cell(100 * t["delta"], signed=True), Cell(f"[{lo:+.1f}, {hi:+.1f}]", lo, ("num",)),
                     Cell(p_text(t), num(t.get("p")), ("num",)), text_cell(t.get("test")),
                     Cell(verdict, verdict, () if comp.significant else ("ns",))])
    return Section("paired", "Paired comparisons",
                   "Each result against the best result of its column, on the same images (same dataset, split, "
                   "dataset fingerprint and image list). Δ = this row − the best, in points of the primary metric, "
                   "with its 95% paired-bootstrap interval. p: McNemar's test for accuracy, the paired bootstrap for "
                   "other metrics; significant when p < 0.05, with no correction for the number of comparisons.",
                   [Table("paired", ["dataset", "model", "compared with", "metric", "Δ (pts)", "95% CI (pts)", "p",
                                     "test", "verdict"], rows)])


PER_CLASS_ROWS = 100  # classes shown per dataset (the worst first); the result JSON has them all
HEATMAP_CLASSES = 20  # a confusion heat map is drawn for sets with at most this many classes


def confusion_from_record(r: dict, k: int) -> list[list[int]] | None:
    """The full confusion matrix of a single-label result from its per-image record (None without one)."""
    from bench.report.paired import read_record

    rec = read_record(r)
    if rec is None or "prediction" not in rec or rec["targets"].ndim != 1:
        return None
    t, p = rec["targets"].astype(int), rec["prediction"].astype(int)
    if t.size == 0 or t.max() >= k or p.max() >= k or min(t.min(), p.min()) < 0:
        return None
    out = [[0] * k for _ in range(k)]
    for a, b in zip(t.tolist(), p.tolist()):
        out[a][b] += 1
    return out


def _per_class(r: dict) -> tuple[list, list, list, list] | None:
    """(recall, support, confused_with, names) of a result's per-class view, or None if it has none."""
    pc = get(r, "per_class")
    recall = get(pc, "recall")
    if not isinstance(recall, list) or not recall:
        return None
    k = len(recall)
    names = get(r, "class_names")
    names = names if isinstance(names, list) and len(names) == k else [str(c) for c in range(k)]

    def listed(key: str) -> list:
        v = get(pc, key)
        return v if isinstance(v, list) and len(v) == k else [None] * k

    return [num(x) for x in recall], listed("support"), listed("confused_with"), names


def per_class_section(matrix: Matrix) -> Section | None:
    """Per dataset, a collapsed table of per-class recall for every row that has one, the worst classes of
    the column's best row first, with each other row's Δ against that best row."""
    blocks = []
    for d in matrix.datasets:
        rows = [m for m in matrix.models if (m, d) in matrix.cells and _per_class(matrix.cells[(m, d)])]
        if not rows:
            continue
        best = [m for m in rows if m in matrix.best(d)] or rows[:1]
        ref = best[0]
        others = [m for m in rows if m != ref]
        views = {m: _per_class(matrix.cells[(m, d)]) for m in rows}
        recall, support, confused, names = views[ref]
        k = len(recall)
        others = [m for m in others if len(views[m][0]) == k]  # another class count: not comparable per class
        order = sorted(range(k), key=lambda c: (recall[c] is None, recall[c] if recall[c] is not None else 0, c))
        shown = order[:PER_CLASS_ROWS]
        headers = ["index", "class", "images", f"recall: {ref}", "most confused with",
                   *(f"recall: {m}" for m in others), *(f"Δ {m} (pts)" for m in others)]
        table_rows = []
        for c in shown:
            conf = confused[c]
            conf_name = names[conf] if isinstance(conf, int) and 0 <= conf < k else None
            row = [int_cell(c), text_cell(names[c]), int_cell(support[c]), pct_cell(recall[c]), text_cell(conf_name)]
            row += [pct_cell(views[m][0][c]) for m in others]
            for m in others:
                a, b = views[m][0][c], recall[c]
                row.append(points_cell(None if a is None or b is None else 100 * (a - b), signed=True))
            table_rows.append(row)
        differ = [m for m in others if views[m][3] != names]
        caption = (f"{d}: recall (%) per class, worst first for {ref}"
                   + (f"; {PER_CLASS_ROWS} worst of {k} classes shown" if k > len(shown) else "")
                   + (f"; class names of {ref} (labels differ for {', '.join(differ)})" if differ else ""))
        n_tables = sum(isinstance(b, Table) for b in blocks)
        blocks.append(Table(f"per-class-{n_tables}", headers, table_rows, caption=caption,
                            summary=f"{d}: {k} classes, {len(rows)} result(s)"))
        cm = confusion_from_record(matrix.cells[(ref, d)], k) if k <= HEATMAP_CLASSES else None
        if cm is not None:
            blocks.append(Figure(charts.heatmap(f"confusion-{n_tables}", f"{d}: confusions of {ref}", cm, names),
                                 caption=f"{d}: confusion matrix of {ref} (rows: true class, shaded by row share)",
                                 summary=f"{d}: confusion matrix of {ref}"))
    if not blocks:
        return None
    return Section("per-class", "Per-class accuracy",
                   "Recall per class (the share of a class's test images predicted as that class), for single-label "
                   "sets. Classes are ordered worst first by the column's best result; Δ = that row − the best, in "
                   "points. Click a dataset to open its table.", blocks)


# ----------------------------------------------------------------------------- published references


def published_split(r: dict) -> str:
    """The split a dataset's published numbers use: its registry `eval_split` (MUGE: valid), else test."""
    from bench.datasets.registry import find_dataset

    spec = find_dataset(str(r.get("dataset")))
    return (spec.eval_split if spec is not None and spec.eval_split else "") or "test"


def comparison_settings(r: dict, extra_ignore: tuple[str, ...] = ()) -> str:
    """Settings that make a result a different experiment from the published one: as `settings_text`, but
    a retrieval result on the split the published numbers use (MUGE's valid) is not flagged for its split."""
    same_split = r.get("task") == "retrieval" and r.get("split") == published_split(r)
    return settings_text(r, ignore=(("split",) if same_split else ()) + extra_ignore)


def published_section(results: list[dict], published: Published, notes: Notes) -> Section | None:
    rows, used = [], []
    protocol_of = file_protocols()
    for r in [r for r in results if r.get("task") in ("zeroshot", "retrieval")]:
        for ref in published.lookup(r["model"], r["dataset"]):
            c = compare(r, ref, protocol_of)
            marks = tuple(notes.mark(cav) for cav in c.caveats)
            used += marks
            flagged = ("flag",) if c.flags else ()
            delta = points_cell(c.delta, signed=True, classes=flagged)
            unmatched = c.ours is None and c.delta is None and any(f.startswith("not the registry") for f in c.flags)
            if c.delta is None and "not comparable" in c.flags:
                delta = Cell("n/a", None, ("num", "flag"), title="different task: no delta")
            elif unmatched:
                delta = Cell("n/a", None, ("num", "flag"), title="another model under a registry name: no delta")
            settings = comparison_settings(r)
            # the protocol is judged by compare() (like for like under the one that made the table)
            subset = comparison_settings(r, extra_ignore=("protocol",))
            flags = list(c.flags)
            if subset:  # a subset, other split, language or precision is not the published experiment
                flags.append(f"not like-for-like ({subset})")
            flagged = ("flag",) if flags else ()
            if subset and c.delta is not None:
                delta = points_cell(c.delta, signed=True, classes=flagged)
            model = f"{r['model']} [{settings}]" if settings else r["model"]
            rows.append([text_cell(model), text_cell(r["dataset"]), text_cell(ref.file), text_cell(ref.metric),
                         points_cell(ref.value), points_cell(c.ours) if c.delta is not None or c.ours is not None
                         else Cell("n/a" if "not comparable" in c.flags or unmatched else MISSING, None, ("num",)),
                         delta,
                         Cell(", ".join(flags) or MISSING, ", ".join(flags), flagged, marks),
                         Cell(ref.source, ref.source)])
    if not rows:
        return None
    sec = Section("published", "Against published numbers",
                  "Our number in the published metric (in %) next to the published one; Δ = ours − published, "
                  "in points, flagged when |Δ| exceeds 2 points or the numbers are not like-for-like.",
                  [Table("published", ["model", "dataset", "source file", "metric", "published", "ours", "Δ",
                                       "flags", "source"], rows)])
    sec.notes = notes.listing(used)
    return sec


def side_by_side_section(matrix: Matrix) -> Section | None:
    shared = [d for d in matrix.datasets if sum((m, d) in matrix.cells for m in matrix.models) >= 2]
    if len(matrix.models) < 2 or not shared:
        return None
    series = {m: [None if matrix.primary(m, d) is None else 100 * matrix.primary(m, d) for d in shared]
              for m in matrix.models}
    fams = sorted({charts.family(m) for m in matrix.models})
    chart = charts.grouped_bars("side-by-side", "Primary metric per dataset", shared, series,
                                charts.model_colours(matrix.models), "primary metric (%)")
    return Section("side-by-side", "Models side by side",
                   f"Families: {', '.join(fams)} (one colour per family, lighter shades for further models).",
                   [Figure(chart)])


# ----------------------------------------------------------------------------- studies


def study_dataset_cell(s: dict) -> Cell:
    """The dataset, with the settings that make this study a different experiment (``digits [limit=100]``),
    so two studies of one model × dataset are told apart; the arms the table shows (variant, sets) are left out."""
    settings = settings_text(s, ignore=("variant", "variants", "sets"))
    return text_cell(f"{s.get('dataset')} [{settings}]" if settings else s.get("dataset"))


def prompts_section(results: list[dict]) -> Section | None:
    studies = by_task(results, "study-prompts")
    if not studies:
        return None
    rows, boxes = [], []
    for s in studies:
        vals = [100 * v for v in (num(get(t, "primary")) for t in get(s, "templates", default=[])) if v is not None]
        summary = get(s, "summary", default={})
        ens = num(get(s, "ensemble", "primary"))
        if vals:
            boxes.append((f"{s['model']} · {study_dataset_cell(s).text}", vals, None if ens is None else 100 * ens, s["model"]))
        rows.append([text_cell(s["model"]), study_dataset_cell(s), text_cell(get(s, "prompts")),
                     int_cell(get(s, "n_templates", default=len(vals) or None)),
                     pct_cell(get(summary, "min")), pct_cell(get(summary, "median")), pct_cell(get(summary, "max")),
                     points_cell(None if num(get(summary, "std")) is None else 100 * num(get(summary, "std"))),
                     pct_cell(ens), text_cell(get(s, "best", "template")), text_cell(get(s, "worst", "template")),
                     pct_cell(get(s, "greedy", "test_primary")),
                     text_cell(" | ".join(map(str, get(s, "greedy", "selected", default=[]))))])
    blocks: list = []
    if boxes:
        models = list(dict.fromkeys(b[3] for b in boxes))
        blocks.append(Figure(charts.boxes("prompt-sensitivity", "Primary metric per single template", boxes,
                                          charts.model_colours(models), "primary metric (%)")))
    blocks.append(Table("prompt-sensitivity", ["model", "dataset", "prompt set", "templates", "min", "median", "max",
                                               "std (pts)", "ensemble", "best template", "worst template",
                                               "greedy (test)", "greedy selection"], rows))
    return Section("prompts", "Prompt sensitivity",
                   "Each box: the primary metric (%) of every single template of the set; diamond: all templates "
                   "ensembled. Greedy: templates added while the validation score improved, scored on test.", blocks)


def study_paired_cells(test: Any) -> list[Cell]:
    """[p, verdict] of a study's recorded paired test (``bench.stats.paired_compare``); "—" without one."""
    if not isinstance(test, dict) or num(test.get("p")) is None:
        return [Cell(MISSING, None, ("num",)), Cell(MISSING)]
    sig = num(test["p"]) < SIGNIFICANCE
    verdict = "significant" if sig else "not significant"
    ci = test.get("ci95")
    title = f"{test.get('test', 'paired test')}" + (
        f"; Δ 95% CI [{100 * num(ci[0]):+.1f}, {100 * num(ci[1]):+.1f}] pts"
        if isinstance(ci, list) and len(ci) == 2 and num(ci[0]) is not None and num(ci[1]) is not None else "")
    return [Cell(p_text(test), num(test["p"]), ("num",), title=title), Cell(verdict, verdict, () if sig else ("ns",))]


def sets_section(results: list[dict]) -> Section | None:
    studies = by_task(results, "study-sets")
    rows = []
    for s in studies:
        entries = list(get(s, "sets", default=[]))
        if get(s, "union"):
            entries.append({"name": "union of all sets", **s["union"]})
        best = max((num(get(e, "primary")) or -1 for e in entries), default=None)
        for e in entries:
            p = num(get(e, "primary"))
            d = num(get(e, "delta"))
            rows.append([text_cell(s.get("model")), study_dataset_cell(s), text_cell(get(e, "name")),
                         int_cell(get(e, "n_templates")),
                         pct_cell(p, ("best",) if p is not None and p == best else ()), pct_cell(get(e, "top1")),
                         points_cell(None if d is None or e is entries[0] else 100 * d, signed=True),
                         *study_paired_cells(get(e, "paired"))])
    if not rows:
        return None
    return Section("prompt-sets", "Prompt sets compared",
                   "Primary metric and top-1 (%) per prompt set; best in bold. Δ: against the first set, in points; "
                   "p: paired test on the same images (McNemar for accuracy, paired bootstrap otherwise).",
                   [Table("prompt-sets", ["model", "dataset", "prompt set", "templates", "primary", "top-1",
                                          "Δ vs first (pts)", "p", "verdict"], rows)])


def negation_section(results: list[dict]) -> Section | None:
    studies = by_task(results, "study-negation")
    variants, recalls, probe = [], [], []
    for s in studies:
        for v in get(s, "variants", default=[]):
            labels = get(v, "labels", default=[])
            variants.append([text_cell(s.get("model")), study_dataset_cell(s), text_cell(get(v, "name")),
                             text_cell(labels), pct_cell(get(v, "primary")), pct_cell(get(v, "top1"))])
            for i, rec in enumerate(get(v, "per_class_recall", default=[])):
                recalls.append([text_cell(s.get("model")), study_dataset_cell(s), text_cell(get(v, "name")),
                                int_cell(i), text_cell(get(labels, i)), pct_cell(rec)])
        for c in get(s, "probe", "classes", default=[]):
            probe.append([text_cell(s.get("model")), study_dataset_cell(s), text_cell(get(c, "class")),
                          pct_cell(get(c, "negation_rate"))])
        if get(s, "probe", "overall_rate") is not None:
            probe.append([text_cell(s.get("model")), study_dataset_cell(s), text_cell("(overall)"),
                          pct_cell(get(s, "probe", "overall_rate"))])
    if not variants and not probe:
        return None
    blocks = []
    if variants:
        blocks.append(Table("negation", ["model", "dataset", "variant", "labels", "primary", "top-1"], variants))
    if recalls:
        blocks.append(Table("negation-recall", ["model", "dataset", "variant", "class", "label", "recall"], recalls,
                            caption="Per-class recall (%) under each label variant"))
    if probe:
        blocks.append(Table("negation-probe", ["model", "dataset", "class", "negation rate"], probe,
                            caption="Negation probe: how often a negated label is preferred for images of its class"))
    return Section("negation", "Negation", "Label variants that do or do not negate a class "
                   "(e.g. 没有汽车 “no car” vs 其它 “other” on KITTI).", blocks)


def labels_section(results: list[dict]) -> Section | None:
    studies = by_task(results, "study-labels")
    summary, movers = [], []
    for s in studies:
        summary.append([text_cell(s.get("model")), study_dataset_cell(s), text_cell(get(s, "baseline")),
                        text_cell(get(s, "variant")), pct_cell(get(s, "primary", "baseline")),
                        pct_cell(get(s, "primary", "variant")),
                        points_cell(None if num(get(s, "primary", "delta")) is None
                                    else 100 * num(get(s, "primary", "delta")), signed=True),
                        *study_paired_cells(get(s, "paired"))])
        per_class = get(s, "top_movers") or sorted(get(s, "per_class", default=[]),
                                                   key=lambda c: -abs(num(get(c, "delta")) or 0))[:20]
        for c in per_class:
            if not isinstance(c, dict):
                continue
            d = num(get(c, "delta"))
            movers.append([text_cell(s.get("model")), study_dataset_cell(s), int_cell(get(c, "index")),
                           text_cell(get(c, "class")), pct_cell(get(c, "baseline")), pct_cell(get(c, "variant")),
                           points_cell(None if d is None else 100 * d, signed=True)])
    if not summary:
        return None
    blocks = [Table("label-variants", ["model", "dataset", "baseline labels", "variant", "baseline", "variant score",
                                       "Δ (pts)", "p", "verdict"], summary)]
    if movers:
        blocks.append(Table("label-movers", ["model", "dataset", "index", "class", "baseline", "variant", "Δ (pts)"],
                            movers, caption="Classes whose recall moved most (%)"))
    return Section("labels", "Label variants", "Primary metric (%) with the baseline labels and with the variant.",
                   blocks)


def knowledge_section(results: list[dict]) -> Section | None:
    """`bench study knowledge`: each arm's score and paired test against plain templates, and the classes
    each arm moved most."""
    studies = by_task(results, "study-knowledge")
    summary, movers = [], []
    for s in studies:
        for a in get(s, "arms", default=[]):
            if not isinstance(a, dict):
                continue
            d = num(get(a, "delta"))
            p = num(get(a, "mcnemar", "p"))
            summary.append([text_cell(s.get("model")), study_dataset_cell(s), text_cell(get(a, "arm")),
                            int_cell(get(a, "classes_with_text")), int_cell(get(a, "n_prompts")),
                            pct_cell(get(a, "primary")), pct_cell(get(a, "top1")),
                            points_cell(None if d is None else 100 * d, signed=True),
                            Cell(MISSING if p is None else f"{p:.3g}", p, ("num",))])
            for g in get(a, "top_movers", default=[]):
                gd = num(get(g, "delta"))
                movers.append([text_cell(s.get("model")), study_dataset_cell(s), text_cell(get(a, "arm")),
                               text_cell(get(g, "class")), pct_cell(get(g, "plain")), pct_cell(get(g, "arm")),
                               points_cell(None if gd is None else 100 * gd, signed=True)])
    if not summary:
        return None
    blocks = [Table("knowledge-arms", ["model", "dataset", "arm", "classes with text", "prompts", "primary", "top-1",
                                       "Δ vs plain (pts)", "McNemar p"], summary)]
    if movers:
        blocks.append(Table("knowledge-movers", ["model", "dataset", "arm", "class", "plain", "arm recall",
                                                 "Δ (pts)"], movers,
                            caption="Classes whose recall (%) each arm moved most against plain templates"))
    return Section("knowledge", "Per-class knowledge", "Plain templates against templates + definitions, + "
                   "descriptions (label-file fields), CuPL prompt lists, ELEVATER knowledge and their union, on the "
                   "same cached image features (docs/knowledge.md). McNemar p: top-1 of the arm vs plain.", blocks)


def regularization_cell(reg: Any) -> Cell:
    """``C = 0.316`` from a probe's ``{"name", "value", "meaning"}`` (the meaning as the tooltip); other
    mappings as ``key = value`` pairs."""
    if not isinstance(reg, dict):
        return text_cell(reg)
    if "name" in reg and "value" in reg:
        v = num(reg["value"])
        text = f"{reg['name']} = {v:.3g}" if v is not None else f"{reg['name']} = {reg['value']}"
        return Cell(text, v, ("num",) if v is not None else (), title=str(reg.get("meaning") or ""))
    return text_cell(", ".join(f"{k} = {v}" for k, v in reg.items()))


def probe_section(results: list[dict], matrix: Matrix) -> Section | None:
    probes = by_task(results, "linear_probe")
    if not probes:
        return None
    zs = {(r["model"], r["dataset"]): r for r in by_task(results, "zeroshot")}
    rows = []
    datasets = list(dict.fromkeys(p["dataset"] for p in probes))
    models = list(dict.fromkeys(p["model"] for p in probes))
    series: dict[str, list] = {}
    colours, hatches = {}, {}
    base = charts.model_colours(models)
    for m in models:
        for kind in ("zero-shot", "linear probe"):
            name = f"{m} {kind}"
            colours[name] = base[m]
            hatches[name] = "//" if kind == "linear probe" else None
            series[name] = [None] * len(datasets)
    for p in probes:
        z = zs.get((p["model"], p["dataset"]))
        zp, lp = num(get(z, "metrics", "primary")), num(get(p, "metrics", "primary"))
        i = datasets.index(p["dataset"])
        series[f"{p['model']} zero-shot"][i] = None if zp is None else 100 * zp
        series[f"{p['model']} linear probe"][i] = None if lp is None else 100 * lp
        reg_cell = regularization_cell(get(p, "regularization"))
        few = "; ".join(f"{get(f, 'k')}-shot" + (f" (asked {f['requested_k']})" if f.get("requested_k") else "")
                        + f" {pct(get(f, 'mean'))}±{pct(get(f, 'std'))}"
                        for f in get(p, "few_shot", default=[]) if isinstance(f, dict))
        rows.append([text_cell(p["model"]), text_cell(p["dataset"]), pct_cell(zp), pct_cell(lp),
                     points_cell(None if zp is None or lp is None else 100 * (lp - zp), signed=True),
                     text_cell(get(p, "implementation")), reg_cell, int_cell(get(p, "n_train")),
                     int_cell(get(p, "n_val")), text_cell(few)])
    series = {k: v for k, v in series.items() if any(x is not None for x in v)}
    chart = charts.grouped_bars("probe-vs-zeroshot", "Linear probe vs zero-shot (primary metric)", datasets, series,
                                colours, "primary metric (%)", hatches)
    return Section("linear-probe", "Linear probe vs zero-shot",
                   "Primary metric (%) of a logistic-regression probe on frozen image features (regularisation "
                   "chosen on a validation split, never on test) against zero-shot; hatched bars: probe.",
                   [Figure(chart), Table("linear-probe", ["model", "dataset", "zero-shot", "linear probe", "gain (pts)",
                                                          "implementation", "regularisation", "train", "val",
                                                          "few-shot"], rows)])


# ----------------------------------------------------------------------------- summary and manifest


def _values(results: list[dict], *keys: str) -> list[str]:
    return list(dict.fromkeys(str(v) for v in (get(r, *keys) for r in results) if v not in (None, "")))


def summary_section(results: list[dict], matrix: Matrix) -> Section:
    models = list(dict.fromkeys(r["model"] for r in results))
    langs = {r["model"]: r.get("language") for r in results if r.get("language")}
    created = sorted(_values(results, "manifest", "created"))
    versions: dict[str, list[str]] = {}
    for r in results:
        for k, v in (get(r, "manifest", "versions", default={}) or {}).items():
            versions.setdefault(str(k), [])
            if str(v) not in versions[str(k)]:
                versions[str(k)].append(str(v))
    settings = []
    for key in ("split", "language", "prompts", "labels", "limit"):
        vals = _values(results, key)
        if vals:
            settings.append(f"{key}: {', '.join(vals)}")
    for key in ("device",):
        vals = _values(results, "manifest", key)
        if vals:
            settings.append(f"{key}: {', '.join(vals)}")
    rows = [
        ["models", f"{len(models)}: " + ", ".join(
            f"{m} ({charts.family(m)}{', ' + langs[m] if m in langs else ''})" for m in models)],
        ["datasets", f"{len(matrix.datasets)}: {', '.join(matrix.datasets)}" if matrix.datasets else MISSING],
        ["tasks", ", ".join(dict.fromkeys(task_name(r.get("task")) for r in results))],
        ["settings", "; ".join(settings) or MISSING],
        ["when", (created[0] if len(created) == 1 or not created else f"{created[0]} … {created[-1]}") or MISSING],
        ["versions", "; ".join(f"{k} {' / '.join(v)}" + (" (differs between runs)" if len(v) > 1 else "")
                               for k, v in sorted(versions.items())) or MISSING],
        ["result files", str(len(results))],
    ]
    return Section("summary", "Summary", "", [Table("summary", ["", ""], [[Cell(k), Cell(v)] for k, v in rows],
                                                    sortable=False)])


SHORT_ID = 12  # characters of a hash shown in the manifest; the full value is the cell's tooltip


def _identity(model: Any) -> Cell:
    """The model identity in short (backend, model, tag, weights hash prefix); every field in the tooltip."""
    if not isinstance(model, dict):
        return Cell(MISSING)
    parts = [model.get(k) for k in ("backend", "model", "pretrained")]
    weights = model.get("weights")
    text = " ".join(str(p) for p in parts if p) + (f" weights {str(weights)[:SHORT_ID]}" if weights else "")
    full = "; ".join(f"{k}: {v}" for k, v in model.items() if v not in (None, ""))
    return Cell(text or MISSING, text or None, title=full)


def _short(value: Any) -> Cell:
    if value in (None, ""):
        return Cell(MISSING)
    v = str(value)
    return Cell(v[:SHORT_ID] + "…" if len(v) > SHORT_ID + 1 else v, v, title=v if len(v) > SHORT_ID + 1 else "")


def manifest_section(results: list[dict]) -> Section:
    rows = []
    for r in results:
        rows.append([text_cell(r.get("model")), text_cell(r.get("dataset")), text_cell(task_name(r.get("task"))),
                     text_cell(r.get("split")), text_cell(r.get("language")), text_cell(r.get("prompts")),
                     text_cell(r.get("labels")), int_cell(r.get("n_samples")), text_cell(r.get("metric")),
                     _identity(get(r, "manifest", "model", default={})),
                     _short(get(r, "manifest", "dataset", "fingerprint")),
                     text_cell(get(r, "manifest", "created")), text_cell(get(r, "manifest", "device")),
                     text_cell(r.get("_file"))])
    return Section("manifest", "Run manifest", "Every result file the report read. Hashes are shortened; hover "
                   "a cell for the full value (the preprocessing transform is in the model identity's tooltip).",
                   [Table("runs", ["model", "dataset", "task", "split", "language", "prompts", "labels", "n", "metric",
                                   "model identity", "data fingerprint", "created", "device", "file"], rows)])


def unreadable_section(unreadable: list[tuple[str, str]]) -> Section:
    """Result files the report could not read: their rows are missing from every table below."""
    rows = [[text_cell(path), text_cell(error)] for path, error in unreadable]
    return Section("unreadable", "Unreadable result files",
                   f"{len(unreadable)} result file(s) could not be read; their results are missing from this "
                   "report. Re-run those experiments or repair the files.",
                   [Table("unreadable", ["file", "error"], rows, sortable=False)])


def build_sections(results: list[dict], published: Published) -> list[Section]:
    """Every section that has data, in reading order."""
    from bench.report.paired import column_comparisons  # late: reads per-image records only when needed

    notes = Notes()
    matrix = zeroshot_matrix(results)
    paired = column_comparisons(matrix)
    sections = [
        summary_section(results, matrix),
        matrix_section(matrix, published, notes, paired),
        retrieval_section(results, published, notes),
        paired_section(paired),
        per_class_section(matrix),
        published_section(results, published, notes),
        side_by_side_section(matrix),
        prompts_section(results),
        sets_section(results),
        negation_section(results),
        labels_section(results),
        knowledge_section(results),
        probe_section(results, matrix),
        manifest_section(results),
    ]
    return [s for s in sections if s is not None]
