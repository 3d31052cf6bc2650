"""Result identity: every experiment gets its own file; re-running one replaces only its own."""

from __future__ import annotations

import json
from types import SimpleNamespace

from bench.experiment import experiment, result_stem


def _opts(**kw):
    base = dict(split="test", language=None, prompts=None, labels=None, limit=None, skip_bad_images=False)
    return SimpleNamespace(**{**base, **kw})


def _result(task="zeroshot", **kw):
    return {"task": task, "split": kw.pop("split", "test"), "manifest": {"model": {"language": "zh"}}, **kw}


def test_default_experiment_is_plain_task_name():
    assert result_stem(experiment(_result(), _opts())) == "zeroshot"
    # naming the model's own language explicitly is still the default experiment
    assert result_stem(experiment(_result(), _opts(language="zh"))) == "zeroshot"


def test_other_experiments_get_distinct_readable_names():
    stems = {
        result_stem(experiment(_result(split="train"), _opts(split="train", limit=30))),
        result_stem(experiment(_result(), _opts(prompts="simple-zh"))),
        result_stem(experiment(_result(), _opts(language="en"))),
        result_stem(experiment(_result(), _opts(skip_bad_images=True))),
        result_stem(experiment({**_result(), "protocol": "cn-clip"}, _opts())),
        result_stem(experiment(_result(), SimpleNamespace(**vars(_opts()), precision="fp16"))),
        result_stem(experiment(_result(), _opts())),
    }
    assert len(stems) == 7
    assert "zeroshot@split=train,limit=30" in stems
    assert "zeroshot@prompts=simple-zh" in stems


def test_runs_do_not_overwrite_each_other(tmp_path, digits_root, cache_dir, bench_cli):
    out = tmp_path / "runs"
    common = ("run", "--model", "demo", "--dataset", "digits", "--data-root", digits_root, "--cache-dir", cache_dir,
              "--out", out, "--workers", "0", "--save-predictions")
    assert bench_cli(*common)[0] == 0
    folder = out / "demo" / "digits"
    full = json.loads((folder / "zeroshot.json").read_text())
    assert bench_cli(*common, "--split", "train", "--limit", "30")[0] == 0
    # the default experiment's result is untouched by the train-split 30-image run
    assert json.loads((folder / "zeroshot.json").read_text())["n_samples"] == full["n_samples"]
    sub_name = "zeroshot@split=train,limit=30.json"
    sub = json.loads((folder / sub_name).read_text())
    assert sub["split"] == "train" and sub["experiment"]["limit"] == 30
    assert (folder / "zeroshot@split=train,limit=30.predictions.csv").is_file()
    index = json.loads((folder / "index.json").read_text())
    assert set(index) == {"zeroshot.json", sub_name}
    assert index[sub_name]["non_default"] == {"split": "train", "limit": 30}
    # re-running the same experiment replaces its own result, no new file
    assert bench_cli(*common, "--split", "train", "--limit", "30")[0] == 0
    assert sorted(p.name for p in folder.glob("*.json")) == sorted(["index.json", "zeroshot.json", sub_name])
