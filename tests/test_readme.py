"""The README stays short and true: its Python example runs as printed (a new user's first
copy-paste), its commands exist and parse, and it says what `make test` really runs."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _text() -> str:
    return README.read_text(encoding="utf-8")


def test_python_api_example_runs():
    text = _text()
    start = text.index("```python", text.index("## Python API")) + len("```python")
    code = text[start:text.index("```", start)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert lines and lines[-1] == "torch.Size([16])"


def test_the_readme_is_short():
    assert len(_text().splitlines()) <= 250


def test_the_two_commands_exist_and_do_what_the_readme_says():
    text = _text()
    assert "bash scripts/quickstart.sh" in text and "make test" in text
    quickstart = (ROOT / "scripts" / "quickstart.sh").read_text(encoding="utf-8")
    for step in ("scripts/setup.sh", "vaelab train --out", "vaelab evaluate", "vaelab report"):
        assert step in quickstart, step
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "setup" in recipe.splitlines()[0]
    for tool in ("ruff check", "mypy", "mkdocs build --strict", "pytest"):
        assert tool in recipe, tool
        assert tool.split()[0] in text, tool          # the README names every step


def _vaelab_lines(text: str) -> list[str]:
    """Every `vaelab ...` command line of the README's bash blocks, comments removed."""
    lines = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split("#", 1)[0].strip()
            if command.startswith("vaelab ") and "..." not in command:
                lines.append(command)
    return lines


@pytest.mark.parametrize("line", _vaelab_lines(_text()))
def test_every_readme_command_parses(line):
    """The real parser accepts every command shown (nothing runs: parsing only)."""
    from vaelab.cli import build_parser

    args, extra = build_parser().parse_known_args(shlex.split(line)[1:])
    assert args.command and not extra, line


def test_the_tour_shows_every_command():
    from vaelab.cli import build_parser

    parser = build_parser()
    shown = {shlex.split(line)[1] for line in _vaelab_lines(_text())}
    commands = set(parser._subparsers._group_actions[0].choices)
    assert commands <= shown, commands - shown


def test_no_tracker_words():
    """A reader has no issue tracker: the README says what and why in words."""
    assert not re.search(r"\bissue[ -]\d|\(X\d|\bX\d item|item \d\)", _text(), re.I)
