"""Prompt sets (contract): YAML files of jinja2 templates, rendered in a sandbox with strict undefined."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import jinja2
import jinja2.meta
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bench.errors import BenchError
from bench.paths import prompts_dir
from bench.registry import unknown

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
ALLOWED_KEYS = {"name", "language", "description", "templates", "per_dataset", "class_prompts", "missing_fields"}
# Template variables beside `label`, each filled from a per-class field of the label file
# (bench.labels): a list field renders the template once per item, a text field once.
FIELD_VARIABLES = {"description": "descriptions", "definition": "definition"}
VARIABLES = frozenset({"label", *FIELD_VARIABLES})
# What a class lacking a field a template uses gets (`missing_fields:` in a prompt set): "error"
# (the default) stops the run naming the class and the label file; "skip" leaves those templates
# out for that class, which keeps the set's other (plain) templates, and the result lists the class.
MISSING_FIELDS = ("error", "skip")
SAMPLE_FIELDS = {"description": "example description", "definition": "example definition"}


MAX_REPEAT = 10_000  # longest string/list a template may build with `*`; `**` exponents up to MAX_POWER
MAX_POWER = 64
# Statements a prompt never needs: loops and macros can run for hours, includes read other files.
FORBIDDEN_NODES = {jinja2.nodes.For: "{% for %}", jinja2.nodes.Macro: "{% macro %}",
                   jinja2.nodes.CallBlock: "{% call %}", jinja2.nodes.Extends: "{% extends %}",
                   jinja2.nodes.Include: "{% include %}", jinja2.nodes.Import: "{% import %}",
                   jinja2.nodes.FromImport: "{% from ... import %}"}


class PromptEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, plus limits on `*` and `**` so a template cannot stall a run (`{{ 9**9**9 }}`)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator, left, right):
        nums = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (left, right))
        if operator == "**" and not (nums and abs(right) <= MAX_POWER and abs(left) <= 10 ** 6):
            raise jinja2.exceptions.SecurityError(f"'**' is limited to exponents up to {MAX_POWER}")
        if operator == "*":
            seq, count = (left, right) if isinstance(left, (str, list, tuple)) else (right, left)
            if isinstance(seq, (str, list, tuple)) and isinstance(count, int) and len(seq) * count > MAX_REPEAT:
                raise jinja2.exceptions.SecurityError(f"'*' may build at most {MAX_REPEAT} items")
            if nums and abs(left) > 10 ** 6 and abs(right) > 10 ** 6:
                raise jinja2.exceptions.SecurityError("'*' operands are too large")
        return super().call_binop(context, operator, left, right)


@lru_cache(maxsize=1)
def environment() -> ImmutableSandboxedEnvironment:
    """The one jinja2 environment: sandboxed (no Python internals), strict undefined variables."""
    return PromptEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)


def is_path_arg(arg: str) -> bool:
    """A command-line value names a file when it looks like one; anything else must be a plain name."""
    return arg.endswith((".yaml", ".yml", ".json"))


def check_name(arg: str, kind: str) -> str:
    if not NAME_RE.match(arg):
        raise BenchError(f"invalid {kind} name '{arg}': use a registered name (letters, digits, '.', '_', '-') "
                         "or a path to a file ending in .yaml, .yml or .json")
    return arg


def template_lines(path: Path, text: str) -> dict[tuple, int]:
    """1-based file line of each template string: ('templates', i) or ('per_dataset', ds, i)."""
    lines: dict[tuple, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key, value in root.value:
        if key.value == "templates" and isinstance(value, yaml.SequenceNode):
            for i, node in enumerate(value.value):
                lines[("templates", i)] = node.start_mark.line + 1
        elif key.value == "per_dataset" and isinstance(value, yaml.MappingNode):
            for ds, seq in value.value:
                if isinstance(seq, yaml.SequenceNode):
                    for i, node in enumerate(seq.value):
                        lines[("per_dataset", ds.value, i)] = node.start_mark.line + 1
    return lines


def compile_template(source: str, where: str) -> jinja2.Template:
    """Parse one template: a syntax error or any variable other than `label` is an error at `where`."""
    env = environment()
    if not isinstance(source, str) or not source.strip():
        raise BenchError(f"{where}: template must be a non-empty string")
    try:
        ast = env.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise BenchError(f"{where}: jinja2 syntax error: {exc.message}") from None
    for node_type, tag in FORBIDDEN_NODES.items():
        if next(ast.find_all(node_type), None) is not None:
            raise BenchError(f"{where}: {tag} is not allowed in prompt templates (only expressions on {{{{ label }}}})")
    problem = variable_problem(jinja2.meta.find_undeclared_variables(ast), source)
    if problem:
        raise BenchError(f"{where}: {problem}")
    try:
        template = env.from_string(source)
    except jinja2.TemplateError as exc:  # errors the parser leaves to the compiler
        raise BenchError(f"{where}: jinja2 error: {exc}") from None
    # sandbox and runtime errors show at load time, before any encoding
    render(template, "example label", where, sample_fields(template_fields(source)))
    return template


def variable_problem(names: set[str], source: str) -> str | None:
    """Why a template's variables are wrong (None when they are fine): it must use `label` (or
    `description`, whose text names the class itself) and nothing but `label`, `description`, `definition`."""
    if "label" not in names and "description" not in names:
        return f"template has no {{{{ label }}}}: {source!r}"
    if names - VARIABLES:
        return (f"undefined variable(s) {', '.join(sorted(names - VARIABLES))} "
                f"(available: {{{{ label }}}}, and from the label file's per-class fields {{{{ description }}}}, "
                f"{{{{ definition }}}}): {source!r}")
    return None


@lru_cache(maxsize=4096)
def template_fields(source: str) -> frozenset[str]:
    """The per-class field variables (`description`, `definition`) a template uses."""
    try:
        names = jinja2.meta.find_undeclared_variables(environment().parse(source))
    except jinja2.TemplateSyntaxError:
        return frozenset()
    return frozenset(names & set(FIELD_VARIABLES))


def sample_fields(fields: Iterable[str], values: dict[str, str] | None = None) -> dict[str, str]:
    """Stand-in values for field variables, to render a template without a class (checks, lint)."""
    values = values or SAMPLE_FIELDS
    return {f: values[f] for f in fields}


def render(template: jinja2.Template, label: str, where: str = "template", fields: dict[str, str] | None = None) -> str:
    try:
        return template.render(label=label, **(fields or {}))
    except jinja2.exceptions.SecurityError as exc:
        raise BenchError(f"{where}: blocked by the template sandbox: {exc}") from None
    except jinja2.TemplateError as exc:
        raise BenchError(f"{where}: cannot render: {exc}") from None
    except (ArithmeticError, TypeError, ValueError, LookupError, AttributeError, RecursionError) as exc:
        # operators on the label, e.g. {{ label / 2 }} or {{ label|int // 0 }}
        raise BenchError(f"{where}: cannot render: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class ClassTexts:
    """The prompts of every class, ragged: a class's embedding is the mean over its own row."""

    rows: list[list[str]]
    skipped: dict[int, list[str]] = field(default_factory=dict)  # class → templates left out (missing field)

    @property
    def rectangular(self) -> bool:
        return len({len(r) for r in self.rows}) <= 1


@dataclass(frozen=True)
class PromptSet:
    name: str
    language: str
    templates: tuple[str, ...] = ()
    per_dataset: dict[str, tuple[str, ...]] = field(default_factory=dict)
    description: str = ""
    path: str = ""
    lines: dict = field(default_factory=dict, compare=False, repr=False)
    key_aliases: dict = field(default_factory=dict, compare=False, repr=False)  # dataset name -> key as written
    language_source: str = "file"  # or "inferred from templates" when the file has no `language:`
    name_source: str = "file"  # or "file name" when the file has no `name:`
    # CuPL-style prompt lists, {class name: [prompt, ...]}: literal text (not templates), added to the
    # class's rendered templates and averaged with them (bench.classprompts)
    class_prompts: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    class_prompts_path: str = ""
    missing_fields: str = "error"  # see MISSING_FIELDS

    def templates_for(self, dataset: str) -> tuple[str, ...]:
        if dataset in self.per_dataset:
            return self.per_dataset[dataset]
        if self.templates or self.class_prompts:
            return self.templates
        raise BenchError(f"prompt set '{self.name}' ({self.path}) has no templates for dataset '{dataset}' "
                         f"(it covers: {', '.join(sorted(self.per_dataset))}); add them under per_dataset")

    def where(self, key: tuple) -> str:
        line = self.lines.get(key)
        return f"{self.path}:{line}" if line else self.path

    def compiled(self, dataset: str) -> list[tuple[str, jinja2.Template]]:
        key_base = ("per_dataset", dataset) if dataset in self.per_dataset else ("templates",)
        return [(src, compile_template(src, f"{self.where((*key_base, i))}: template {i + 1}"))
                for i, src in enumerate(self.templates_for(dataset))]

    def render(self, dataset: str, labels: list[str]) -> list[list[str]]:
        """[C][T] prompt texts for every label × template (templates that use no per-class field)."""
        compiled = self.compiled(dataset)
        return [[render(t, label, f"{self.path}: template {src!r}") for src, t in compiled] for label in labels]

    def class_texts(self, dataset: str, labels) -> ClassTexts:
        """Every class's prompts: each template rendered with the class's label (once per description
        for a template that uses ``{{ description }}``), then its CuPL prompts if the set has any.

        A plain template set gives exactly ``render()``'s rows. `labels` is a `bench.labels.Labels`.
        """
        from bench.classprompts import match_class_prompts

        compiled = self.compiled(dataset)
        extra = match_class_prompts(self, labels) if self.class_prompts else None
        fields_of = getattr(labels, "fields", ()) or ()
        rows: list[list[str]] = []
        skipped: dict[int, list[str]] = {}
        for c, name in enumerate(labels.names):
            fields = fields_of[c] if c < len(fields_of) else {}
            row: list[str] = []
            for src, t in compiled:
                need = template_fields(src)
                lacking = sorted(FIELD_VARIABLES[f] for f in need if not fields.get(FIELD_VARIABLES[f]))
                if lacking and self.missing_fields == "skip":
                    skipped.setdefault(c, []).append(src)
                    continue
                if lacking:
                    raise BenchError(
                        f"class {c} {name!r} of {labels.description} has no {' or '.join(lacking)}, which template "
                        f"{src!r} of prompt set '{self.name}' ({self.path}) uses; add `{lacking[0]}:` for it under "
                        "`classes:` in the label file, or put `missing_fields: skip` in the prompt set so classes "
                        "without it use only the set's other templates")
                row += render_class(t, src, name, fields, need, f"{self.path}: template {src!r}")
            if extra is not None:
                row += list(extra[c])
            if not row:
                raise BenchError(f"class {c} {name!r} of {labels.description} has no prompt left: every template "
                                 f"of '{self.name}' ({self.path}) needs a field it lacks; give the set a template "
                                 "with only {{ label }}, or the class the missing fields")
            rows.append(row)
        return ClassTexts(rows, skipped)


def render_class(t: jinja2.Template, src: str, label: str, fields: dict, need: frozenset[str], where: str) -> list[str]:
    """One template's prompts for one class: one per description when it uses `description`, else one."""
    scalar = {f: str(fields[FIELD_VARIABLES[f]]) for f in need if f != "description"}
    if "description" not in need:
        return [render(t, label, where, scalar)]
    return [render(t, label, where, {**scalar, "description": d}) for d in fields["descriptions"]]


def infer_language(templates: list, per_dataset: dict) -> str:
    """zh when any template has a Chinese (Han) character, else en: for a file without `language:`."""
    han = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
    texts = [*templates, *(t for group in per_dataset.values() if isinstance(group, list) for t in group)]
    return "zh" if any(han.search(str(t)) for t in texts) else "en"


def parse_prompt_set(path: Path) -> PromptSet:
    """Load and fully validate a prompt-set file (every template compiled)."""
    from bench.classprompts import is_class_prompt_mapping, load_class_prompts, parse_class_prompts, read_mapping

    path = Path(path)
    data = read_mapping(path)
    if is_class_prompt_mapping(path, data):
        return parse_class_prompts(path, data)
    if not isinstance(data, dict):
        raise BenchError(f"{path}: a prompt set is a mapping with name, language and templates")
    extra = set(data) - ALLOWED_KEYS
    if extra:
        raise BenchError(f"{path}: unknown key(s) {', '.join(sorted(map(str, extra)))}; "
                         f"allowed: {', '.join(sorted(ALLOWED_KEYS))} (or a CuPL file: {{class name: [prompts]}})")
    language = data.get("language")
    templates = data.get("templates") or []
    per_dataset = data.get("per_dataset") or {}
    if not isinstance(templates, list) or not isinstance(per_dataset, dict):
        raise BenchError(f"{path}: templates must be a list and per_dataset a mapping of lists")
    missing_fields = data.get("missing_fields", "error")
    if missing_fields not in MISSING_FIELDS:
        raise BenchError(f"{path}: missing_fields must be one of {', '.join(MISSING_FIELDS)}, got {missing_fields!r}")
    class_prompts, cp_path = {}, ""
    if data.get("class_prompts") is not None:
        if not isinstance(data["class_prompts"], str):
            raise BenchError(f"{path}: class_prompts names a CuPL file ({{class name: [prompts]}}, .json or .yaml), "
                             "relative to this file")
        cp = (path.parent / data["class_prompts"])
        class_prompts, cp_path = load_class_prompts(cp), str(cp)
    if not templates and not per_dataset and not class_prompts:
        raise BenchError(f"{path}: no templates")
    language_source = "file"
    if language is None:  # a file with only `templates:` just works (issue 15); the result says so
        language = infer_language([*templates, *(p for ps in class_prompts.values() for p in ps)], per_dataset)
        language_source = "inferred from templates"
    if language not in ("en", "zh"):
        raise BenchError(f"{path}: language must be 'en' or 'zh', got {language!r}")
    lines = template_lines(path, path.read_text(encoding="utf-8"))
    per_dataset, lines, key_aliases = _canonical_keys(path, {str(k): v for k, v in per_dataset.items()}, lines)
    ps = PromptSet(name=str(data.get("name") or path.stem), language=language, templates=tuple(templates),
                   per_dataset={str(k): tuple(v) if isinstance(v, list) else v for k, v in per_dataset.items()},
                   description=str(data.get("description") or ""), path=str(path), lines=lines,
                   key_aliases=key_aliases, language_source=language_source,
                   name_source="file" if data.get("name") else "file name", class_prompts=class_prompts,
                   class_prompts_path=cp_path, missing_fields=missing_fields)
    for ds, tpl in ps.per_dataset.items():
        if not isinstance(tpl, tuple) or not tpl:
            raise BenchError(f"{path}: per_dataset.{ds} must be a non-empty list of templates")
    for i, src in enumerate(ps.templates):
        compile_template(src, f"{ps.where(('templates', i))}: template {i + 1}")
    for ds, tpl in ps.per_dataset.items():
        for i, src in enumerate(tpl):
            compile_template(src, f"{ps.where(('per_dataset', ds, i))}: template {i + 1}")
    return ps


def _canonical_keys(path: Path, per_dataset: dict, lines: dict) -> tuple[dict, dict, dict]:
    """per_dataset keys given as a dataset alias become the dataset's name (runs look groups up by name,
    so an alias key would otherwise be ignored); two keys for one dataset are an error."""
    from bench.datasets.registry import find_dataset

    out, aliases, seen = {}, {}, {}
    for key, value in per_dataset.items():
        spec = find_dataset(key)
        name = spec.name if spec is not None else key
        if name in seen:
            raise BenchError(f"{path}: per_dataset keys '{seen[name]}' and '{key}' both name dataset {name}; "
                             "keep one list")
        seen[name] = key
        out[name] = value
        if name != key:
            aliases[name] = key
    if aliases:
        back = {v: k for k, v in aliases.items()}
        lines = {(k[0], back.get(k[1], k[1]), *k[2:]) if k[0] == "per_dataset" else k: v for k, v in lines.items()}
    return out, lines, aliases


def list_prompt_sets() -> list[str]:
    return sorted(p.stem for p in prompts_dir().glob("*.yaml"))


def load_prompt_set(arg: str) -> PromptSet:
    """A shipped set by name, or a YAML file by path."""
    if is_path_arg(arg):
        return parse_prompt_set(Path(arg))
    check_name(arg, "prompt set")
    path = prompts_dir() / f"{arg}.yaml"
    if not path.is_file():
        raise unknown("prompt set", arg, list_prompt_sets(),
                      hint="or pass a path to a prompt-set .yaml file (or a CuPL .json file)")
    return parse_prompt_set(path)
