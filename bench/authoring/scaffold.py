"""`bench prompts new`: a documented prompt-set YAML file to start from."""

from __future__ import annotations

import json
from pathlib import Path

from bench.cache import atomic_write_bytes
from bench.errors import BenchError
from bench.prompts import NAME_RE, load_prompt_set, parse_prompt_set

STARTERS = {
    "en": ["a photo of a {{ label }}.", "a blurry photo of a {{ label }}.", "a close-up photo of a {{ label }}."],
    "zh": ["一张{{ label }}的照片。", "一张{{ label }}的模糊照片。", "一张{{ label }}的特写照片。"],
}

HEADER = """\
# Prompt set `{name}` ({language}) — scaffolded by `bench prompts new`.
#
# Format (see docs/prompts-and-labels.md, "Authoring a prompt set"):
#   name:        the set's name; results record it, and `--prompts {name}` finds it once the file
#                is under prompts/ (or pass the file path: `--prompts path/to/{name}.yaml`).
#   language:    en or zh. Labels are taken in this language; `bench prompts lint` checks
#                that the templates are written in it.
#   templates:   a list of jinja2 templates, one per prompt. `{{{{ label }}}}` is replaced by the class
#                name; no other variable exists and the sandbox blocks Python internals. Each class
#                embedding is the normalised mean over all templates, so every template counts equally:
#                avoid duplicates, including ones that differ only in spaces or punctuation.
#   per_dataset: optional, instead of (or as well as) templates: {{dataset name: [templates]}};
#                a dataset listed here uses its own list, every other dataset uses `templates`.
#   description: optional, one line on where the templates come from.
#
# Quote every template ("...") so YAML leaves punctuation such as ':' and '#' alone.
# Next steps:
#   bench prompts lint {file} --model MODEL          # errors with file:line, exit 1 on errors
#   bench prompts eval {file} --model MODEL --dataset DATASET   # accuracy per template vs the baseline
"""


def _yaml_str(text: str) -> str:
    # JSON strings are valid YAML double-quoted scalars; keep Chinese readable.
    return json.dumps(text, ensure_ascii=False)


def scaffold_text(name: str, language: str, file: str, source_set: str | None = None) -> str:
    """The YAML text of a new prompt set, optionally starting from the templates of `source_set`."""
    lines = [HEADER.format(name=name, language=language, file=file).rstrip("\n"),
             f"name: {name}", f"language: {language}"]
    if source_set is None:
        lines.append(_yaml_str_line("description", f"TODO: where these {language} templates come from"))
        lines.append("templates:")
        lines += [f"  - {_yaml_str(t)}" for t in STARTERS[language]]
        return "\n".join(lines) + "\n"
    ps = load_prompt_set(source_set)
    note = f"started from {ps.name} ({ps.language})"
    if ps.language != language:
        note += f"; TODO: translate these {ps.language} templates into {language} (lint lists the untranslated ones)"
    lines.append(_yaml_str_line("description", note))
    if ps.templates:
        lines.append("templates:")
        lines += [f"  - {_yaml_str(t)}" for t in ps.templates]
    if ps.per_dataset:
        lines.append("per_dataset:")
        for ds, templates in ps.per_dataset.items():
            lines.append(f"  {ds}:")
            lines += [f"    - {_yaml_str(t)}" for t in templates]
    return "\n".join(lines) + "\n"


def _yaml_str_line(key: str, value: str) -> str:
    return f"{key}: {_yaml_str(value)}"


def new_prompt_set(name: str, language: str, out_dir: Path, source_set: str | None = None) -> Path:
    """Write `<out_dir>/<name>.yaml`; never overwrites an existing file."""
    if not NAME_RE.match(name):
        raise BenchError(f"invalid prompt set name '{name}': use letters, digits, '.', '_' and '-'")
    if language not in STARTERS:
        raise BenchError(f"language must be one of {', '.join(STARTERS)}, got '{language}'")
    path = Path(out_dir) / f"{name}.yaml"
    if path.exists():
        raise BenchError(f"{path} already exists; pick another name or --out folder (it is never overwritten)")
    text = scaffold_text(name, language, str(path), source_set)
    atomic_write_bytes(path, text.encode("utf-8"))
    try:
        parse_prompt_set(path)  # the scaffold must load as written
    except BenchError:
        path.unlink()
        raise
    return path


LABELS_HEADER = """\
# Labels for `{dataset}` ({language}) — scaffolded by `bench labels new` from {source}.
#
# labels:   one class name per class, in class-index order (the dataset's own order).
# classes:  per-class text that templates can use beside {{{{ label }}}} (docs/knowledge.md):
#   definition:   one sentence saying what the class is      → {{{{ definition }}}} in a template
#   descriptions: short visual descriptions, one per item     → {{{{ description }}}}: the template is
#                 rendered once per description and all of a class's prompts are averaged
# Leave a field null / [] for a class you have nothing for; a template that needs it then fails for
# that class, or is left out for it when the prompt set says `missing_fields: skip`.
# Next steps:
#   bench labels lint {file} --model MODEL --prompts SET   # empty, duplicated, wrong language, [UNK], too long
#   bench study knowledge --model MODEL --dataset {dataset} --labels {file}
"""


def label_scaffold_text(dataset: str, language: str, file: str) -> str:
    """A label file for `dataset` in `language` with an empty `classes:` entry for every class."""
    from bench.datasets.registry import get_dataset
    from bench.labels import label_file, parse_label_file

    spec = get_dataset(dataset)
    shipped = label_file(language, spec.name)
    if shipped.is_file():
        names, source = parse_label_file(shipped)[0], str(shipped.relative_to(shipped.parents[2]))
    elif language == "en" and spec.classes:
        names, source = tuple(spec.classes), f"the registry's class names of {spec.name}"
    else:
        raise BenchError(f"no {language} labels for {spec.name} to start from; write label_translations/"
                         f"{language}/{spec.name}.yaml first (one name per class)")
    lines = [LABELS_HEADER.format(dataset=spec.name, language=language, source=source, file=file).rstrip("\n"),
             "labels: [" + ", ".join(_yaml_str(n) for n in names) + "]", "classes:"]
    for n in names:
        lines += [f"  {_yaml_str(n)}:", "    definition: null", "    descriptions: []"]
    return "\n".join(lines) + "\n"


def new_label_file(dataset: str, language: str, out_dir: Path) -> Path:
    """Write `<out_dir>/<dataset>.yaml` with per-class field stubs; never overwrites an existing file."""
    from bench.datasets.registry import get_dataset
    from bench.labels import parse_label_fields, parse_label_file

    if language not in STARTERS:
        raise BenchError(f"language must be one of {', '.join(STARTERS)}, got '{language}'")
    path = Path(out_dir) / f"{get_dataset(dataset).name}.yaml"
    if path.exists():
        raise BenchError(f"{path} already exists; pick another --out folder (it is never overwritten)")
    text = label_scaffold_text(dataset, language, str(path))
    atomic_write_bytes(path, text.encode("utf-8"))
    try:
        parse_label_fields(path, parse_label_file(path)[0])  # the scaffold must load as written
    except BenchError:
        path.unlink()
        raise
    return path
