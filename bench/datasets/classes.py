"""Map a source's own class names and order onto a dataset's canonical class order, verified."""

from __future__ import annotations

import re
import unicodedata

from bench.datasets.registry import DatasetSpec
from bench.errors import BenchError

_SEPARATORS = re.compile(r"[\s_]+")


def normalise(name: str) -> str:
    """Comparison form of a class name: NFKC, case-folded, `_`/whitespace runs as one space, no final dot."""
    text = unicodedata.normalize("NFKC", str(name)).casefold()
    return _SEPARATORS.sub(" ", text).strip().rstrip(".").strip()


def class_order(spec: DatasetSpec, source_names: list[str] | tuple[str, ...], where: str) -> tuple[int, ...]:
    """Canonical index for each source class index; errors unless it is a bijection onto `spec.classes`.

    A name matches through `spec.class_map` first (explicit differences), then by normalised name.
    """
    canonical = {normalise(c): i for i, c in enumerate(spec.classes)}
    explicit = {normalise(k): canonical[normalise(v)] for k, v in spec.class_map.items()}
    order: list[int] = []
    unmatched: list[str] = []
    for name in source_names:
        key = normalise(name)
        idx = explicit.get(key, canonical.get(key))
        if idx is None:
            unmatched.append(name)
        order.append(-1 if idx is None else idx)
    taken: dict[int, list[str]] = {}
    for name, idx in zip(source_names, order):
        if idx >= 0:
            taken.setdefault(idx, []).append(name)
    doubles = {i: names for i, names in taken.items() if len(names) > 1}
    uncovered = [spec.classes[i] for i in range(spec.num_classes) if i not in taken]
    if unmatched or doubles or len(source_names) != spec.num_classes:
        parts = [f"{len(source_names)} source classes for {spec.num_classes} registered"]
        if unmatched:
            parts.append(f"no registered class for {_names(unmatched)}")
        if uncovered:
            parts.append(f"registered classes with no source class: {_names(uncovered)}")
        for i, names in sorted(doubles.items()):
            parts.append(f"{_names(names)} all map to class {i} '{spec.classes[i]}'")
        raise BenchError(f"{where}: class names do not match dataset {spec.name} ({'; '.join(parts)}); "
                         f"rename them, or add the source's names under class_map in the registry entry "
                         f"(bench/registry/datasets/{spec.name}.yaml)")
    return tuple(order)


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:10])
    return shown + (f" … ({len(names)} in all)" if len(names) > 10 else "")
