"""The protocol registry, `--protocol`/`--precision` on `bench run`, and what a result records about them."""

from __future__ import annotations

import dataclasses
import json

import pytest

from bench import protocols
from bench.errors import BenchError


def test_registry_ships_the_four_protocols():
    names = [p.name for p in protocols.list_protocols()]
    assert names[0] == "bench"
    assert set(names) == {"bench", "cn-clip", "elevater", "datacomp"}
    cn = protocols.load_protocol("cn-clip")
    assert (cn.precision, cn.scores, cn.metric_implementation, cn.labels) == ("fp32", "softmax100", "elevater", "dataset")
    dc = protocols.load_protocol("datacomp")
    assert (dc.precision, dc.metric_implementation) == ("fp32", "clip_benchmark")


def test_unknown_protocol_suggests_close_name():
    with pytest.raises(BenchError, match="did you mean: cn-clip"):
        protocols.load_protocol("cn-clp")


def test_precision_resolution():
    bench, cn = protocols.load_protocol("bench"), protocols.load_protocol("cn-clip")
    assert protocols.resolve_precision("auto", bench, "cpu") == "fp32"
    assert protocols.resolve_precision("auto", bench, "cuda", bf16_supported=True) == "bf16"
    assert protocols.resolve_precision("auto", bench, "cuda", bf16_supported=False) == "fp16"
    assert protocols.resolve_precision("auto", cn, "cuda") == "fp32"  # the protocol's precision wins over auto
    assert protocols.resolve_precision("fp16", cn, "cuda") == "fp16"  # an explicit flag wins over the protocol
    with pytest.raises(BenchError, match="needs a GPU"):
        protocols.resolve_precision("bf16", bench, "cpu")


def test_bad_protocol_yaml_names_the_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("name: x\nprecision: fp8\n", encoding="utf-8")
    with pytest.raises(BenchError, match="x.yaml"):
        protocols._load(path)


def test_protocols_list_cli(bench_cli):
    code, out, _ = bench_cli("protocols", "list", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert all(rows[name]["runnable"] for name in ("bench", "cn-clip", "elevater", "datacomp"))
    code, out, _ = bench_cli("protocols", "list")
    assert code == 0 and "datacomp" in out


@pytest.mark.parametrize("args, message", [
    (("--protocol", "cn-clp"), "did you mean: cn-clip"),
    (("--protocol", "not-yet"), "cannot run yet"),    # never silently run under bench's settings
    (("--precision", "bf16", "--device", "cpu"), "needs a GPU"),
])
def test_run_refuses_what_it_cannot_honour(args, message, tmp_path, digits_root, cache_dir, bench_cli, monkeypatch):
    # a registered protocol the runner does not implement (every shipped one runs today)
    not_yet = dataclasses.replace(protocols.load_protocol("elevater"), name="not-yet")
    registry = {**protocols._registry(), "not-yet": not_yet}
    monkeypatch.setattr(protocols, "_registry", lambda: registry)
    out = tmp_path / "runs"
    code, _, err = bench_cli("run", "--model", "demo", "--dataset", "digits", "--data-root", digits_root,
                             "--cache-dir", cache_dir, "--out", out, "--workers", "0", *args)
    assert code == 2 and message in err
    assert not out.exists() or not any(out.rglob("*.json"))


def test_result_records_protocol_and_precision(tmp_path, digits_root, cache_dir, bench_cli):
    out = tmp_path / "runs"
    code, _, err = bench_cli("run", "--model", "demo", "--dataset", "digits", "--data-root", digits_root,
                             "--cache-dir", cache_dir, "--out", out, "--workers", "0", "--device", "cpu",
                             "--limit", "50")
    assert code == 0, err
    res = json.loads(next(out.rglob("zeroshot*.json")).read_text(encoding="utf-8"))
    assert (res["protocol"], res["precision"]) == ("bench", "fp32")


def test_precision_is_part_of_the_backend_identity_only_off_the_default(demo_cache):
    """An explicit precision keys the feature and text caches apart; the default keeps today's keys."""
    import torch

    from bench.backends import load_backend
    from bench.models import resolve_model

    backend = load_backend(resolve_model("demo"), device="cpu", cache_dir=demo_cache)
    default = backend.identity()
    assert "precision" not in default
    backend.precision = "fp32"
    assert backend.identity() == {**default, "precision": "fp32"}
    assert backend.text_identity()["precision"] == "fp32"
    with backend.autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_runner_precision_records(tmp_path):
    """What a run computes in, tells the backend and records in the experiment identity (CPU)."""
    from bench.runner import RunOptions, _resolve_run_precision

    def prec(**kw):
        return _resolve_run_precision(RunOptions(out=tmp_path, cache_dir=tmp_path, device="cpu", **kw))

    assert prec() == prec(precision="fp32") == prec(protocol="cn-clip")
    assert (prec().resolved, prec().backend, prec().identity) == ("fp32", "auto", "auto")
