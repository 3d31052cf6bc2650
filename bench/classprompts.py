"""CuPL-style prompt lists: ``{class name: [prompt, ...]}`` in JSON or YAML (CLIP_benchmark's format).

A CuPL file is accepted wherever a prompt set is (``--prompts FILE``), or named by a prompt set's
``class_prompts:`` key beside its templates. Its prompts are literal text, not templates. Keys are
matched to the run's class names by name, as strictly as a label file is matched to class folders: a
class with no list, or a key that names no class, is an error naming them.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.errors import BenchError
from bench.registry import load_yaml


def read_mapping(path: Path) -> object:
    """A .json file through json (exact JSON semantics), anything else through the safe YAML loader."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        return load_yaml(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path}: cannot read file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None


def is_class_prompt_mapping(path: Path, data: object) -> bool:
    """A .json prompts file is a CuPL file; a YAML one is when it has none of a prompt set's keys and
    every value is a list."""
    from bench.prompts import ALLOWED_KEYS

    if Path(path).suffix.lower() == ".json":
        return True
    return (isinstance(data, dict) and bool(data) and not set(map(str, data)) & ALLOWED_KEYS
            and all(isinstance(v, list) for v in data.values()))


def check_class_prompts(path: Path, data: object) -> dict[str, tuple[str, ...]]:
    """Types checked: a non-empty mapping of class name → non-empty list of non-empty strings."""
    if not isinstance(data, dict) or not data:
        raise BenchError(f"{path}: a CuPL prompt file maps each class name to a list of prompts, "
                         '{"class name": ["prompt", ...]}')
    out: dict[str, tuple[str, ...]] = {}
    for key, value in data.items():
        if not isinstance(value, list) or not value:
            raise BenchError(f"{path}: class {key!r} must have a non-empty list of prompts, got {value!r}")
        bad = [p for p in value if not isinstance(p, str) or not p.strip()]
        if bad:
            raise BenchError(f"{path}: class {key!r} has an empty or non-text prompt: {bad[0]!r}")
        out[str(key)] = tuple(value)
    return out


def load_class_prompts(path: Path) -> dict[str, tuple[str, ...]]:
    """A CuPL file, types checked (matching to classes happens per run: see `match_class_prompts`)."""
    return check_class_prompts(path, read_mapping(path))


def parse_class_prompts(path: Path, data: object):
    """A CuPL file used on its own as a prompt set, named after the file; its language is inferred."""
    from bench.prompts import PromptSet, infer_language

    prompts = check_class_prompts(path, data)
    language = infer_language([p for ps in prompts.values() for p in ps], {})
    return PromptSet(name=Path(path).stem, language=language, path=str(path), class_prompts=prompts,
                     class_prompts_path=str(path), language_source="inferred from templates",
                     name_source="file name")


def match_class_prompts(ps, labels) -> list[tuple[str, ...]]:
    """Each class's CuPL prompts, in class-index order, matched by normalised class name."""
    from bench.datasets.classes import normalise

    where = ps.class_prompts_path or ps.path
    by_key: dict[str, str] = {}
    for key in ps.class_prompts:
        k = normalise(key)
        if k in by_key:
            raise BenchError(f"{where}: keys {by_key[k]!r} and {key!r} name the same class; keep one list")
        by_key[k] = key
    wanted = [normalise(n) for n in labels.names]
    missing = [n for n, k in zip(labels.names, wanted) if k not in by_key]
    unknown = [key for k, key in by_key.items() if k not in set(wanted)]
    if missing or unknown:
        raise BenchError(f"{where}: its class names do not match the labels ({labels.description}): "
                         f"classes with no prompts: {', '.join(map(repr, missing[:10])) or 'none'}"
                         f"{' …' if len(missing) > 10 else ''}; names that are no class: "
                         f"{', '.join(map(repr, unknown[:10])) or 'none'}{' …' if len(unknown) > 10 else ''}; "
                         "key the file by exactly the class names the run uses (see `--labels`)")
    return [ps.class_prompts[by_key[k]] for k in wanted]
