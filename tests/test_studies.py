"""bench study: every number equals the one a separate `bench run` gives, from cached image features only."""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bench.studies import compute
from bench.studies.study import prompts_overall, stratified_holdout

sys.path.insert(0, str(Path(__file__).parent))
from identity_helpers import latest_result  # noqa: E402

TEMPLATES = ["一张数字{{ label }}的照片。", "手写的{{ label }}。", "数字{{ label }}。"]
LIMIT = "60"


def common(cache_dir, digits_root, out, *extra):
    return ("--model", "demo", "--dataset", "digits", "--data-root", digits_root, "--cache-dir", cache_dir,
            "--out", out, "--workers", "0", "--limit", LIMIT, "--no-progress", *extra)


def write_prompts(path: Path, templates: list[str], name: str) -> Path:
    path.write_text(yaml.safe_dump({"name": name, "language": "zh", "templates": templates}, allow_unicode=True),
                    encoding="utf-8")
    return path


def read(out: Path, task: str, model: str = "demo", dataset: str = "digits") -> dict:
    return json.loads(latest_result(out / model / dataset, task).read_text(encoding="utf-8"))


def zeroshot(bench_cli, cache_dir, digits_root, out, *extra) -> dict:
    code, _, err = bench_cli("run", *common(cache_dir, digits_root, out, "--save-predictions", *extra))
    assert code == 0, err
    return read(out, "zeroshot")


def predictions(out: Path, model: str = "demo", dataset: str = "digits") -> tuple[np.ndarray, np.ndarray]:
    with open(latest_result(out / model / dataset, "zeroshot", ".predictions.csv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return np.array([int(r["target"]) for r in rows]), np.array([int(r["prediction"]) for r in rows])


def test_prompt_study_matches_single_template_runs(bench_cli, cache_dir, digits_root, tmp_path, count_images):
    prompts = write_prompts(tmp_path / "three.yaml", TEMPLATES, "three")
    out = tmp_path / "study"
    code, stdout, err = bench_cli("study", "prompts", *common(cache_dir, digits_root, out, "--prompts", prompts))
    assert code == 0, err
    assert "ensemble" in stdout
    study = read(out, "study-prompts")
    assert study["task"] == "study-prompts" and study["n_templates"] == 3
    # the study encoded each test image once and each validation image once: no per-template image pass
    assert count_images["n"] == study["n_samples"] + study["greedy"]["n_val"]
    assert [t["template"] for t in study["templates"]] == TEMPLATES

    before = count_images["n"]
    for i, template in enumerate(TEMPLATES):
        single = write_prompts(tmp_path / f"single{i}.yaml", [template], f"single{i}")
        run = zeroshot(bench_cli, cache_dir, digits_root, tmp_path / f"run{i}", "--prompts", single)
        assert study["templates"][i]["primary"] == pytest.approx(run["metrics"]["primary"], abs=1e-12)
        assert study["templates"][i]["top1"] == pytest.approx(run["metrics"]["top1"], abs=1e-12)
    full = zeroshot(bench_cli, cache_dir, digits_root, tmp_path / "full", "--prompts", prompts)
    assert study["ensemble"]["primary"] == pytest.approx(full["metrics"]["primary"], abs=1e-12)
    assert study["ensemble"]["top1"] == pytest.approx(full["metrics"]["top1"], abs=1e-12)
    assert count_images["n"] == before  # the runs after the study read its cached test features

    primaries = [t["primary"] for t in study["templates"]]
    assert study["summary"]["min"] == min(primaries) and study["summary"]["max"] == max(primaries)
    assert study["best"]["primary"] == max(primaries) and study["worst"]["primary"] == min(primaries)
    assert sorted(t["rank"] for t in study["templates"]) == [1, 2, 3]
    g = study["greedy"]
    assert g["selected"] and set(g["selected"]) <= set(TEMPLATES)
    assert g["val_source"].startswith("train hold-out")
    overall = json.loads((out / "study-prompts-overall.json").read_text(encoding="utf-8"))
    assert next(t["template"] for t in overall["overall"]["demo"]["templates"]) == study["best"]["template"]


def test_second_study_encodes_no_image(bench_cli, cache_dir, digits_root, tmp_path, count_images):
    out = tmp_path / "runs"
    code, _, err = bench_cli("study", "prompts", *common(cache_dir, digits_root, out))
    assert code == 0, err
    first = count_images["n"]
    assert first > 0
    for args in (("prompts",), ("labels", "--variant", "numerals"), ("negation", "--no-probe")):
        code, _, err = bench_cli("study", *args, *common(cache_dir, digits_root, out))
        assert code == 0, err
    assert count_images["n"] == first
    assert read(out, "study-labels")["cache"]["images_encoded"] == 0


def poisoned_copy(digits_root: Path, dest: Path) -> Path:
    """The digits data with every test image moved to the wrong class folder (train untouched)."""
    shutil.copytree(digits_root / "digits", dest / "digits")
    test = dest / "digits" / "test"
    moves = [(p, test / str((int(p.parent.name) + 1) % 10) / p.name) for p in sorted(test.glob("*/*.png"))]
    tmp = dest / "moving"
    tmp.mkdir()
    for src, dst in moves:
        (tmp / dst.parent.name).mkdir(exist_ok=True)
        src.rename(tmp / dst.parent.name / dst.name)
    shutil.rmtree(test)
    tmp.rename(test)
    return dest


def test_greedy_selection_never_reads_test_labels(bench_cli, cache_dir, digits_root, tmp_path):
    clean, bad = tmp_path / "clean", tmp_path / "bad"
    code, _, err = bench_cli("study", "prompts", *common(cache_dir, digits_root, clean))
    assert code == 0, err
    poisoned = poisoned_copy(digits_root, tmp_path / "poisoned")
    code, _, err = bench_cli("study", "prompts", *common(cache_dir, poisoned, bad))
    assert code == 0, err
    a, b = read(clean, "study-prompts"), read(bad, "study-prompts")
    assert a["greedy"]["selected"] == b["greedy"]["selected"]
    assert a["greedy"]["val_primary"] == b["greedy"]["val_primary"]
    assert b["ensemble"]["top1"] < a["ensemble"]["top1"] - 0.3  # the poison did reach the test scores


def test_label_study_equals_separate_runs(bench_cli, cache_dir, digits_root, tmp_path):
    out = tmp_path / "study"
    code, _stdout, err = bench_cli("study", "labels", *common(cache_dir, digits_root, out, "--variant", "numerals"))
    assert code == 0, err
    study = read(out, "study-labels")
    base = zeroshot(bench_cli, cache_dir, digits_root, tmp_path / "base")
    t_base, p_base = predictions(tmp_path / "base")
    var = zeroshot(bench_cli, cache_dir, digits_root, tmp_path / "var", "--labels", "numerals")
    t_var, p_var = predictions(tmp_path / "var")
    assert study["primary"]["baseline"] == pytest.approx(base["metrics"]["primary"], abs=1e-12)
    assert study["primary"]["variant"] == pytest.approx(var["metrics"]["primary"], abs=1e-12)
    assert study["primary"]["delta"] == pytest.approx(var["metrics"]["primary"] - base["metrics"]["primary"])
    for row in study["per_class"]:
        c = row["index"]
        assert row["baseline"] == pytest.approx(np.mean(p_base[t_base == c] == c))
        assert row["variant"] == pytest.approx(np.mean(p_var[t_var == c] == c))
        assert row["variant_class"] == str(c) and row["renamed"]
    movers = [abs(m["delta"]) for m in study["top_movers"]]
    assert movers == sorted(movers, reverse=True)


def test_negation_study_equals_separate_runs(bench_cli, cache_dir, digits_root, tmp_path):
    names = ["零", "一", "二", "三", "四", "五", "六", "七", "八", "九"]
    negated = tmp_path / "negated.yaml"
    negated.write_text(yaml.safe_dump({"labels": names[:9] + ["没有八"]}, allow_unicode=True), encoding="utf-8")
    probe_file = tmp_path / "probe.yaml"  # the replace-mode probe for class 0: "没有零" in place of class 1
    probe_file.write_text(yaml.safe_dump({"labels": [names[0], "没有零", *names[2:]]}, allow_unicode=True),
                          encoding="utf-8")
    out = tmp_path / "study"
    code, _, err = bench_cli("study", "negation", *common(cache_dir, digits_root, out, "--variant", "default",
                                                           "--variant", negated, "--probe-mode", "replace"))
    assert code == 0, err
    study = read(out, "study-negation")
    assert [v["name"] for v in study["variants"]] == ["default", str(negated)]
    assert study["variants"][1]["labels"][9] == "没有八"
    for variant, extra in zip(study["variants"], ((), ("--labels", negated))):
        run = zeroshot(bench_cli, cache_dir, digits_root, tmp_path / variant["name"].replace("/", "_"), *extra)
        t, p = predictions(tmp_path / variant["name"].replace("/", "_"))
        assert variant["primary"] == pytest.approx(run["metrics"]["primary"], abs=1e-12)
        assert variant["top1"] == pytest.approx(run["metrics"]["top1"], abs=1e-12)
        assert np.array(variant["confusion"]).sum() == len(t)
        assert variant["confusion"] == [[int(((t == i) & (p == j)).sum()) for j in range(10)] for i in range(10)]
    zeroshot(bench_cli, cache_dir, digits_root, tmp_path / "probe", "--labels", probe_file)
    t, p = predictions(tmp_path / "probe")
    row = study["probe"]["classes"][0]
    assert row["negation"] == "没有零" and row["replaced"] == "一"
    assert row["negation_rate"] == pytest.approx(np.mean(p[t == 0] == 1))
    rates = study["probe"]["classes"]
    assert study["probe"]["overall_rate"] == pytest.approx(
        sum(r["negated"] for r in rates) / sum(r["n"] for r in rates))


def fake_kitti(root: Path) -> Path:
    rng = np.random.default_rng(0)
    from PIL import Image

    for split in ("test", "train"):
        for c in range(4):
            d = root / "kitti-distance" / split / str(c)
            d.mkdir(parents=True)
            for i in range(6):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_kitti_negation_variants(bench_cli, cache_dir, tmp_path):
    root = fake_kitti(tmp_path / "data")
    out = tmp_path / "study"
    args = ("--model", "demo-en", "--dataset", "kitti-distance", "--data-root", root, "--cache-dir", cache_dir,
            "--out", out, "--workers", "0", "--no-progress")
    code, _stdout, err = bench_cli("study", "negation", *args, "--probe-mode", "add")
    assert code == 0, err
    study = read(out, "study-negation", "demo-en", "kitti-distance")
    by_name = {v["name"]: v for v in study["variants"]}
    assert by_name["default"]["labels"][3] == "no car" and by_name["other-not-negation"]["labels"][3] == "other"
    code, _, err = bench_cli("run", *args[:-1], "--labels", "other-not-negation")
    assert code == 0, err
    run = read(out, "zeroshot", "demo-en", "kitti-distance")
    assert by_name["other-not-negation"]["primary"] == pytest.approx(run["metrics"]["primary"], abs=1e-12)
    assert [r["negation"] for r in study["probe"]["classes"]][1] == "no a car nearby"


def test_sets_study_and_union(bench_cli, cache_dir, digits_root, tmp_path):
    a = write_prompts(tmp_path / "a.yaml", TEMPLATES[:2], "set-a")
    b = write_prompts(tmp_path / "b.yaml", TEMPLATES[1:], "set-b")
    union = write_prompts(tmp_path / "u.yaml", TEMPLATES, "union")
    out = tmp_path / "study"
    code, _, err = bench_cli("study", "sets", *common(cache_dir, digits_root, out, "--sets", a, b))
    assert code == 0, err
    study = read(out, "study-sets")
    assert [s["name"] for s in study["sets"]] == ["set-a", "set-b"]
    assert study["union"]["n_templates"] == 3
    for s, path in zip(study["sets"] + [study["union"]], (a, b, union)):
        run = zeroshot(bench_cli, cache_dir, digits_root, tmp_path / path.stem, "--prompts", path)
        assert s["primary"] == pytest.approx(run["metrics"]["primary"], abs=1e-12)
    assert study["sets"][1]["delta"] == pytest.approx(study["sets"][1]["primary"] - study["sets"][0]["primary"])


def test_study_user_errors(bench_cli, cache_dir, digits_root, tmp_path):
    code, _, err = bench_cli("study", "sets", *common(cache_dir, digits_root, tmp_path, "--sets", "demo-zh"))
    assert code == 2 and "two or more sets" in err
    code, _, err = bench_cli("study", "labels", *common(cache_dir, digits_root, tmp_path, "--variant", "numeralz"))
    assert code == 2 and "numerals" in err
    code, _, err = bench_cli("study", "prompts", *common(cache_dir, digits_root, tmp_path, "--split", "train"))
    assert code == 2 and "--no-greedy" in err


# --------------------------------------------------------------------------- pure functions


def test_distribution_and_ranks():
    d = compute.distribution([0.1, 0.2, 0.3, 0.4, 0.5])
    assert (d["min"], d["q1"], d["median"], d["q3"], d["max"]) == pytest.approx((0.1, 0.2, 0.3, 0.4, 0.5))
    assert d["std"] == pytest.approx(np.std([0.1, 0.2, 0.3, 0.4, 0.5]))
    assert compute.ranks([0.2, 0.9, 0.2, 0.5]) == [3, 1, 4, 2]
    picks = compute.best_median_worst(["a", "b", "c"], [0.5, 0.9, 0.1])
    assert (picks["best"]["template"], picks["median"]["template"], picks["worst"]["template"]) == ("b", "a", "c")


def test_greedy_picks_the_informative_template():
    # two classes along axes 0/1; template 1 points the right way, template 0 confuses the classes
    feats = torch.tensor([[1.0, 0.1, 0], [0.1, 1.0, 0]] * 5)
    targets = np.array([0, 1] * 5)
    per_prompt = torch.tensor([[[0.0, 1.0, 0.2], [1.0, 0.0, 0.0]], [[1.0, 0.0, 0.2], [0.0, 1.0, 0.0]]])
    sel = compute.greedy_select(feats, per_prompt, targets, "accuracy")
    assert sel["selected"] == [1] and sel["val_primary"] == 1.0


def test_rank_agreement_and_overall():
    agree = compute.rank_agreement({"x": [0.1, 0.2, 0.3], "y": [0.2, 0.4, 0.9], "z": [0.3, 0.2, 0.1]})
    pairs = {(p["a"], p["b"]): p for p in agree["pairs"]}
    assert pairs[("x", "y")]["spearman"] == pytest.approx(1.0) and pairs[("x", "y")]["kendall"] == pytest.approx(1.0)
    assert pairs[("x", "z")]["spearman"] == pytest.approx(-1.0)
    results = [{"model": m, "dataset": d, "templates": [{"template": t, "primary": v} for t, v in zip("abc", vals)]}
               for m, d, vals in (("m1", "d1", [0.1, 0.5, 0.3]), ("m1", "d2", [0.2, 0.6, 0.1]),
                                  ("m2", "d1", [0.1, 0.5, 0.3]))]
    out = prompts_overall(results)
    assert [t["template"] for t in out["overall"]["m1"]["templates"]] == ["b", "c", "a"]
    assert out["agreement"]["models"]["d1"]["mean_spearman"] == pytest.approx(1.0)
    assert "m1" in out["agreement"]["datasets"] and "m2" not in out["agreement"]["datasets"]


def test_negation_rates_pool_counts():
    targets = np.array([0, 0, 1, 1, 1])
    rates = compute.negation_rates({0: np.array([2, 0, 1, 1, 1]), 1: np.array([0, 0, 2, 2, 1])}, targets, {0: 2, 1: 2})
    assert [r["negation_rate"] for r in rates["classes"]] == pytest.approx([0.5, 2 / 3])
    assert rates["overall_rate"] == pytest.approx(3 / 5)


def test_stratified_holdout_is_seeded_and_stratified():
    targets = tuple([0] * 10 + [1] * 5)
    a, b = stratified_holdout(targets, 0.2, 0), stratified_holdout(targets, 0.2, 0)
    assert a == b and sorted(targets[i] for i in a) == [0, 0, 1]
    assert stratified_holdout(targets, 0.2, 1) != a


def test_studies_warn_about_and_record_unknown_token_labels(bench_cli, cache_dir, digits_root, tmp_path, caplog):
    """A label variant with a name outside the model's vocabulary is flagged, as `bench run` flags it."""
    code, _, err = bench_cli("study", "negation", *common(cache_dir, digits_root, tmp_path / "neg", "--variant",
                                                           "default", "--no-probe"))
    assert code == 0, err
    default = read(tmp_path / "neg", "study-negation")["variants"][0]
    assert default["labels_with_unknown_tokens"] == []
    odd = tmp_path / "odd.yaml"
    odd.write_text(yaml.safe_dump({"labels": [*default["labels"][:9], "鸸鹋"]}, allow_unicode=True), encoding="utf-8")
    with caplog.at_level("WARNING"):
        code, _, err = bench_cli("study", "labels", *common(cache_dir, digits_root, tmp_path / "odd", "--variant", odd))
    assert code == 0, err
    study = read(tmp_path / "odd", "study-labels")
    assert study["labels_with_unknown_tokens"] == {"baseline": [], "variant": ["鸸鹋"]}
    assert "1 class name(s)" in caplog.text and "鸸鹋" in caplog.text


def test_studies_and_prompts_eval_never_replace_another_experiments_result(bench_cli, cache_dir, digits_root,
                                                                           tmp_path):
    """A study or `prompts eval` with other settings or arms gets its own file; the same one re-run replaces its
    own; the default experiment keeps `<task>.json`; index.json says what each file is."""
    out = tmp_path / "runs"
    base = ("--model", "demo", "--dataset", "digits", "--data-root", digits_root, "--cache-dir", cache_dir,
            "--out", out, "--workers", "0", "--no-progress")
    folder = out / "demo" / "digits"
    for extra in ((), ("--limit", LIMIT), ("--split", "train"), ("--protocol", "cn-clip"), ("--precision", "fp32"),
                  ("--labels", "numerals"), ("--prompts", "simple-zh"), ("--limit", LIMIT)):  # the last: a re-run
        code, _, err = bench_cli("study", "prompts", *base, "--no-greedy", *extra)
        assert code == 0, err
    for variant in ("numerals", "numerals", str(labels_file(tmp_path))):
        code, _, err = bench_cli("study", "labels", *base, "--limit", LIMIT, "--variant", variant)
        assert code == 0, err
    for ps in ("simple-zh", "demo-zh", "simple-zh"):
        code, _, err = bench_cli("prompts", "eval", ps, *base[:-1], "--limit", LIMIT)
        assert code == 0, err
    names = sorted(p.name for p in folder.glob("*.json") if p.name != "index.json")
    prompts_files = [n for n in names if n.startswith("study-prompts")]
    assert len(prompts_files) == 7 and "study-prompts@greedy=no.json" in prompts_files  # one per experiment
    assert len([n for n in names if n.startswith("study-labels")]) == 2
    assert len([n for n in names if n.startswith("prompts-eval")]) == 2
    index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
    assert sorted(index) == names
    limited = json.loads((folder / "study-prompts@limit=60,greedy=no.json").read_text(encoding="utf-8"))
    assert limited["n_samples"] == 60 and limited["experiment"]["limit"] == 60
    assert index["study-prompts@split=train,greedy=no.json"]["non_default"] == {"split": "train", "greedy": False}
    # the default experiment keeps its contract name, and the report tells the studies apart by their settings
    code, _, err = bench_cli("study", "prompts", *base)
    assert code == 0, err
    assert (folder / "study-prompts.json").is_file()
    from bench.report import build_report

    build_report([out], tmp_path / "report", fmt="md")
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "digits \\[limit=60, greedy=False\\]" in md and "digits \\[split=train, greedy=False\\]" in md


def labels_file(tmp_path: Path) -> Path:
    path = tmp_path / "swapped.yaml"
    names = ["零", "一", "二", "三", "四", "五", "六", "七", "九", "八"]
    path.write_text(yaml.safe_dump({"labels": names}, allow_unicode=True), encoding="utf-8")
    return path


def makefile_label_variant() -> str:
    """The label variant `make bench` shows on the demo model."""
    text = (Path(__file__).resolve().parents[1] / "Makefile").read_text(encoding="utf-8")
    found = re.search(r"bench study labels [^\n]*--variant (\S+)", text)
    assert found, "the Makefile's bench target runs no label study"
    return found.group(1)


@pytest.mark.parametrize(("model", "language"), [("demo", "zh"), ("demo-en", "en")])
def test_make_bench_label_variant_is_words_the_demo_knows(cache_dir, model, language):
    # The showcase must differ from the default labels for a reason worth teaching; `numerals` scored 9.1%
    # only because the demo tokenizer has no digits (every name was [UNK]).
    from bench.backends import load_backend
    from bench.datasets.registry import get_dataset
    from bench.labels import resolve_labels
    from bench.models import resolve_model

    backend = load_backend(resolve_model(model), device="cpu", cache_dir=cache_dir)
    names = list(resolve_labels(makefile_label_variant(), get_dataset("digits"), language).names)
    assert len(names) == 10 and backend.unknown_tokens(names) == []
    numerals = list(resolve_labels("numerals", get_dataset("digits"), language).names)
    assert backend.unknown_tokens(numerals) == numerals  # the check does see [UNK] when there is one


def test_make_bench_label_study_prints_default_and_variant(bench_cli, cache_dir, digits_root, tmp_path):
    variant = makefile_label_variant()
    out = tmp_path / "study"
    code, stdout, err = bench_cli("study", "labels", *common(cache_dir, digits_root, out, "--variant", variant))
    assert code == 0, err
    study = read(out, "study-labels")
    p = study["primary"]
    assert f"{variant} {100 * p['variant']:.1f} vs {100 * p['baseline']:.1f}" in stdout
    assert not any(study["labels_with_unknown_tokens"].values())
    # docs/studies.md's lesson: every name also holds the next class's word, so classes are confused
    assert p["variant"] < p["baseline"] - 0.2, p
