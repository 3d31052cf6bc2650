"""`bench export csv|parquet`, `bench report --format csv` and `bench.load_results`: one row per result × metric,
round-tripping into pandas; damaged files are named, not fatal."""

from __future__ import annotations

import logging
import sys

import pytest
from report_helpers import NASTY, write, zeroshot

import bench
from bench.errors import BenchError
from bench.export import TABLE_COLUMNS, result_rows, write_table

pd = pytest.importorskip("pandas")


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    zeroshot(root, "m-a", "cifar-10", 0.9, ci95={"top1": [0.88, 0.92], "primary": [0.88, 0.92]},
             labels=NASTY + ", with a comma", limit=50, experiment={"task": "zeroshot", "limit": 50, "id": "abcd1234"})
    zeroshot(root, "m-b", "voc-2007", 0.8, top1=0.7, metric="11point_mAP")
    p = zeroshot(root, "m-b", "kitti-distance", 0.4)
    p.write_text(p.read_text().replace('"top5": 0.5', '"top5": null'))  # ≤ 5 classes: no top-5
    write(root, "m-a", "cifar-10", "linear_probe", {"split": "test", "n_samples": 100, "metric": "accuracy",
                                                    "metrics": {"top1": 0.95, "top5": 1.0, "primary": 0.95}})
    write(root, "m-a", "cifar-10", "study-prompts", {"templates": []})  # no metrics mapping: no rows
    (root / "m-a" / "cifar-10" / "index.json").write_text("{}")
    (root / "broken.json").write_text("{", encoding="utf-8")
    return root


def test_rows_one_per_result_and_metric(runs, caplog):
    with caplog.at_level(logging.WARNING):
        rows = result_rows([runs])
    assert "broken.json" in caplog.text  # named, not fatal
    assert all(list(r) == list(TABLE_COLUMNS) for r in rows)
    by = {(r["model"], r["dataset"], r["task"], r["metric"]): r for r in rows}
    assert len(by) == len(rows)
    cifar = by[("m-a", "cifar-10", "zeroshot", "top1")]
    assert (cifar["value"], cifar["ci_low"], cifar["ci_high"]) == (0.9, 0.88, 0.92)
    assert cifar["n"] == 100 and cifar["limit"] == 50 and cifar["experiment"] == "abcd1234"
    assert cifar["settings"] == "limit=50" and cifar["labels"] == NASTY + ", with a comma"
    assert by[("m-a", "cifar-10", "zeroshot", "top5")]["ci_low"] is None
    assert by[("m-b", "voc-2007", "zeroshot", "11point_mAP")]["value"] == 0.8
    assert ("m-b", "kitti-distance", "zeroshot", "top5") not in by  # a null metric gives no row
    assert {r["task"] for r in rows} == {"zeroshot", "linear_probe"}
    # zero-shot: top1, top5, mean_per_class, primary, <metric> (voc: + its own name), kitti without top5
    assert len(rows) == 5 + 5 + 4 + 3


def test_csv_and_parquet_round_trip_into_pandas(runs, tmp_path, bench_cli):
    code, out, err = bench_cli("export", "csv", runs, "--out", tmp_path / "t" / "results.csv")
    assert code == 0, err
    frame = bench.load_results(runs)
    csv = pd.read_csv(tmp_path / "t" / "results.csv", keep_default_na=False, na_values=[""])
    assert list(csv.columns) == list(TABLE_COLUMNS) and len(csv) == len(frame) == len(result_rows([runs]))
    pd.testing.assert_series_equal(csv["value"], frame["value"])
    pd.testing.assert_series_equal(csv["ci_low"], frame["ci_low"])
    assert csv["labels"].tolist() == frame["labels"].tolist()  # quotes, commas and markup survive
    assert frame["n"].dtype == "Int64" and frame["value"].dtype == "float64"
    pytest.importorskip("pyarrow")
    assert bench_cli("export", "parquet", runs, "--out", tmp_path / "t" / "results.parquet")[0] == 0
    pq = pd.read_parquet(tmp_path / "t" / "results.parquet")
    assert len(pq) == len(frame)
    pd.testing.assert_series_equal(pq["value"], frame["value"])
    assert pq["model"].tolist() == frame["model"].tolist()
    # the same table through `bench report --format csv`
    assert bench_cli("report", runs, "--out", tmp_path / "r", "--format", "csv")[0] == 0
    assert (tmp_path / "r" / "results.csv").read_bytes() == (tmp_path / "t" / "results.csv").read_bytes()


def test_missing_pyarrow_is_a_clear_error(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(BenchError, match="pip install pyarrow"):
        write_table(result_rows([runs]), tmp_path / "x.parquet", "parquet")
    assert not (tmp_path / "x.parquet").exists()


def test_no_results_and_missing_folder(tmp_path, bench_cli):
    (tmp_path / "empty").mkdir()
    code, _, err = bench_cli("export", "csv", tmp_path / "empty", "--out", tmp_path / "x.csv")
    assert code == 2 and "no result with metrics" in err
    code, _, err = bench_cli("export", "csv", tmp_path / "nope", "--out", tmp_path / "x.csv")
    assert code == 2 and "nope" in err
    assert not (tmp_path / "x.csv").exists()
