"""Charts as PNG bytes (matplotlib's object API with the Agg canvas: no pyplot global state)."""

from __future__ import annotations

import io
from dataclasses import dataclass

# One hue per model family, so a family reads the same in every chart; models within it get shades.
FAMILY_COLOURS = {
    "cn-clip": "#c0392b",
    "openai": "#2471a3",
    "openclip": "#229954",
    "demo": "#7d3c98",
}
OTHER_COLOUR = "#7f8c8d"
DPI = 110


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    alt: str
    png: bytes


def family(model: str) -> str:
    """The model family: the registry prefix before '/', or a known family name the model starts with."""
    head = model.split("/", 1)[0]
    if head in FAMILY_COLOURS:
        return head
    return next((f for f in FAMILY_COLOURS if model.startswith(f)), "other")


def model_colours(models: list[str]) -> dict[str, tuple]:
    """A colour per model: its family hue, lighter for each further model of the same family."""
    from matplotlib.colors import to_rgb

    seen: dict[str, int] = {}
    out = {}
    for m in models:
        fam = family(m)
        k = seen.get(fam, 0)
        seen[fam] = k + 1
        base = to_rgb(FAMILY_COLOURS.get(fam, OTHER_COLOUR))
        mix = min(0.6, 0.18 * k)
        out[m] = tuple(c + (1 - c) * mix for c in base)
    return out


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def grouped_bars(chart_id: str, title: str, groups: list[str], series: dict[str, list[float | None]],
                 colours: dict[str, tuple], ylabel: str, hatches: dict[str, str] | None = None) -> Chart:
    """Bars per group (x) for each series (legend); None values leave a gap."""
    n = max(1, len(series))
    width = 0.8 / n
    fig, ax = _figure(max(5.0, 0.5 + len(groups) * (0.35 + 0.18 * n)), 3.6)
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        pts = [(x, v) for x, v in zip(xs, values) if v is not None]
        if pts:
            bars = ax.bar([p[0] for p in pts], [p[1] for p in pts], width * 0.95, label=name,
                          color=colours.get(name, OTHER_COLOUR), hatch=(hatches or {}).get(name), edgecolor="white")
            # on a 0-100 axis 98.3 and 98.1 look the same: every bar carries its value
            ax.bar_label(bars, fmt="%.1f", fontsize=6 if n > 2 else 7, rotation=90, padding=2)
    ax.set_xticks(range(len(groups)), groups, rotation=30 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 112)  # room for the value labels above 100
    ax.set_yticks(range(0, 101, 20))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return Chart(chart_id, title, f"{title}: {', '.join(series)} on {', '.join(groups)}", _png(fig))


def boxes(chart_id: str, title: str, boxes: list[tuple[str, list[float], float | None, str]],
          colours: dict[str, tuple], ylabel: str) -> Chart:
    """One box per (label, values, ensemble value or None, model); the ensemble is drawn as a diamond."""
    fig, ax = _figure(max(5.0, 1.0 + 0.9 * len(boxes)), 3.6)
    bp = ax.boxplot([b[1] for b in boxes], patch_artist=True, widths=0.55)
    ax.set_xticks(range(1, len(boxes) + 1), [b[0] for b in boxes], rotation=30 if len(boxes) > 3 else 0,
                  ha="right" if len(boxes) > 3 else "center")
    for patch, b in zip(bp["boxes"], boxes):
        patch.set_facecolor(colours.get(b[3], OTHER_COLOUR))
        patch.set_alpha(0.75)
    ens = [(i + 1, b[2]) for i, b in enumerate(boxes) if b[2] is not None]
    if ens:
        # above the boxes, whiskers and medians (which otherwise hide it), with a white rim and its value
        ax.scatter([e[0] for e in ens], [e[1] for e in ens], marker="D", s=46, color="black", edgecolors="white",
                   linewidths=1.0, zorder=10, clip_on=False, label="ensemble of all templates")
        for x, v in ens:
            ax.annotate(f"{v:.1f}", (x, v), xytext=(8, 0), textcoords="offset points", fontsize=7, va="center",
                        zorder=10)
        ax.legend(fontsize=8, loc="best", frameon=False)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title(title, fontsize=10)
    return Chart(chart_id, title, f"{title}: " + ", ".join(b[0] for b in boxes), _png(fig))


def heatmap(chart_id: str, title: str, matrix: list[list[int]], labels: list[str]) -> Chart:
    """A confusion matrix (rows true, columns predicted) as a heat map of row shares, counts in the cells."""
    import numpy as np

    cm = np.asarray(matrix, dtype=np.float64)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = cm.shape[0]
    size = max(3.5, 0.42 * k + 1.5)
    fig, ax = _figure(size, size)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    # the bundled font has no CJK glyphs: non-ASCII names would draw as boxes, so those sets show class indices
    # (the per-class table beside the chart names them); "$" would start matplotlib mathtext
    ascii_names = all(str(x).isascii() for x in labels)
    ticks = [str(x)[:18].replace("$", r"\$") if ascii_names else str(i) for i, x in enumerate(labels)]
    ax.set_xticks(range(k), ticks, rotation=90, fontsize=7)
    ax.set_yticks(range(k), ticks, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=6,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_title(title, fontsize=10)
    return Chart(chart_id, title, f"{title}: confusion matrix over {k} classes", _png(fig))
