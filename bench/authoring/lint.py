"""Lint prompt sets and label files: one finding per problem, `file:line: level: message`.

Linting never stops at the first problem (unlike loading for a run): every template and label is
checked so an author sees the whole list at once. All checks are pure functions of the parsed
file and, optionally, a tokenizer (`TextChecker`, which every `Backend` is).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import jinja2
import jinja2.meta
import yaml

from bench.backends.base import TextCheck
from bench.errors import BenchError
from bench.prompts import (
    ALLOWED_KEYS,
    environment,
    infer_language,
    sample_fields,
    template_fields,
    template_lines,
    variable_problem,
)
from bench.validation import (  # noqa: F401 - Finding, normalize_text, has_han: this module's API too
    ERROR,
    FIELD_SENTINELS,
    LATIN_RE,
    SENTINEL,
    WARNING,
    Finding,
    Template,
    _per_dataset_key_lines,
    check_groups,
    has_han,
    normalize_text,
)

SAMPLE_LABEL = {"en": "dog", "zh": "狗"}


class TextChecker(Protocol):
    """Anything that tokenizes like a model (every Backend does)."""

    def check_text(self, text: str) -> TextCheck: ...


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Errors first, then warnings; each in file/line order."""
    return sorted(findings, key=lambda f: (f.level != ERROR, f.path, f.line))


def format_findings(findings: list[Finding]) -> str:
    """Errors, then warnings, then a one-line summary."""
    errors = [f for f in findings if f.level == ERROR]
    warnings = [f for f in findings if f.level == WARNING]
    lines = [f.format() for f in errors] + [f.format() for f in warnings]
    lines.append(f"{len(errors)} error(s), {len(warnings)} warning(s)")
    return "\n".join(lines)


def _read_yaml(path: Path) -> tuple[object, str, list[Finding]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BenchError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path}: cannot read file ({exc})") from None
    try:
        return yaml.safe_load(text), text, []
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return None, text, [Finding(str(path), mark.line + 1 if mark else 1, ERROR, f"invalid YAML: {problem}")]


def _key_lines(text: str) -> dict[str, int]:
    """1-based line of each top-level key."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    if not isinstance(root, yaml.MappingNode):
        return {}
    return {str(k.value): k.start_mark.line + 1 for k, _ in root.value}


# -- prompt sets ---------------------------------------------------------------------------------

def _compile(source, path: str, line: int) -> tuple[jinja2.Template | None, list[Finding]]:
    env = environment()
    if not isinstance(source, str) or not source.strip():
        return None, [Finding(path, line, ERROR, f"template must be a non-empty string, got {source!r}")]
    try:
        ast = env.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        return None, [Finding(path, line + max(0, (exc.lineno or 1) - 1), ERROR,
                              f"jinja2 syntax error: {exc.message}: {source!r}")]
    problem = variable_problem(jinja2.meta.find_undeclared_variables(ast), source)
    if problem:
        return None, [Finding(path, line, ERROR, problem)]
    template = env.from_string(source)
    try:
        template.render(label=SENTINEL, **sample_fields(template_fields(source), FIELD_SENTINELS))
    except jinja2.TemplateError as exc:  # includes the sandbox's SecurityError
        return None, [Finding(path, line, ERROR, f"cannot render: {exc}: {source!r}")]
    return template, []


def _labels_for(group: str, language: str, datasets: tuple[str, ...], path: str,
                line: int) -> tuple[list[tuple[str, list[str]]], list[Finding]]:
    """(source, names) pairs to render a group's templates with, for tokenizer checks."""
    from bench.datasets.registry import find_dataset
    from bench.labels import label_file, parse_label_file

    wanted = (group,) if group != "templates" else datasets
    out, findings = [], []
    for name in wanted:
        spec = find_dataset(name)
        if spec is None:
            findings.append(Finding(path, line, WARNING, f"'{name}' is not a registered dataset; "
                                    "checked with a sample label only"))
            continue
        file = label_file(language, spec.name)
        if not file.is_file():
            findings.append(Finding(path, line, WARNING, f"no {language} labels for {spec.name} ({file}); "
                                    "checked with a sample label only"))
            continue
        names, variants = parse_label_file(file)
        # each variant is its own source: a variant's [UNK] names are not the default labels' problem
        out.append((f"{spec.name} labels", list(names)))
        out += [(f"{spec.name} labels' variant '{v}'", list(dict.fromkeys(m.values()))) for v, m in variants.items()]
    if not out:
        out.append(("sample label", [SAMPLE_LABEL[language]]))
    return out, findings


class MemoChecker:
    """Caches `check_text` per text: shared templates meet the same labels in every group."""

    def __init__(self, checker: TextChecker):
        self.checker = checker
        self.memo: dict[str, TextCheck] = {}

    def check_text(self, text: str) -> TextCheck:
        if text not in self.memo:
            self.memo[text] = self.checker.check_text(text)
        return self.memo[text]


# Token counts of `template(label)` and `template(sample) - sample + label` differ by merges at the
# two boundaries only; prompts estimated within this margin of the context length are checked exactly.
TRUNCATION_MARGIN = 8


def _tokenizer_findings(t: Template, language: str, label_sets: list[tuple[str, list[str]]],
                        checker: MemoChecker, path: str) -> list[Finding]:
    """[UNK] in the template's own text, and prompts cut at the context length (with every label)."""
    findings = []
    sample = SAMPLE_LABEL[language]
    fields = sample_fields(template_fields(t.source))
    base = checker.check_text(t.compiled.render(label=sample, **fields))
    sample_check = checker.check_text(sample)
    if len(base.unknown) > len(sample_check.unknown):  # the sample label's own [UNK] is not the template's
        findings.append(Finding(path, t.line, ERROR, f"[UNK] tokens {list(base.unknown)} in {t.source!r}; "
                                "the model cannot see those characters"))
    sample_n = sample_check.n_tokens
    truncated, n_total = [], 0
    for _, names in label_sets:
        for name in names:
            n_total += 1
            estimate = base.n_tokens - sample_n + checker.check_text(name).n_tokens
            if estimate <= base.context_length - TRUNCATION_MARGIN:
                continue
            text = t.compiled.render(label=name, **fields)
            check = checker.check_text(text)
            if check.truncated:
                truncated.append((text, check))
    if truncated:
        text, check = max(truncated, key=lambda x: x[1].n_tokens)
        sources = (", ".join(s for s, _ in label_sets) if len(label_sets) <= 3
                   else f"labels of {len(label_sets)} datasets")
        findings.append(Finding(path, t.line, ERROR, f"truncated by the tokenizer in {len(truncated)} of {n_total} "
                                f"prompts ({sources}), longest {check.n_tokens} tokens > context length "
                                f"{check.context_length}: {text!r}"))
    return findings


def _label_unknown(label_sets: list[tuple[str, list[str]]], checker: MemoChecker, path: str,
                   line: int) -> list[Finding]:
    """Labels the tokenizer maps to [UNK]: the label file's problem, so a warning here."""
    findings = []
    for source, names in label_sets:
        bad = [n for n in names if checker.check_text(n).unknown]
        if bad:
            findings.append(Finding(path, line, WARNING, f"{len(bad)} of the {source} map to [UNK] under this "
                                    f"tokenizer ({', '.join(map(repr, bad[:5]))}{' …' if len(bad) > 5 else ''}); "
                                    "check them with `bench labels lint --model`"))
    return findings


def lint_prompt_file(path: Path, checker: TextChecker | None = None, datasets: tuple[str, ...] = ()) -> list[Finding]:
    """Every problem in a prompt-set file. With a `checker`, prompts are tokenized: rendered with each
    per_dataset group's labels, `datasets`' labels for shared templates, or else a sample label."""
    path = Path(path)
    p = str(path)
    data, text, findings = _read_yaml(path)
    if findings:
        return findings
    from bench.classprompts import is_class_prompt_mapping

    if is_class_prompt_mapping(path, data):
        return lint_class_prompt_file(path, data, text, checker)
    if not isinstance(data, dict):
        return [Finding(p, 1, ERROR, "a prompt set is a mapping with name, language and templates")]
    keys = _key_lines(text)
    if data.get("class_prompts") is not None:
        from bench.classprompts import load_class_prompts

        try:
            if not isinstance(data["class_prompts"], str):
                raise BenchError("class_prompts must name a CuPL file, relative to this file")
            load_class_prompts(path.parent / data["class_prompts"])
        except BenchError as exc:
            findings.append(Finding(p, keys.get("class_prompts", 1), ERROR, str(exc)))
    extra = set(map(str, data)) - ALLOWED_KEYS
    findings += [Finding(p, keys.get(k, 1), ERROR, f"unknown key '{k}'; allowed: {', '.join(sorted(ALLOWED_KEYS))}")
                 for k in sorted(extra)]
    language = data.get("language")
    if language is None and isinstance(data.get("templates") or [], list) and isinstance(data.get("per_dataset") or {}, dict):
        # as a run does (bench.prompts.infer_language): Chinese characters in a template → zh, else en
        language = infer_language(data.get("templates") or [], data.get("per_dataset") or {})
        findings.append(Finding(p, 1, WARNING, f"no `language:`; inferred '{language}' from the templates"))
    if language not in ("en", "zh"):
        findings.append(Finding(p, keys.get("language", 1), ERROR, f"language must be 'en' or 'zh', got {language!r}"))
        language = None
    if "name" not in data:
        findings.append(Finding(p, 1, WARNING, f"no `name:`; the set will be called '{path.stem}'"))
    raw_templates = data.get("templates") or []
    per_dataset = data.get("per_dataset") or {}
    if not isinstance(raw_templates, list):
        findings.append(Finding(p, keys.get("templates", 1), ERROR, "templates must be a list of strings"))
        raw_templates = []
    if not isinstance(per_dataset, dict):
        findings.append(Finding(p, keys.get("per_dataset", 1), ERROR, "per_dataset must map dataset names to lists"))
        per_dataset = {}
    lines = template_lines(path, text)
    memo = MemoChecker(checker) if checker is not None else None
    groups: dict[str, list] = {"templates": raw_templates} if raw_templates else {}
    for ds, seq in per_dataset.items():
        if not isinstance(seq, list) or not seq:
            findings.append(Finding(p, keys.get("per_dataset", 1), ERROR,
                                    f"per_dataset.{ds} must be a non-empty list of templates"))
            continue
        groups[str(ds)] = seq
    if not groups:
        findings.append(Finding(p, 1, ERROR, "no templates: add a `templates:` list (or `per_dataset:`)"))
    checked: dict[str, list[Template]] = {}
    for group, seq in groups.items():
        compiled: list[Template] = []
        for i, src in enumerate(seq):
            key = ("templates", i) if group == "templates" else ("per_dataset", group, i)
            line = lines.get(key, keys.get(group if group == "templates" else "per_dataset", 1))
            tpl, errs = _compile(src, p, line)
            findings += errs
            if tpl is not None:
                compiled.append(Template(group, i, src, line, tpl))
        checked[group] = compiled
        if language is not None:
            group_line = compiled[0].line if compiled else 1
            if checker is not None:
                label_sets, notes = _labels_for(group, language, datasets, p, group_line)
                findings += notes + _label_unknown(label_sets, memo, p, group_line)
                for t in compiled:
                    findings += _tokenizer_findings(t, language, label_sets, memo, p)
    # the rules a run enforces too (bench.validation): duplicates, language, per_dataset keys
    findings += check_groups(checked, language, p, keys.get("language", 0), _per_dataset_key_lines(text))
    return sort_findings(findings)


def lint_class_prompt_file(path: Path, data: object, text: str, checker: TextChecker | None = None) -> list[Finding]:
    """A CuPL file ({class name: [prompts]}): types, empty or repeated prompts, one language throughout,
    and with a `checker` [UNK] tokens and prompts over the context length. Class names are matched to a
    dataset's labels when it runs."""
    from bench.classprompts import check_class_prompts

    p = str(path)
    try:
        prompts = check_class_prompts(path, data)
    except BenchError as exc:
        msg = str(exc)
        return [Finding(p, 1, ERROR, msg[len(p) + 2:] if msg.startswith(p + ": ") else msg)]
    lines = _key_lines(text) if path.suffix.lower() != ".json" else {}
    all_prompts = [x for ps in prompts.values() for x in ps]
    zh = sum(has_han(x) for x in all_prompts) * 2 > len(all_prompts)
    findings = []
    for name, items in prompts.items():
        line = lines.get(name, 1)
        seen: set[str] = set()
        for x in items:
            key = normalize_text(x)
            if key in seen:
                findings.append(Finding(p, line, ERROR, f"class {name!r}: prompt {x!r} is repeated; it would count twice"))
            seen.add(key)
            if zh and LATIN_RE.search(x) and not has_han(x):
                findings.append(Finding(p, line, WARNING, f"class {name!r}: prompt {x!r} has no Chinese characters "
                                        "in a mostly Chinese file"))
            if not zh and has_han(x):
                findings.append(Finding(p, line, WARNING, f"class {name!r}: prompt {x!r} has Chinese characters "
                                        "in a mostly English file"))
            if checker is not None:
                check = checker.check_text(x)
                if check.unknown:
                    findings.append(Finding(p, line, ERROR, f"class {name!r}: [UNK] tokens {list(check.unknown)[:5]} "
                                            f"in {x!r}"))
                if check.truncated:
                    findings.append(Finding(p, line, ERROR, f"class {name!r}: {x!r} is {check.n_tokens} tokens, over "
                                            f"the context length {check.context_length}"))
    return sort_findings(findings)


# -- label files ---------------------------------------------------------------------------------

def _label_lines(text: str) -> tuple[list[int], dict[str, dict[int, int]], dict[str, int]]:
    """Lines of labels[i], of variants[name][index], and of each variant's name."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return [], {}, {}
    labels, variants, vnames = [], {}, {}
    if not isinstance(root, yaml.MappingNode):
        return labels, variants, vnames
    for key, value in root.value:
        if key.value == "labels" and isinstance(value, yaml.SequenceNode):
            labels = [n.start_mark.line + 1 for n in value.value]
        elif key.value == "variants" and isinstance(value, yaml.MappingNode):
            for vkey, mapping in value.value:
                vnames[str(vkey.value)] = vkey.start_mark.line + 1
                if isinstance(mapping, yaml.MappingNode):
                    variants[str(vkey.value)] = {int(k.value): k.start_mark.line + 1 for k, _ in mapping.value
                                                 if str(k.value).lstrip("-").isdigit()}
    return labels, variants, vnames


def _name_duplicates(names: tuple[str, ...], lines: list[int], path: str, where: str,
                     kept_by: str | None = None) -> list[Finding]:
    """Classes sharing a name: errors, or warnings in a variant that reproduces a protocol's own list with
    its repeats (`kept_by`: that protocol; the run keeps them too)."""
    findings = []
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        key = normalize_text(name)
        line = lines[i] if i < len(lines) else 1
        if key in seen:
            j = seen[key]
            how = "the same name" if names[j] == name else "the same name up to case, whitespace or punctuation"
            kept = f" (kept: protocol {kept_by} publishes them so)" if kept_by else ""
            findings.append(Finding(path, line, WARNING if kept_by else ERROR,
                                    f"{where}class {i} {name!r} and class {j} {names[j]!r} have "
                                    f"{how}: their class embeddings would (nearly) coincide{kept}"))
        else:
            seen[key] = i
    return findings


def lint_label_file(path: Path, dataset: str | None = None, checker: TextChecker | None = None,
                    language: str | None = None, prompts=None) -> list[Finding]:
    """Every problem in a label file: class count vs the registry, duplicates (per variant too),
    Chinese in an English file (Latin in a Chinese file is normal: model numbers, codes), and with a
    `checker` names the tokenizer maps to [UNK] or truncates."""
    from bench.datasets.registry import find_dataset
    from bench.labels import parse_label_file
    from bench.protocols import variant_protocol

    path = Path(path)
    p = str(path)
    _, text, findings = _read_yaml(path)
    if findings:
        return findings
    try:
        names, variants = parse_label_file(path)
    except BenchError as exc:
        msg = str(exc)
        return [Finding(p, 1, ERROR, msg[len(p) + 2:] if msg.startswith(p + ": ") else msg)]
    label_lines, variant_lines, vname_lines = _label_lines(text)
    language = language or (path.parent.name if path.parent.name in ("en", "zh") else None)
    name = dataset or path.stem
    spec = find_dataset(name)
    if spec is None:
        findings.append(Finding(p, 1, WARNING, f"'{name}' is not a registered dataset, so the class count is "
                                "not checked; pass --dataset NAME"))
    elif len(names) != spec.num_classes:
        findings.append(Finding(p, 1, ERROR, f"{len(names)} class names, but dataset {spec.name} has "
                                f"{spec.num_classes} classes; list one name per class in index order"))
    findings += _name_duplicates(names, label_lines, p, "")
    for vname, mapping in variants.items():
        merged = tuple(mapping.get(i, n) for i, n in enumerate(names))
        lines = [variant_lines.get(vname, {}).get(i, label_lines[i] if i < len(label_lines) else 1)
                 for i in range(len(names))]
        proto = variant_protocol(vname)
        findings += _name_duplicates(merged, lines, p, f"variant '{vname}': ",
                                     proto.name if proto is not None and proto.duplicate_labels == "warn" else None)
        same = [i for i, n in mapping.items() if n == names[i]]
        for i in same:
            findings.append(Finding(p, variant_lines.get(vname, {}).get(i, vname_lines.get(vname, 1)), WARNING,
                                    f"variant '{vname}' sets class {i} to its default name {names[i]!r}"))
    # (class, name, line, variant or None): a variant's names are reported as that variant's, and a
    # tokenizer problem in one is a warning (a variant is used only when asked for; a run records
    # [UNK] class names in its result), while the default labels' are errors
    entries = [(i, n, label_lines[i] if i < len(label_lines) else 1, None) for i, n in enumerate(names)]
    entries += [(i, n, variant_lines.get(v, {}).get(i, vname_lines.get(v, 1)), v)
                for v, m in variants.items() for i, n in m.items()]
    for i, n, line, v in entries:
        who = f"variant '{v}': class {i} {n!r}" if v else f"class {i} {n!r}"
        if language == "en" and has_han(n):
            findings.append(Finding(p, line, ERROR, f"{who}: Chinese characters in an English label file"))
        if checker is not None:
            check = checker.check_text(n)
            level = WARNING if v else ERROR
            if check.unknown:
                findings.append(Finding(p, line, level, f"{who} tokenizes to [UNK] "
                                        f"({len(check.unknown)} unknown token(s)); the model cannot see it"))
            if check.truncated:
                findings.append(Finding(p, line, level, f"{who} is {check.n_tokens} tokens, over the "
                                        f"context length {check.context_length}"))
    findings += field_findings(path, text, names, language, checker, prompts)
    return sort_findings(findings)


# -- per-class fields (label files' `classes:`) ----------------------------------------------------

def _field_lines(text: str) -> dict[object, dict]:
    """Under `classes:`, per class key: {"line": key line, "definition": line, "descriptions": [item lines]}."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    out: dict[object, dict] = {}
    if not isinstance(root, yaml.MappingNode):
        return out
    for key, value in root.value:
        if key.value != "classes" or not isinstance(value, yaml.MappingNode):
            continue
        for ck, entry in value.value:
            k = int(ck.value) if ck.tag.endswith(":int") else str(ck.value)
            rec: dict = {"line": ck.start_mark.line + 1}
            if isinstance(entry, yaml.MappingNode):
                for fk, fv in entry.value:
                    rec[fk.value] = ([n.start_mark.line + 1 for n in fv.value] if isinstance(fv, yaml.SequenceNode)
                                     else fk.start_mark.line + 1)
            out[k] = rec
    return out


def field_findings(path: Path, text: str, names: tuple[str, ...], language: str | None,
                   checker: TextChecker | None = None, prompts=None) -> list[Finding]:
    """Problems in a label file's per-class fields: classes without them (when others have them), empty
    or duplicated texts, texts in the wrong language, and with a `checker` [UNK] tokens and prompts cut
    at the context length (rendered with `prompts`' templates that use the field, else the text alone)."""
    from bench.labels import parse_label_fields
    from bench.prompts import FIELD_VARIABLES, render_class, template_fields

    p = str(path)
    try:
        fields = parse_label_fields(path, names)
    except BenchError as exc:
        msg = str(exc)
        return [Finding(p, 1, ERROR, msg[len(p) + 2:] if msg.startswith(p + ": ") else msg)]
    if not fields:
        return []
    lines = _field_lines(text)
    by_index = {(k if isinstance(k, int) else names.index(k) if k in names else -1): v for k, v in lines.items()}
    findings: list[Finding] = []
    for fld in ("definition", "descriptions"):
        lacking = [n for n, f in zip(names, fields) if not f.get(fld)]
        if lacking and len(lacking) < len(names):
            findings.append(Finding(p, _key_lines(text).get("classes", 1), WARNING,
                                    f"{len(lacking)} of {len(names)} classes have no {fld}: "
                                    f"{', '.join(map(repr, lacking[:8]))}{' …' if len(lacking) > 8 else ''}; "
                                    "a template using it fails for them (or skips them with `missing_fields: skip`)"))
    seen: dict[str, tuple[int, str]] = {}
    memo = MemoChecker(checker) if checker is not None else None
    templates = []
    if prompts is not None:
        group = prompts.templates or next(iter(prompts.per_dataset.values()), ())
        templates = [(src, environment().from_string(src)) for src in group if template_fields(src)]
    for i, name in enumerate(names):
        rec = by_index.get(i, {})
        key_line = rec.get("line", 1)
        f = fields[i]
        items: list[tuple[str, str, int]] = []
        if "definition" in f:
            items.append(("definition", f["definition"], rec.get("definition", key_line)))
        desc_lines = rec.get("descriptions") if isinstance(rec.get("descriptions"), list) else []
        for j, d in enumerate(f.get("descriptions", ())):
            items.append(("description", d, desc_lines[j] if j < len(desc_lines) else key_line))
        if "descriptions" in f and not f["descriptions"]:
            findings.append(Finding(p, rec.get("line", key_line), WARNING, f"class {i} {name!r}: descriptions is empty"))
        own: set[str] = set()
        for kind, value, line in items:
            who = f"class {i} {name!r}: {kind} {value!r}"
            if not value.strip():
                findings.append(Finding(p, line, ERROR, f"class {i} {name!r}: empty {kind}"))
                continue
            key = normalize_text(value)
            if key in own:
                findings.append(Finding(p, line, ERROR, f"{who} is repeated for this class; it would count twice"))
            elif key in seen and seen[key][0] != i:
                findings.append(Finding(p, line, WARNING, f"{who} is also given for class {seen[key][0]} "
                                        f"{names[seen[key][0]]!r}: it does not tell the two apart"))
            own.add(key)
            seen.setdefault(key, (i, kind))
            if language == "zh" and LATIN_RE.search(value) and not has_han(value):
                findings.append(Finding(p, line, ERROR, f"{who} has no Chinese characters in a Chinese (zh) file"))
            if language == "en" and has_han(value):
                findings.append(Finding(p, line, ERROR, f"{who}: Chinese characters in an English (en) file"))
            if memo is None:
                continue
            check = memo.check_text(value)
            if check.unknown:
                findings.append(Finding(p, line, ERROR, f"{who} has [UNK] tokens {list(check.unknown)[:5]}; the "
                                        "model cannot see those characters"))
            usable = [(src, t) for src, t in templates if kind in template_fields(src)
                      and all(f.get(FIELD_VARIABLES[v]) for v in template_fields(src))]
            sub = {**f, "descriptions": (value,)} if kind == "description" else f
            rendered = [r for src, t in usable for r in render_class(t, src, name, sub, template_fields(src), p)]
            rendered = rendered or [value]
            worst = max((memo.check_text(r) for r in rendered), key=lambda c: c.n_tokens, default=None)
            if worst is not None and worst.truncated:
                how = "once rendered with the prompt set's templates" if usable else "on its own"
                findings.append(Finding(p, line, ERROR, f"{who} is {worst.n_tokens} tokens {how}, over the "
                                        f"context length {worst.context_length}: the end is cut off"))
    return findings
