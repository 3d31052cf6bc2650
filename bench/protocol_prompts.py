"""Prompt sets a protocol reads from another tool's installed package (never copied into our tree).

Chinese CLIP keeps its templates as Python lambdas (`lambda c: f"{c}的照片"`) in
`cn_clip.eval.cvinw_zeroshot_templates`. Each one is turned into a bench template by calling it with a
sentinel and putting `{{ label }}` where the sentinel lands; a lambda that does anything to its argument
other than insert it once is refused rather than approximated. The order and the repeats of each list are
kept: the original averages over the list as written.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from bench.errors import BenchError
from bench.prompts import PromptSet

SENTINEL = "\x00bench-label\x00"
JINJA_MARKS = ("{{", "}}", "{%", "%}", "{#", "#}")


def template_from_callable(fn, where: str) -> str:
    """A one-argument template function as a jinja2 template string with one `{{ label }}`."""
    try:
        text = fn(SENTINEL)
    except Exception as exc:  # noqa: BLE001 (any failure of foreign code is reported, with where it is)
        raise BenchError(f"{where}: calling the template with a class name failed: {exc}") from None
    if not isinstance(text, str) or text.count(SENTINEL) != 1:
        raise BenchError(f"{where}: the template does not insert the class name exactly once, unchanged "
                         f"(got {text!r}); bench cannot reproduce it as a template")
    head, tail = text.split(SENTINEL)
    if any(m in head or m in tail for m in JINJA_MARKS):
        raise BenchError(f"{where}: the template's text contains jinja2 markup ({text!r})")
    return f"{head}{{{{ label }}}}{tail}"


def _template_list(module, attr: str, source: str) -> tuple[str, ...]:
    items = getattr(module, attr, None)
    if not isinstance(items, (list, tuple)) or not items:
        raise BenchError(f"{source}: the installed {module.__name__} has no template list '{attr}' "
                         f"(module file {getattr(module, '__file__', '?')}); is it the version the protocol expects?")
    return tuple(template_from_callable(fn, f"{module.__name__}.{attr}[{i}]") for i, fn in enumerate(items))


def package_prompt_set(spec: dict, source: str, install_hint: str) -> PromptSet:
    """The PromptSet a protocol's `templates: {module, default, per_dataset, language}` describes.

    `per_dataset` keys are the names the original script matches on (ELEVATER ids for Chinese CLIP); they are
    mapped to bench's dataset names, so a registered dataset under any alias gets the same list."""
    from bench.datasets.registry import find_dataset

    try:
        module = importlib.import_module(spec["module"])
    except ImportError as exc:
        raise BenchError(f"{source}: its templates come from the package module {spec['module']}, which cannot be "
                         f"imported ({exc}); install it with: {install_hint}") from None
    per_dataset: dict[str, tuple[str, ...]] = {}
    for key, attr in (spec.get("per_dataset") or {}).items():
        ds = find_dataset(str(key))
        per_dataset[ds.name if ds is not None else str(key)] = _template_list(module, attr, source)
    return PromptSet(name=spec["module"], language=spec.get("language", "zh"),
                     templates=_template_list(module, spec["default"], source), per_dataset=per_dataset,
                     description=f"read at run time from the installed {spec['module']}",
                     path=str(Path(module.__file__)), name_source="protocol", language_source="protocol")


# DataComp's and CLIP_benchmark's webdataset copies ship their templates as text, one per line, rendered by
# CLIP_benchmark's zero_shot_classifier with `template.format(c=classname)`.
WDS_TEMPLATES = "zeroshot_classification_templates.txt"


def template_from_format(text: str, where: str) -> str:
    """A `str.format` template with one `{c}` field (CLIP_benchmark's) as a jinja2 template string.

    Literal braces (`{{`/`}}`), any other field, a format spec or a conversion are refused: CLIP_benchmark
    would fail on them or render something that is not one class name in fixed text."""
    import string

    out, fields = [], 0
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise BenchError(f"{where}: not a str.format template ({exc}): {text!r}") from None
    for literal, field, spec, conversion in parsed:
        if "{" in literal or "}" in literal:  # a literal brace ({{ in str.format) would read as jinja2 markup
            raise BenchError(f"{where}: the template's text contains literal braces ({text!r})")
        out.append(literal)
        if field is None:
            continue
        if field != "c" or spec or conversion:
            raise BenchError(f"{where}: the template's field {{{field}{'!' + conversion if conversion else ''}"
                             f"{':' + spec if spec else ''}}} is not CLIP_benchmark's plain {{c}} ({text!r})")
        out.append("{{ label }}")
        fields += 1
    if fields != 1:
        raise BenchError(f"{where}: the template must insert the class name ({{c}}) exactly once, "
                         f"it does {fields} times ({text!r})")
    return "".join(out)


def wds_prompt_set(folder: Path, protocol: str) -> PromptSet:
    """The templates a webdataset folder ships (`zeroshot_classification_templates.txt`), read as
    CLIP_benchmark reads them: every line stripped, in order, repeats kept."""
    path = Path(folder) / WDS_TEMPLATES
    if not path.is_file():
        raise BenchError(f"{folder}: no {WDS_TEMPLATES}, which protocol {protocol} takes its templates from; "
                         "use the DataComp or clip-benchmark webdataset copy (`bench datasets prepare NAME "
                         "--copy datacomp`) or a folder exported by clip_benchmark_export_wds")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    blank = [i for i, line in enumerate(lines, start=1) if not line]
    if blank:  # CLIP_benchmark would encode an empty prompt for each: never guess what was meant
        raise BenchError(f"{path}: blank line(s) {', '.join(map(str, blank[:5]))}; CLIP_benchmark would encode "
                         "an empty prompt for each one; remove them")
    templates = tuple(template_from_format(t, f"{path}:{i}") for i, t in enumerate(lines, start=1))
    if not templates:
        raise BenchError(f"{path}: no templates")
    return PromptSet(name=f"{Path(folder).name}/{WDS_TEMPLATES}", language="en", templates=templates,
                     description=f"the webdataset folder's own templates ({protocol} protocol)", path=str(path),
                     lines={("templates", i - 1): i for i in range(1, len(templates) + 1)},
                     name_source="protocol", language_source="protocol")
