"""Reports read only result JSON: a model × dataset matrix in Markdown and self-contained HTML."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import jinja2

from bench.cache import atomic_write_bytes
from bench.errors import BenchError

log = logging.getLogger(__name__)
TEMPLATES = Path(__file__).resolve().parent / "templates"


def load_results(run_dirs: list[Path]) -> list[dict]:
    """Every result JSON (files with model, dataset, task and metrics) under the given folders."""
    results = []
    for root in run_dirs:
        if not Path(root).exists():
            raise BenchError(f"{root}: no such results folder (run `bench run ... --out {root}` first)")
        for path in sorted(Path(root).rglob("*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                log.warning("skipping unreadable %s (%s)", path, exc)
                continue
            if isinstance(data, dict) and {"model", "dataset", "task", "metrics"} <= set(data):
                data["_path"] = str(path)
                results.append(data)
    return results


@dataclass(frozen=True)
class Matrix:
    models: list[str]
    datasets: list[str]
    cells: dict  # (model, dataset) -> result
    means: dict  # model -> mean primary over datasets it has

    def best(self, dataset: str) -> str | None:
        vals = [(self.cells[(m, dataset)]["metrics"]["primary"], m) for m in self.models if (m, dataset) in self.cells]
        return max(vals)[1] if vals else None


def zeroshot_matrix(results: list[dict]) -> Matrix:
    zs = [r for r in results if r["task"] == "zeroshot"]
    models = list(dict.fromkeys(r["model"] for r in zs))
    datasets = sorted(dict.fromkeys(r["dataset"] for r in zs))
    cells = {(r["model"], r["dataset"]): r for r in zs}
    means = {}
    for m in models:
        vals = [cells[(m, d)]["metrics"]["primary"] for d in datasets if (m, d) in cells]
        means[m] = sum(vals) / len(vals) if vals else None
    return Matrix(models, datasets, cells, means)


def pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _env(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=autoescape,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = pct
    env.filters["md"] = lambda s: str(s).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return env


def build_report(run_dirs: list[Path], out: Path, fmt: str = "both") -> list[Path]:
    results = load_results(run_dirs)
    if not results:
        raise BenchError(f"no result JSON found under {', '.join(map(str, run_dirs))}")
    ctx = {"matrix": zeroshot_matrix(results), "results": results}
    written = []
    if fmt in ("md", "both"):
        text = _env(False).get_template("report.md.j2").render(**ctx)
        atomic_write_bytes(out / "report.md", text.encode("utf-8"))
        written.append(out / "report.md")
    if fmt in ("html", "both"):
        text = _env(True).get_template("report.html.j2").render(**ctx)
        atomic_write_bytes(out / "report.html", text.encode("utf-8"))
        written.append(out / "report.html")
    return written
