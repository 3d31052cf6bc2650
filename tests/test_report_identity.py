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


def test_subset_and_train_split_numbers_carry_their_settings(tmp_path):
    from bench.report.sections import build_sections, zeroshot_matrix

    runs = tmp_path / "runs"
    zeroshot(runs, "openai/vit-b16", "cifar-10", 0.9)
    zeroshot(runs, "openai/vit-b16", "cifar-10", 0.5, split="train", limit=30, skipped_images=2,
             experiment={"task": "zeroshot", "split": "train", "limit": 30, "skip_bad_images": True,
                         "protocol": "bench", "precision": "auto", "id": "x"})
    import json

    from bench.report import load_results
    # the second file must not overwrite the first on disk or in the report: give it its own name
    p = runs / "openai/vit-b16" / "cifar-10"
    (p / "zeroshot@split=train,limit=30.json").write_text((p / "zeroshot.json").read_text(), encoding="utf-8")
    zeroshot(runs, "openai/vit-b16", "cifar-10", 0.9)
    results = load_results([runs])
    assert len(results) == 2
    m = zeroshot_matrix(results)
    assert len(m.models) == 2
    sub = [x for x in m.models if "limit=30" in x]
    assert sub and "split=train" in sub[0] and "2 skipped" in sub[0]
    assert "openai/vit-b16" in m.models  # the full test result keeps the plain name
    assert json.dumps([s.title for s in build_sections(results, load_published(tmp_path / "none"))])
