"""Label files, prompt sets and the authoring workflow: scaffold, lint, eval (all offline)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from identity_helpers import latest_result

from bench.authoring.lint import ERROR, WARNING, lint_label_file, lint_prompt_file, normalize_text
from bench.datasets.registry import find_dataset, list_datasets
from bench.labels import parse_label_file
from bench.paths import labels_dir, prompts_dir
from bench.protocols import variant_protocol

LABEL_FILES = sorted(labels_dir().glob("*/*.yaml"))
PROMPT_FILES = sorted(prompts_dir().glob("*.yaml"))
ALL_DATASETS = tuple(s.name for s in list_datasets())


# -- tokenizers of tiny models, built offline -------------------------------------------------------

@pytest.fixture(scope="module")
def bpe_checker():
    """open_clip's BPE tokenizer (ships with the package) behind the real OpenClipBackend.check_text."""
    open_clip = pytest.importorskip("open_clip")
    from bench.backends.openclip import OpenClipBackend

    backend = object.__new__(OpenClipBackend)  # tokenizer only: no weights needed to lint
    backend.tokenizer = open_clip.get_tokenizer("ViT-B-32")
    backend.context_length = int(backend.tokenizer.context_length)
    return backend


@pytest.fixture(scope="module")
def bert_checker(tmp_path_factory):
    """Chinese CLIP's BERT vocab (bundled with cn_clip), loaded with from_pretrained, behind the real
    TransformersBackend.check_text (lower-casing, context 52)."""
    cn_clip = pytest.importorskip("cn_clip")
    from transformers import BertTokenizerFast

    from bench.backends.hf import CN_CLIP_CONTEXT, TransformersBackend

    folder = tmp_path_factory.mktemp("cn-vocab")
    shutil.copy(os.path.join(os.path.dirname(cn_clip.__file__), "clip", "vocab.txt"), folder / "vocab.txt")
    tok = BertTokenizerFast.from_pretrained(str(folder))
    assert tok.tokenize("一张猫的照片") == list("一张猫的照片")  # the vocab really loaded (no silent [UNK])
    backend = object.__new__(TransformersBackend)
    backend.tokenizer, backend.is_cn_clip, backend.context_length = tok, True, CN_CLIP_CONTEXT
    return backend


def errors(findings):
    return [f for f in findings if f.level == ERROR]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- shipped label files ---------------------------------------------------------------------------

def test_every_dataset_has_labels_in_both_languages():
    for spec in list_datasets(include_demo=False):
        if spec.optional:
            continue
        for language in ("en", "zh"):
            assert (labels_dir() / language / f"{spec.name}.yaml").is_file(), (language, spec.name)


@pytest.mark.parametrize("path", LABEL_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shipped_label_file_count_and_no_duplicates(path):
    spec = find_dataset(path.stem)
    assert spec is not None, f"{path}: no registered dataset of that name"
    names, variants = parse_label_file(path)
    assert len(names) == spec.num_classes
    for variant in [None, *variants]:
        merged = [variants[variant].get(i, n) for i, n in enumerate(names)] if variant else list(names)
        keys = [normalize_text(n) for n in merged]
        dupes = sorted({n for n, k in zip(merged, keys) if keys.count(k) > 1})
        if variant_protocol(variant) is not None and variant_protocol(variant).duplicate_labels == "warn":
            continue  # another tool's own list, reproduced with its repeats (ELEVATER's ImageNet)
        assert not dupes, f"{path} variant {variant}: {dupes}"
    assert errors(lint_label_file(path)) == []


def test_kitti_negation_variant():
    names, variants = parse_label_file(labels_dir() / "zh" / "kitti-distance.yaml")
    assert names[3] == "没有汽车" and variants["other-not-negation"] == {3: "其它"}


# -- shipped prompt sets ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", PROMPT_FILES, ids=lambda p: p.stem)
def test_shipped_prompt_set_lints_clean(path, bpe_checker, bert_checker):
    language = yaml.safe_load(path.read_text(encoding="utf-8"))["language"]
    assert lint_prompt_file(path) == []
    # Tokenized with every dataset's labels, under a tokenizer of the set's language.
    checker = bert_checker if language == "zh" else bpe_checker
    findings = lint_prompt_file(path, checker, ALL_DATASETS)
    assert errors(findings) == [], "\n".join(f.format() for f in errors(findings))
    # Warnings may only be about label files ([UNK] names), never about the templates.
    assert all("map to [UNK]" in f.message for f in findings), [f.format() for f in findings]


@pytest.mark.parametrize("path", [p for p in PROMPT_FILES if p.stem.endswith("-zh")], ids=lambda p: p.stem)
def test_chinese_templates_have_no_unk(path, bert_checker):
    from bench.prompts import parse_prompt_set

    ps = parse_prompt_set(path)
    for group in [ps.templates, *ps.per_dataset.values()]:
        for src in group:
            text = src.replace("{{ label }}", "猫")
            assert bert_checker.check_text(text).unknown == (), text


# -- lint catches each error kind ------------------------------------------------------------------

BAD_SET = """\
name: bad
language: en
templates:
  - "a photo of a {{ label }}."
  - "a photo of a {{ label }."
  - "a photo without the label."
  - "a photo of a {{ label }} by {{ author }}."
  - "a photo of a {{ label }}."
  - "A photo of a  {{label}}!"
  - "一张{{ label }}的照片。"
  - "{{ label.__class__.__mro__ }}"
"""


def test_lint_catches_each_prompt_error_kind(tmp_path):
    path = write(tmp_path / "bad.yaml", BAD_SET)
    found = {(f.line, f.level): f.message for f in lint_prompt_file(path)}
    assert "jinja2 syntax error" in found[(5, ERROR)]
    assert "has no {{ label }}" in found[(6, ERROR)]
    assert "author" in found[(7, ERROR)]
    assert "duplicate template" in found[(8, ERROR)] and "line 4" in found[(8, ERROR)]
    assert "only in whitespace or punctuation" in found[(9, WARNING)]
    assert "Chinese characters in an English" in found[(10, ERROR)]
    assert "cannot render" in found[(11, ERROR)] or "jinja2" in found[(11, ERROR)]
    assert len(found) == 7


def test_lint_chinese_punctuation_duplicates_and_language(tmp_path):
    path = write(tmp_path / "zh.yaml", 'name: z\nlanguage: zh\ntemplates:\n  - "一张{{ label }}的照片。"\n'
                 '  - "一张 {{ label }} 的照片"\n  - "「一张{{ label }}的照片」！"\n  - "a photo of a {{ label }}."\n'
                 '  - "{{ label }}"\n')
    findings = lint_prompt_file(path)
    near = [f.line for f in findings if f.level == WARNING and "punctuation" in f.message]
    assert near == [5, 6]
    assert [f.line for f in errors(findings)] == [7]  # English template; a bare label is fine
    only_english = write(tmp_path / "en-as-zh.yaml", 'language: zh\ntemplates:\n  - "a {{ label }}"\n')
    assert any("no template contains Chinese" in f.message for f in lint_prompt_file(only_english))


def test_lint_truncation_and_unk(tmp_path, bpe_checker, bert_checker):
    long = write(tmp_path / "long.yaml", "name: l\nlanguage: en\ntemplates:\n  - \"" + "very " * 80
                 + "{{ label }}\"\n  - \"a photo of a {{ label }}.\"\n")
    findings = errors(lint_prompt_file(long, bpe_checker))
    assert [f.line for f in findings] == [4] and "context length 77" in findings[0].message
    # Truncation caused by a long class name of one dataset, found only with its labels.
    mid = write(tmp_path / "mid.yaml", "name: m\nlanguage: en\ntemplates:\n  - \"" + "quite " * 70
                + "{{ label }}\"\n")
    assert errors(lint_prompt_file(mid, bpe_checker)) == []
    assert "country211 labels" in errors(lint_prompt_file(mid, bpe_checker, ("country211",)))[0].message
    unk = write(tmp_path / "unk.yaml", 'name: u\nlanguage: zh\ntemplates:\n  - "一张{{ label }}的照片🦜。"\n')
    findings = errors(lint_prompt_file(unk, bert_checker))
    assert [f.line for f in findings] == [4] and "[UNK]" in findings[0].message


def test_lint_structure_errors(tmp_path):
    bad_yaml = write(tmp_path / "y.yaml", "name: y\ntemplates: [\"a {{ label }}\"\n")
    assert errors(lint_prompt_file(bad_yaml))[0].message.startswith("invalid YAML")
    f = write(tmp_path / "k.yaml", "name: k\nlanguage: fr\ntemplate: []\n")
    messages = " ".join(x.message for x in errors(lint_prompt_file(f)))
    assert "unknown key 'template'" in messages and "language must be" in messages and "no templates" in messages


def test_label_lint_catches_count_duplicates_and_unk(tmp_path, bert_checker):
    folder = tmp_path / "zh"
    folder.mkdir()
    path = write(folder / "kitti-distance.yaml", 'labels:\n  - "左侧或右侧有汽车"\n  - "附近有汽车"\n'
                 '  - "附近 有汽车。"\n  - "没有汽车"\n  - "多余的"\nvariants:\n  other: {3: "附近有汽车"}\n'
                 '  same: {0: "左侧或右侧有汽车"}\n  rare: {4: "鸸鹋"}\n')
    found = lint_label_file(path, checker=bert_checker)
    text = "\n".join(f.format() for f in found)
    assert "5 class names, but dataset kitti-distance has 4" in text
    assert any(f.line == 4 and "class 2" in f.message and f.level == ERROR for f in found)
    assert any("variant 'other'" in f.message and f.line == 8 for f in found)
    assert any(f.level == WARNING and "variant 'same'" in f.message for f in found)
    assert any("鸸鹋" in f.message and "[UNK]" in f.message and f.line == 10 for f in found)
    en = tmp_path / "en"
    en.mkdir()
    mixed = write(en / "digits.yaml", "labels: [zero, one, two, three, four, five, six, seven, eight, 九]\n")
    assert [f.line for f in errors(lint_label_file(mixed))] == [1]


# -- CLI: new, lint, labels lint -------------------------------------------------------------------

def test_prompts_new_scaffold_lints_and_never_overwrites(bench_cli, tmp_path):
    code, out, _ = bench_cli("prompts", "new", "mine", "--language", "zh", "--out", tmp_path)
    assert code == 0
    path = tmp_path / "mine.yaml"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Prompt set `mine` (zh)") and "{{ label }}" in text
    assert bench_cli("prompts", "lint", path)[0] == 0
    before = path.read_bytes()
    code, _, err = bench_cli("prompts", "new", "mine", "--language", "zh", "--out", tmp_path)
    assert code == 2 and "already exists" in err and path.read_bytes() == before
    code, _, _ = bench_cli("prompts", "new", "copy", "--language", "en", "--from", "elevater-en", "--out", tmp_path)
    from bench.prompts import load_prompt_set, parse_prompt_set

    assert code == 0 and parse_prompt_set(tmp_path / "copy.yaml").per_dataset == load_prompt_set("elevater-en").per_dataset


def test_cli_lint_exit_codes_and_format(bench_cli, tmp_path):
    path = write(tmp_path / "bad.yaml", BAD_SET)
    code, out, _ = bench_cli("prompts", "lint", path)
    lines = out.strip().splitlines()
    assert code == 1 and lines[-1] == "6 error(s), 1 warning(s)"
    levels = [line.split(": ")[1] for line in lines[:-1]]
    assert levels == sorted(levels)  # errors first, then warnings
    assert all(line.startswith(f"{path}:") for line in lines[:-1])
    assert bench_cli("prompts", "lint", "openai-zh", "simple-en")[0] == 0
    assert bench_cli("labels", "lint", "--dataset", "kitti-distance", "--language", "zh")[0] == 0
    code, _, err = bench_cli("labels", "lint", "--dataset", "kitti-distanse", "--language", "zh")
    assert code == 2 and "did you mean" in err


def test_cli_lint_with_demo_model(bench_cli, cache_dir, tmp_path):
    # The demo model's word-level vocabulary knows its own prompts but not the openai set's words.
    assert bench_cli("prompts", "lint", "demo-zh", "--model", "demo", "--cache-dir", cache_dir,
                     "--dataset", "digits")[0] == 0
    code, out, _ = bench_cli("prompts", "lint", "openai-en", "--model", "demo-en", "--cache-dir", cache_dir)
    assert code == 1 and "[UNK]" in out
    code, out, _ = bench_cli("labels", "lint", labels_dir() / "zh" / "digits.yaml", "--model", "demo",
                             "--cache-dir", cache_dir)
    # The default names are known words; the `numerals` variant (line 3) uses digits the vocab lacks:
    # warnings that name the variant (it is used only when asked for), not errors about the labels.
    warns = [line for line in out.splitlines() if ": warning: " in line and "[UNK]" in line]
    assert code == 0 and ": error: " not in out and warns
    assert all(line.startswith(f"{labels_dir() / 'zh' / 'digits.yaml'}:3:") and "variant 'numerals'" in line
               for line in warns)


# -- eval ------------------------------------------------------------------------------------------

def test_eval_per_template_matches_single_template_runs(bench_cli, cache_dir, digits_root, tmp_path):
    from bench.prompts import load_prompt_set

    common = ("--model", "demo", "--dataset", "digits", "--data-root", digits_root, "--cache-dir", cache_dir,
              "--workers", "0", "--limit", "200")
    code, out, err = bench_cli("prompts", "eval", "demo-zh", "--baseline", "simple-zh", *common,
                               "--out", tmp_path / "eval")
    assert code == 0, err
    result = json.loads(latest_result(tmp_path / "eval" / "demo" / "digits", "prompts-eval").read_text())
    templates = load_prompt_set("demo-zh").templates
    assert [t["template"] for t in result["templates"]] == list(templates)
    assert result["baseline"]["prompts"] == "simple-zh" and result["n_samples"] == 200
    assert "ensemble: demo-zh" in out and "baseline: simple-zh" in out

    def run(prompts: str, out_dir: Path) -> dict:
        code, _, err = bench_cli("run", *common, "--prompts", prompts, "--out", out_dir)
        assert code == 0, err
        return json.loads(latest_result(out_dir / "demo" / "digits", "zeroshot").read_text())

    for i, src in enumerate(templates):
        single = write(tmp_path / f"t{i}.yaml", f"name: t{i}\nlanguage: zh\ntemplates:\n  - {json.dumps(src)}\n")
        r = run(str(single), tmp_path / f"run{i}")
        assert r["cache"]["images_encoded"] == 0  # eval already cached the features
        assert result["templates"][i]["top1"] == pytest.approx(r["metrics"]["top1"], abs=1e-9)
        assert result["templates"][i]["primary"] == pytest.approx(r["metrics"]["primary"], abs=1e-9)
    full = run("demo-zh", tmp_path / "full")
    base = run("simple-zh", tmp_path / "base")
    assert result["ensemble"]["top1"] == pytest.approx(full["metrics"]["top1"], abs=1e-9)
    assert result["baseline"]["top1"] == pytest.approx(base["metrics"]["top1"], abs=1e-9)
    assert result["delta"]["top1"] == pytest.approx(full["metrics"]["top1"] - base["metrics"]["top1"], abs=1e-9)
    # Per-template numbers differ (the check above is not comparing a constant to itself).
    assert len({t["top1"] for t in result["templates"]}) > 1


def test_eval_reuses_cached_features_and_default_baseline(bench_cli, cache_dir, digits_root, tmp_path):
    common = ("--model", "demo-en", "--dataset", "digits", "--data-root", digits_root, "--cache-dir", cache_dir,
              "--workers", "0", "--limit", "100", "--out", tmp_path)
    assert bench_cli("prompts", "eval", "simple-en", *common)[0] == 0
    first = json.loads(latest_result(tmp_path / "demo-en" / "digits", "prompts-eval").read_text())
    assert first["cache"]["images_encoded"] == 100 and first["baseline"]["prompts"] == "demo-en"
    assert bench_cli("prompts", "eval", "demo-en", *common)[0] == 0
    second = json.loads(latest_result(tmp_path / "demo-en" / "digits", "prompts-eval").read_text())
    assert second["cache"]["images_encoded"] == 0
    assert second["ensemble"]["top1"] == pytest.approx(first["baseline"]["top1"], abs=1e-9)


def test_prompt_lint_names_the_label_variant_whose_names_are_unk(demo_cache):
    # Regression: the names of every variant were pooled into "the digits labels", so the `numerals`
    # variant's [UNK] digits were reported against the default labels, which tokenize cleanly.
    from bench.backends import load_backend
    from bench.models import resolve_model

    demo = load_backend(resolve_model("demo"), cache_dir=demo_cache)
    messages = [f.message for f in lint_prompt_file(prompts_dir() / "demo-zh.yaml", demo, ("digits",))]
    assert any("digits labels' variant 'numerals' map to [UNK]" in m for m in messages), messages
    assert not any("of the digits labels map to [UNK]" in m for m in messages), messages
