"""`bench run --task retrieval` end to end with the demo model on the generated retrieval set (offline)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.errors import BenchError


@pytest.fixture(scope="module")
def retrieval_root(tmp_path_factory) -> Path:
    from bench.datasets.digits_retrieval import prepare_digits_retrieval

    root = tmp_path_factory.mktemp("rdata")
    prepare_digits_retrieval(root / "digits-retrieval")
    return root


def _run(bench_cli, root, cache, out, *extra):
    code, stdout, _ = bench_cli("run", "--model", "demo", "--dataset", "digits-retrieval", "--task", "retrieval",
                                "--data-root", root, "--cache-dir", cache, "--out", out, "--no-progress", *extra)
    assert code == 0
    return stdout


def _result(out: Path, name: str = "retrieval.json") -> dict:
    return json.loads((out / "demo" / "digits-retrieval" / name).read_text(encoding="utf-8"))


def test_demo_retrieval_run_writes_a_result(tmp_path, retrieval_root, cache_dir, bench_cli):
    stdout = _run(bench_cli, retrieval_root, cache_dir, tmp_path / "runs")
    assert "digits-retrieval" in stdout and "mean_recall" in stdout
    r = _result(tmp_path / "runs")
    assert (r["task"], r["split"], r["language"], r["metric"]) == ("retrieval", "test", "zh", "mean_recall")
    assert (r["n_images"], r["n_texts"], r["n_pairs"]) == (539, 20, 1078)
    m = r["metrics"]
    for d in ("t2i", "i2t"):
        assert m[f"{d}_r@1"] <= m[f"{d}_r@5"] <= m[f"{d}_r@10"] <= 1
    # chance: a caption names ~54 of 539 images (t2i R@1 ~ 0.1); an image has 2 of 20 captions (i2t R@1 ~ 0.1)
    assert m["t2i_r@1"] > 0.5 and m["i2t_r@1"] > 0.5
    assert m["primary"] == m["mean_recall"] == pytest.approx(np.mean([m[k] for k in m if "_r@" in k]))
    assert r["cache"]["images_encoded"] == 539 and r["cache"]["text_entries_encoded"] == 1
    assert r["manifest"]["dataset"]["fingerprint"] and r["manifest"]["dataset"]["texts_fingerprint"]
    assert r["experiment"]["task"] == "retrieval" and r["source"] == "cn-clip"


def test_rerun_reads_both_caches_and_caption_edits_never_reencode_images(tmp_path, retrieval_root, cache_dir,
                                                                           bench_cli, count_images):
    out = tmp_path / "runs"
    _run(bench_cli, retrieval_root, cache_dir, out)
    first = _result(out)
    seen = count_images["n"]
    _run(bench_cli, retrieval_root, cache_dir, out)
    again = _result(out)
    assert count_images["n"] == seen  # nothing re-encoded
    assert again["cache"]["images_encoded"] == 0 and again["cache"]["text_entries_encoded"] == 0
    assert again["metrics"] == first["metrics"]
    # new captions for the same images: a new text entry, the image features come from the cache
    edited = tmp_path / "edited" / "digits-retrieval"
    edited.mkdir(parents=True)
    (edited / "test_imgs.tsv").write_bytes((retrieval_root / "digits-retrieval" / "test_imgs.tsv").read_bytes())
    lines = (retrieval_root / "digits-retrieval" / "test_texts.jsonl").read_text(encoding="utf-8").splitlines()
    (edited / "test_texts.jsonl").write_text("\n".join(lines[:10]) + "\n", encoding="utf-8")
    _run(bench_cli, edited.parent, cache_dir, tmp_path / "runs2")
    r = _result(tmp_path / "runs2")
    assert count_images["n"] == seen and r["cache"]["images_encoded"] == 0
    assert r["cache"]["image_features"] == first["cache"]["image_features"]
    assert r["n_texts"] == 10 and r["cache"]["text_entries_encoded"] == 1
    assert r["manifest"]["dataset"]["texts_fingerprint"] != first["manifest"]["dataset"]["texts_fingerprint"]


def test_limit_is_another_experiment_and_keeps_the_full_result(tmp_path, retrieval_root, cache_dir, bench_cli):
    out = tmp_path / "runs"
    _run(bench_cli, retrieval_root, cache_dir, out)
    full = (out / "demo" / "digits-retrieval" / "retrieval.json").read_bytes()
    _run(bench_cli, retrieval_root, cache_dir, out, "--limit", "100")
    assert (out / "demo" / "digits-retrieval" / "retrieval.json").read_bytes() == full
    small = _result(out, "retrieval@limit=100.json")
    assert small["n_images"] == 100 and small["limit"] == 100 and small["n_texts"] == 20
    index = json.loads((out / "demo" / "digits-retrieval" / "index.json").read_text())
    assert set(index) == {"retrieval.json", "retrieval@limit=100.json"}


def test_prompts_flag_does_not_make_a_new_retrieval_experiment(tmp_path, retrieval_root, cache_dir, bench_cli):
    out = tmp_path / "runs"
    _run(bench_cli, retrieval_root, cache_dir, out, "--prompts", "demo-en")
    assert [p.name for p in (out / "demo" / "digits-retrieval").glob("retrieval*.json")] == ["retrieval.json"]


def test_tasks_go_to_datasets_of_their_kind(tmp_path, retrieval_root, digits_root, cache_dir):
    from bench.datasets.digits import prepare_digits
    from bench.runner import RunOptions, run

    prepare_digits(retrieval_root / "digits")
    opts = RunOptions(out=tmp_path / "runs", cache_dir=cache_dir, data_root=retrieval_root, progress=False,
                      bootstrap=0, limit=60)
    with pytest.raises(BenchError, match="digits-retrieval: no requested task runs on it.*--task retrieval"):
        run(["demo"], ["digits-retrieval"], opts, ("zeroshot",))
    results = run(["demo"], ["digits", "digits-retrieval"], opts, ("zeroshot", "retrieval"))
    assert [(r["dataset"], r["task"]) for r in results] == [("digits", "zeroshot"), ("digits-retrieval", "retrieval")]
