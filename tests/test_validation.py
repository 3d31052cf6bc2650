"""One validation for prompt sets: `bench prompts lint` reports it, `bench run` refuses its errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.authoring.lint import ERROR, WARNING, lint_label_file, lint_prompt_file
from bench.backends.base import TextCheck
from bench.paths import labels_dir
from bench.prompts import list_prompt_sets, load_prompt_set, parse_prompt_set

DUPLICATE = 'name: dup\nlanguage: en\ntemplates:\n  - "a photo of a {{ label }}."\n  - "a photo of a {{ label }}."\n'
ENGLISH_IN_ZH = 'name: mixed\nlanguage: zh\ntemplates:\n  - "一张{{ label }}的照片。"\n  - "a photo of a {{ label }}."\n'
TYPO_KEY = ('name: typo\nlanguage: zh\ntemplates:\n  - "一张{{ label }}的照片。"\nper_dataset:\n'
            '  digitz:\n    - "数字{{ label }}。"\n')


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "set.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def run_args(path, digits_root, cache_dir, tmp_path):
    return ("run", "--model", "demo", "--dataset", "digits", "--prompts", path, "--data-root", digits_root,
            "--cache-dir", cache_dir, "--out", tmp_path / "runs", "--workers", "0", "--no-progress")


@pytest.mark.parametrize("text, what", [(DUPLICATE, "duplicate template"),
                                        (ENGLISH_IN_ZH, "looks English"),
                                        (TYPO_KEY, "digitz")])
def test_run_refuses_what_lint_calls_an_error(text, what, tmp_path, bench_cli, digits_root, cache_dir, count_images):
    path = write(tmp_path, text)
    errors = [f for f in lint_prompt_file(path) if f.level == ERROR]
    assert any(what in f.message for f in errors), errors
    code, _, err = bench_cli(*run_args(path, digits_root, cache_dir, tmp_path))
    assert code != 0
    assert str(path) in err and what in err, err
    assert count_images["n"] == 0  # refused before any encoding
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.json"))


def test_typo_key_gets_a_suggestion(tmp_path):
    (finding,) = [f for f in lint_prompt_file(write(tmp_path, TYPO_KEY)) if "digitz" in f.message]
    assert finding.level == ERROR and "digits" in finding.message.replace("digitz", "")
    assert finding.line == 6


def test_alias_key_is_used_for_its_dataset(tmp_path):
    ps = parse_prompt_set(write(tmp_path, TYPO_KEY.replace("digitz", "sklearn-digits")))
    assert ps.templates_for("digits") == ("数字{{ label }}。",)
    assert not [f for f in lint_prompt_file(Path(ps.path)) if f.level == ERROR]


def test_unrelated_unknown_key_is_a_warning_not_an_error(tmp_path):
    """A key far from every registered name may be a folder dataset of the user's: warned, not refused."""
    from bench.validation import validate_prompt_set

    ps = parse_prompt_set(write(tmp_path, TYPO_KEY.replace("digitz", "my-own-flowers")))
    (finding,) = validate_prompt_set(ps)
    assert finding.level == WARNING and "my-own-flowers" in finding.message
    assert validate_prompt_set(ps, datasets=("my-own-flowers",)) == []


def test_duplicates_can_be_allowed_by_policy(tmp_path):
    """Chinese CLIP's template list repeats some templates on purpose (they weigh twice)."""
    from bench.validation import validate_prompt_set

    ps = parse_prompt_set(write(tmp_path, DUPLICATE))
    assert [f.level for f in validate_prompt_set(ps)] == [ERROR]
    assert [f.level for f in validate_prompt_set(ps, allow_duplicates=True)] == [WARNING]


@pytest.mark.parametrize("name", list_prompt_sets())
def test_shipped_prompt_sets_are_valid(name):
    from bench.validation import validate_prompt_set

    assert validate_prompt_set(load_prompt_set(name)) == []


class NoDigits:
    """A tokenizer without digits, like the demo model's."""

    def check_text(self, text: str) -> TextCheck:
        unknown = tuple(ch for ch in text if ch.isdigit())
        return TextCheck(n_tokens=len(text.split()) + 2, context_length=77, unknown=unknown)


def test_label_lint_names_the_variant_of_an_unknown_name():
    findings = lint_label_file(labels_dir() / "en" / "digits.yaml", "digits", NoDigits(), "en")
    assert findings and all("variant 'numerals'" in f.message for f in findings), findings
    assert {f.level for f in findings} == {WARNING}  # the default labels are fine; a variant is opt-in
