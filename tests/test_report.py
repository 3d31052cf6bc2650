"""Report content from constructed result JSON: matrix, published deltas and flags, omitted sections, escaping."""

from __future__ import annotations

import html.parser
import json
import sys
from pathlib import Path

import pytest
from report_helpers import NASTY, full_runs, write, zeroshot

from bench.errors import BenchError
from bench.report import build_report, load_results, md_escape
from bench.report.charts import family, model_colours
from bench.report.published import FLAG_POINTS, compare, load_published
from bench.report.sections import MISSING, build_sections, zeroshot_matrix

sys.path.insert(0, str(Path(__file__).parent))
from identity_helpers import latest_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def published():
    return load_published(REPO / "results" / "published")


class Cells(html.parser.HTMLParser):
    """Table cells by table id: {id: [[cell text, ...], ...]}, and every <script> element's body."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.scripts: list[str] = []
        self._table = self._cell = None
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = dict(attrs).get("id") or f"table-{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []
        elif tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
        elif self._cell is not None:
            self._cell.append(data)


def parse(path: Path) -> Cells:
    p = Cells()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def md_table(text: str, header_start: str) -> list[list[str]]:
    """Rows (split cells) of the Markdown table whose header line starts with `header_start`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return rows


def test_matrix_values_best_and_means(tmp_path):
    zeroshot(tmp_path, "m-a", "cifar-10", 0.90)
    zeroshot(tmp_path, "m-a", "dtd", 0.40)
    zeroshot(tmp_path, "m-b", "cifar-10", 0.95)
    zeroshot(tmp_path, "m-b", "digits", 0.70)
    m = zeroshot_matrix(load_results([tmp_path]), elevater=("cifar-10", "dtd"))
    assert m.models == ["m-a", "m-b"]
    assert m.datasets == ["cifar-10", "dtd", "digits"]  # ELEVATER order first, others after
    assert m.best("cifar-10") == {"m-b"} and m.best("dtd") == {"m-a"}
    assert m.elevater_means["m-a"] == (pytest.approx(0.65), 2)
    assert m.elevater_means["m-b"] == (pytest.approx(0.95), 1)
    assert m.means["m-b"] == pytest.approx(0.825)
    assert m.primary("m-b", "dtd") is None


def test_missing_cells_render_as_dash_in_both_formats(tmp_path):
    runs = tmp_path / "runs"
    zeroshot(runs, "m-a", "cifar-10", 0.90)
    zeroshot(runs, "m-b", "dtd", 0.50)
    build_report([runs], tmp_path / "out", published=load_published(tmp_path / "none"))
    tables = parse(tmp_path / "out" / "report.html").tables
    header, *rows = tables["matrix"]
    assert header[:3] == ["model", "cifar-10", "dtd"]
    assert rows[0][:3] == ["m-a", "90.0", MISSING]
    assert rows[1][:3] == ["m-b", MISSING, "50.0"]
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    mrows = md_table(md, "| model | cifar-10")
    assert mrows[0][:3] == ["m-a", "**90.0**", MISSING]
    assert mrows[1][:3] == ["m-b", MISSING, "**50.0**"]


def test_published_lookup_by_model_and_dataset(published):
    (row,) = published.lookup("cn-clip/vit-h14", "cifar-10")
    assert (row.metric, row.value, row.file) == ("top1", 96.0, "chinese_clip")
    (air,) = published.lookup("openclip/vit-h14", "fgvc-aircraft")
    assert (air.metric, air.value) == ("mean_per_class_recall", 42.7)
    assert published.lookup("cn-clip/vit-h14", "food-101") == []  # not published: no row, no guess
    assert published.lookup("demo", "digits") == []
    assert len(published.rows) == 55 + 133 + 80 + 84  # classification, then retrieval (chinese_clip, openclip)


def test_deltas_compare_metric_for_metric(published):
    r = {"metrics": {"top1": 0.951, "mean_per_class": 0.40, "primary": 0.951}, "protocol": "cn-clip"}
    c = compare(r, published.lookup("cn-clip/vit-h14", "cifar-10")[0])
    assert c.delta == pytest.approx(95.1 - 96.0) and c.flags == ()
    # aircraft is published as mean-per-class recall: our mean_per_class is compared, not top-1
    c = compare({**r, "protocol": "datacomp"}, published.lookup("openclip/vit-h14", "fgvc-aircraft")[0])
    assert c.ours == pytest.approx(40.0) and c.delta == pytest.approx(40.0 - 42.7)
    assert any(str(FLAG_POINTS.__format__("g")) in f for f in c.flags)


def test_flags_and_caveats(published):
    kitti = published.lookup("cn-clip/vit-h14", "kitti-distance")[0]
    assert {c.id for c in kitti.caveats} >= {"cn-clip-not-reproduced", "cn-clip-server-side"}
    c = compare({"metrics": {"top1": 0.391}, "protocol": "cn-clip"}, kitti)
    assert c.delta == pytest.approx(0.0) and "caveat: see note" in c.flags  # flagged even when close
    voc = published.lookup("openclip/vit-h14", "voc-2007")[0]
    c = compare({"metrics": {"top1": 0.777, "11point_mAP": 0.8}}, voc)
    assert c.delta is None and c.ours is None and c.flags == ("not comparable",)
    voc_cn = published.lookup("cn-clip/vit-h14", "voc-2007")[0]
    assert voc_cn.metric == "11point_mAP"
    assert compare({"metrics": {"top1": 0.5}}, voc_cn).delta is None  # no mAP of ours: no delta from top-1
    euro = published.lookup("openclip/vit-h14", "eurosat")[0]
    assert "caveat: see note" in compare({"metrics": {"top1": 0.728}}, euro).flags
    # under datacomp the run reads open_clip's own copy: its split is no caveat there
    assert compare({"metrics": {"top1": 0.728}, "protocol": "datacomp"}, euro).flags == ()
    cifar = published.lookup("openclip/vit-h14", "cifar-10")[0]
    dc = {"protocol": "datacomp"}
    assert compare({"metrics": {"top1": 0.975 - 0.021}, **dc}, cifar).flags == ("|Δ| > 2 points",)
    assert compare({"metrics": {"top1": 0.975 - 0.019}, **dc}, cifar).flags == ()


def test_published_numbers_are_compared_under_their_own_protocol(published):
    """Chinese CLIP's table belongs to cn-clip, open_clip's to datacomp: another protocol keeps its Δ, flagged
    "different protocol", with a caveat naming both; under the table's own protocol there is no such flag."""
    cifar_cn = published.lookup("cn-clip/vit-h14", "cifar-10")[0]
    r = {"metrics": {"top1": 0.951}}
    for protocol, flagged in (("bench", True), ("elevater", True), ("cn-clip", False)):
        c = compare({**r, "protocol": protocol}, cifar_cn)
        assert c.delta == pytest.approx(-0.9)  # shown either way
        assert any(f.startswith("different protocol") for f in c.flags) is flagged
        assert any(cav.id.startswith("protocol-") and f"'{protocol}'" in cav.note and "'cn-clip'" in cav.note
                   for cav in c.caveats) is flagged
    assert "different protocol (bench; published: cn-clip)" in compare(r, cifar_cn).flags  # old results: bench
    cifar_oc = published.lookup("openclip/vit-h14", "cifar-10")[0]
    assert "different protocol (cn-clip; published: datacomp)" in compare({**r, "protocol": "cn-clip"}, cifar_oc).flags
    # a table no protocol claims (retrieval) gets no protocol flag
    flickr = published.lookup("openclip/vit-h14", "flickr30k")[0]
    assert not any("protocol" in f for f in compare({"metrics": {flickr.metric: 0.5}}, flickr).flags)


def test_another_model_under_a_registry_name_is_not_compared(published):
    """A model YAML named openai/vit-b16 with other weights is not OpenAI's model: no Δ against its numbers."""
    from bench.models import resolve_model

    spec = resolve_model("openai/vit-b16")
    ref = published.lookup("openai/vit-b16", "cifar-10")[0]
    ran = {"backend": spec.backend, "model": spec.model, "pretrained": spec.pretrained}
    good = {"model": "openai/vit-b16", "metrics": {"top1": 0.9}, "protocol": "datacomp", "manifest": {"model": ran}}
    assert compare(good, ref).delta is not None
    for key, other in (("pretrained", "laion2b_s34b_b88k"), ("model", "ViT-B-16"), ("backend", "hf")):
        c = compare({**good, "manifest": {"model": {**ran, key: other}}}, ref)
        assert c.delta is None and c.ours is None
        assert any(f.startswith("not the registry's openai/vit-b16") and other in f for f in c.flags)


def test_published_table_in_report(tmp_path, published):
    runs = full_runs(tmp_path / "runs")
    build_report([runs], tmp_path / "out", fmt="html", published=published)
    rows = {(r[0], r[1]): r for r in parse(tmp_path / "out" / "report.html").tables["published"][1:]}
    kitti = rows[("cn-clip/vit-h14", "kitti-distance")]
    assert kitti[4:7] == ["39.1", "16.5", "-22.6"]
    assert "|Δ| > 2 points" in kitti[7]
    voc = rows[("openclip/vit-h14", "voc-2007")]
    assert voc[4:7] == ["77.7", "n/a", "n/a"]
    assert rows[("cn-clip/vit-h14", "cifar-10")][6:8] == ["-0.9", MISSING + "5"]  # mark 5: server-side caveat
    text = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "scored by the ELEVATER server" in text and "different task" in text
    # open_clip's numbers are datacomp's; this result ran under bench's protocol: Δ shown, flagged, explained
    oc = rows[("openclip/vit-h14", "cifar-10")]
    assert oc[6] == "+0.0" and "different protocol (bench; published: datacomp)" in oc[7]
    assert "while the openclip numbers were made under" in text and "--protocol datacomp" in text


def test_bad_published_csv_is_named(tmp_path):
    (tmp_path / "x.csv").write_text("model,dataset,metric,value,source\nm,d,top5,50,here\n", encoding="utf-8")
    with pytest.raises(BenchError, match=r"x\.csv:2: unknown metric 'top5'"):
        load_published(tmp_path)
    (tmp_path / "x.csv").write_text("model,dataset,metric,value,source\nm,d,top1,0.5x,here\n", encoding="utf-8")
    with pytest.raises(BenchError, match="not a number"):
        load_published(tmp_path)


def test_sections_without_data_are_omitted(tmp_path, published):
    runs = tmp_path / "runs"
    zeroshot(runs, "demo", "digits", 0.8)
    ids = [s.id for s in build_sections(load_results([runs]), published)]
    assert ids == ["summary", "matrix", "manifest"]
    ids = [s.id for s in build_sections(load_results([full_runs(tmp_path / "full")]), published)]
    assert ids == ["summary", "matrix", "published", "side-by-side", "prompts", "prompt-sets", "negation",
                   "labels", "linear-probe", "manifest"]
    build_report([runs], tmp_path / "out", published=published)
    html_text = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    for title in ("Prompt sensitivity", "Negation", "Against published numbers", "Linear probe"):
        assert title not in html_text and title not in md


def test_html_is_self_contained(tmp_path, published):
    build_report([full_runs(tmp_path / "runs")], tmp_path / "out", fmt="html", published=published)
    text = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text and "<link" not in text
    assert text.count('src="data:image/png;base64,') == 3
    assert not (tmp_path / "out" / "report.md").exists()


def test_markdown_charts_are_files_beside_it(tmp_path, published):
    build_report([full_runs(tmp_path / "runs")], tmp_path / "out", fmt="md", published=published)
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    for chart in ("side-by-side", "prompt-sensitivity", "probe-vs-zeroshot"):
        assert f"(charts/{chart}.png)" in md
        assert (tmp_path / "out" / "charts" / f"{chart}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "out" / "report.html").exists()


def test_escaping_html(tmp_path, published):
    runs = full_runs(tmp_path / "runs")
    zeroshot(runs, "demo", NASTY, 0.5)  # a dataset name too
    build_report([runs], tmp_path / "out", fmt="html", published=published)
    page = parse(tmp_path / "out" / "report.html")
    assert len(page.scripts) == 1 and "alert" not in page.scripts[0]  # only the sorting script
    labels = [row[4] for row in page.tables["negation-recall"][1:]]
    assert NASTY in labels  # the label survives as text, quotes and & included
    assert NASTY in page.tables["matrix"][0]
    assert any(NASTY in cell for row in page.tables["prompt-sensitivity"] for cell in row) is False
    raw = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "<script>alert" not in raw and "&lt;script&gt;alert(&#34;x&#34;)" in raw


def test_escaping_markdown(tmp_path, published):
    from markdown_it import MarkdownIt

    runs = full_runs(tmp_path / "runs")
    build_report([runs], tmp_path / "out", fmt="md", published=published)
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    rendered = MarkdownIt("commonmark").enable("table").render(md)
    assert "<script" not in rendered
    page = Cells()
    page.feed(rendered)
    assert NASTY in [c for rows in page.tables.values() for row in rows for c in row]
    assert md_escape("a|b *c* <d> & `e`") == r"a\|b \*c\* \<d\> &amp; \`e\`"


def test_template_text_is_data_not_template(tmp_path, published):
    runs = full_runs(tmp_path / "runs")
    build_report([runs], tmp_path / "out", published=published)
    rows = parse(tmp_path / "out" / "report.html").tables["prompt-sensitivity"]
    assert rows[1][9] == "一张{{ label }}的照片。"  # shown verbatim, never rendered


def test_tolerates_partial_and_foreign_json(tmp_path, published):
    runs = tmp_path / "runs"
    zeroshot(runs, "m", "cifar-10", 0.9)
    write(runs, "m", "cifar-10", "study-prompts", {"templates": [{"template": "t", "primary": None}, "junk"]})
    write(runs, "m", "cifar-10", "study-negation", {"variants": "not a list"})
    (runs / "notes.json").write_text(json.dumps([1, 2]), encoding="utf-8")
    (runs / "broken.json").write_text("{", encoding="utf-8")
    written = build_report([runs], tmp_path / "out", published=published)
    assert {p.name for p in written} == {"report.md", "report.html"}


def test_family_colours():
    assert [family(m) for m in ("cn-clip/vit-h14", "openai/rn50", "openclip/vit-g14", "demo-en", "mine")] == \
        ["cn-clip", "openai", "openclip", "demo", "other"]
    c = model_colours(["cn-clip/rn50", "openai/rn50", "cn-clip/vit-h14"])
    assert len(set(c.values())) == 3
    # same family: same hue, second one lighter
    assert all(b >= a for a, b in zip(c["cn-clip/rn50"], c["cn-clip/vit-h14"]))


def test_cli_report(bench_cli, tmp_path):
    runs = tmp_path / "runs"
    zeroshot(runs, "demo", "digits", 0.8)
    code, _, err = bench_cli("report", runs, "--out", tmp_path / "out", "--format", "md")
    assert code == 0, err
    assert (tmp_path / "out" / "report.md").exists() and not (tmp_path / "out" / "report.html").exists()
    code, _, err = bench_cli("report", tmp_path / "nope", "--out", tmp_path / "out")
    assert code == 2 and err.startswith("error: ") and "nope" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    code, _, err = bench_cli("report", tmp_path / "empty", "--out", tmp_path / "out")
    assert code == 2 and "no result JSON" in err


def test_report_from_a_real_demo_run(bench_cli, cache_dir, digits_root, tmp_path):
    code, _, err = bench_cli("run", "--model", "demo", "--dataset", "digits", "--data-root", digits_root,
                             "--cache-dir", cache_dir, "--out", tmp_path / "runs", "--workers", "0", "--limit", "60")
    assert code == 0, err
    code, _, err = bench_cli("report", tmp_path / "runs", "--out", tmp_path / "out")
    assert code == 0, err
    result = json.loads(latest_result(tmp_path / "runs" / "demo" / "digits", "zeroshot").read_text(encoding="utf-8"))
    rows = parse(tmp_path / "out" / "report.html").tables["matrix"]
    lo, hi = result["ci95"]["primary"]  # the number, then ± half its 95% bootstrap interval
    assert rows[1][0] == "demo [limit=60]" and rows[1][1] == f"{100 * result['metrics']['primary']:.1f} ±{50 * (hi - lo):.1f}"
    summary = {r[0]: r[1] for r in parse(tmp_path / "out" / "report.html").tables["summary"]}
    assert result["manifest"]["versions"]["torch"] in summary["versions"]
