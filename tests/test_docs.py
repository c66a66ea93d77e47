"""The documentation site's examples run as printed, its generated CLI reference is complete,
and the README's links lead somewhere.

`mkdocs build --strict` (in `make test`) checks the site's own links and anchors; these tests
check what the build cannot: that the code a reader copies works.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: The line a page puts right above a ```python block that needs a long training run, so the
#: tests leave it out. No other block is skipped.
LONG_TRAINING = "<!-- needs long training: not run by the tests -->"
FENCE = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """(line number, code, needs long training) of every ```python block, in page order."""
    blocks = []
    for match in FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        line = text.count("\n", 0, match.start()) + 2
        blocks.append((line, match.group(1), before == LONG_TRAINING))
    return blocks


def pages_with_examples() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if python_blocks(p.read_text(encoding="utf-8")))


def test_the_block_finder_reads_fences_and_labels():
    text = ("intro ```` ```python ```` inline\n\n```python\nx = 1\n```\n\n" + LONG_TRAINING
            + "\n```python\ny = 2\n```\n```bash\nls\n```\n")
    assert python_blocks(text) == [(4, "x = 1\n", False), (9, "y = 2\n", True)]


def test_the_docs_have_examples():
    assert len(pages_with_examples()) >= 5


@pytest.mark.parametrize("page", pages_with_examples(), ids=lambda p: str(p.relative_to(DOCS)))
def test_every_python_example_runs(page, tmp_path, monkeypatch):
    """A page's blocks run in order in one namespace (like a reader's session), in a fresh
    folder, so files an example writes (runs/..., patches.npz) land there."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    for line, code, long_training in python_blocks(page.read_text(encoding="utf-8")):
        if long_training:
            continue
        # Line numbers in tracebacks point into the page.
        source = "\n" * (line - 1) + code
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(source, str(page), "exec"), namespace)
        ran += 1
    assert ran > 0


def _hook():
    spec = importlib.util.spec_from_file_location("cli_reference",
                                                  DOCS / "hooks" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_lists_every_command_and_flag():
    """Walk the real parser independently of the page's renderer: every sub-command has its
    section and every flag (and every choice) of it appears in that section."""
    hook = _hook()
    parser = hook.find_build_parser()()
    page = hook.command_page(parser)
    sections = dict(re.findall(r"^## vaelab (\S+)\n(.*?)(?=^## |\Z)", page, re.M | re.S))
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sections) == list(subparsers.choices)
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            for flag in action.option_strings:
                assert f"`{flag}`" in sections[name], (name, flag)
            for choice in action.choices or ():
                assert f"`{choice}`" in sections[name], (name, action.dest, choice)


def test_the_api_pages_cover_every_public_module():
    hook = _hook()
    pages = {name: hook.api_page(title, packages)
             for name, (title, packages) in hook.API_PAGES.items()}
    documented = {line[4:] for page in pages.values() for line in page.splitlines()
                  if line.startswith("::: ")}
    src = ROOT / "src" / "vaelab"
    for path in src.rglob("*.py"):
        parts = path.relative_to(src.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(p.startswith("_") for p in parts) or parts[:2] in {("vaelab", "cli"),
                                                                  ("vaelab", "__main__")}:
            continue
        assert ".".join(parts) in documented, path


def _links(text: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_the_readme_links_lead_somewhere():
    """Relative links in the README name files of the repository (the site's pages are
    linked as docs/....md so they also work on a code host); no tracker-style links."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = _links(text)
    assert links
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        target = link.split("#", 1)[0]
        assert target and (ROOT / target).exists(), link


def test_every_docs_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in DOCS.rglob("*.md"):
        assert str(page.relative_to(DOCS)) in nav, page


def test_the_cli_reference_finds_the_parser_in_a_cli_package(tmp_path, monkeypatch):
    """Once ``vaelab.cli`` is a package whose ``__init__`` does not re-export
    ``build_parser``, the hook still finds it in a sub-module."""
    import sys
    import types

    package = tmp_path / "cli"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "parsers.py").write_text(
        "import argparse\n\n"
        "def build_parser():\n"
        "    parser = argparse.ArgumentParser(prog='vaelab')\n"
        "    commands = parser.add_subparsers(dest='command')\n"
        "    commands.add_parser('train', help='train').add_argument('--epochs', type=int)\n"
        "    return parser\n")
    fake = types.ModuleType("vaelab.cli")
    fake.__path__ = [str(package)]
    monkeypatch.setitem(sys.modules, "vaelab.cli", fake)
    monkeypatch.delitem(sys.modules, "vaelab.cli.parsers", raising=False)
    hook = _hook()
    page = hook.command_page(hook.find_build_parser()())
    assert "## vaelab train" in page and "`--epochs`" in page
    sys.modules.pop("vaelab.cli.parsers", None)
