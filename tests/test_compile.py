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

from bench.cache import FeatureCache  # noqa: E402
from bench.errors import BenchError  # noqa: E402
from bench.features import COMPILE_WORTH_S, ImageEncoder, should_compile  # noqa: E402


class FakeBackend:
    """Records how each batch was encoded; its 'compiled' path can be made to fail like a compiler."""

    def __init__(self, fail: bool = False):
        self.device = torch.device("cpu")
        self.spec = SimpleNamespace(name="fake")
        self.calls: list[bool] = []
        self.fail = fail

    def encode_images(self, pixels: torch.Tensor, compiled: bool = False) -> torch.Tensor:
        if compiled and self.fail:
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")
        self.calls.append(compiled)
        return pixels.flatten(1)[:, :4] * 2


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
    assert eager["encoder"] == {"compile": "off", "compiled": False, "compile_s": 0.0}
    assert compiled["encoder"]["compiled"] is True and compiled["encoder"]["compile_s"] > 0
    assert eager["cache"]["image_features"] == compiled["cache"]["image_features"]  # same entry, either way
    assert compiled_preds == eager_preds and compiled["metrics"] == eager["metrics"]
    # 12 images in batches of 5: the last batch (2) ran through the same graph, compiled for any batch size
    assert torch.equal(features["on"]["indices"], features["off"]["indices"])
    torch.testing.assert_close(features["on"]["features"], features["off"]["features"], rtol=1e-4, atol=1e-5)
