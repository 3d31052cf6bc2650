"""Per-class prompts: label-file fields ({{ description }}, {{ definition }}), CuPL prompt lists and
ELEVATER's knowledge-augmented prompts."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bench.authoring.lint import ERROR, WARNING
from bench.errors import BenchError
from bench.labels import Labels, parse_label_fields, resolve_labels
from bench.prompts import load_prompt_set, parse_prompt_set
from bench.zeroshot import class_embeddings, normalize

sys.path.insert(0, str(Path(__file__).parent))
from identity_helpers import latest_result  # noqa: E402

ZH = ("零", "一", "二", "三", "四", "五", "六", "七", "八", "九")
EN = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LIMIT = "60"


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def label_file(tmp_path: Path, classes: dict, names=ZH, name: str = "digits.yaml") -> Path:
    return write_yaml(tmp_path / name, {"labels": list(names), "classes": classes})


def spec():
    from bench.datasets.registry import get_dataset

    return get_dataset("digits")


# --------------------------------------------------------------------------- per-class fields


def test_description_renders_once_per_description_and_definition_once(tmp_path):
    lf = label_file(tmp_path, {"零": {"definition": "没有数量", "descriptions": ["一个圆圈", "像鸡蛋"]},
                               3: {"descriptions": ["两个弯"]}})
    labels = resolve_labels(str(lf), spec(), "zh")
    assert labels.fields[0] == {"definition": "没有数量", "descriptions": ("一个圆圈", "像鸡蛋")}
    assert labels.fields[3] == {"descriptions": ("两个弯",)} and labels.fields[1] == {}
    ps = write_yaml(tmp_path / "p.yaml", {"name": "p", "language": "zh", "missing_fields": "skip", "templates": [
        "数字{{ label }}。", "数字{{ label }}，{{ description }}。", "{{ label }}：{{ definition }}"]})
    texts = parse_prompt_set(ps).class_texts("digits", labels)
    assert texts.rows[0] == ["数字零。", "数字零，一个圆圈。", "数字零，像鸡蛋。", "零：没有数量"]
    assert texts.rows[3] == ["数字三。", "数字三，两个弯。"]
    assert texts.rows[1] == ["数字一。"]
    assert texts.skipped[1] == ["数字{{ label }}，{{ description }}。", "{{ label }}：{{ definition }}"]
    assert 0 not in texts.skipped and not texts.rectangular


def test_missing_field_is_an_error_naming_the_class_and_the_label_file(tmp_path):
    lf = label_file(tmp_path, {"零": {"descriptions": ["一个圆圈"]}})
    labels = resolve_labels(str(lf), spec(), "zh")
    ps = parse_prompt_set(write_yaml(tmp_path / "p.yaml", {"name": "p", "language": "zh",
                                                           "templates": ["数字{{ label }}，{{ description }}。"]}))
    with pytest.raises(BenchError) as exc:
        ps.class_texts("digits", labels)
    msg = str(exc.value)
    assert "class 1 '一'" in msg and str(lf) in msg and "descriptions" in msg and "missing_fields: skip" in msg


def test_skip_leaves_a_class_with_no_prompt_as_an_error(tmp_path):
    labels = resolve_labels(str(label_file(tmp_path, {"零": {"descriptions": ["圆"]}})), spec(), "zh")
    ps = parse_prompt_set(write_yaml(tmp_path / "p.yaml", {"name": "p", "language": "zh", "missing_fields": "skip",
                                                           "templates": ["{{ label }}，{{ description }}"]}))
    with pytest.raises(BenchError, match="class 1 '一'.*no prompt left"):
        ps.class_texts("digits", labels)


@pytest.mark.parametrize("classes, message", [
    ({"十": {"definition": "x"}}, "unknown class"),
    ({"零": {"definiton": "x"}}, "unknown field"),
    ({"零": {"descriptions": "一个圆圈"}}, "must be a list of texts"),
    ({12: {"definition": "x"}}, "names class 12"),
])
def test_label_fields_are_checked(tmp_path, classes, message):
    with pytest.raises(BenchError, match=message):
        parse_label_fields(label_file(tmp_path, classes))


def test_empty_description_is_refused_at_run_time(tmp_path):
    with pytest.raises(BenchError, match="class 0 '零' has an empty description"):
        resolve_labels(str(label_file(tmp_path, {"零": {"descriptions": ["圆", " "]}})), spec(), "zh")


def test_variants_keep_the_fields_of_their_class_index(tmp_path):
    path = tmp_path / "digits.yaml"
    write_yaml(path, {"labels": list(ZH), "variants": {"v": {0: "〇"}}, "classes": {"零": {"definition": "无"}}})
    names, _ = __import__("bench.labels", fromlist=["parse_label_file"]).parse_label_file(path)
    assert parse_label_fields(path, names)[0] == {"definition": "无"}


def test_unknown_variable_still_an_error(tmp_path):
    with pytest.raises(BenchError, match="undefined variable.*colour"):
        parse_prompt_set(write_yaml(tmp_path / "p.yaml", {"language": "zh", "templates": ["{{ label }}{{ colour }}"]}))


def test_plain_set_rows_are_todays_render(tmp_path):
    ps = load_prompt_set("demo-zh")
    labels = Labels(ZH, "x", fields=({"descriptions": ("圆",)},) + ({},) * 9)  # unused fields change nothing
    assert ps.class_texts("digits", labels).rows == ps.render("digits", list(ZH))


def test_ragged_class_embeddings_are_each_class_mean():
    torch.manual_seed(0)
    rows = [torch.randn(n, 16) for n in (3, 1, 3, 5)]
    got = class_embeddings(rows)
    for c, r in enumerate(rows):
        want = normalize(normalize(r).mean(dim=0, keepdim=True))[0]
        assert torch.allclose(got[c], want, atol=1e-6)
    # classes sharing a count go through the grid path together: bitwise today's numbers
    assert torch.equal(got[[0, 2]], class_embeddings(torch.stack([rows[0], rows[2]])))


# --------------------------------------------------------------------------- runs on the demo


def common(cache_dir, digits_root, out, *extra):
    return ("--model", "demo", "--dataset", "digits", "--data-root", digits_root, "--cache-dir", cache_dir,
            "--out", out, "--workers", "0", "--limit", LIMIT, "--no-progress", "--bootstrap", "0",
            "--save-predictions", "--save-logits", *extra)


def run(bench_cli, cache_dir, digits_root, out, *extra) -> tuple[dict, np.ndarray, Path]:
    code, _, err = bench_cli("run", *common(cache_dir, digits_root, out, *extra))
    assert code == 0, err
    path = latest_result(out / "demo" / "digits", "zeroshot")
    logits = np.load(latest_result(out / "demo" / "digits", "zeroshot", ".logits.npz"))["scores"]
    return json.loads(path.read_text(encoding="utf-8")), logits, path


def cupl_of_plain(names=ZH) -> dict:
    rows = load_prompt_set("demo-zh").render("digits", list(names))
    return {n: r for n, r in zip(names, rows)}


def test_cupl_of_the_rendered_templates_is_exactly_the_plain_run(bench_cli, cache_dir, digits_root, tmp_path):
    out = tmp_path / "runs"
    plain, plain_logits, plain_path = run(bench_cli, cache_dir, digits_root, out)
    cupl = tmp_path / "cupl.json"
    cupl.write_text(json.dumps(cupl_of_plain(), ensure_ascii=False), encoding="utf-8")
    got, logits, path = run(bench_cli, cache_dir, digits_root, out, "--prompts", cupl)
    assert np.array_equal(logits, plain_logits)
    assert got["metrics"] == plain["metrics"]
    assert path != plain_path and plain_path.is_file()  # a different experiment: both results kept
    assert got["prompt_texts"]["class_prompts"]["path"] == str(cupl)
    assert got["manifest"]["prompts"]["path"] == str(cupl) and got["prompts"] == "cupl"
    # another file (one prompt changed) is another experiment again: nothing overwritten
    data = cupl_of_plain()
    data["零"] = data["零"][:-1] + ["一个手写的零。"]
    cupl.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    _, _, path2 = run(bench_cli, cache_dir, digits_root, out, "--prompts", cupl)
    assert path2 != path and path.is_file()


def test_replacing_one_class_prompts_moves_only_its_column(bench_cli, cache_dir, digits_root, tmp_path):
    out = tmp_path / "runs"
    base = tmp_path / "base.yaml"
    write_yaml(base, cupl_of_plain())
    _, before, _ = run(bench_cli, cache_dir, digits_root, out, "--prompts", base)
    data = cupl_of_plain()
    data["七"] = ["一个像镰刀的七。", "手写的七。"]  # another count too: the classes become ragged
    changed = write_yaml(tmp_path / "changed.yaml", data)
    result, after, _ = run(bench_cli, cache_dir, digits_root, out, "--prompts", changed)
    others = [c for c in range(10) if c != 7]
    assert np.array_equal(after[:, others], before[:, others])
    assert not np.allclose(after[:, 7], before[:, 7])
    assert result["prompt_texts"]["n_prompts"] == [5] * 7 + [2] + [5] * 2


def test_cupl_class_names_are_matched_strictly(tmp_path):
    data = cupl_of_plain()
    del data["三"]
    data["十"] = ["数字十。"]
    ps = parse_prompt_set(write_yaml(tmp_path / "c.yaml", data))
    with pytest.raises(BenchError) as exc:
        ps.class_texts("digits", Labels(ZH, "label_translations/zh/digits.yaml"))
    assert "'三'" in str(exc.value) and "'十'" in str(exc.value) and str(tmp_path / "c.yaml") in str(exc.value)


def test_a_set_mixes_templates_and_a_cupl_file(tmp_path):
    write_yaml(tmp_path / "extra.yaml", {n: [f"很像{n}的形状"] for n in ZH})
    ps = parse_prompt_set(write_yaml(tmp_path / "mix.yaml", {"name": "mix", "language": "zh",
                                                             "templates": ["数字{{ label }}。"],
                                                             "class_prompts": "extra.yaml"}))
    rows = ps.class_texts("digits", Labels(ZH, "x")).rows
    assert rows[4] == ["数字四。", "很像四的形状"]


def test_descriptions_run_records_fields_and_plain_numbers_stay(bench_cli, cache_dir, digits_root, tmp_path):
    out = tmp_path / "runs"
    _, plain_logits, _ = run(bench_cli, cache_dir, digits_root, out)
    lf = label_file(tmp_path, {n: {"descriptions": [f"手写的{n}", f"一个{n}"]} for n in ZH[:5]})
    # a label file with fields but a plain template set: today's numbers exactly
    _, same, _ = run(bench_cli, cache_dir, digits_root, out, "--labels", lf)
    assert np.array_equal(same, plain_logits)
    ps = write_yaml(tmp_path / "desc.yaml", {"name": "desc", "language": "zh", "missing_fields": "skip",
                                             "templates": ["数字{{ label }}。", "{{ description }}。"]})
    result, logits, _ = run(bench_cli, cache_dir, digits_root, out, "--labels", lf, "--prompts", ps)
    texts = result["prompt_texts"]
    assert texts["fields"] == ["description"] and texts["n_prompts"] == [3] * 5 + [1] * 5
    assert sorted(texts["classes_missing_fields"]) == sorted(ZH[5:])
    assert logits.shape == plain_logits.shape


# --------------------------------------------------------------------------- ELEVATER knowledge


def simple_tokenize(text: str) -> list[str]:
    """A stand-in for nltk.word_tokenize with the same shape: words and punctuation as tokens."""
    return re.findall(r"\w+|[^\w\s]", text)


def elevater_reference(templates, classnames, wiki_rows, gpt3_rows, *, use, n_gpt3, method, tokenize):
    """ELEVATER's extract_text_features loop, transcribed (vision_benchmark/evaluation/feature.py)."""
    wiki_dict = None
    for fld in ("def_wiki", "def_wn", "path_wn"):  # the order its `if` blocks run in: a later one wins
        if fld not in use:
            continue
        wiki_dict = {}
        for k2v in wiki_rows:
            if fld == "path_wn":
                path_wn = " ".join(k2v["path_wn"][:min(3, len(k2v["path_wn"]))])
                wiki_dict[k2v["classname"]] = path_wn
            else:
                wiki_dict[k2v["classname"]] = k2v[fld]
    gpt3_dict = {k2v["classname"]: k2v["gpt3"] for k2v in gpt3_rows} if "gpt3" in use else None
    out = []
    for classname in classnames:
        knowledge_text_list = []
        if wiki_dict is not None and classname in wiki_dict:
            knowledge_text_list.append(wiki_dict[classname])
        if gpt3_dict is not None:
            if method == "WIKI_AND_GPT3" or (method == "WIKI_THEN_GPT3" and len(knowledge_text_list) == 0):
                knowledge_text_list += gpt3_dict[classname][:n_gpt3]
        aug = []
        for knowledge_text in knowledge_text_list:
            knowledge_text = f" ; {classname} , " + knowledge_text if knowledge_text is not None else ""
            aug.append(" " + " ".join(tokenize(knowledge_text)))
        if not aug:
            out.append([t.format(classname) for t in templates])
        else:
            out.append([t.format(classname) + k for k in aug for t in templates])
    return out


WIKI = [  # hand-made records in ELEVATER's format (not their text)
    {"classname": "zero", "def_wiki": "The digit 0, an oval.", "def_wn": "a mathematical element",
     "path_wn": ["digit", "integer", "number", "amount"]},
    {"classname": "one", "def_wiki": None, "def_wn": "the smallest whole number", "path_wn": ["digit"]},
    {"classname": "two", "def_wiki": "", "def_wn": "", "path_wn": ["digit", "integer"]},
]
GPT3 = [{"classname": n, "gpt3": [f"A {n} has its own shape, {i}." for i in range(5)]} for n in EN]


def knowledge_dir(tmp_path: Path, nested: bool = True) -> Path:
    root = tmp_path / "Elevater_Toolkit_IC"
    base = root / "vision_benchmark" / "resources" / "knowledge" if nested else root
    (base / "external").mkdir(parents=True)
    (base / "gpt3").mkdir(parents=True)
    (base / "external" / "digits_knowledge.tsv").write_text(json.dumps(WIKI), encoding="utf-8")
    (base / "gpt3" / "GPT3_digits.tsv").write_text(json.dumps(GPT3), encoding="utf-8")
    return root


@pytest.mark.parametrize("use, n, method", [
    (("def_wiki",), 1, "and"), (("def_wiki", "gpt3"), 1, "and"), (("def_wn", "gpt3"), 3, "and"),
    (("path_wn",), 1, "and"), (("def_wiki", "gpt3"), 5, "then"), (("gpt3",), 2, "and"),
])
def test_knowledge_prompts_equal_elevaters_rule(tmp_path, use, n, method):
    from bench.knowledge import AGGREGATIONS, KnowledgeConfig, load_knowledge

    root = knowledge_dir(tmp_path)
    know = load_knowledge(KnowledgeConfig(root, use, n, method), "digits")
    templates = ["a photo of the number {}.", "the digit {}."]
    rows = [[t.format(c) for t in templates] for c in EN]
    got, record = know.augment(rows, EN, tokenize=simple_tokenize)
    want = elevater_reference(templates, EN, WIKI, GPT3, use=use, n_gpt3=n, method=AGGREGATIONS[method],
                              tokenize=simple_tokenize)
    assert got == want
    assert record["use"] == list(use) and record["aggregation"] == AGGREGATIONS[method]
    want_files = ({"external"} if use != ("gpt3",) else set()) | ({"gpt3"} if "gpt3" in use else set())
    assert set(record["files"]) == want_files


def test_knowledge_rule_by_hand(tmp_path):
    """The rule spelled out for one class: template + " ; {classname} , " + knowledge, tokenized."""
    from bench.knowledge import KnowledgeConfig, load_knowledge

    know = load_knowledge(KnowledgeConfig(knowledge_dir(tmp_path, nested=False), ("def_wiki",)), "digits")
    rows, _ = know.augment([["a photo of zero."], ["a photo of one."], ["a photo of two."], ["a photo of three."]],
                           EN[:4], tokenize=simple_tokenize)
    assert rows[0] == ["a photo of zero. ; zero , The digit 0 , an oval ."]
    assert rows[1] == ["a photo of one. "]  # a null definition: one space, as in ELEVATER
    assert rows[2] == ["a photo of two. ; two ,"]  # an empty one still adds the class name
    assert rows[3] == ["a photo of three."]  # not in the file: the plain template


def test_knowledge_with_nltk_when_installed(tmp_path):
    nltk = pytest.importorskip("nltk")
    try:
        nltk.word_tokenize("a test.")
    except LookupError:
        pytest.skip("nltk's punkt_tab data is not installed")
    from bench.knowledge import KnowledgeConfig, load_knowledge

    know = load_knowledge(KnowledgeConfig(knowledge_dir(tmp_path), ("def_wiki", "gpt3"), 2), "digits")
    rows, _ = know.augment([[f"the digit {c}."] for c in EN], EN)
    assert rows == elevater_reference(["the digit {}."], EN, WIKI, GPT3, use=("def_wiki", "gpt3"), n_gpt3=2,
                                      method="WIKI_AND_GPT3", tokenize=nltk.word_tokenize)


def test_knowledge_errors(tmp_path):
    from bench.knowledge import KnowledgeConfig, knowledge_root, load_knowledge

    with pytest.raises(BenchError, match="no external/ or gpt3/"):
        knowledge_root(tmp_path)
    root = knowledge_dir(tmp_path)
    with pytest.raises(BenchError, match="cifar-10_knowledge.tsv not found"):
        load_knowledge(KnowledgeConfig(root, ("def_wiki",)), "cifar-10")
    with pytest.raises(BenchError, match="one external field"):
        load_knowledge(KnowledgeConfig(root, ("def_wiki", "def_wn")), "digits")
    with pytest.raises(BenchError, match="1 to 5"):
        load_knowledge(KnowledgeConfig(root, ("gpt3",), 6), "digits")
    know = load_knowledge(KnowledgeConfig(root, ("gpt3",)), "digits")
    with pytest.raises(BenchError, match="no GPT-3 knowledge for class 'eleven'"):
        know.augment([["x"]], ("eleven",), tokenize=simple_tokenize)


def test_knowledge_run_records_its_source(bench_cli, cache_dir, digits_root, tmp_path, monkeypatch):
    import bench.knowledge

    monkeypatch.setattr(bench.knowledge, "nltk_tokenize", lambda: simple_tokenize)
    out = tmp_path / "runs"
    args = ["--model", "demo-en", "--dataset", "digits", "--data-root", digits_root, "--cache-dir", cache_dir,
            "--out", out, "--workers", "0", "--limit", LIMIT, "--no-progress", "--bootstrap", "0"]
    assert bench_cli("run", *args)[0] == 0
    plain = latest_result(out / "demo-en" / "digits", "zeroshot")
    code, _, err = bench_cli("run", *args, "--knowledge", knowledge_dir(tmp_path), "--gpt3-items", "2")
    assert code == 0, err
    path = latest_result(out / "demo-en" / "digits", "zeroshot")
    result = json.loads(path.read_text(encoding="utf-8"))
    know = result["prompt_texts"]["knowledge"]
    assert know["use"] == ["def_wiki", "gpt3"] and know["gpt3_items"] == 2 and know["dataset_id"] == "digits"
    assert know["classes_with"] == {"external": 3, "gpt3": 10} and len(know["classes_without_external"]) == 7
    assert result["experiment"]["knowledge"] == "def_wiki+gpt3x2"
    assert path != plain and plain.is_file()
    # zero: (1 wiki + 2 gpt3) × 5 templates; three..nine: 2 gpt3 × 5
    assert result["prompt_texts"]["n_prompts"] == [15, 15, 15] + [10] * 7


# --------------------------------------------------------------------------- bench study knowledge


def test_knowledge_study_from_cached_features(bench_cli, cache_dir, digits_root, tmp_path, count_images):
    out = tmp_path / "runs"
    plain, _, _ = run(bench_cli, cache_dir, digits_root, out)  # encodes the images once
    lf = label_file(tmp_path, {"零": {"definition": "没有数量的数", "descriptions": ["一个圆圈", "像鸡蛋的形状"]},
                               "七": {"descriptions": ["一横一竖"]}})
    cupl = tmp_path / "cupl.json"
    cupl.write_text(json.dumps(cupl_of_plain(), ensure_ascii=False), encoding="utf-8")
    count_images["n"] = 0
    code, stdout, err = bench_cli("study", "knowledge", "--model", "demo", "--dataset", "digits", "--data-root",
                                  digits_root, "--cache-dir", cache_dir, "--out", out, "--workers", "0",
                                  "--limit", LIMIT, "--no-progress", "--labels", lf, "--cupl", cupl)
    assert code == 0, err
    assert count_images["n"] == 0  # no image went through the encoder: every arm reads cached features
    study = json.loads(latest_result(out / "demo" / "digits", "study-knowledge").read_text(encoding="utf-8"))
    assert study["cache"]["images_encoded"] == 0
    arms = {a["arm"]: a for a in study["arms"]}
    assert list(arms) == ["plain", "definitions", "descriptions", "cupl", "union"]
    assert arms["plain"]["primary"] == plain["metrics"]["primary"]
    assert arms["cupl"]["primary"] == plain["metrics"]["primary"] and arms["cupl"]["mcnemar"]["p"] == 1.0
    assert arms["definitions"]["classes_with_text"] == 1 and arms["descriptions"]["classes_with_text"] == 2
    # + descriptions changes only the classes that have them: every other class's recall can move only
    # through competition, so the per-class gains are listed for all ten
    assert len(arms["descriptions"]["per_class_gain"]) == 10
    assert arms["plain"]["n_prompts"] == 50 and arms["descriptions"]["n_prompts"] == 50 - 10 + 15
    assert "skipped" in study and "elevater" not in arms
    assert "plain" in stdout and "descriptions" in stdout
    code, _, err = bench_cli("report", out, "--out", tmp_path / "report", "--format", "md")
    assert code == 0, err
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "Per-class knowledge" in md and "descriptions" in md


# --------------------------------------------------------------------------- authoring


class FakeChecker:
    """A tokenizer stand-in: one token per character, context 20, '鸸' unknown."""

    def check_text(self, text):
        from bench.backends.base import TextCheck

        return TextCheck(len(text), 20, tuple(c for c in text if c == "鸸"))


def test_labels_new_scaffolds_fields_that_load_and_lint(bench_cli, tmp_path):
    code, stdout, err = bench_cli("labels", "new", "digits", "--language", "zh", "--out", tmp_path)
    assert code == 0, err
    path = tmp_path / "digits.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert data["labels"] == list(ZH) and set(data["classes"]) == set(ZH)
    assert data["classes"]["三"] == {"definition": None, "descriptions": []}
    assert parse_label_fields(path) == ({"descriptions": ()},) * 10  # stubs: no text yet
    code, _, _ = bench_cli("labels", "new", "digits", "--language", "zh", "--out", tmp_path)
    assert code != 0  # never overwrites


def test_labels_lint_checks_fields(tmp_path):
    from bench.authoring.lint import lint_label_file

    folder = tmp_path / "zh"
    folder.mkdir()
    path = folder / "digits.yaml"
    path.write_text("labels: [零, 一, 二, 三, 四, 五, 六, 七, 八, 九]\nclasses:\n"
                    "  零:\n    definition: 没有数量的数\n    descriptions: [一个圆圈, 一个圆圈, ' ']\n"
                    "  一:\n    descriptions: [a vertical stroke, 一个圆圈]\n"
                    "  二:\n    descriptions: [鸸鹋一样的形状]\n"
                    "  三:\n    descriptions: [三个横着的弯弯曲曲的笔画连在一起像一只飞鸟的形状]\n",
                    encoding="utf-8")
    found = lint_label_file(path, checker=FakeChecker())
    text = "\n".join(f.format() for f in found)
    assert any(f.level == ERROR and f.line == 5 and "repeated" in f.message for f in found), text
    assert any(f.level == ERROR and "empty description" in f.message for f in found), text
    assert any(f.level == ERROR and "'a vertical stroke'" in f.message and "no Chinese" in f.message for f in found)
    assert any(f.level == WARNING and "also given for class 0" in f.message for f in found), text
    assert any(f.level == ERROR and "[UNK]" in f.message and "鸸鹋" in f.message for f in found), text
    assert any(f.level == ERROR and "over the context length 20" in f.message and f.line == 11 for f in found), text
    assert any(f.level == WARNING and f.line == 2 and "9 of 10 classes have no definition: '一'" in f.message
               for f in found), text
    assert any(f.level == WARNING and "6 of 10 classes have no descriptions: '四'" in f.message for f in found), text
    # rendered in a template the text no longer fits: too long once rendered
    ps = parse_prompt_set(write_yaml(tmp_path / "p.yaml", {"language": "zh", "templates": [
        "数字{{ label }}。", "一张手写的数字{{ label }}的黑白照片，{{ description }}。"]}))
    long = lint_label_file(path, checker=FakeChecker(), prompts=ps)
    assert any("once rendered" in f.message and "'二'" in f.message for f in long)
    assert not any("once rendered" in f.message and "'二'" in f.message for f in found)


def test_prompts_lint_reads_cupl_files(tmp_path):
    from bench.authoring.lint import lint_prompt_file

    good = tmp_path / "c.json"
    good.write_text(json.dumps(cupl_of_plain(), ensure_ascii=False), encoding="utf-8")
    assert lint_prompt_file(good) == []
    data = cupl_of_plain()
    data["五"] = ["数字五。", "数字五。", "the digit five"]
    bad = write_yaml(tmp_path / "c.yaml", data)
    found = lint_prompt_file(bad)
    assert any(f.level == ERROR and "repeated" in f.message and "'五'" in f.message for f in found)
    assert any(f.level == WARNING and "'the digit five'" in f.message for f in found)
    missing = write_yaml(tmp_path / "set.yaml", {"language": "zh", "templates": ["{{ label }}"],
                                                 "class_prompts": "nope.json"})
    assert any(f.level == ERROR and "nope.json" in f.message for f in lint_prompt_file(missing))


def test_prompts_eval_refuses_per_class_sets_before_encoding(bench_cli, digits_root, tmp_path, count_images):
    cupl = tmp_path / "c.json"
    cupl.write_text(json.dumps(cupl_of_plain(), ensure_ascii=False), encoding="utf-8")
    code, _, err = bench_cli("prompts", "eval", cupl, "--model", "demo", "--dataset", "digits", "--data-root",
                             digits_root, "--cache-dir", tmp_path / "cache", "--out", tmp_path / "out")
    assert code != 0 and "bench study knowledge" in err and count_images["n"] == 0


def test_bad_knowledge_flags_fail_before_any_work(bench_cli, digits_root, tmp_path, count_images):
    root = knowledge_dir(tmp_path)
    base = ["run", "--model", "demo", "--dataset", "digits", "--data-root", digits_root, "--cache-dir",
            tmp_path / "cache", "--out", tmp_path / "out"]
    code, _, err = bench_cli(*base, "--knowledge", root, "--knowledge-use", "def_wiki,def_wn")
    assert code != 0 and "one external field" in err
    code, _, err = bench_cli(*base, "--knowledge", tmp_path / "nowhere")
    assert code != 0 and "no external/ or gpt3/" in err
    assert count_images["n"] == 0


def test_docs_examples_load(tmp_path):
    """The label file and prompt set shown in docs/knowledge.md load and render together."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "knowledge.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", doc, flags=re.S)
    labels_yaml = next(b for b in blocks if b.startswith("labels:"))
    set_yaml = next(b for b in blocks if "missing_fields" in b)
    (tmp_path / "digits.yaml").write_text(labels_yaml, encoding="utf-8")
    (tmp_path / "set.yaml").write_text(set_yaml, encoding="utf-8")
    labels = resolve_labels(str(tmp_path / "digits.yaml"), spec(), "zh")
    rows = parse_prompt_set(tmp_path / "set.yaml").class_texts("digits", labels).rows
    assert rows[0] == ["一张数字零的照片。", "一张数字零的照片，一个椭圆形的圈。", "一张数字零的照片，中间空心的圆圈。",
                       "零：最小的自然数，表示没有"]
    assert rows[1] == ["一张数字一的照片。"]


def test_a_zh_set_of_a_description_template_alone_is_valid(tmp_path):
    from bench.validation import validate_prompt_set

    ps = parse_prompt_set(write_yaml(tmp_path / "d.yaml", {"language": "zh", "templates": ["{{ description }}"]}))
    assert [f for f in validate_prompt_set(ps) if f.level == ERROR] == []
    plain = parse_prompt_set(write_yaml(tmp_path / "l.yaml", {"language": "zh", "templates": ["{{ label }}"]}))
    assert any("no template contains Chinese" in f.message for f in validate_prompt_set(plain))  # as before


def test_result_fingerprints_the_prompt_file(bench_cli, cache_dir, digits_root, tmp_path):
    cupl = write_yaml(tmp_path / "c.yaml", cupl_of_plain())
    result, _, _ = run(bench_cli, cache_dir, digits_root, tmp_path / "runs", "--prompts", cupl)
    from bench.cache import file_sha256

    assert result["prompt_texts"]["prompts_file"] == {"path": str(cupl), "sha256": file_sha256(cupl)}
    assert result["experiment"]["prompts_sha"] == file_sha256(cupl)[:12]


def test_knowledge_study_elevater_arm(bench_cli, cache_dir, digits_root, tmp_path, monkeypatch):
    import bench.knowledge

    monkeypatch.setattr(bench.knowledge, "nltk_tokenize", lambda: simple_tokenize)
    out, root = tmp_path / "runs", knowledge_dir(tmp_path)
    code, _, err = bench_cli("study", "knowledge", "--model", "demo-en", "--dataset", "digits", "--data-root",
                             digits_root, "--cache-dir", cache_dir, "--out", out, "--workers", "0", "--limit", LIMIT,
                             "--no-progress", "--knowledge", root, "--knowledge-use", "def_wiki")
    assert code == 0, err
    study = json.loads(latest_result(out / "demo-en" / "digits", "study-knowledge").read_text(encoding="utf-8"))
    arms = {a["arm"]: a for a in study["arms"]}
    assert list(arms) == ["plain", "elevater"]  # no label fields, no CuPL: those arms are skipped, and said so
    assert set(study["skipped"]) == {"definitions", "descriptions", "cupl"}
    assert arms["elevater"]["classes_with_text"] == 3 and study["knowledge"]["use"] == ["def_wiki"]
    # the arm scores what `bench run --knowledge` scores
    code, _, err = bench_cli("run", "--model", "demo-en", "--dataset", "digits", "--data-root", digits_root,
                             "--cache-dir", cache_dir, "--out", out, "--workers", "0", "--limit", LIMIT,
                             "--no-progress", "--bootstrap", "0", "--knowledge", root, "--knowledge-use", "def_wiki")
    assert code == 0, err
    ran = json.loads(latest_result(out / "demo-en" / "digits", "zeroshot").read_text(encoding="utf-8"))
    assert ran["metrics"]["primary"] == arms["elevater"]["primary"]
    assert ran["prompt_texts"]["knowledge"]["files"] == study["knowledge"]["files"]


def test_plain_sets_keep_the_grid_formula_bit_for_bit(cache_dir, tmp_path):
    """The classifier of a plain template set is exactly the former [C, T, D] computation."""
    import torch.nn.functional as F

    from bench.features import text_embeddings
    from bench.models import resolve_model
    from bench.runner import Runner, RunOptions

    runner = Runner(RunOptions(out=tmp_path / "out", cache_dir=cache_dir, progress=False))
    backend = runner.backend(resolve_model("demo"))
    ps = load_prompt_set("demo-zh")
    labels = resolve_labels(None, spec(), "zh")
    grid = ps.render("digits", list(labels.names))
    old = text_embeddings(backend, [t for r in grid for t in r], None, progress=False).view(10, len(grid[0]), -1)
    old_classes = F.normalize(F.normalize(old.float(), dim=-1).mean(dim=1), dim=-1)
    new = runner.class_weights(backend, ps, "digits", labels)
    assert isinstance(new, torch.Tensor) and torch.equal(new, old)
    assert torch.equal(class_embeddings(new), old_classes)
