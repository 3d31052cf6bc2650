"""The HTML report in a real browser: headless Chromium, loaded from a file URL with the network off."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from report_helpers import NASTY, full_runs, zeroshot_scored

from bench.report import build_report
from bench.report.published import load_published

REPO = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-extensions",
         "--disable-default-apps", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]


def _which_chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path to Debian's chromium, installed with apt when missing (CI runs as root with apt)."""
    path = _which_chromium()
    if path is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        log = []
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
            proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=1200)
            log.append(proc.stderr[-500:])
            if proc.returncode:
                break
        path = _which_chromium()
        if path is None:
            pytest.skip("chromium is not installed and `apt-get install -y chromium` failed: " + " | ".join(log))
    if path is None:
        pytest.skip("chromium is not installed and cannot be installed here (needs root and apt-get)")
    return path


@pytest.fixture(scope="session")
def browser(chromium, tmp_path_factory):
    """A browser context on a fresh profile (playwright drives the system chromium; no browser download)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download needed)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=chromium, args=FLAGS, headless=True, offline=True,
            viewport={"width": 1280, "height": 900})
        yield context
        context.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser-report")
    build_report([full_runs(root / "runs")], root / "out", fmt="html",
                 published=load_published(REPO / "results" / "published"))
    return root / "out" / "report.html"


@pytest.fixture
def page(browser, report):
    seen = {"requests": [], "console": [], "dialogs": []}

    def route(r):
        url = r.request.url
        if url.startswith(("file://", "data:")):
            r.continue_()
        else:
            seen["requests"].append(url)
            r.abort()

    pg = browser.new_page()
    pg.route("**/*", route)
    pg.on("console", lambda m: seen["console"].append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    pg.on("pageerror", lambda e: seen["console"].append(f"pageerror: {e}"))
    pg.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    pg.goto(report.as_uri(), wait_until="load")
    pg.seen = seen
    yield pg
    pg.close()


def _column(pg, table: str, i: int) -> list[str]:
    return pg.eval_on_selector_all(f"#{table} tbody tr", f"rows => rows.map(r => r.cells[{i}].textContent.trim())")


def test_report_dom_tables_and_charts(page):
    for table in ("summary", "matrix", "published", "prompt-sensitivity", "prompt-sets", "negation",
                  "negation-recall", "label-variants", "linear-probe", "runs"):
        assert page.locator(f"table#{table}").count() == 1, table
    assert page.locator("table#matrix tbody tr").count() == 3
    assert page.locator("table#matrix td.best").count() >= 4
    charts = page.locator("figure.chart img")
    assert charts.count() == 3
    widths = page.eval_on_selector_all("figure.chart img", "imgs => imgs.map(i => i.complete && i.naturalWidth)")
    assert all(w and w > 100 for w in widths)  # decoded, not broken images
    assert page.locator("#published sup.mark").count() > 0  # caveats beside their cells
    ids = page.eval_on_selector_all("[id]", "els => els.map(e => e.id)")
    assert len(ids) == len(set(ids))  # valid HTML: links and selectors are unambiguous
    assert page.seen["requests"] == [] and page.seen["console"] == [] and page.seen["dialogs"] == []


def test_sorting_a_column_changes_the_order(page):
    before = _column(page, "matrix", 0)
    cifar = page.locator("#matrix thead th").nth(1)
    cifar.click()
    asc = _column(page, "matrix", 1)
    assert asc == sorted(asc, key=float) and _column(page, "matrix", 0) != before
    cifar.click()
    assert _column(page, "matrix", 1) == sorted(asc, key=float, reverse=True)
    assert cifar.get_attribute("aria-sort") == "descending"
    model = page.locator("#runs thead th").nth(2)  # task, a text column
    model.click()
    tasks = _column(page, "runs", 2)
    assert tasks == sorted(tasks, key=str.lower)
    assert page.seen["console"] == []


def test_script_in_labels_renders_as_text(page):
    text = page.locator("#negation-recall").inner_text()
    assert NASTY in text
    assert page.locator("script").count() == 1  # only the report's own sorting script
    assert page.seen["dialogs"] == []


def test_screenshot_is_not_blank(page, tmp_path):
    from PIL import Image

    png = page.screenshot(full_page=True)
    out = Path(os.environ.get("BENCH_SCREENSHOT_DIR", tmp_path)) / "report.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png)
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)
    assert pixels.shape[0] > 900 and pixels.std() > 20
    assert (pixels < 200).mean() > 0.02  # text, tables and charts, not a white page
    # colour is present (chart bars, highlighted cells): a blank or grey page has none
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    assert (np.abs(rgb[..., 0] - rgb[..., 2]) > 40).mean() > 0.001


def test_print_layout(page):
    page.emulate_media(media="print")
    assert not page.locator("nav").is_visible()  # the table of contents is for screens
    assert page.locator("#matrix").is_visible() and page.locator("figure.chart img").first.is_visible()
    assert page.eval_on_selector("#matrix th", "th => getComputedStyle(th, '::after').content") in ('""', "none")
    pdf = page.pdf(format="A4")
    assert pdf.startswith(b"%PDF") and len(pdf) > 20_000


@pytest.fixture(scope="module")
def analysis_report(tmp_path_factory) -> Path:
    """Many datasets, long model names, per-class tables and paired comparisons: the widest page we make."""
    root = tmp_path_factory.mktemp("browser-analysis")
    runs = full_runs(root / "runs")
    rng = np.random.default_rng(0)
    for d in ("caltech-101", "cifar-100", "country211", "dtd", "fer-2013", "fgvc-aircraft", "food-101", "gtsrb",
              "mnist", "oxford-flowers-102", "oxford-iiit-pets", "resisc-45", "stanford-cars", "rendered-sst2"):
        t = rng.integers(0, 12, 300)
        for i, model in enumerate(("my-org/a-rather-long-model-name-vit-h14-336px", "openai/vit-l14-336")):
            s = rng.standard_normal((300, 12))
            right = rng.random(300) < 0.6 + 0.1 * i
            s[right, t[right]] += 10
            zeroshot_scored(runs, model, d, s, t, class_names=[f"{NASTY} {c}" for c in range(12)])
    build_report([runs], root / "out", fmt="html", published=load_published(REPO / "results" / "published"))
    return root / "out" / "report.html"


def test_analysis_views_fit_1280_px_and_show_ci_and_per_class(browser, analysis_report, tmp_path):
    pg = browser.new_page()
    try:
        pg.goto(analysis_report.as_uri(), wait_until="load")
        assert pg.evaluate("window.innerWidth") == 1280
        assert pg.evaluate("document.documentElement.scrollWidth") <= 1280  # wide tables scroll inside their box
        assert "±" in pg.locator("#matrix").inner_text()
        assert pg.locator("table#paired tbody tr").count() >= 14
        details = pg.locator("#sec-per-class details")
        assert details.count() >= 14 and not pg.locator("#per-class-0").is_visible()  # collapsed until opened
        details.first.locator("summary").click()
        assert pg.locator("#per-class-0").is_visible()
        assert NASTY in pg.locator("#per-class-0").inner_text()  # class names stay text
        assert pg.evaluate("document.documentElement.scrollWidth") <= 1280
        png = pg.screenshot(full_page=True)
        out = Path(os.environ.get("BENCH_SCREENSHOT_DIR", tmp_path)) / "report-analysis.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(png)
        assert pg.locator("script").count() == 1
    finally:
        pg.close()
