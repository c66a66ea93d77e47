"""MkDocs hook: generate the command-line reference and the API pages at build time.

The command-line reference is read from the parser the ``vaelab`` command itself uses, so it
can never disagree with ``vaelab COMMAND --help``: every sub-command, every flag, its choices,
default and help text. The API pages list every public module of each wing (found by walking
the package), each rendered by mkdocstrings from its docstrings, so a module added, moved or
split shows up without editing the docs.

Both work whether ``vaelab.cli`` is one module or a package: the parser-building function is
looked up as ``build_parser`` on ``vaelab.cli`` first, then in its sub-modules.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from mkdocs.structure.files import File, Files

SRC = Path(__file__).resolve().parents[2] / "src"

#: The API pages: page name → (title, the wings whose public modules it documents).
API_PAGES = {
    "index": ("The package, its configuration and its other top-level modules", ("vaelab",)),
    "model": ("vaelab.model: the parts of p and q", ("vaelab.model",)),
    "infer": ("vaelab.infer: bounds and inference schemes", ("vaelab.infer",)),
    "fit": ("vaelab.fit: training", ("vaelab.fit",)),
    "measure": ("vaelab.measure: how good a model is", ("vaelab.measure",)),
    "use": ("vaelab.use: what a trained model is for", ("vaelab.use",)),
    "show": ("vaelab.show: pictures and pages", ("vaelab.show",)),
}
#: Not documented as API: the command line has its own, generated reference.
NOT_API = ("vaelab.cli",)


def top_level_modules() -> list[str]:
    """``vaelab``'s own public modules and packages that no other API page documents (config,
    data, the catalogue, ...), found by listing the package, so a new one is documented."""
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    wings = {p for _, packages in API_PAGES.values() for p in packages}
    return sorted(f"vaelab.{info.name}" for info in pkgutil.iter_modules([str(SRC / "vaelab")])
                  if not info.name.startswith("_")
                  and f"vaelab.{info.name}" not in wings | set(NOT_API))


def find_build_parser() -> Callable[[], argparse.ArgumentParser]:
    """``build_parser`` of ``vaelab.cli``, the module or any module of the package."""
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    cli = importlib.import_module("vaelab.cli")
    if callable(getattr(cli, "build_parser", None)):
        return cli.build_parser
    for info in pkgutil.walk_packages(getattr(cli, "__path__", []), prefix="vaelab.cli."):
        module = importlib.import_module(info.name)
        if callable(getattr(module, "build_parser", None)):
            return module.build_parser
    raise RuntimeError("no build_parser() in vaelab.cli: the CLI reference cannot be generated")


def _sub_commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help_lines(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each sub-command's one-line help, as ``vaelab --help`` lists it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def _cell(text: object) -> str:
    """Text safe inside one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _value(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        return " \\| ".join(f"`{c}`" for c in action.choices)
    metavar = action.metavar or action.dest.upper()
    many = {"*": " …", "+": " …"}.get(str(action.nargs), "")
    return f"`{metavar}{many}`"


def _default(action: argparse.Action) -> str:
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or action.required:
        return ""
    value = action.default
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return f"`{value}`"


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    return _cell(parser._get_formatter()._expand_help(action))


def _rows(parser: argparse.ArgumentParser, actions: list[argparse.Action]) -> Iterator[str]:
    yield "| flag | value | default | what it does |"
    yield "|---|---|---|---|"
    for action in actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        names = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}`"
        yield f"| {names} | {_value(action)} | {_default(action)} | {_help(parser, action)} |"


def command_page(parser: argparse.ArgumentParser) -> str:
    """The Markdown of the whole command-line reference."""
    lines = ["# Command line", "",
             "Generated from the `vaelab` command's own argument parser when the site is "
             "built, so it always matches `vaelab COMMAND --help`.", "",
             "```text", parser.format_usage().strip(), "```", "", parser.description or "", ""]
    helps = _help_lines(parser)
    lines += ["| command | what it does |", "|---|---|"]
    lines += [f"| [`{name}`](#vaelab-{name}) | {_cell(helps.get(name, ''))} |"
              for name in _sub_commands(parser)]
    for name, sub in _sub_commands(parser).items():
        lines += ["", f"## vaelab {name}", "", _cell(helps.get(name, "")), "",
                  "```text", sub.format_usage().strip(), "```", ""]
        if sub.description:
            lines += [sub.description, ""]
        for group in sub._action_groups:
            actions = [a for a in group._group_actions if a.help != argparse.SUPPRESS
                       and not isinstance(a, argparse._HelpAction)]
            if not actions:
                continue
            title = group.title or "options"
            lines += [f"**{title[0].upper() + title[1:]}**", ""]
            lines += list(_rows(sub, actions))
            lines.append("")
        if sub.epilog:
            lines += [sub.epilog, ""]
    return "\n".join(lines) + "\n"


def public_modules(package: str) -> list[str]:
    """``package`` and its modules and sub-packages, without private (``_x``) ones."""
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    top = importlib.import_module(package)
    names = [package]
    if hasattr(top, "__path__"):
        names += [info.name for info in pkgutil.walk_packages(top.__path__, prefix=package + ".")
                  if not any(part.startswith("_") for part in info.name.split("."))]
    return sorted(names)


def api_page(title: str, packages: tuple[str, ...]) -> str:
    lines = [f"# {title}", "",
             "Generated from the docstrings when the site is built.", ""]
    for package in packages:
        if package == "vaelab":          # the re-exports, then every top-level module
            modules = ["vaelab"] + [m for top in top_level_modules() for m in public_modules(top)]
        else:
            modules = public_modules(package)
        for module in modules:
            lines += [f"::: {module}", "    options:", "      members_order: source", ""]
    return "\n".join(lines) + "\n"


def on_files(files: Files, config) -> Files:
    """Add the generated pages before MkDocs builds its navigation and checks links."""
    files.append(File.generated(config, "reference/cli.md",
                                content=command_page(find_build_parser()())))
    for name, (title, packages) in API_PAGES.items():
        files.append(File.generated(config, f"reference/api/{name}.md",
                                    content=api_page(title, packages)))
    return files
