"""Every `bench ... --help` page ends with examples that are real command lines for that page (issue 15).

The README promises examples on every command; this walks the parser tree that `bench` itself builds, so a
new subcommand without examples, or an example that no longer parses (a renamed flag, a removed choice),
fails here rather than in front of a user.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterator

import pytest

from bench.cli import build_parser

Page = tuple[tuple[str, ...], argparse.ArgumentParser]


def pages(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[Page]:
    """Every parser under `parser` with its subcommand path, depth first; aliases are visited once."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield from pages(sub, (*path, name))


def examples(help_text: str) -> list[list[str]]:
    """The command lines after the `examples:` heading, each split as a shell would (`# ...` is a comment)."""
    lines = help_text.splitlines()
    assert "examples:" in lines, "no 'examples:' heading on its own line (an epilog needs RawDescriptionHelpFormatter)"
    after = lines[lines.index("examples:") + 1:]
    return [shlex.split(line, comments=True) for line in after if line.strip().startswith("bench ")]


PAGES = list(pages(build_parser()))


def test_the_walk_sees_every_level():
    paths = {p for p, _ in PAGES}
    # one page per level, so the walk itself is not what makes the test pass
    assert {(), ("run",), ("study",), ("study", "labels"), ("prompts", "eval"), ("labels", "lint"),
            ("datasets", "prepare"), ("export", "elevater-submission"), ("models", "list")} <= paths
    assert len(PAGES) >= 19


@pytest.mark.parametrize("path", [p for p, _ in PAGES], ids=lambda p: " ".join(("bench", *p)))
def test_help_page_has_runnable_examples(path, capsys):
    parser = dict(PAGES)[path]
    found = examples(parser.format_help())
    page = " ".join(("bench", *path))
    assert found, f"`{page} --help` has an 'examples:' heading but no line starting with 'bench '"
    for tokens in found:
        line = shlex.join(tokens)
        assert tokens[1:1 + len(path)] == list(path), f"`{page} --help` shows an example for another page: {line}"
        try:
            build_parser().parse_args(tokens[1:])
        except SystemExit as exc:  # argparse reports a bad command line by exiting
            pytest.fail(f"`{page} --help` example does not parse ({exc.code}): {line}\n{capsys.readouterr().err}")
