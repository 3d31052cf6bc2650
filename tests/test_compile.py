"""torch.compile of the image tower: the policy, the fallback, and compiled features equal to eager ones."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from identity_helpers import latest_result  # noqa: E402
from tiny_models import make_image_dataset, make_open_clip_dir, write_model_yaml  # noqa: E402

from bench import kernels  # noqa: E402
from bench.cache import FeatureCache  # noqa: E402
from bench.errors import BenchError  # noqa: E402
from bench.features import COMPILE_WORTH_S, ImageEncoder, should_compile  # noqa: E402


class FakeBackend:
    """Records how each batch was encoded; its 'compiled' path can be made to fail like a compiler."""

    def __init__(self, fail: bool = False, gemm: str = "aten"):
        self.device = torch.device("cpu")
        self.gemm = gemm
        self.spec = SimpleNamespace(name="fake")
        self.calls: list[bool] = []
        self.fail = fail

    def encode_images(self, pixels: torch.Tensor, compiled: bool = False) -> torch.Tensor:
        if compiled and self.fail:
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")
        self.calls.append(compiled)
        return pixels.flatten(1)[:, :4] * 2


@pytest.fixture(autouse=True)
def avx512(monkeypatch):
    """`auto`'s bars as on an AVX-512 CPU, where compiling was measured to pay, whatever CPU runs the tests
    (bench's own decision only: inductor detects the ISA it compiles for by itself)."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")


def test_auto_never_compiles_on_a_cpu_without_avx512(monkeypatch):
    """There the compiled tower ran at eager speed after a minute of building: auto stays eager, even with a
    tower at hand and a long run ahead; `on` still compiles."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    batches = [torch.ones(4, 3, 2, 2) for _ in range(3)]
    for gemm in ("aten", "onednn"):
        backend = FakeBackend(gemm=gemm)
        backend.has_compiled_tower = lambda pixels: True
        enc = ImageEncoder(backend, "auto", total=10**9, later=lambda: 10**9)
        [enc(b) for b in batches]
        assert backend.calls == [False, False, False] and not enc.compiled, gemm
    on = FakeBackend()
    [ImageEncoder(on, "on", total=12)(b) for b in batches]
    assert on.calls == [True, True, True]


def test_should_compile_policy():
    assert should_compile("on", "cpu", 0.0, 0) is True
    assert should_compile("off", "cpu", 10.0, 10**6) is False
    worth = COMPILE_WORTH_S["cpu"]
    assert should_compile("auto", "cpu", 1.0, int(worth) + 1) is True  # more eager time left than compiling costs
    assert should_compile("auto", "cpu", 1.0, int(worth) - 1) is False
    assert should_compile("auto", "cuda", 1.0, int(worth) + 1) is False  # the GPU bar is higher
    with pytest.raises(BenchError, match="--compile must be one of auto, on, off"):
        should_compile("yes", "cpu", 0.0, 0)


def test_auto_times_the_first_batch_then_compiles_when_it_pays():
    batches = [torch.ones(4, 3, 2, 2) * i for i in range(3)]
    cheap = FakeBackend()
    enc = ImageEncoder(cheap, "auto", total=12, worth_s=1e9)  # never worth it
    [enc(b) for b in batches]
    assert cheap.calls == [False, False, False] and not enc.compiled
    costly = FakeBackend()
    enc = ImageEncoder(costly, "auto", total=12, worth_s=0.0)  # always worth it
    outs = [enc(b) for b in batches]
    assert costly.calls == [False, True, True] and enc.compiled
    assert all(torch.equal(o, b.flatten(1)[:, :4] * 2) for o, b in zip(outs, batches, strict=True))
    on = FakeBackend()
    enc = ImageEncoder(on, "on", total=12)
    [enc(b) for b in batches]
    assert on.calls == [True, True, True] and enc.compile_s > 0


def test_auto_weighs_compiling_against_the_eager_kernels_in_use(monkeypatch):
    """oneDNN's eager linears leave a compiled tower less to gain, so auto wants more work left for them."""
    assert COMPILE_WORTH_S["cpu"] < COMPILE_WORTH_S["cpu-onednn"] < COMPILE_WORTH_S["cuda"]
    monkeypatch.setitem(COMPILE_WORTH_S, "cpu", 0.0)
    monkeypatch.setitem(COMPILE_WORTH_S, "cpu-onednn", 1e12)
    batches = [torch.ones(4, 3, 2, 2) for _ in range(3)]
    for gemm, calls in (("aten", [False, True, True]), ("onednn", [False, False, False])):
        backend = FakeBackend(gemm=gemm)
        enc = ImageEncoder(backend, "auto", total=12)
        [enc(b) for b in batches]
        assert backend.calls == calls, gemm


def test_a_compiler_failure_falls_back_under_auto_and_is_an_error_under_on(caplog):
    batches = [torch.ones(4, 3, 2, 2) for _ in range(3)]
    backend = FakeBackend(fail=True)
    enc = ImageEncoder(backend, "auto", total=12, worth_s=0.0)
    with caplog.at_level(logging.WARNING):
        outs = [enc(b) for b in batches]
    assert backend.calls == [False, False, False] and not enc.compiled  # the failed batch was redone eagerly
    assert len(outs) == 3 and all(o.shape == (4, 4) for o in outs)
    assert "torch.compile failed for fake (InvalidCxxCompiler: No working C++ compiler found); encoding eagerly" \
        in caplog.text
    expected = "--compile on: torch.compile failed for fake: InvalidCxxCompiler: .*; run with --compile off"
    with pytest.raises(BenchError, match=expected):
        ImageEncoder(FakeBackend(fail=True), "on", total=4)(batches[0])


def test_compiled_run_equals_eager_run(tmp_path, bench_cli):
    """A real torch.compile (inductor, freezing on CPU) of a tiny open_clip ViT, through `bench run`."""
    model_dir = make_open_clip_dir(tmp_path / "oc")
    make_image_dataset(tmp_path / "data" / "toy", labels_en=["cat", "dog", "car"])
    yml = write_model_yaml(tmp_path / "tiny.yaml", name="tiny-oc", backend="open_clip",
                           model=f"local-dir:{model_dir}", language="en")
    results, features = {}, {}
    for mode in ("off", "on"):
        code, _, err = bench_cli("run", "--model", yml, "--dataset", tmp_path / "data" / "toy", "--labels", "dataset",
                                 "--prompts", "simple-en", "--out", tmp_path / f"runs-{mode}", "--cache-dir",
                                 tmp_path / f"cache-{mode}", "--workers", "0", "--batch-size", "5",
                                 "--compile", mode, "--save-predictions")
        assert code == 0, err
        folder = tmp_path / f"runs-{mode}" / "tiny-oc" / "toy"
        results[mode] = (json.loads(latest_result(folder, "zeroshot").read_text()),
                         latest_result(folder, "zeroshot", ".predictions.csv").read_text())
        key = results[mode][0]["cache"]["image_features"]
        features[mode] = FeatureCache(tmp_path / f"cache-{mode}").load_shard(key, 0)
    (eager, eager_preds), (compiled, compiled_preds) = results["off"], results["on"]
    assert eager["encoder"] == {"compile": "off", "compiled": False, "compile_s": 0.0, "tower": "",
                               "cpu_gemm": kernels.resolve("auto", torch.device("cpu")), "decode": "cpu"}
    assert compiled["encoder"]["compiled"] is True and compiled["encoder"]["compile_s"] > 0
    assert compiled["encoder"]["tower"] == "built"  # an AOTInductor package, now stored in the cache
    assert eager["cache"]["image_features"] == compiled["cache"]["image_features"]  # same entry, either way
    assert compiled_preds == eager_preds and compiled["metrics"] == eager["metrics"]
    # 12 images in batches of 5: the last batch (2) ran through the same graph, compiled for any batch size
    assert torch.equal(features["on"]["indices"], features["off"]["indices"])
    torch.testing.assert_close(features["on"]["features"], features["off"]["features"], rtol=1e-4, atol=1e-5)


def _tiny_oc_run(bench_cli, tmp_path, yml, datasets, out, cache, compile_mode):
    args = [a for d in datasets for a in ("--dataset", tmp_path / "data" / d)]
    code, _, err = bench_cli("run", "--model", yml, *args, "--labels", "dataset", "--prompts", "simple-en",
                             "--out", tmp_path / out, "--cache-dir", tmp_path / cache, "--workers", "0",
                             "--batch-size", "5", "--compile", compile_mode)
    assert code == 0, err
    results = {d: json.loads(latest_result(tmp_path / out / "tiny-oc" / d, "zeroshot").read_text()) for d in datasets}
    feats = {d: FeatureCache(tmp_path / cache).load_shard(r["cache"]["image_features"], 0) for d, r in results.items()}
    return results, feats, err


def test_the_compiled_tower_is_built_once_then_reused_in_memory_and_from_the_store(tmp_path, bench_cli, caplog):
    """One AOTInductor build serves every dataset of the run (memory) and later runs (the store in the cache
    dir), with features equal to eager ones; a corrupt stored package is rebuilt with a warning."""
    model_dir = make_open_clip_dir(tmp_path / "oc")
    for i, name in enumerate(("a", "b", "c", "d")):
        make_image_dataset(tmp_path / "data" / name, labels_en=["cat", "dog", "car"], seed=i)
    yml = write_model_yaml(tmp_path / "tiny.yaml", name="tiny-oc", backend="open_clip",
                           model=f"local-dir:{model_dir}", language="en")
    eager, eager_feats, _ = _tiny_oc_run(bench_cli, tmp_path, yml, ["a", "b", "c", "d"], "runs-eager", "cache-eager",
                                         "off")
    first, feats, _ = _tiny_oc_run(bench_cli, tmp_path, yml, ["a", "b"], "runs", "cache", "on")
    assert [first[d]["encoder"]["tower"] for d in "ab"] == ["built", "memory"]
    stored = list((tmp_path / "cache" / "compiled").glob("*.pt2"))
    assert len(stored) == 1  # one package for the model, whatever the dataset
    # a later process-like run (a new backend): `auto` takes the stored tower at once, though 12 images never
    # repay a compile
    later, later_feats, _ = _tiny_oc_run(bench_cli, tmp_path, yml, ["c"], "runs", "cache", "auto")
    assert later["c"]["encoder"]["compiled"] is True and later["c"]["encoder"]["tower"] == "stored"
    stored[0].write_bytes(b"not a zip")  # e.g. a half-copied cache
    with caplog.at_level(logging.WARNING):
        rebuilt, rebuilt_feats, _ = _tiny_oc_run(bench_cli, tmp_path, yml, ["d"], "runs", "cache", "on")
    assert "could not be used (Failed to initialize zip archive" in caplog.text and "rebuilding it" in caplog.text
    assert rebuilt["d"]["encoder"]["tower"] == "built" and stored[0].stat().st_size > 1000
    results = {**first, **later, **rebuilt}
    for d, got in {**feats, **later_feats, **rebuilt_feats}.items():
        torch.testing.assert_close(got["features"], eager_feats[d]["features"], rtol=1e-4, atol=1e-5)
        assert results[d]["metrics"] == eager[d]["metrics"]


def test_the_tower_key_changes_with_what_changes_compiled_code(tmp_path, monkeypatch):
    from bench import towers
    from bench.backends import load_backend
    from bench.models import resolve_model

    model_dir = make_open_clip_dir(tmp_path / "oc")
    yml = write_model_yaml(tmp_path / "tiny.yaml", name="tiny-oc", backend="open_clip",
                           model=f"local-dir:{model_dir}", language="en")
    backend = load_backend(resolve_model(str(yml)), device="cpu", cache_dir=tmp_path / "cache")
    key = towers.tower_key(backend, (3, 32, 32), torch.float32)
    assert key == towers.tower_key(backend, (3, 32, 32), torch.float32)
    assert key != towers.tower_key(backend, (3, 64, 64), torch.float32)
    # the same ISA level, other instructions (Skylake-X vs Zen 4: both "AVX512"): -march=native differs
    monkeypatch.setattr(towers, "cpu_features", lambda: "other-flags")
    assert key != towers.tower_key(backend, (3, 32, 32), torch.float32)
    monkeypatch.undo()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 97)  # OpenMP thread count baked into CPU kernels
    assert key != towers.tower_key(backend, (3, 32, 32), torch.float32)
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    assert key != towers.tower_key(backend, (3, 32, 32), torch.float32)


def test_auto_counts_the_images_later_datasets_will_encode():
    """One dataset too small to repay a compile still compiles when the rest of the run with that model
    is large enough; with nothing later it stays eager."""
    batches = [torch.ones(4, 3, 2, 2) for _ in range(2)]
    for later, expect in ((0, [False, False]), (10**9, [False, True])):
        backend = FakeBackend()
        asked = []
        enc = ImageEncoder(backend, "auto", total=8, worth_s=1e-3, later=lambda n=later, a=asked: a.append(n) or n)
        [enc(b) for b in batches]
        assert backend.calls == expect and asked == [later]


def test_the_runner_counts_later_steps_of_the_run_for_auto(tmp_path, bench_cli, digits_root, cache_dir, monkeypatch):
    """`--task all` on digits: while the zero-shot step encodes test, the probe's train split is still
    ahead (its test split is the entry being encoded, counted once); the probe's train step has nothing after it."""
    from bench import features

    asked: list[int] = []

    class Recording(features.ImageEncoder):
        def __init__(self, *args, later=None, **kwargs):
            super().__init__(*args, later=(lambda: asked.append(later()) or asked[-1]) if later else None, **kwargs)

    monkeypatch.setattr(features, "ImageEncoder", Recording)
    monkeypatch.setitem(features.COMPILE_WORTH_S, "cpu", 1e12)  # never worth it: `later` is always asked
    code, _, err = bench_cli("run", "--model", "demo", "--dataset", "digits", "--data-root", digits_root,
                             "--task", "all", "--cache-dir", cache_dir, "--out", tmp_path / "runs",
                             "--workers", "0", "--compile", "auto")
    assert code == 0, err
    n_train = sum(1 for p in (digits_root / "digits" / "train").rglob("*") if p.is_file())
    assert asked == [n_train, 0]


def test_under_torchrun_auto_counts_only_this_rank_s_share_of_later_images(digits_root, cache_dir, monkeypatch):
    """Each rank encodes the shards s with s % world == rank, so the images ahead of it are its share, not
    the whole split (which overestimated by the world size)."""
    from bench import distributed
    from bench.models import resolve_model
    from bench.runner import Runner, RunOptions, resolve_datasets

    assert distributed.Dist(0, 2).share(10, 4) == 6 and distributed.Dist(1, 2).share(10, 4) == 4
    assert distributed.Dist(0, 1).share(10, 4) == 10 and distributed.Dist(2, 3).share(10, 4) == 2
    runner = Runner(RunOptions(out=cache_dir / "unused", cache_dir=cache_dir, data_root=digits_root,
                               shard_size=100))
    backend = runner.backend(resolve_model("demo"))
    (ref,), _ = resolve_datasets(["digits"], digits_root)
    runner.plan = [(backend.spec, ref, "zeroshot"), (backend.spec, ref, "linear_probe")]  # at step 0
    sizes = [len(d) for d in runner.probe_data(ref).values()]  # what the probe step encodes
    assert runner.images_later(backend) == sum(sizes) > 200
    monkeypatch.setattr(distributed, "current", lambda: distributed.Dist(1, 2))
    share = runner.images_later(backend)
    assert share == sum(distributed.Dist(1, 2).share(n, 100) for n in sizes) < sum(sizes) / 2 + 100


def test_results_report_the_fixed_costs_their_step_paid(tmp_path, bench_cli, digits_root, cache_dir):
    """The first step loads the model and hashes its weights; the next step of the run pays neither, and a
    re-run whose identity is memoised hashes nothing."""
    def go(out):
        code, _, err = bench_cli("run", "--model", "demo", "--dataset", "digits", "--data-root", digits_root,
                                 "--task", "all", "--cache-dir", cache_dir, "--out", tmp_path / out, "--workers", "0")
        assert code == 0, err
        folder = tmp_path / out / "demo" / "digits"
        return [json.loads(latest_result(folder, task).read_text())["timings"] for task in ("zeroshot", "linear_probe")]

    (zs, lp), (zs2, _) = go("cold"), go("warm")
    assert zs["model_load_s"] > 0 and zs["weights_hash_s"] > 0
    assert lp["model_load_s"] == lp["weights_hash_s"] == 0
    assert zs2["weights_hash_s"] == zs2["model_load_s"] == 0  # memo + caches: a re-run neither loads nor hashes


def test_a_cache_that_cannot_store_the_tower_still_compiles(tmp_path, bench_cli, caplog, monkeypatch):
    """A read-only or full cache folder: the tower is built in a temporary folder and kept in memory."""
    from bench import towers

    real = towers.build_package

    def read_only_store(backend, example, path):
        if path.parent.name == "compiled":
            raise OSError(30, "Read-only file system")
        return real(backend, example, path)

    monkeypatch.setattr(towers, "build_package", read_only_store)
    model_dir = make_open_clip_dir(tmp_path / "oc")
    make_image_dataset(tmp_path / "data" / "a", labels_en=["cat", "dog", "car"])
    yml = write_model_yaml(tmp_path / "tiny.yaml", name="tiny-oc", backend="open_clip",
                           model=f"local-dir:{model_dir}", language="en")
    with caplog.at_level(logging.WARNING):
        results, _, _ = _tiny_oc_run(bench_cli, tmp_path, yml, ["a"], "runs", "cache", "on")
    assert results["a"]["encoder"]["tower"] == "built" and "cannot store the compiled image tower" in caplog.text
    assert not list((tmp_path / "cache").rglob("*.pt2"))


def test_a_device_without_a_bar_of_its_own_gets_the_gpu_s():
    backend = FakeBackend()
    backend.device = torch.device("mps")  # any accelerator but CUDA: the GPU's bar, not a KeyError
    assert ImageEncoder(backend, "auto", total=1)._worth() == COMPILE_WORTH_S["cuda"]
