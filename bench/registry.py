"""Small generic helpers for registries that are data: safe YAML, typed records, close-match errors."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bench.errors import BenchError

T = TypeVar("T")


def load_yaml(path: Path) -> Any:
    """Load a user-authored YAML file with the safe loader; errors name the file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BenchError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path}: cannot read file ({exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BenchError(f"{path}{where}: invalid YAML: {problem}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # the safe loader's constructors raise these for e.g. a date like 2024-13-45
        raise BenchError(f"{path}: invalid YAML value ({type(exc).__name__}: {exc})") from None


def _is_spelling_map(choices: Any) -> bool:
    # A spelling map sends every spelling to a canonical name that is itself a spelling; a registry dict
    # (name → Protocol, name → "module:Class") is only a list of names, and its values must never be suggested.
    return isinstance(choices, dict) and all(isinstance(v, str) and v in choices for v in choices.values())


def suggest(name: str, choices: Iterable[str] | dict[str, str]) -> str:
    """' (did you mean: a, b?)' for close matches of `name`, or ''.

    `choices` may map every accepted spelling (aliases included) to its canonical name: spellings are matched
    case-insensitively and the canonical names suggested, each once (not cifar10, cifar_10 and CIFAR-10)."""
    canonical = dict(choices) if _is_spelling_map(choices) else {c: c for c in choices}
    by_lower: dict[str, str] = {}
    for spelling, target in canonical.items():
        by_lower.setdefault(spelling.lower(), target)
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=10, cutoff=0.5)
    picks = list(dict.fromkeys(by_lower[c] for c in close))[:3]
    return f" (did you mean: {', '.join(picks)}?)" if picks else ""


def unknown(kind: str, name: str, choices: Iterable[str] | dict[str, str], hint: str = "") -> BenchError:
    """The error for an unknown registry name, with close-match suggestions (`choices`: names, or every
    accepted spelling → its canonical name)."""
    if not _is_spelling_map(choices):
        choices = sorted(set(choices))
    msg = f"unknown {kind} '{name}'{suggest(name, choices)}"
    return BenchError(msg + (f"; {hint}" if hint else ""))


def _check_type(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_check_type(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and (not args or all(_check_type(v, args[0]) for v in value))
    if origin is dict:
        k, v = typing.get_args(tp) or (Any, Any)
        return isinstance(value, dict) and all(_check_type(a, k) and _check_type(b, v) for a, b in value.items())
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def from_mapping(cls: type[T], data: Any, where: str) -> T:
    """Build a frozen dataclass from a YAML mapping; unknown keys, missing keys and wrong types are errors."""
    if not isinstance(data, dict):
        raise BenchError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    extra = sorted(set(map(str, data)) - set(fields))
    if extra:
        raise BenchError(f"{where}: unknown key(s) {', '.join(extra)}; allowed: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise BenchError(f"{where}: missing required key '{name}'")
            continue
        value = data[name]
        if not _check_type(value, hints[name]):
            raise BenchError(f"{where}: key '{name}' has the wrong type ({type(value).__name__})")
        if isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
