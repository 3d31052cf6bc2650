"""Property-based: arbitrary text fed to the YAML loaders and the template renderer gives a valid object or a
BenchError, never another exception or a hang."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.errors import BenchError
from bench.labels import parse_label_file
from bench.models import ModelSpec
from bench.prompts import compile_template, parse_prompt_set, render
from bench.registry import from_mapping, load_yaml

SETTINGS = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text that looks like YAML/jinja often enough to reach past the parser: keys, tags, flow collections, braces.
FRAGMENTS = st.sampled_from([
    "labels:", "variants:", "templates:", "per_dataset:", "name:", "language: zh", "language: en", "backend:",
    "model:", "- ", "  ", "\n", "[", "]", "{", "}", ":", ",", "'", '"', "!!python/object/apply:os.system",
    "!!binary", "&a", "*a", "<<: *a", "2024-13-45", "0: x", "3: 其它", "{{ label }}", "{{", "}}", "{%", "%}",
    "|upper", "label", ".__class__", "~", "**", "*", "9", "null", "true", "猫", "---", "...", "#", "?",
])
YAMLISH = st.one_of(st.text(max_size=200), st.lists(FRAGMENTS, max_size=40).map("".join))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "input.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _either(fn, *args):
    try:
        return fn(*args)
    except BenchError as exc:
        assert str(exc)
        return None


@SETTINGS
@given(text=YAMLISH)
def test_load_yaml_and_from_mapping(tmp_path, text):
    path = _write(tmp_path, text)
    data = _either(load_yaml, path)
    spec = _either(from_mapping, ModelSpec, data, str(path))
    assert spec is None or isinstance(spec, ModelSpec)


@SETTINGS
@given(text=YAMLISH)
def test_parse_label_file(tmp_path, text):
    out = _either(parse_label_file, _write(tmp_path, text))
    if out is not None:
        labels, variants = out
        assert all(isinstance(x, str) and x for x in labels)
        assert all(0 <= k < len(labels) for v in variants.values() for k in v)


@SETTINGS
@given(text=YAMLISH)
def test_parse_prompt_set(tmp_path, text):
    ps = _either(parse_prompt_set, _write(tmp_path, text))
    if ps is not None:
        assert ps.language in ("en", "zh")
        for ds in list(ps.per_dataset) or ["any"]:
            if ps.templates or ds in ps.per_dataset:
                assert all(isinstance(t, str) for t in ps.render(ds, ["猫", "dog"])[0])


@SETTINGS
@given(source=st.one_of(st.text(max_size=120), st.lists(FRAGMENTS, max_size=30).map("".join)),
       label=st.text(max_size=20))
def test_template_renderer(source, label):
    template = _either(compile_template, source, "t.yaml:1")
    if template is not None:
        out = _either(render, template, label or "x")
        assert out is None or isinstance(out, str)


@SETTINGS
@given(rows=st.lists(st.one_of(st.text(max_size=10), st.integers(), st.none(), st.lists(st.integers(), max_size=2)),
                     max_size=12))
def test_label_lists_of_any_shape(tmp_path, rows):
    out = _either(parse_label_file, _write(tmp_path, json.dumps({"labels": rows}, ensure_ascii=False)))
    assert out is None or len(out[0]) == len(rows)


@pytest.mark.parametrize("text", ["a: 2024-13-45\n", "[" * 5000, "a: !!python/name:os.system\n"])
def test_known_awkward_yaml(tmp_path, text):
    with pytest.raises(BenchError):
        load_yaml(_write(tmp_path, text))
