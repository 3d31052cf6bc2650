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
