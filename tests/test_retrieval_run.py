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


def _retrieval_rank(rank: int, world: int, port: int, cache_dir: str, out: str, root: str, q) -> None:
    import os

    import torch

    from bench.runner import RunOptions, run

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    opts = RunOptions(out=Path(out), cache_dir=Path(cache_dir), data_root=Path(root), workers=0, limit=120,
                      batch_size=16, progress=False, shard_size=16)
    q.put((rank, len(run(["demo"], ["digits-retrieval"], opts, ("retrieval",)))))


def test_distributed_retrieval_matches_single_process(tmp_path, retrieval_root, cache_dir):
    """Two gloo ranks share the image shards; rank 0 encodes captions and scores: the numbers of one process."""
    import shutil

    import torch
    from test_scale import _free_port

    from bench.runner import RunOptions, run

    shutil.copytree(cache_dir / "models", tmp_path / "cache1" / "models")
    opts = RunOptions(out=tmp_path / "single", cache_dir=tmp_path / "cache1", data_root=retrieval_root, workers=0,
                      limit=120, batch_size=16, progress=False, shard_size=16)
    single = run(["demo"], ["digits-retrieval"], opts, ("retrieval",))[0]
    ctx = torch.multiprocessing.get_context("spawn")
    q = ctx.SimpleQueue()
    port = _free_port()
    procs = [ctx.Process(target=_retrieval_rank, args=(r, 2, port, str(cache_dir), str(tmp_path / "dist"),
                                                       str(retrieval_root), q)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(q.get() for _ in procs) == [(0, 1), (1, 0)]  # only rank 0 returns (and writes) a result
    dist = _result(tmp_path / "dist", "retrieval@limit=120.json")
    assert dist["metrics"] == single["metrics"] and dist["n_images"] == single["n_images"] == 120
    assert 0 < dist["cache"]["images_encoded"] < 120  # rank 0 encoded only its share


def test_run_from_webdataset_and_captions_folder(tmp_path, cache_dir, bench_cli):
    """The other two formats through `bench run`: digits images with Chinese captions, one positive each."""
    import io
    import tarfile

    from sklearn.datasets import load_digits

    from bench.datasets.digits import ZH, _to_image

    data = load_digits()
    idx = list(range(0, 300, 3))  # 100 images
    wds_dir, caps_dir = tmp_path / "wdsr", tmp_path / "caps"
    (wds_dir / "test").mkdir(parents=True)
    (caps_dir / "test").mkdir(parents=True)
    (wds_dir / "dataset_type.txt").write_text("retrieval\n")
    rows = ["image,caption"]
    with tarfile.open(wds_dir / "test" / "0.tar", "w") as tar:
        for n, i in enumerate(idx):
            buf = io.BytesIO()
            _to_image(data.images[i]).save(buf, format="PNG")
            (caps_dir / "test" / f"{n}.png").write_bytes(buf.getvalue())
            caption = f"手写数字{ZH[data.target[i]]}。"
            for name, payload in ((f"s{n:05d}.png", buf.getvalue()), (f"s{n:05d}.txt", caption.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            rows.append(f"{n}.png,{caption}")
    (caps_dir / "test_captions.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    results = []
    for folder in (wds_dir, caps_dir):
        code, _, _ = bench_cli("run", "--model", "demo", "--dataset", folder, "--task", "retrieval",
                               "--cache-dir", cache_dir, "--out", tmp_path / "runs", "--no-progress")
        assert code == 0
        results.append(json.loads((tmp_path / "runs" / "demo" / folder.name / "retrieval.json").read_text()))
    wds_r, caps_r = results
    assert (wds_r["source"], caps_r["source"]) == ("wds-retrieval", "captions")
    assert wds_r["n_images"] == caps_r["n_images"] == wds_r["n_texts"] == 100
    # one caption per image but only ten distinct texts, so about ten images (captions) of a digit tie at the
    # top: R@1 is near 1/10, R@10 near the model's accuracy (chance: 10 of 100)
    assert caps_r["metrics"]["i2t_r@10"] > 0.5 and caps_r["metrics"]["t2i_r@10"] > 0.5
    assert wds_r["metrics"] == caps_r["metrics"]  # same images and captions in two formats: same numbers


def test_classification_tools_refuse_a_retrieval_set(retrieval_root):
    from bench.runner import load_data, resolve_datasets

    (ref,), _ = resolve_datasets(["digits-retrieval"], retrieval_root)
    with pytest.raises(BenchError, match="digits-retrieval is a retrieval set.*--task retrieval"):
        load_data(ref, "test", None)
