"""Prompt sets (contract): YAML files of jinja2 templates, rendered in a sandbox with strict undefined."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import jinja2
import jinja2.meta
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bench.errors import BenchError
from bench.paths import prompts_dir
from bench.registry import load_yaml, unknown

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
ALLOWED_KEYS = {"name", "language", "description", "templates", "per_dataset"}


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
    return arg.endswith((".yaml", ".yml"))


def check_name(arg: str, kind: str) -> str:
    if not NAME_RE.match(arg):
        raise BenchError(f"invalid {kind} name '{arg}': use a registered name (letters, digits, '.', '_', '-') "
                         "or a path to a .yaml file")
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
    names = jinja2.meta.find_undeclared_variables(ast)
    if "label" not in names:
        raise BenchError(f"{where}: template has no {{{{ label }}}}: {source!r}")
    if names - {"label"}:
        raise BenchError(f"{where}: undefined variable(s) {', '.join(sorted(names - {'label'}))} "
                         "(only {{ label }} is available)")
    try:
        template = env.from_string(source)
    except jinja2.TemplateError as exc:  # errors the parser leaves to the compiler
        raise BenchError(f"{where}: jinja2 error: {exc}") from None
    render(template, "example label", where)  # sandbox and runtime errors show at load time, before any encoding
    return template


def render(template: jinja2.Template, label: str, where: str = "template") -> str:
    try:
        return template.render(label=label)
    except jinja2.exceptions.SecurityError as exc:
        raise BenchError(f"{where}: blocked by the template sandbox: {exc}") from None
    except jinja2.TemplateError as exc:
        raise BenchError(f"{where}: cannot render: {exc}") from None
    except (ArithmeticError, TypeError, ValueError, LookupError, AttributeError, RecursionError) as exc:
        # operators on the label, e.g. {{ label / 2 }} or {{ label|int // 0 }}
        raise BenchError(f"{where}: cannot render: {type(exc).__name__}: {exc}") from None


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

    def templates_for(self, dataset: str) -> tuple[str, ...]:
        if dataset in self.per_dataset:
            return self.per_dataset[dataset]
        if self.templates:
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
        """[C][T] prompt texts for every label × template."""
        compiled = self.compiled(dataset)
        return [[render(t, label, f"{self.path}: template {src!r}") for src, t in compiled] for label in labels]


def infer_language(templates: list, per_dataset: dict) -> str:
    """zh when any template has a Chinese (Han) character, else en: for a file without `language:`."""
    han = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
    texts = [*templates, *(t for group in per_dataset.values() if isinstance(group, list) for t in group)]
    return "zh" if any(han.search(str(t)) for t in texts) else "en"


def parse_prompt_set(path: Path) -> PromptSet:
    """Load and fully validate a prompt-set file (every template compiled)."""
    path = Path(path)
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise BenchError(f"{path}: a prompt set is a mapping with name, language and templates")
    extra = set(data) - ALLOWED_KEYS
    if extra:
        raise BenchError(f"{path}: unknown key(s) {', '.join(sorted(map(str, extra)))}; "
                         f"allowed: {', '.join(sorted(ALLOWED_KEYS))}")
    language = data.get("language")
    templates = data.get("templates") or []
    per_dataset = data.get("per_dataset") or {}
    if not isinstance(templates, list) or not isinstance(per_dataset, dict):
        raise BenchError(f"{path}: templates must be a list and per_dataset a mapping of lists")
    if not templates and not per_dataset:
        raise BenchError(f"{path}: no templates")
    language_source = "file"
    if language is None:  # a file with only `templates:` just works (issue 15); the result says so
        language, language_source = infer_language(templates, per_dataset), "inferred from templates"
    if language not in ("en", "zh"):
        raise BenchError(f"{path}: language must be 'en' or 'zh', got {language!r}")
    lines = template_lines(path, path.read_text(encoding="utf-8"))
    per_dataset, lines, key_aliases = _canonical_keys(path, {str(k): v for k, v in per_dataset.items()}, lines)
    ps = PromptSet(name=str(data.get("name") or path.stem), language=language, templates=tuple(templates),
                   per_dataset={str(k): tuple(v) if isinstance(v, list) else v for k, v in per_dataset.items()},
                   description=str(data.get("description") or ""), path=str(path), lines=lines,
                   key_aliases=key_aliases, language_source=language_source,
                   name_source="file" if data.get("name") else "file name")
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
        raise unknown("prompt set", arg, list_prompt_sets(), hint="or pass a path to a prompt-set .yaml file")
    return parse_prompt_set(path)
