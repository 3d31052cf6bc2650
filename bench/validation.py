"""The checks a prompt set must pass, shared by `bench prompts lint` (reports every finding) and the
runs (`bench run`, `bench prompts eval`), which refuse the errors: what lint calls an error can never
be evaluated quietly.

A finding's level can depend on a caller's policy: duplicate templates are an error by default (the
ensemble would weigh one template twice without anyone choosing that), but a protocol that reproduces
a template list with deliberate repeats (Chinese CLIP's) passes `allow_duplicates=True` and gets a
warning instead.
"""

from __future__ import annotations

import difflib
import logging
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import jinja2

from bench.errors import BenchError

log = logging.getLogger(__name__)

ERROR, WARNING = "error", "warning"
HAN_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")
LATIN_RE = re.compile(r"[A-Za-z]")
# Rendered in place of the label when a template is inspected on its own: a private-use
# character survives punctuation stripping and contains neither Han nor Latin letters.
SENTINEL = "\ue000"
# The same for the per-class field variables (distinct, so "{{ label }}: {{ description }}" and
# "{{ label }}: {{ definition }}" are not taken for duplicates).
FIELD_SENTINELS = {"description": "\ue001", "definition": "\ue002"}
# A per_dataset key this close to a registered dataset name is taken for a typo of it (an error);
# a key unlike every registered name may be the user's own folder dataset (a warning).
TYPO_CUTOFF = 0.75


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    level: str  # "error" or "warning"
    message: str

    def format(self) -> str:
        return f"{self.path}:{self.line}: {self.level}: {self.message}"


@dataclass(frozen=True)
class Template:
    """One template of a prompt set, where it is, and (if it compiled) the jinja2 object."""

    group: str  # "templates" or the per_dataset dataset name
    index: int
    source: str
    line: int
    compiled: jinja2.Template | None


def normalize_text(text: str) -> str:
    """Comparison key: NFKC (full-width → half-width), case-folded, without whitespace or punctuation.

    Covers Chinese punctuation too (，。！？、“”《》 are Unicode P* categories), so '一张猫的照片。' and
    '一张 猫的照片' compare equal.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in text if not (ch.isspace() or unicodedata.category(ch)[0] in "PZ"))


def render_sample(t: Template, label: str = SENTINEL) -> str:
    """A template rendered without a class: `label` for the label, a sentinel for each field it uses."""
    from bench.prompts import sample_fields, template_fields

    return t.compiled.render(label=label, **sample_fields(template_fields(t.source), FIELD_SENTINELS))


def strip_sentinels(text: str) -> str:
    for s in (SENTINEL, *FIELD_SENTINELS.values()):
        text = text.replace(s, "")
    return text


def has_han(text: str) -> bool:
    return bool(HAN_RE.search(text))


def duplicate_findings(templates: list[Template], path: str, allow_duplicates: bool = False) -> list[Finding]:
    """Templates that render the same text (an error unless allowed) or differ only in punctuation."""
    findings = []
    exact: dict[str, Template] = {}
    near: dict[str, Template] = {}
    for t in templates:
        rendered = render_sample(t)
        if rendered in exact:
            level = WARNING if allow_duplicates else ERROR
            findings.append(Finding(path, t.line, level, f"duplicate template {t.source!r} (same text as line "
                                    f"{exact[rendered].line}); it would count twice in the ensemble"))
            continue
        exact[rendered] = t
        key = normalize_text(rendered)
        if key in near:
            findings.append(Finding(path, t.line, WARNING, f"template {t.source!r} differs from line "
                                    f"{near[key].line} ({near[key].source!r}) only in whitespace or punctuation"))
        else:
            near[key] = t
    return findings


def language_findings(templates: list[Template], language: str, path: str, set_line: int) -> list[Finding]:
    """Chinese in an en set; English-only templates, or no Chinese at all, in a zh set."""
    findings = []
    own_text = {id(t): strip_sentinels(render_sample(t)) for t in templates}
    for t in templates:
        text = own_text[id(t)]
        if language == "en" and has_han(text):
            findings.append(Finding(path, t.line, ERROR, f"Chinese characters in an English (en) set: {t.source!r}"))
        elif language == "zh" and LATIN_RE.search(text) and not has_han(text):
            findings.append(Finding(path, t.line, ERROR, f"template looks English (no Chinese characters) "
                                    f"in a Chinese (zh) set: {t.source!r}"))
    # a template of fields alone ("{{ description }}") has no text of its own to be in either language
    from bench.prompts import template_fields

    worded = [t for t in templates if own_text[id(t)].strip() or not template_fields(t.source)]
    if language == "zh" and worded and not any(has_han(own_text[id(t)]) for t in worded):
        findings.append(Finding(path, set_line, ERROR, "language is zh but no template contains Chinese "
                                "characters; set `language: en` or translate the templates"))
    return findings


def per_dataset_key_findings(keys: dict[str, int], path: str, datasets: Iterable[str] = ()) -> list[Finding]:
    """per_dataset keys that name no registered dataset (nor one of `datasets`, those being run): their
    templates would never be used. A near miss of a registered name is an error with a suggestion."""
    from bench.datasets.registry import _aliases, find_dataset

    given = {d.lower() for d in datasets}
    names = sorted(_aliases())
    findings = []
    for key, line in keys.items():
        if key.lower() in given or find_dataset(key) is not None:
            continue
        close = difflib.get_close_matches(key.lower(), names, n=3, cutoff=TYPO_CUTOFF)
        if close:
            findings.append(Finding(path, line, ERROR, f"per_dataset key '{key}' is not a dataset name or alias "
                                    f"(did you mean: {', '.join(close)}?); its templates would never be used"))
        else:
            findings.append(Finding(path, line, WARNING, f"per_dataset key '{key}' is not a registered dataset; "
                                    "its templates are used only for a folder dataset of that name"))
    return findings


def check_groups(groups: dict[str, list[Template]], language: str | None, path: str, set_line: int,
                 key_lines: dict[str, int], *, allow_duplicates: bool = False,
                 datasets: Iterable[str] = ()) -> list[Finding]:
    """The one set of rules over a prompt set's compiled template groups ("templates" and each per_dataset
    key, with the line of each key in `key_lines`), for lint and run alike."""
    findings = per_dataset_key_findings({g: key_lines.get(g, set_line) for g in groups if g != "templates"},
                                        path, datasets)
    for templates in groups.values():
        findings += duplicate_findings(templates, path, allow_duplicates)
        if language is not None:
            findings += language_findings(templates, language, path,
                                          set_line if set_line else (templates[0].line if templates else 1))
    return findings


def validate_prompt_set(ps, *, allow_duplicates: bool = False, datasets: Iterable[str] = ()) -> list[Finding]:
    """Findings for a parsed `PromptSet` (which already compiled every template and checked its keys);
    `datasets`: names of folder datasets being run, accepted as per_dataset keys."""
    from bench.prompts import compile_template

    path = ps.path
    text = _read(path)
    key_lines = _per_dataset_key_lines(text) if text else {}
    lang_line = _top_key_line(text, "language") if text else 1
    groups: dict[str, list[Template]] = {}
    sources = {"templates": ps.templates, **ps.per_dataset} if ps.templates else dict(ps.per_dataset)
    for group, seq in sources.items():
        out = []
        for i, src in enumerate(seq):
            key = ("templates", i) if group == "templates" else ("per_dataset", group, i)
            line = ps.lines.get(key, 1)
            out.append(Template(group, i, src, line, compile_template(src, f"{path}:{line}: template {i + 1}")))
        groups[group] = out
    # a key given as an alias was renamed to the dataset's name when parsed; report it under what the file says
    raw = getattr(ps, "key_aliases", {}) or {}
    key_lines = {**key_lines, **{name: key_lines.get(alias, 1) for name, alias in raw.items()}}
    return check_groups(groups, ps.language, path, lang_line, key_lines, allow_duplicates=allow_duplicates,
                        datasets=datasets)


def require_valid(ps, *, allow_duplicates: bool = False, datasets: Iterable[str] = (), summarise: bool = False) -> None:
    """Refuse a prompt set with errors (all of them in one BenchError); log its warnings, each on its line,
    or (`summarise`, for a published set read from a package, which nobody here can edit) as one line."""
    findings = validate_prompt_set(ps, allow_duplicates=allow_duplicates, datasets=datasets)
    errors = [f for f in findings if f.level == ERROR]
    warnings = [f for f in findings if f.level == WARNING]
    if summarise and warnings:
        log.warning("%s: %d lint warning(s), kept as published (e.g. %s)", ps.name, len(warnings),
                    "; ".join(f.message for f in warnings[:2]))
    for f in warnings if not summarise else ():
        log.warning("%s", f.format())
    if errors:
        shown = "\n  ".join(f.format() for f in errors)
        raise BenchError(f"prompt set '{ps.name}' ({ps.path}) has {len(errors)} error(s):\n  {shown}\n"
                         f"fix them (`bench prompts lint {ps.path}` lists every finding) and run again")


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return ""


def _top_key_line(text: str, key: str) -> int:
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return 1
    if isinstance(root, yaml.MappingNode):
        for k, _ in root.value:
            if k.value == key:
                return k.start_mark.line + 1
    return 1


def _per_dataset_key_lines(text: str) -> dict[str, int]:
    """1-based line of each key under per_dataset."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    if not isinstance(root, yaml.MappingNode):
        return {}
    for k, v in root.value:
        if k.value == "per_dataset" and isinstance(v, yaml.MappingNode):
            return {str(dk.value): dk.start_mark.line + 1 for dk, _ in v.value}
    return {}
