"""Warm re-runs: a run whose features are all cached never loads the weights, and the memo that lets it
skip them can never hand out a stale identity."""

from __future__ import annotations

import json
import os

import pytest
import torch
from identity_helpers import latest_result
from safetensors.torch import load_file, save

import bench.backends.base as base
from bench.demo.backend import DemoBackend


@pytest.fixture
def loads(monkeypatch) -> dict:
    """Counts tokenizer loads, model loads and weight hashes."""
    seen = {"text": 0, "model": 0, "hash": 0}
    original_load, original_text, original_hash = DemoBackend._load_model, DemoBackend._load_text, base.fingerprint_module

    def load_text(self):
        seen["text"] += 1
        return original_text(self)

    def load_model(self):
        seen["model"] += 1
        return original_load(self)

    def fingerprint(module):
        seen["hash"] += 1
        return original_hash(module)

    monkeypatch.setattr(DemoBackend, "_load_model", load_model)
    monkeypatch.setattr(DemoBackend, "_load_text", load_text)
    monkeypatch.setattr(base, "fingerprint_module", fingerprint)
    return seen


def _run(bench_cli, digits_root, cache_dir, out, *extra) -> dict:
    code, _, err = bench_cli("run", "--model", "demo", "--dataset", "digits", "--data-root", digits_root,
                             "--cache-dir", cache_dir, "--out", out, "--workers", "0", "--limit", "40", *extra)
    assert code == 0, err
    return json.loads(latest_result(out / "demo" / "digits", "zeroshot").read_text())


def test_a_fully_cached_rerun_loads_no_weights(tmp_path, digits_root, cache_dir, bench_cli, loads, count_images):
    cold = _run(bench_cli, digits_root, cache_dir, tmp_path / "cold")
    assert loads == {"text": 1, "model": 1, "hash": 1} and count_images["n"] == 40
    warm = _run(bench_cli, digits_root, cache_dir, tmp_path / "warm")
    # nothing loaded (not even the tokenizer: the [UNK] check is memoised too), hashed or encoded
    assert loads == {"text": 1, "model": 1, "hash": 1} and count_images["n"] == 40
    assert warm["metrics"] == cold["metrics"]
    assert warm["cache"]["image_features"] == cold["cache"]["image_features"]
    assert warm["manifest"]["model"] == cold["manifest"]["model"]  # same identity, weights hash included
    # new prompts need the text tower: the model loads, but its weights are not hashed again
    _run(bench_cli, digits_root, cache_dir, tmp_path / "prompts", "--prompts", "simple-zh")
    assert loads == {"text": 2, "model": 2, "hash": 1} and count_images["n"] == 40


def _edit_one_weight(path, keep_mtime: bool) -> None:
    st = path.stat()
    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1.0
    with open(path, "r+b") as f:  # in place: same inode, and the same size (same shapes)
        f.write(save(tensors))
    assert (path.stat().st_size, path.stat().st_ino) == (st.st_size, st.st_ino)
    if keep_mtime:  # only the ctime now tells the file changed
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["edited", "edited-mtime-restored"])
def test_edited_weights_miss_the_memo(tmp_path, digits_root, cache_dir, bench_cli, loads, count_images, keep_mtime):
    first = _run(bench_cli, digits_root, cache_dir, tmp_path / "a")
    _edit_one_weight(cache_dir / "models" / "demo-digits-v1" / "model.safetensors", keep_mtime)
    second = _run(bench_cli, digits_root, cache_dir, tmp_path / "b")
    assert loads["hash"] == 2  # the identity was recomputed from the edited weights
    assert second["manifest"]["model"]["weights"] != first["manifest"]["model"]["weights"]
    assert second["cache"]["image_features"] != first["cache"]["image_features"]
    assert count_images["n"] == 80 and second["cache"]["images_encoded"] == 40


def test_memo_is_keyed_by_library_versions(tmp_path, cache_dir, monkeypatch):
    from bench.models import resolve_model

    spec = resolve_model("demo")
    a = DemoBackend(spec, cache_dir=cache_dir)
    _, key_a = a._memo()
    monkeypatch.setattr(base, "_version", lambda pkg: "99.0" if pkg == "torch" else "1.0")
    _, key_b = DemoBackend(spec, cache_dir=cache_dir)._memo()
    assert key_a != key_b
    assert DemoBackend(spec, cache_dir=None)._memo() == (None, "")  # no cache dir: no memo, always hashed


def test_lazy_attributes_load_once_and_errors_stay_attribute_errors(cache_dir, loads):
    from bench.models import resolve_model

    backend = DemoBackend(resolve_model("demo"), cache_dir=cache_dir)
    assert backend.check_text("七").n_tokens >= 1 and loads["model"] == 0  # the tokenizer alone
    assert isinstance(backend.model, torch.nn.Module) and loads["model"] == 1
    assert backend.preprocess is not None and loads["model"] == 1
    with pytest.raises(AttributeError):
        backend.no_such_attribute  # noqa: B018
    assert loads["model"] == 1


def test_an_attribute_error_inside_a_loader_is_not_mistaken_for_a_missing_attribute(cache_dir, monkeypatch):
    from bench.models import resolve_model

    def broken(self):
        return self.model.visual.no_such_config  # a library change, say

    monkeypatch.setattr(DemoBackend, "_load_model", broken)
    backend = DemoBackend(resolve_model("demo"), cache_dir=cache_dir)
    with pytest.raises(RuntimeError, match="loading the model of demo failed: "):
        backend.preprocess  # noqa: B018


def test_model_folders_under_a_dot_cache_folder_are_memoised(tmp_path):
    """~/.cache/huggingface/hub holds most models: only `.cache` inside the model folder is skipped."""
    folder = tmp_path / ".cache" / "hub" / "model"
    (folder / ".cache").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "weights.safetensors").write_bytes(b"w")
    (folder / ".cache" / "download.lock").write_text("")
    assert base.folder_files(folder) == [folder / "config.json", folder / "weights.safetensors"]


def test_memo_key_follows_benchs_own_code(cache_dir, monkeypatch):
    """An editable install keeps its version number through edits: the code that builds the model keys
    the memo instead (here: an edit of the demo model's module)."""
    from pathlib import Path

    from bench.models import resolve_model

    spec = resolve_model("demo")
    before = DemoBackend(spec, cache_dir=cache_dir)._memo()[1]
    original = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes",
                        lambda self: original(self) + (b"# edited" if self.name == "model.py" else b""))
    assert DemoBackend(spec, cache_dir=cache_dir)._memo()[1] != before


def test_files_changing_while_the_model_loads_stop_the_run(cache_dir):
    """The identity was taken from one set of files; if loading sees others (a hub download fetched a
    newer revision), features must not be cached under the old identity."""
    from bench.errors import BenchError
    from bench.models import resolve_model

    DemoBackend(resolve_model("demo"), cache_dir=cache_dir).identity()  # fill the memo
    backend = DemoBackend(resolve_model("demo"), cache_dir=cache_dir)
    backend.identity()  # from the memo: nothing loaded yet
    _edit_one_weight(cache_dir / "models" / "demo-digits-v1" / "model.safetensors", keep_mtime=False)
    with pytest.raises(BenchError, match="the files of demo changed while bench was loading it"):
        backend.model  # noqa: B018


def test_a_broken_open_clip_install_is_one_line_with_the_fix(monkeypatch):
    import builtins

    from bench.backends.openclip import _open_clip
    from bench.errors import BenchError

    real_import = builtins.__import__

    def no_ftfy(name, *args, **kwargs):
        if name == "open_clip":
            raise ImportError("No module named 'ftfy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ftfy)
    with pytest.raises(BenchError, match=r"pip install open_clip_torch \(No module named 'ftfy'\)"):
        _open_clip()
