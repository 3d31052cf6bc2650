"""Bad input gets one line naming the problem, a non-zero exit, and no traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from identity_helpers import latest_result

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import make_image_dataset, write_model_yaml  # noqa: E402


def _one_line_error(code, err):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _run(bench_cli, tmp_path, *args, root=None, cache=None):
    return bench_cli("run", *args, "--out", tmp_path / "runs", "--cache-dir", cache or tmp_path / "cache",
                     "--workers", "0", *(["--data-root", root] if root else []))


def test_unknown_model_suggests(bench_cli, tmp_path):
    line = _one_line_error(*_run(bench_cli, tmp_path, "--model", "vit-h41", "--dataset", "digits")[:3:2])
    assert "unknown model 'vit-h41'" in line and "vit-h14" in line


def test_unknown_dataset_suggests(bench_cli, tmp_path):
    line = _one_line_error(*_run(bench_cli, tmp_path, "--model", "demo", "--dataset", "kitti-distanse")[:3:2])
    assert "unknown dataset 'kitti-distanse'" in line and "kitti-distance" in line


def test_label_count_mismatch(bench_cli, tmp_path, digits_root, cache_dir):
    bad = tmp_path / "labels.yaml"
    bad.write_text(yaml.safe_dump({"labels": ["零", "一", "二"]}, allow_unicode=True), encoding="utf-8")
    line = _one_line_error(*_run(bench_cli, tmp_path, "--model", "demo", "--dataset", "digits", "--labels", bad,
                                 root=digits_root, cache=cache_dir)[:3:2])
    assert "has 3 class names" in line and "10 classes" in line and str(bad) in line
    assert not (tmp_path / "runs" / "demo").exists()


def test_template_without_label(bench_cli, tmp_path, digits_root, cache_dir):
    p = tmp_path / "p.yaml"
    p.write_text("name: p\nlanguage: zh\ntemplates:\n  - \"一张{{ label }}的照片\"\n  - \"一张照片\"\n", encoding="utf-8")
    line = _one_line_error(*_run(bench_cli, tmp_path, "--model", "demo", "--dataset", "digits", "--prompts", p,
                                 root=digits_root, cache=cache_dir)[:3:2])
    assert f"{p}:5" in line and "no {{ label }}" in line


def test_template_syntax_error_names_file_and_line(bench_cli, tmp_path, digits_root, cache_dir):
    p = tmp_path / "p.yaml"
    p.write_text("name: p\nlanguage: en\ntemplates:\n  - \"a photo of {{ label }}\"\n"
                 "  - \"a {{ label photo\"\n", encoding="utf-8")
    line = _one_line_error(*_run(bench_cli, tmp_path, "--model", "demo", "--dataset", "digits", "--prompts", p,
                                 root=digits_root, cache=cache_dir)[:3:2])
    assert f"{p}:5" in line and "syntax error" in line


def test_unreadable_image_named(bench_cli, tmp_path, cache_dir):
    data = make_image_dataset(tmp_path / "toy", per_class=2)
    broken = data / "test" / "001" / "img0.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    line = _one_line_error(*_run(bench_cli, tmp_path, "--model", "demo-en", "--dataset", data, "--labels", "dataset",
                                 cache=cache_dir)[:3:2])
    assert str(broken) in line and "--skip-bad-images" in line
    assert not (tmp_path / "runs" / "demo-en").exists()
    code, out, err = _run(bench_cli, tmp_path, "--model", "demo-en", "--dataset", data, "--labels", "dataset",
                          "--skip-bad-images", cache=cache_dir)
    assert code == 0, err
    import json

    res = json.loads(latest_result(tmp_path / "runs" / "demo-en" / "toy", "zeroshot").read_text())
    assert res["skipped_images"] == 1 and res["n_samples"] == 5


@pytest.mark.parametrize("model,needle", [
    ("openai/vit-b16", "hf download timm/vit_base_patch16_clip_224.openai"),
    ("cn-clip/vit-b16", "hf download OFA-Sys/chinese-clip-vit-base-patch16"),
])
def test_weights_missing_offline(bench_cli, tmp_path, model, needle, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty Hugging Face cache
    data = make_image_dataset(tmp_path / "toy", per_class=1)
    line = _one_line_error(*_run(bench_cli, tmp_path, "--model", model, "--dataset", data,
                                 "--labels", "dataset")[:3:2])
    assert needle in line


def test_model_yaml_unknown_key(bench_cli, tmp_path):
    yml = write_model_yaml(tmp_path / "m.yaml", name="x", backend="open_clip", model="ViT-B-16", language="en",
                           pretrainde="openai")
    line = _one_line_error(*_run(bench_cli, tmp_path, "--model", yml, "--dataset", "digits")[:3:2])
    assert "unknown key(s) pretrainde" in line


def test_missing_class_folder(bench_cli, tmp_path, cache_dir):
    import shutil

    data = make_image_dataset(tmp_path / "toy", n_classes=3, per_class=1)
    shutil.rmtree(data / "test" / "001")
    line = _one_line_error(*_run(bench_cli, tmp_path, "--model", "demo-en", "--dataset", data, "--labels", "dataset",
                                 cache=cache_dir)[:3:2])
    assert "3 classes but found 2 class folders" in line and "missing class folder(s) 1" in line


def test_missing_dataset_folder_says_no_such_folder(bench_cli, tmp_path):
    line = _one_line_error(*_run(bench_cli, tmp_path, "--model", "demo", "--dataset", tmp_path / "no such")[:3:2])
    assert "no such folder" in line and "unknown dataset" not in line and str(tmp_path / "no such") in line
    (tmp_path / "a-file").write_text("x")
    line = _one_line_error(*_run(bench_cli, tmp_path, "--model", "demo", "--dataset", tmp_path / "a-file")[:3:2])
    assert "not a folder" in line


def test_missing_model_path_or_local_folder_gets_no_download_hint(bench_cli, tmp_path):
    line = _one_line_error(*_run(bench_cli, tmp_path, "--model", tmp_path / "nope", "--dataset", "digits")[:3:2])
    assert "no such file" in line and "unknown model" not in line
    (tmp_path / "saved").mkdir()
    line = _one_line_error(*_run(bench_cli, tmp_path, "--model", tmp_path / "saved", "--dataset", "digits")[:3:2])
    assert "is a folder" in line and f"model: {tmp_path / 'saved'}" in line
    for backend, model in (("transformers", str(tmp_path / "gone")), ("open_clip", f"local-dir:{tmp_path / 'gone'}")):
        path = tmp_path / f"{backend}.yaml"
        path.write_text(yaml.safe_dump({"name": "mine", "backend": backend, "model": model, "language": "en"}))
        pytest.importorskip("transformers" if backend == "transformers" else "open_clip")
        line = _one_line_error(*_run(bench_cli, tmp_path, "--model", path, "--dataset", "digits")[:3:2])
        assert "no such folder" in line and str(tmp_path / "gone") in line and "hf download" not in line, line


def test_model_names_are_case_insensitive_and_suggestions_are_canonical(bench_cli, tmp_path, digits_root, cache_dir):
    from bench.models import resolve_model

    assert resolve_model("DEMO").name == "demo" and resolve_model("OpenAI/ViT-B16").name == "openai/vit-b16"
    assert resolve_model("ViT-H14").name == "cn-clip/vit-h14"  # an alias, in any case
    code, _, err = _run(bench_cli, tmp_path, "--model", "Demo", "--dataset", "Digits", root=digits_root,
                        cache=cache_dir, )
    assert code == 0, err
    # one entry per dataset, not cifar10, cifar_10 and cifar-10 (aliases of one set)
    line = _one_line_error(*_run(bench_cli, tmp_path, "--model", "demo", "--dataset", "cifar")[:3:2])
    suggested = line.split("did you mean: ")[1].split("?")[0].split(", ")
    assert suggested[:2] == ["cifar-10", "cifar-100"] and len(set(suggested)) == len(suggested)
    line = _one_line_error(*_run(bench_cli, tmp_path, "--model", "vit-h", "--dataset", "digits")[:3:2])
    assert "cn-clip/vit-h14" in line and line.count("vit-h14") == 1


def test_invalid_name_error_mentions_json_files(bench_cli, tmp_path, digits_root, cache_dir):
    line = _one_line_error(*_run(bench_cli, tmp_path, "--model", "demo", "--dataset", "digits", "--prompts",
                                 "my prompts", root=digits_root, cache=cache_dir)[:3:2])
    assert ".json" in line and "invalid prompt set name" in line


def test_loading_is_said_only_when_the_model_loads(bench_cli, tmp_path, digits_root, cache_dir, caplog):
    import logging

    args = ("--model", "demo", "--dataset", "digits", "--limit", "30")
    with caplog.at_level(logging.INFO):
        assert _run(bench_cli, tmp_path, *args, root=digits_root, cache=cache_dir)[0] == 0
        assert "loading demo" in caplog.text
        caplog.clear()
        assert _run(bench_cli, tmp_path, *args, root=digits_root, cache=cache_dir)[0] == 0  # fully cached
        assert "loading demo" not in caplog.text


def test_suggestions_from_a_registry_dict_name_its_keys_never_its_values():
    # Regression: a registry dict (name → Protocol, name → "module:Class") was read as a spelling map, so
    # a protocol typo crashed on an unhashable Protocol and a backend typo suggested a module path.
    from bench import protocols
    from bench.backends import BACKENDS
    from bench.registry import unknown

    assert "did you mean: open_clip" in str(unknown("backend", "open-clip", BACKENDS))
    assert "bench.backends" not in str(unknown("backend", "open-clip", BACKENDS))
    assert "did you mean: cn-clip" in str(unknown("protocol", "cn-clp", protocols._registry()))
    # a real spelling map (alias → canonical) still suggests the canonical name once
    assert str(unknown("model", "VIT-H41", {"vit-h14": "cn-clip/vit-h14", "cn-clip/vit-h14": "cn-clip/vit-h14"})
               ).count("cn-clip/vit-h14") == 1
