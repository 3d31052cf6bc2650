"""bench: zero-shot image classification benchmarks for CLIP-family models, in Chinese and English."""

__version__ = "0.1.0"


def load_results(runs):
    """Every result under ``runs`` (folders or result JSONs) as a pandas DataFrame, one row per result × metric
    (see docs/analysis.md#tidy-export). Requires pandas."""
    from bench.export import load_results as _load  # late: importing bench stays light

    return _load(runs)


def result_rows(runs) -> list[dict]:
    """The rows of ``load_results`` as a list of dicts (no pandas needed)."""
    from bench.export import result_rows as _rows

    return _rows([runs] if isinstance(runs, str) or hasattr(runs, "is_dir") else list(runs))
