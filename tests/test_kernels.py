"""Eager CPU linears through oneDNN (bench.kernels): every linear layer is routed, features equal aten's to
float32 rounding, and `--cpu-gemm aten` keeps PyTorch's own kernels."""

from __future__ import annotations

import json

import pytest
import torch

from bench import kernels
from bench.backends import load_backend
from bench.cache import FeatureCache
from bench.errors import BenchError
from bench.models import resolve_model
from tests.identity_helpers import latest_result
from tests.tiny_models import make_chinese_clip_dir, make_image_dataset, make_open_clip_dir, write_model_yaml

pytestmark = pytest.mark.skipif(not kernels.onednn_works(), reason="this torch build has no oneDNN linear")


@pytest.fixture
def routed(monkeypatch) -> list[tuple]:
    """The weight shapes of every linear that went through oneDNN."""
    calls: list[tuple] = []
    real = kernels._linear

    def counting(x, w, b):
        calls.append(tuple(w.shape))
        return real(x, w, b)

    monkeypatch.setattr(kernels, "_linear", counting)
    return calls


def _backend(tmp_path, kind: str, gemm: str):
    if kind == "open_clip":
        folder = make_open_clip_dir(tmp_path / "oc")
        yml = write_model_yaml(tmp_path / "oc.yaml", name="tiny-oc", backend="open_clip",
                               model=f"local-dir:{folder}", language="en")
    else:
        folder = make_chinese_clip_dir(tmp_path / "hf")
        yml = write_model_yaml(tmp_path / "hf.yaml", name="tiny-hf", backend="transformers",
                               model=str(folder), language="zh")
    backend = load_backend(resolve_model(str(yml)), device="cpu")
    backend.cpu_gemm = gemm
    return backend


def _expected_linears(module: torch.nn.Module) -> int:
    """nn.Linear layers, plus MultiheadAttention's packed input projection (its out_proj is an nn.Linear)."""
    mods = list(module.modules())
    return (sum(isinstance(m, torch.nn.Linear) for m in mods)
            + sum(isinstance(m, torch.nn.MultiheadAttention) for m in mods))


@pytest.mark.parametrize("kind", ["open_clip", "transformers"])
def test_every_linear_goes_through_onednn_with_aten_s_features(kind, tmp_path, routed):
    onednn, aten = _backend(tmp_path / "a", kind, "onednn"), _backend(tmp_path / "b", kind, "aten")
    assert (onednn.gemm, aten.gemm) == ("onednn", "aten")
    pixels = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    texts = ["a photo of a cat", "一张狗的照片", "car"]

    want_img, want_txt = aten.encode_images(pixels), aten.encode_texts(texts)
    assert routed == []  # aten stays aten
    got_img = onednn.encode_images(pixels)
    tower = onednn.model.visual if kind == "open_clip" else onednn.model.vision_model
    n_image = len(routed)
    # open_clip's ViT has a MultiheadAttention: without the dispatch mode its projections stay on aten
    assert n_image >= _expected_linears(tower) > 0
    got_txt = onednn.encode_texts(texts)
    assert len(routed) > n_image
    assert not torch._C._is_torch_function_mode_enabled()  # nothing leaks out of the call

    torch.testing.assert_close(got_img, want_img, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_txt, want_txt, rtol=1e-4, atol=1e-5)


def test_the_multihead_attention_mask_is_kept(routed):
    """The causal mask of a text tower's attention survives the detour through the Python path."""
    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    x = torch.randn(2, 7, 32)
    mask = torch.full((7, 7), float("-inf")).triu(1)
    with torch.inference_mode():
        want = attn(x, x, x, need_weights=False, attn_mask=mask)[0]
        with kernels.using("onednn"):
            got = attn(x, x, x, need_weights=False, attn_mask=mask)[0]
        unmasked = attn(x, x, x, need_weights=False)[0]
    assert routed == [(96, 32), (32, 32)]  # the packed q/k/v projection and the output projection
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(unmasked, want, atol=1e-3)  # the mask matters in this case


def test_what_onednn_cannot_compute_as_aten_does_stays_on_aten(routed):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 16, generator=gen)
    cases = [(torch.randn(3, 16, generator=gen).bfloat16(), w.bfloat16(), None),  # not fp32
             (torch.randn(3, 16, generator=gen), w.t().contiguous().t(), None)]  # a transposed weight
    with torch.inference_mode(), kernels.using("onednn"):
        for x, weight, b in cases:
            torch.testing.assert_close(torch.nn.functional.linear(x, weight, b), x @ weight.t())
    assert routed == []


def test_auto_takes_onednn_only_on_amd_cpus_with_avx512(monkeypatch):
    # measured: 1.6-1.9x faster than MKL on an AVX-512 EPYC, level on an AVX2-only one
    assert kernels.auto_choice("AuthenticAMD", "AVX512") == "onednn"
    assert kernels.auto_choice("AuthenticAMD", "AVX2") == "aten"
    assert kernels.auto_choice("GenuineIntel", "AVX512") == "aten"
    assert kernels.auto_choice("", "DEFAULT") == "aten"
    monkeypatch.setattr(kernels, "_cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert kernels.resolve("auto", torch.device("cpu")) == "onednn"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert kernels.resolve("auto", torch.device("cpu")) == "aten"
    assert kernels.resolve("onednn", torch.device("cpu")) == "onednn"  # asked for, so taken anyway


def test_cpu_gemm_names_are_checked_and_gpus_have_none():
    assert kernels.resolve("aten", torch.device("cpu")) == "aten"
    assert kernels.resolve("onednn", torch.device("cuda")) is None
    with pytest.raises(BenchError, match="--cpu-gemm must be one of auto, onednn, aten, got 'mkl'"):
        kernels.resolve("mkl", torch.device("cpu"))


def test_bench_run_records_the_kernels_and_both_give_the_same_result(tmp_path, bench_cli):
    model_dir = make_open_clip_dir(tmp_path / "oc")
    make_image_dataset(tmp_path / "data" / "toy", labels_en=["cat", "dog", "car"])
    yml = write_model_yaml(tmp_path / "tiny.yaml", name="tiny-oc", backend="open_clip",
                           model=f"local-dir:{model_dir}", language="en")
    out = {}
    for gemm in ("aten", "onednn"):
        extra = ["--cpu-gemm", gemm]
        code, _, err = bench_cli("run", "--model", yml, "--dataset", tmp_path / "data" / "toy", "--labels", "dataset",
                                 "--prompts", "simple-en", "--out", tmp_path / f"runs-{gemm}", "--cache-dir",
                                 tmp_path / f"cache-{gemm}", "--workers", "0", "--compile", "off",
                                 "--save-predictions", *extra)
        assert code == 0, err
        folder = tmp_path / f"runs-{gemm}" / "tiny-oc" / "toy"
        result = json.loads(latest_result(folder, "zeroshot").read_text())
        feats = FeatureCache(tmp_path / f"cache-{gemm}").load_shard(result["cache"]["image_features"], 0)
        out[gemm] = result, latest_result(folder, "zeroshot", ".predictions.csv").read_text(), feats
    (aten, aten_preds, aten_feats), (onednn, onednn_preds, onednn_feats) = out["aten"], out["onednn"]
    assert aten["encoder"]["cpu_gemm"] == "aten" and onednn["encoder"]["cpu_gemm"] == "onednn"
    assert aten["experiment"] == onednn["experiment"]  # the same experiment, computed with other kernels
    assert aten_preds == onednn_preds and aten["metrics"] == onednn["metrics"]
    torch.testing.assert_close(onednn_feats["features"], aten_feats["features"], rtol=1e-4, atol=1e-5)
    with pytest.raises(SystemExit):  # argparse refuses a name it does not know
        bench_cli("run", "--model", yml, "--dataset", tmp_path / "data" / "toy", "--cpu-gemm", "mkl")
