"""The report's analysis views on constructed runs with per-image records: paired significance marks in the
matrix and the Paired comparisons table, and why two results are not paired."""

from __future__ import annotations

import numpy as np
import pytest
from report_helpers import scores_at_accuracy, zeroshot, zeroshot_scored
from test_report import Cells, md_table, parse

from bench.report import build_report
from bench.report.published import load_published
from bench.report.sections import NOT_SIGNIFICANT

EVIL = "m<b>x</b>&'q'"  # a model name that must stay text


@pytest.fixture
def runs(tmp_path):
    rng = np.random.default_rng(0)
    t = rng.integers(0, 10, 1500)
    good = scores_at_accuracy(t, 10, 0.85, seed=1)
    root = tmp_path / "runs"
    zeroshot_scored(root, "good", "cifar-10", good, t)
    zeroshot_scored(root, "bad", "cifar-10", scores_at_accuracy(t, 10, 0.70, seed=2), t)
    # the same predictions as "good" except for three images: a difference no test should call real
    close = good.copy()
    flip = np.flatnonzero(close.argmax(axis=1) == t)[:3]
    close[flip, t[flip]] -= 300.0
    zeroshot_scored(root, EVIL, "cifar-10", close, t)
    return root


def _report(runs, out, fmt="both"):
    return build_report([runs], out, fmt, published=load_published(out / "no-published"))


def test_matrix_marks_only_the_non_significant_difference(runs, tmp_path):
    _report(runs, tmp_path / "out")
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    page = parse(tmp_path / "out" / "report.html")
    header, *rows = page.tables["matrix"]
    cells = {r[0]: r[header.index("cifar-10")] for r in rows}
    assert NOT_SIGNIFICANT in cells[EVIL] and NOT_SIGNIFICANT not in cells["bad"]
    assert NOT_SIGNIFICANT not in cells["good"]  # the best is what the others are compared with
    paired = {r[1]: r for r in page.tables["paired"][1:]}
    assert set(paired) == {"bad", EVIL} and all(r[2] == "good" for r in paired.values())
    assert paired["bad"][8] == "significant" and paired["bad"][7] == "McNemar (chi-square)"
    assert float(paired["bad"][4]) < -10  # Δ = bad − good, in points
    assert paired[EVIL][8] == "not significant" and paired[EVIL][7] == "McNemar (exact binomial)"
    assert float(paired[EVIL][6]) > 0.05
    # the tooltip carries Δ, the interval and p
    assert "vs good: Δ -0.2 pts, 95% CI [" in html and "McNemar (exact binomial) p = " in html
    assert "<b>x</b>" not in html and "m&lt;b&gt;x&lt;/b&gt;&amp;" in html
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    mrows = md_table(md, "| dataset | model | compared with")
    assert {r[8] for r in mrows} == {"significant", "not significant"}
    assert "<b>" not in md


def test_identical_predictions_are_not_significant(tmp_path):
    rng = np.random.default_rng(4)
    t = rng.integers(0, 10, 400)
    s = scores_at_accuracy(t, 10, 0.8, seed=5)
    zeroshot_scored(tmp_path / "runs", "a", "cifar-10", s, t)
    zeroshot_scored(tmp_path / "runs", "b", "cifar-10", s + 0.0, t)
    _report(tmp_path / "runs", tmp_path / "out", "html")
    (row,) = parse(tmp_path / "out" / "report.html").tables["paired"][1:]
    assert row[4] == "+0.0" and row[6] == "1" and row[8] == "not significant"


@pytest.mark.parametrize("metric", ["mean_per_class", "roc_auc"])
def test_other_metrics_use_the_paired_bootstrap(tmp_path, metric):
    rng = np.random.default_rng(6)
    classes = 2 if metric == "roc_auc" else 10
    t = rng.integers(0, classes, 800)
    onehot = np.eye(classes)[t]
    dataset = "hateful-memes" if metric == "roc_auc" else "fgvc-aircraft"
    zeroshot_scored(tmp_path / "runs", "strong", dataset, onehot * 3 + rng.standard_normal(onehot.shape), t, metric)
    zeroshot_scored(tmp_path / "runs", "weak", dataset, onehot * 0.2 + rng.standard_normal(onehot.shape), t, metric)
    _report(tmp_path / "runs", tmp_path / "out", "html")
    (row,) = parse(tmp_path / "out" / "report.html").tables["paired"][1:]
    assert row[:4] == [dataset, "weak", "strong", metric]
    assert row[7] == "paired bootstrap" and row[8] == "significant"


def test_results_on_other_images_are_not_paired(tmp_path):
    rng = np.random.default_rng(7)
    t = rng.integers(0, 10, 300)
    root = tmp_path / "runs"
    zeroshot_scored(root, "a", "cifar-10", scores_at_accuracy(t, 10, 0.9, 1), t)
    zeroshot_scored(root, "b", "cifar-10", scores_at_accuracy(t, 10, 0.8, 2), t, paths=[f"other/{i}.png" for i in range(300)])
    zeroshot_scored(root, "c", "cifar-10", scores_at_accuracy(t, 10, 0.8, 3), t,
                    manifest={"dataset": {"fingerprint": "ffff"}, "created": "2026-11-24T10:00:00+00:00"})
    zeroshot(root, "old", "cifar-10", 0.5)  # written before per-image records existed
    _report(root, tmp_path / "out", "html")
    page = parse(tmp_path / "out" / "report.html")
    reasons = {r[1]: r[8] for r in page.tables["paired"][1:]}
    assert reasons["b"] == "not paired: different image lists or targets"
    assert reasons["c"].startswith("not paired: different dataset fingerprints")
    assert reasons["old"].startswith("not paired: no per-image record for old/cifar-10/zeroshot.json")
    header, *rows = page.tables["matrix"]
    assert not any(NOT_SIGNIFICANT in c for r in rows for c in r)  # nothing tested, nothing marked


def test_damaged_per_image_record_is_named_not_fatal(tmp_path):
    rng = np.random.default_rng(8)
    t = rng.integers(0, 10, 100)
    a = zeroshot_scored(tmp_path / "runs", "a", "cifar-10", scores_at_accuracy(t, 10, 0.9, 1), t)
    zeroshot_scored(tmp_path / "runs", "b", "cifar-10", scores_at_accuracy(t, 10, 0.5, 2), t)
    a.with_name("zeroshot.per_image.npz").write_bytes(b"not a zip")
    _report(tmp_path / "runs", tmp_path / "out", "html")
    (row,) = parse(tmp_path / "out" / "report.html").tables["paired"][1:]
    assert "zeroshot.per_image.npz unreadable" in row[8]


def test_old_results_alone_add_no_paired_section(tmp_path):
    zeroshot(tmp_path / "runs", "a", "cifar-10", 0.9)
    zeroshot(tmp_path / "runs", "b", "cifar-10", 0.8)
    _report(tmp_path / "runs", tmp_path / "out", "html")
    assert "paired" not in parse(tmp_path / "out" / "report.html").tables


def test_nasty_class_and_model_names_stay_text_in_markdown(runs, tmp_path):
    from markdown_it import MarkdownIt

    _report(runs, tmp_path / "out", "md")
    rendered = MarkdownIt("commonmark").enable("table").render(
        (tmp_path / "out" / "report.md").read_text(encoding="utf-8"))
    page = Cells()
    page.feed(rendered)
    assert "<b>" not in rendered and EVIL in [c for rows in page.tables.values() for row in rows for c in row]


def test_per_class_table_worst_first_with_delta_and_escaped_names(tmp_path):
    from report_helpers import NASTY

    rng = np.random.default_rng(9)
    t = np.repeat(np.arange(4), 50)
    names = ["cat", NASTY, "dog", "bird"]
    s_a = np.eye(4)[t] * 10.0
    s_a[t == 1] = np.eye(4)[2] * 10.0  # A never gets class 1 right: it calls it class 2
    s_a[np.flatnonzero(t == 3)[:10]] = np.eye(4)[0] * 10.0  # A gets 80% of class 3
    s_b = np.eye(4)[t] * 10.0 + rng.standard_normal((200, 4)) * 0.01  # B gets everything right
    zeroshot_scored(tmp_path / "runs", "a", "cifar-10", s_a, t, class_names=names)
    zeroshot_scored(tmp_path / "runs", "b", "cifar-10", s_b, t, class_names=names)
    _report(tmp_path / "runs", tmp_path / "out")
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    header, *rows = parse(tmp_path / "out" / "report.html").tables["per-class-0"]
    assert header == ["index", "class", "images", "recall: b", "most confused with", "recall: a", "Δ a (pts)"]
    assert [r[0] for r in rows] == ["0", "1", "2", "3"]  # b is perfect: ties in class order
    rows_a = {r[0]: r for r in rows}
    assert rows_a["1"][1] == NASTY and rows_a["1"][5] == "0.0" and rows_a["1"][6] == "-100.0"
    assert rows_a["3"][5] == "80.0" and rows_a["3"][6] == "-20.0"
    assert "<details" in html and NASTY not in html  # only escaped
    assert 'id="chart-confusion-0"' in html  # 4 classes: a confusion heat map of the best row
    # with one model, its own worst classes come first and its confusions are named
    zeroshot_scored(tmp_path / "one", "a", "cifar-10", s_a, t, class_names=names)
    _report(tmp_path / "one", tmp_path / "out1", "both")
    header, *rows = parse(tmp_path / "out1" / "report.html").tables["per-class-0"]
    assert [r[0] for r in rows] == ["1", "3", "0", "2"] and rows[0][4] == "dog"
    md = (tmp_path / "out1" / "report.md").read_text(encoding="utf-8")
    assert (tmp_path / "out1" / "charts" / "confusion-0.png").read_bytes()[:4] == b"\x89PNG"
    assert md_table(md, "| index | class | images")[0][:4] == ["1", NASTY.replace("<", "\\<").replace(">", "\\>")
                                                         .replace("&", "&amp;"), "50", "0.0"]


def test_per_class_table_caps_many_classes(tmp_path):
    from bench.report.sections import PER_CLASS_ROWS

    rng = np.random.default_rng(10)
    t = rng.integers(0, 300, 3000)
    zeroshot_scored(tmp_path / "runs", "a", "cifar-100", scores_at_accuracy(t, 300, 0.6, 1), t)
    _report(tmp_path / "runs", tmp_path / "out", "html")
    page = parse(tmp_path / "out" / "report.html")
    header, *rows = page.tables["per-class-0"]
    recalls = [float(r[3]) for r in rows]
    assert len(rows) == PER_CLASS_ROWS and recalls == sorted(recalls)
    html = (tmp_path / "out" / "report.html").read_text()
    assert f"{PER_CLASS_ROWS} worst of 300 classes shown" in html and "chart-confusion" not in html  # too many


def test_heatmap_draws_dollar_labels_as_text():
    from bench.report import charts

    chart = charts.heatmap("c", "t", [[3, 1], [0, 4]], ["$\\nosuchmacro$", "$5 bill"])  # mathtext would fail
    assert chart.png[:4] == b"\x89PNG"


def test_heatmap_of_chinese_names_uses_indices(recwarn):
    from bench.report import charts

    charts.heatmap("c", "t", [[3, 1], [0, 4]], ["零", "一"])
    assert not [w for w in recwarn if "Glyph" in str(w.message)]  # no missing-glyph boxes
