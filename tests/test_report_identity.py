"""The report names what it could not read, and shows each experiment's settings."""

from __future__ import annotations

from report_helpers import zeroshot

from bench.report import build_report
from bench.report.published import load_published


def test_corrupt_result_json_is_named_on_the_page(tmp_path):
    runs = tmp_path / "runs"
    zeroshot(runs, "openai/vit-b16", "cifar-10", 0.9)
    bad = runs / "openai/vit-b16" / "mnist" / "zeroshot.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"model": "openai/vit-b16", "dataset": "mnist", "task": "zeroshot", ', encoding="utf-8")
    out = tmp_path / "out"
    build_report([runs], out, published=load_published(tmp_path / "none"))
    for page in ("report.md", "report.html"):
        text = (out / page).read_text(encoding="utf-8")
        assert "Unreadable result files" in text, page
        assert "mnist" in text and "JSONDecodeError" in text, page
