"""Every row of the "What happens on bad input" table (docs/reliability.md): one `error:` line, exit 2, no traceback,
no result JSON and no finished cache entry."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
from identity_helpers import latest_result

MODEL_YAMLS = {
    "open_clip": "name: oc-missing\nbackend: open_clip\nmodel: RN50-quickgelu\npretrained: openai\nlanguage: en\n",
    "transformers": "name: hf-missing\nbackend: transformers\nmodel: OFA-Sys/chinese-clip-vit-base-patch16\n"
                    "language: zh\npreprocess: cn-clip\n",
    "cn_clip": "name: cn-missing\nbackend: cn_clip\nmodel: RN50@RBT3-chinese\npretrained: clip_cn_rn50_missing.pt\n"
               "language: zh\npreprocess: cn-clip\n",
}


@pytest.fixture
def run(bench_cli, cache_dir, digits_root, tmp_path):
    """`bench run` on the demo model + digits with overridable flags; returns (code, out, err)."""

    def go(*extra: str, model: str = "demo", dataset: str = "digits", data_root: Path | None = None,
           out: Path | None = None, cache: Path | None = None):
        return bench_cli("run", "--model", model, "--dataset", dataset, "--data-root", data_root or digits_root,
                         "--cache-dir", cache or cache_dir, "--out", out or tmp_path / "runs", "--workers", "0",
                         "--limit", "60", *extra)

    return go


def assert_clean_failure(code: int, err: str, tmp_path: Path, cache_dir: Path, *, expect: str) -> str:
    """One `error:` line naming the problem; nothing half-written."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expect.lower() in lines[0].lower(), lines[0]
    assert not list((tmp_path / "runs").rglob("*.json")), "a result file was written"
    assert not list(Path(cache_dir).rglob("index.json")), "a cache entry was finished"
    assert not list(Path(cache_dir).rglob("*.tmp")), "a temporary file was left behind"
    return lines[0]


def digits_copy(digits_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(digits_root / "digits", root / "digits")
    return root


# --- names -------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value, expect", [
    ("--model", "demoo", "did you mean: demo"),
    ("--dataset", "digitz", "did you mean: digits"),
    ("--prompts", "demo-zhh", "did you mean: demo-zh"),
    ("--labels", "numeral", "did you mean: numerals"),
    ("--prompts", "../../x", "invalid prompt set name"),
    ("--labels", "../../x", "invalid label variant name"),
])
def test_unknown_names_suggest_close_matches(run, tmp_path, cache_dir, flag, value, expect):
    args = {"--model": {"model": value}, "--dataset": {"dataset": value}}.get(flag)
    code, _, err = run(**args) if args else run(flag, value)
    assert_clean_failure(code, err, tmp_path, cache_dir, expect=expect)


def test_missing_data_root(run, tmp_path, cache_dir):
    code, _, err = run(dataset="cifar-10", data_root=tmp_path / "nowhere")
    assert_clean_failure(code, err, tmp_path, cache_dir, expect="does not exist")


# --- dataset folders ---------------------------------------------------------------------------

def _missing(split: Path) -> None:
    shutil.rmtree(split / "3")


def _extra(split: Path) -> None:
    (split / "10").mkdir()
    shutil.copy(next((split / "0").iterdir()), split / "10" / "x.png")


def _empty(split: Path) -> None:
    for f in (split / "4").iterdir():
        f.unlink()


@pytest.mark.parametrize("damage, expect", [(_missing, "missing class folder(s) 3"),
                                            (_extra, "unexpected class folder(s) 10"),
                                            (_empty, "class folder 4 of digits has no images")])
def test_class_folders(run, digits_root, tmp_path, cache_dir, damage, expect):
    root = digits_copy(digits_root, tmp_path)
    damage(root / "digits" / "test")
    code, _, err = run(data_root=root)
    assert_clean_failure(code, err, tmp_path, cache_dir, expect=expect)


# --- label files -------------------------------------------------------------------------------

ZH = ["零", "一", "二", "三", "四", "五", "六", "七", "八", "九"]


@pytest.mark.parametrize("model, labels, expect", [
    ("demo", ZH[:9], "has 9 class names, but dataset digits has 10"),
    ("demo", ZH + ["十"], "has 11 class names, but dataset digits has 10"),
    ("demo", ZH[:9] + ["一"], "identical class embeddings"),
    ("demo", ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
     "none of its 10 names has Chinese characters"),
    ("demo-en", ZH, "10 of its 10 names are Chinese"),
])
def test_label_files(run, tmp_path, cache_dir, model, labels, expect):
    path = tmp_path / "labels.yaml"
    path.write_text(json.dumps({"labels": labels}, ensure_ascii=False), encoding="utf-8")
    code, _, err = run("--labels", path, model=model)
    assert_clean_failure(code, err, tmp_path, cache_dir, expect=expect)


def test_language_neutral_labels_are_accepted(run, tmp_path):
    """Digits-only names (MNIST's shipped zh labels) suit either language: no false alarm."""
    path = tmp_path / "labels.yaml"
    path.write_text(json.dumps({"labels": [str(i) for i in range(10)]}), encoding="utf-8")
    code, _, err = run("--labels", path)
    assert code == 0, err


# --- prompt files ------------------------------------------------------------------------------

@pytest.mark.parametrize("template, expect", [
    ("一张{{ label }的照片。", "prompts.yaml:5: template 2: jinja2 syntax error"),
    ("一张照片。", "template has no {{ label }}"),
    ("{{ label }}和{{ colour }}", "undefined variable(s) colour"),
    ("{{ label }}{{ ''.__class__.__mro__ }}", "blocked by the template sandbox"),
    ("{{ label|attr('__class__') }}", "blocked by the template sandbox"),
    ("{{ label }}{{ 9**9**9 }}", "blocked by the template sandbox"),
    ("{% for i in range(99999) %}{{ label }}{% endfor %}", "{% for %} is not allowed"),
])
def test_prompt_files(run, tmp_path, cache_dir, template, expect):
    path = tmp_path / "prompts.yaml"
    head = "name: bad\nlanguage: zh\ntemplates:\n  - \"{{ label }}的照片\"\n  - "
    path.write_text(head + json.dumps(template, ensure_ascii=False) + "\n", encoding="utf-8")
    code, _, err = run("--prompts", path)
    assert_clean_failure(code, err, tmp_path, cache_dir, expect=expect)


def test_environment_is_the_immutable_sandbox():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from bench.prompts import environment

    assert isinstance(environment(), ImmutableSandboxedEnvironment)


# --- YAML that would construct objects ---------------------------------------------------------

@pytest.mark.parametrize("flag", ["--prompts", "--labels", "--model"])
def test_yaml_object_tags_are_refused(run, tmp_path, cache_dir, flag):
    marker = tmp_path / "pwned"
    payload = f"!!python/object/apply:os.system [\"touch {marker}\"]"
    path = tmp_path / "hostile.yaml"
    path.write_text(f"name: {payload}\nlanguage: zh\nlabels: {payload}\ntemplates: [\"{{{{ label }}}}\"]\n")
    code, _, err = run(**{"model": str(path)}) if flag == "--model" else run(flag, path)
    assert_clean_failure(code, err, tmp_path, cache_dir, expect="could not determine a constructor")
    assert not marker.exists()


# --- images ------------------------------------------------------------------------------------

def _bad_images(root: Path) -> list[Path]:
    test = root / "digits" / "test"
    good = sorted((test / "2").iterdir())[0]
    truncated = test / "2" / "0000-truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    not_image = test / "5" / "0000-notes.png"
    not_image.write_text("this is not an image\n")
    return [truncated, not_image]


def test_bad_images_fail_naming_the_file(run, digits_root, tmp_path, cache_dir):
    root = digits_copy(digits_root, tmp_path)
    bad = _bad_images(root)
    code, _, err = run(data_root=root, dataset="digits")
    line = assert_clean_failure(code, err, tmp_path, cache_dir, expect="cannot read image")
    assert any(str(p) in line for p in bad) and "--skip-bad-images" in line
    assert "cannot read image (" not in line  # the message, not a Python (index, message) tuple


def test_skip_bad_images_records_the_count(run, digits_root, tmp_path, cache_dir):
    from bench.datasets.elevater import load_split
    from bench.datasets.registry import get_dataset

    root = digits_copy(digits_root, tmp_path)
    bad = _bad_images(root)
    n = len(load_split(get_dataset("digits"), root / "digits", "test"))
    code, _, err = run("--skip-bad-images", "--limit", str(n), data_root=root)
    assert code == 0, err
    result = json.loads(latest_result(tmp_path / "runs" / "demo" / "digits", "zeroshot").read_text())
    assert result["skipped_images"] == len(bad)
    assert result["n_samples"] == n - len(bad)
    # The cache remembers the skipped files; without the flag the next run still refuses them.
    shutil.rmtree(tmp_path / "runs")
    code, _, err = run("--limit", str(n), data_root=root)
    assert code == 2 and "cannot read image" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.json"))


# --- weights missing offline -------------------------------------------------------------------

@pytest.mark.parametrize("backend, expect", [
    ("open_clip", "hf download timm/resnet50_clip.openai"),
    ("transformers", "hf download OFA-Sys/chinese-clip-vit-base-patch16"),
    ("cn_clip", "download https://clip-cn-beijing.oss-cn-beijing.aliyuncs.com/checkpoints/clip_cn_rn50_missing.pt"),
])
def test_weights_missing_offline(run, tmp_path, cache_dir, monkeypatch, backend, expect):
    pytest.importorskip({"open_clip": "open_clip", "transformers": "transformers", "cn_clip": "cn_clip"}[backend])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-empty"))
    path = tmp_path / "model.yaml"
    path.write_text(MODEL_YAMLS[backend])
    code, _, err = run(model=str(path))
    assert_clean_failure(code, err, tmp_path, cache_dir, expect=expect)


# --- output and disk ---------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["out", "cache"])
def test_unwritable_folder(run, tmp_path, cache_dir, which):
    # Tests run as root, which chmod cannot stop; a folder under a regular file cannot be created by anyone.
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = run(**{which: blocker / "sub"})
    assert_clean_failure(code, err, tmp_path, cache_dir, expect="is not writable")


@pytest.mark.parametrize("fail_at", [1, 3])
def test_disk_fills_mid_run(run, tmp_path, cache_dir, monkeypatch, fail_at):
    """The n-th shard write hits ENOSPC: one line, no result, no index.json, no temp files."""
    import bench.cache

    monkeypatch.setenv("BENCH_SHARD_SIZE", "10")
    real = bench.cache.save_file
    calls = {"n": 0}

    def filling(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] >= fail_at:
            Path(filename).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(bench.cache, "save_file", filling)
    code, _, err = run()
    assert_clean_failure(code, err, tmp_path, cache_dir, expect="the disk is full")
    assert len(list(cache_dir.rglob("shard-*.json"))) == fail_at - 1  # finished shards stay for the next run


def test_disk_full_on_result_write(run, tmp_path, cache_dir, monkeypatch):
    import bench.cache

    real = bench.cache.os.replace

    def full(src, dst):
        if os.path.basename(str(dst)).startswith("zeroshot") and str(dst).endswith(".json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(bench.cache.os, "replace", full)
    code, _, err = run()
    assert code == 2 and "Traceback" not in err and "the disk is full" in err
    assert not list((tmp_path / "runs").rglob("*.json")) and not list((tmp_path / "runs").rglob("*.tmp"))


def test_bad_shard_size_env(run, tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("BENCH_SHARD_SIZE", "lots")
    code, _, err = run()
    assert_clean_failure(code, err, tmp_path, cache_dir, expect="BENCH_SHARD_SIZE must be a positive integer")
