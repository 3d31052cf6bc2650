"""Reports read only result JSON: Markdown and one self-contained HTML file, from autoescaped jinja2 templates."""

from __future__ import annotations

import base64
import json
import logging
import re
from pathlib import Path

import jinja2

from bench.cache import atomic_write_bytes
from bench.errors import BenchError
from bench.report.published import Published, load_published
from bench.report.sections import Figure, Matrix, build_sections, pct, unreadable_section, zeroshot_matrix

__all__ = ["FORMATS", "Matrix", "build_report", "load_results", "md_escape", "pct", "zeroshot_matrix"]

log = logging.getLogger(__name__)
TEMPLATES = Path(__file__).resolve().parent / "templates"
FORMATS = ("md", "html", "both")
REQUIRED = ("model", "dataset", "task")


def load_results(run_dirs: list[Path], unreadable: list[tuple[str, str]] | None = None) -> list[dict]:
    """Every result JSON (a mapping with model, dataset and task) under the given folders.

    Files that cannot be read or parsed are appended to ``unreadable`` as (path, error), so the
    report can say on its page which rows are missing and why."""
    results = []
    for root in map(Path, run_dirs):
        if not root.exists():
            raise BenchError(f"{root}: no such results folder (run `bench run ... --out {root}` first)")
        paths = [root] if root.is_file() else sorted(root.rglob("*.json"))
        for path in paths:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                log.warning("skipping unreadable %s (%s)", path, exc)
                if unreadable is not None:
                    unreadable.append((str(path), f"{type(exc).__name__}: {exc}"))
                continue
            if isinstance(data, dict) and all(isinstance(data.get(k), str) for k in REQUIRED):
                data["_file"] = str(path.relative_to(root)) if path != root else path.name
                data["_path"] = str(path)  # where files written beside it (per-image records) are found
                results.append(data)
    return results


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")


def report_title(results: list[dict]) -> str:
    """``bench report · <date>``: the date (UTC) of the newest result, so the page and its tab say how current
    the numbers are and rebuilding from the same files gives the same page."""
    dates = sorted(str(c)[:10] for c in (r.get("manifest", {}).get("created") if isinstance(r.get("manifest"), dict)
                                         else None for r in results) if isinstance(c, str) and len(c) >= 10)
    return f"bench report · {dates[-1]}" if dates else "bench report"


def md_escape(value: object) -> str:
    """Text that Markdown renders literally, on one table line: no tags, entities, emphasis or pipes."""
    text = " ".join(str(value).split())
    text = text.replace("&", "&amp;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def _env(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=autoescape,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["md"] = md_escape
    env.filters["b64"] = lambda data: base64.b64encode(data).decode("ascii")
    return env


def build_report(run_dirs: list[Path], out: Path, fmt: str = "both", published_dir: Path | None = None,
                 published: Published | None = None) -> list[Path]:
    """Write report.md (+ charts/*.png beside it) and/or report.html; returns the files written."""
    if fmt not in FORMATS:
        raise BenchError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    unreadable: list[tuple[str, str]] = []
    results = load_results(run_dirs, unreadable)
    if not results:
        raise BenchError(f"no result JSON found under {', '.join(map(str, run_dirs))} "
                         "(expected <model>/<dataset>/<task>.json files from `bench run`)")
    if published is None:
        published = load_published(published_dir)
    sections = build_sections(results, published)
    if unreadable:
        sections.insert(0, unreadable_section(unreadable))
    charts = [b.chart for s in sections for b in s.blocks if isinstance(b, Figure)]
    ctx = {"sections": sections, "title": report_title(results)}
    out = Path(out)
    written = []
    if fmt in ("md", "both"):
        for chart in charts:
            atomic_write_bytes(out / "charts" / f"{chart.id}.png", chart.png)
            written.append(out / "charts" / f"{chart.id}.png")
        text = _env(False).get_template("report.md.j2").render(**ctx)
        atomic_write_bytes(out / "report.md", text.encode("utf-8"))
        written.append(out / "report.md")
    if fmt in ("html", "both"):
        text = _env(True).get_template("report.html.j2").render(**ctx)
        atomic_write_bytes(out / "report.html", text.encode("utf-8"))
        written.append(out / "report.html")
    return written
