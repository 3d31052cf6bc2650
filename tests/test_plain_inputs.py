"""Plain inputs a new user gives (issue 15, items 1, 5-8): they work, or fail naming the problem."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from bench.datasets import sources
from bench.errors import BenchError
from bench.labels import resolve_labels

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def plain_folder(root, names, splits=("test",), per_class=2):
    """`<root>/<split>/<class name>/<image>` with small generated images."""
    rng = np.random.default_rng(0)
    for split in splits:
        for name in names:
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def label_yaml(path, names):
    path.write_text(yaml.safe_dump({"labels": list(names)}, allow_unicode=True), encoding="utf-8")
    return path


def folder_labels(tmp_path, names, file_names, language="en"):
    ref = sources.ref_for_path(plain_folder(tmp_path / "plain-digits", names))
    data = sources.load(ref, "test")
    return data, resolve_labels(str(label_yaml(tmp_path / "labels.yaml", file_names)), ref.spec, language, data)


def test_label_file_in_other_order_is_matched_to_class_folders_by_name(tmp_path):
    data, labels = folder_labels(tmp_path, DIGITS, DIGITS)
    # class i is the i-th sorted folder; its name must be that folder's, not DIGITS[i]
    folder_of_class = {t: p.split("/")[0] for p, t in zip(data.paths, data.targets)}
    assert [labels.names[c] for c in sorted(folder_of_class)] == [folder_of_class[c] for c in sorted(folder_of_class)]
    assert labels.names != tuple(DIGITS)


def test_label_file_sharing_only_some_folder_names_is_an_error_naming_them(tmp_path):
    with pytest.raises(BenchError, match=r"'nine'.*'ten'|names with no folder: 'ten'"):
        folder_labels(tmp_path, DIGITS, DIGITS[:9] + ["ten"])


def test_translated_label_file_is_applied_in_sorted_folder_order(tmp_path):
    zh = ["八", "五", "四", "九", "一", "七", "六", "三", "二", "零"]  # sorted folders: eight, five, ...
    _, labels = folder_labels(tmp_path, DIGITS, zh, language="zh")
    assert labels.names == tuple(zh)


def test_space_separated_names_still_split_but_paths_stay_whole(tmp_path, monkeypatch):
    from bench.cli_common import split_multi

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my data").mkdir()
    assert split_multi(["demo demo-en", "vit-b16"]) == ["demo", "demo-en", "vit-b16"]
    assert split_multi(["my data", "./other dir/m.yaml", "models/模型 1.yaml"]) == \
        ["my data", "./other dir/m.yaml", "models/模型 1.yaml"]


def test_run_with_dataset_and_model_under_paths_with_spaces_and_unicode(tmp_path, bench_cli):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from identity_helpers import latest_result
    from tiny_models import make_open_clip_dir, write_model_yaml

    base = tmp_path / "my files" / "数据 集"
    data = plain_folder(base / "toy set", ["cat", "dog", "red car"])
    model_dir = make_open_clip_dir(base / "tiny model")
    yml = write_model_yaml(base / "tiny model.yaml", name="tiny-oc", backend="open_clip",
                           model=f"local-dir:{model_dir}", language="en")
    code, _, err = bench_cli("run", "--model", yml, "--dataset", data, "--labels", "dataset", "--out",
                             tmp_path / "out", "--cache-dir", tmp_path / "cache", "--device", "cpu", "--workers", "0")
    assert code == 0, err
    result = json.loads(latest_result(tmp_path / "out" / "tiny-oc" / "toy set", "zeroshot").read_text())
    assert result["n_samples"] == 6


@pytest.mark.parametrize("templates, language", [(["a photo of a {{ label }}."], "en"),
                                                 (["一张{{ label }}的照片。", "a {{ label }}"], "zh")])
def test_prompt_file_with_only_templates_infers_its_language(tmp_path, templates, language):
    from bench.authoring.lint import lint_prompt_file
    from bench.prompts import load_prompt_set

    path = tmp_path / "我的 prompts.yaml"
    path.write_text(yaml.safe_dump({"templates": templates}, allow_unicode=True), encoding="utf-8")
    ps = load_prompt_set(str(path))
    assert (ps.name, ps.language, ps.language_source) == ("我的 prompts", language, "inferred from templates")
    assert not [f for f in lint_prompt_file(path) if f.level == "error" and "language" in f.message]


def test_run_records_an_inferred_prompt_language(tmp_path, bench_cli, digits_root, cache_dir):
    from identity_helpers import latest_result

    path = tmp_path / "only-templates.yaml"
    path.write_text(yaml.safe_dump({"templates": ["{{ label }}"]}), encoding="utf-8")
    code, _, err = bench_cli("run", "--model", "demo-en", "--dataset", "digits", "--prompts", path, "--limit", "20",
                             "--data-root", digits_root, "--cache-dir", cache_dir, "--out", tmp_path / "out",
                             "--workers", "0")
    assert code == 0, err
    result = json.loads(latest_result(tmp_path / "out" / "demo-en" / "digits", "zeroshot").read_text())
    assert result["prompts"] == "only-templates"
    assert (result["prompts_language"], result["prompts_language_source"]) == ("en", "inferred from templates")
    assert result["manifest"]["prompts"]["name_source"] == "file name"


def test_plain_folder_without_labels_offers_labels_dataset_not_the_install_tree(tmp_path):
    from bench.paths import resource_root

    ref = sources.ref_for_path(plain_folder(tmp_path / "my-photos", ["cat", "dog"]))
    with pytest.raises(BenchError, match="--labels dataset") as exc:
        resolve_labels(None, ref.spec, "en", sources.load(ref, "test"))
    assert str(resource_root()) not in str(exc.value)


def test_labels_dataset_on_plain_folder_records_no_missing_label_txt_and_works_in_zh(tmp_path):
    ref = sources.ref_for_path(plain_folder(tmp_path / "我的照片", ["猫", "狗", "汽车"]))
    data = sources.load(ref, "test")
    labels = resolve_labels("dataset", ref.spec, "zh", data)
    assert set(labels.names) == {"猫", "狗", "汽车"}
    assert labels.source.endswith("(class folder names)") and "label_cn.txt" not in labels.source
    with pytest.raises(BenchError, match="Chinese"):  # Chinese folder names in an English run
        resolve_labels("dataset", ref.spec, "en", data)


@pytest.mark.parametrize("splits", [("test", "train"), ("test",)])
def test_prompts_study_with_default_flags_on_plain_folders(tmp_path, bench_cli, splits):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from identity_helpers import latest_result
    from tiny_models import make_open_clip_dir, write_model_yaml

    data = plain_folder(tmp_path / "my-photos", ["cat", "dog", "car"], splits=splits, per_class=3)
    yml = write_model_yaml(tmp_path / "tiny.yaml", name="tiny-oc", backend="open_clip",
                           model=f"local-dir:{make_open_clip_dir(tmp_path / 'oc')}", language="en")
    code, _, err = bench_cli("study", "prompts", "--model", yml, "--dataset", data, "--labels", "dataset",
                             "--out", tmp_path / "out", "--cache-dir", tmp_path / "cache", "--device", "cpu",
                             "--workers", "0")
    assert code == 0, err
    result = json.loads(latest_result(tmp_path / "out" / "tiny-oc" / "my-photos", "study-prompts").read_text())
    if "train" in splits:
        assert result["greedy"]["val_source"].startswith("train hold-out") and result["greedy_skipped"] is None
    else:
        assert result["greedy"] is None and "no val or train split" in result["greedy_skipped"]
