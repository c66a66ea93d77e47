"""The command line's shared parser (``vaelab.cli.common``): its help wraps at spaces only."""

from __future__ import annotations

import re

import pytest

from vaelab.cli.command import build_parser


def _helps(width: int, monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("COLUMNS", str(width))
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    return {"vaelab": parser.format_help()} | {n: p.format_help() for n, p in commands.items()}


@pytest.mark.parametrize("width", [50, 63, 80, 101])
def test_help_never_splits_a_hyphenated_word(width, monkeypatch):
    helps = _helps(width, monkeypatch)
    split = [(name, line) for name, text in helps.items() for line in text.splitlines()
             if re.search(r"\w-$", line)]
    assert split == []
    # the file names the impute help points to can be copied whole at every width
    assert "recipes/tables/impute-mnar.toml" in helps["impute"]


def test_the_default_formatter_would_have_split_it(monkeypatch):
    """The check above can fail: argparse's own layout breaks the recipe name at its hyphen
    at some width."""
    import argparse

    parser = build_parser()
    impute = next(a for a in parser._actions if a.dest == "command").choices["impute"]
    broken = []
    for width in range(50, 110):
        monkeypatch.setenv("COLUMNS", str(width))
        impute.formatter_class = argparse.HelpFormatter
        if "recipes/tables/impute-mnar.toml" not in impute.format_help():
            broken.append(width)
    assert broken
