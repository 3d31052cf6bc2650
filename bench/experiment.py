"""Result identity: what makes a result a different experiment, and the file name derived from it.

The default experiment (test split, whole set, default protocol, prompts, labels, language and
precision) is ``<task>.json``; any other experiment is ``<task>@<setting>=<value>,....json`` (or
``<task>-<hash8>.json`` when the readable name would be too long or unsafe), so no run replaces a
different experiment's result and re-running one replaces only its own. ``index.json`` in each
folder maps every result file to its settings.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from bench.cache import atomic_write_json, file_sha256

__all__ = ["DEFAULTS", "experiment", "logits_path", "non_default", "per_image_path", "result_stem", "update_index"]

# The value each identity field has in the default experiment (None: "whatever the model's default is").
DEFAULTS: dict[str, Any] = {
    "split": "test", "language": None, "prompts": None, "labels": None, "limit": None,
    "skip_bad_images": False, "protocol": "bench", "precision": "auto", "knowledge": None, "decode": "cpu",
}
# Content hashes in an identity: they make a result a different experiment but are not shown as settings.
HASH_FIELDS = ("prompts_sha", "labels_sha", "class_prompts_sha", "knowledge_sha", "arms_sha")
# Settings that only exist for the linear probe; their defaults come from RunOptions.
PROBE_FIELDS = ("shots", "seeds", "probe_init", "probe_impl", "val_fraction", "val_seed")
_SAFE = re.compile(r"^[A-Za-z0-9_.+-]+$")
MAX_STEM = 120


def _file_hash(path: Any) -> str | None:
    """sha256[:12] of a user file (prompts, labels) so that editing it is a different experiment."""
    try:
        p = Path(str(path))
        return file_sha256(p)[:12] if p.is_file() else None
    except (OSError, ValueError):
        return None


def experiment(result: dict, opts: Any, arms: dict[str, Any] | None = None) -> dict:
    """The identity of one result: every setting that changes its number, plus ``id`` (sha256[:8]).

    ``arms``: a study's or ``prompts eval``'s own arguments that differ from their defaults (the variant, the
    sets compared, ...): each is a setting of the identity, and the content of any that names a file counts too.
    """
    prompts_path = ((result.get("manifest") or {}).get("prompts") or {}).get("path")
    ident: dict[str, Any] = {
        "task": result["task"],
        "split": result.get("split", getattr(opts, "split", "test")),
        # an explicit --language equal to the model's own is still the default experiment
        "language": None if getattr(opts, "language", None) in (None, (result.get("manifest") or {})
                                                                .get("model", {}).get("language"))
        else opts.language,
        "prompts": getattr(opts, "prompts", None),
        "prompts_sha": _file_hash(prompts_path) if getattr(opts, "prompts", None) else None,
        "labels": getattr(opts, "labels", None),
        "labels_sha": _file_hash(getattr(opts, "labels", None)) if getattr(opts, "labels", None) else None,
        "limit": getattr(opts, "limit", None),
        "skip_bad_images": bool(getattr(opts, "skip_bad_images", False)),
        "protocol": result.get("protocol") or getattr(opts, "protocol", "bench"),
        "precision": getattr(opts, "precision", "auto"),
    }
    # keys below are added only when used, so every other result keeps the identity (and id) it had
    if getattr(opts, "decode", "cpu") != "cpu":  # resized by torch, not PIL: pixels differ by rounding
        ident["decode"] = opts.decode
    texts = result.get("prompt_texts") or {}
    cp = texts.get("class_prompts") or {}
    if cp.get("path") and cp["path"] != prompts_path:  # a CuPL file named by the prompt set: its own content
        ident["class_prompts_sha"] = (cp.get("sha256") or "")[:12] or None
    know = texts.get("knowledge")
    if know:
        ident["knowledge"] = know["label"]
        ident["knowledge_sha"] = hashlib.sha256(json.dumps(
            [know["dataset_id"], sorted((k, f["sha256"]) for k, f in know["files"].items())]).encode()).hexdigest()[:12]
    if arms:
        shas = []
        for k, v in arms.items():
            ident[k] = [str(x) for x in v] if isinstance(v, (list, tuple)) else v
            shas.extend(h for x in (v if isinstance(v, (list, tuple)) else [v])
                        if isinstance(x, (str, Path)) and (h := _file_hash(x)))
        if shas:
            ident["arms_sha"] = hashlib.sha256("".join(shas).encode()).hexdigest()[:12]
    if result["task"] == "linear_probe":
        from bench.runner import RunOptions  # late: the runner imports this module

        defaults = RunOptions(out=Path("."), cache_dir=Path("."))
        for f in PROBE_FIELDS:
            v = getattr(opts, f, getattr(defaults, f))
            ident[f] = list(v) if isinstance(v, tuple) else v
    ident["id"] = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return ident


def non_default(ident: dict) -> dict[str, Any]:
    """The identity fields that differ from the default experiment (what the report shows beside a number)."""
    out = {}
    for k, v in ident.items():
        if k in ("task", "id", *HASH_FIELDS) or k in PROBE_FIELDS:
            continue
        if v != DEFAULTS.get(k):
            out[k] = v
    if ident.get("task") == "linear_probe":
        from bench.runner import RunOptions

        defaults = RunOptions(out=Path("."), cache_dir=Path("."))
        for f in PROBE_FIELDS:
            d = getattr(defaults, f)
            if ident.get(f) != (list(d) if isinstance(d, tuple) else d):
                out[f] = ident.get(f)
    return out


def _slug(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(map(str, value))
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    return Path(text).stem if ("/" in text or "\\" in text) else text


def result_stem(ident: dict) -> str:
    """``zeroshot`` for the default experiment, else a readable ``zeroshot@k=v,...`` or ``zeroshot-<id>``."""
    diff = non_default(ident)
    if not diff:
        return ident["task"]
    parts = [f"{k}={_slug(v)}" for k, v in diff.items()]
    # a file's content is part of its identity: two files with one stem must not share a result
    if any(ident.get(k) for k in HASH_FIELDS):
        parts.append(ident["id"])
    stem = f"{ident['task']}@{','.join(parts)}"
    if len(stem) > MAX_STEM or not all(_SAFE.match(p.replace("=", "").replace(",", "")) for p in parts):
        return f"{ident['task']}-{ident['id']}"
    return stem


def logits_path(result_path: Path) -> Path:
    """``<result stem>.logits.npz`` beside a result file: the scores its metrics saw (``--save-logits``)."""
    result_path = Path(result_path)
    return result_path.with_name(result_path.name.removesuffix(".json") + ".logits.npz")


def per_image_path(result_path: Path) -> Path:
    """``<result stem>.per_image.npz`` beside a result file: per-image correctness (``bench.per_image``)."""
    result_path = Path(result_path)
    return result_path.with_name(result_path.name.removesuffix(".json") + ".per_image.npz")


def update_index(folder: Path, filename: str, ident: dict) -> None:
    """Record ``filename → settings`` in ``folder/index.json`` (rewritten atomically)."""
    path = Path(folder) / "index.json"
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(index, dict):
            index = {}
    except (OSError, ValueError):
        index = {}  # a missing or damaged index is rebuilt from this run on; results stay untouched
    index[filename] = {"non_default": non_default(ident), **ident}
    atomic_write_json(path, dict(sorted(index.items())))
