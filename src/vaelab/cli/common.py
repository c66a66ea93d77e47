"""What every ``vaelab`` command parses with: the parser class, argument types, shared flags.

Role in vaelab: the command line's vocabulary. :class:`Parser` turns a usage error into
:class:`UsageError` (exit code 2) and refuses abbreviated or repeated flags; each argument
type says in one line what it expected and what it got. Nothing here imports torch, so
``vaelab --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
import textwrap
from collections.abc import Callable


class UsageError(Exception):
    """A command-line usage error (exit code 2)."""


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help layout, wrapped only at spaces: a file name or a flag with a hyphen
    (``impute-mnar.toml``, ``--latent-dim``) is never split across two lines, so it can be
    copied from the help as it stands."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        text = " ".join(text.split())
        return textwrap.wrap(text, width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        text = " ".join(text.split())
        return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`UsageError` instead of printing and exiting.

    Abbreviated flags are refused (``--epoch`` is not ``--epochs``): a typo is an error.
    Help text wraps at spaces only (:class:`HelpFormatter`).
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D102 - argparse's hook
        raise UsageError(f"{message} (see `{self.prog} --help`)")

    def parse_known_args(self, args=None, namespace=None):  # noqa: D102 - argparse's hook
        if args is not None:
            self._refuse_repeats(list(args))
        return super().parse_known_args(args, namespace)

    def _refuse_repeats(self, args: list[str]) -> None:
        """A flag that takes one value given twice would silently keep the last: refused.

        Only this parser's own flags are counted, up to its sub-command (whose parser counts
        its own) or ``--``.
        """
        single = {option: action for action in self._actions if action.nargs != 0
                  and not isinstance(action, (argparse._AppendAction, argparse._CountAction))
                  for option in action.option_strings}
        commands = {name for action in self._actions
                    if isinstance(action, argparse._SubParsersAction) for name in action.choices}
        seen: dict[object, str] = {}
        for token in args:
            if token == "--" or token in commands:
                return
            action = single.get(token.split("=", 1)[0]) if token.startswith("-") else None
            if action is None:
                continue
            if action in seen:
                raise UsageError(f"{token.split('=', 1)[0]}: given more than once; expected it "
                                 f"once (see `{self.prog} --help`)")
            seen[action] = token


def number(kind: Callable, check: Callable[[float], bool], expected: str) -> Callable:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    parse.__name__ = expected
    return parse


positive_int = number(int, lambda v: v >= 1, "an integer >= 1")


non_negative_int = number(int, lambda v: v >= 0, "an integer >= 0")


positive_float = number(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")


non_negative_float = number(float, lambda v: math.isfinite(v) and v >= 0,
                             "a finite number >= 0")


fraction = number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


ratio_in_0_1 = number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")


def or_off(parse: Callable) -> Callable:
    """``parse``, with "off" read as 0: the value that switches a setting off, so a flag can
    turn off what a --config file turned on."""
    def parse_or_off(text: str):
        return 0 if text.strip().lower() == "off" else parse(text)
    parse_or_off.__name__ = parse.__name__
    return parse_or_off


#: --ema: a decay, or 0 / off.
ema_decay = or_off(number(float, lambda v: 0 <= v < 1, "a decay in [0, 1) such as 0.999, "
                                                       "or 0 / off"))


#: --early-stopping: a patience in epochs, or 0 / off.
patience = or_off(number(int, lambda v: v >= 0, "an integer >= 1, or 0 / off"))


def hidden_sizes(text: str) -> tuple[int, ...]:
    """``"512,256"`` → (512, 256); every size an integer >= 1."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers >= 1 such as 512,256, got {text!r}")
    return sizes


def latent_sizes(text: str) -> int | tuple[int, ...]:
    """``"20"`` → 20; ``"64,32"`` → (64, 32) (latent layers bottom to top); integers >= 1."""
    try:
        sizes = hidden_sizes(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected an integer >= 1 or comma-separated integers >= 1 such as 64,32 "
            f"(latent sizes, bottom to top), got {text!r}") from None
    return sizes[0] if len(sizes) == 1 else sizes


def class_list(text: str) -> tuple[int, ...]:
    """``"0,1"`` → (0, 1); every label an integer >= 0."""
    try:
        labels = tuple(int(part) for part in text.split(","))
    except ValueError:
        labels = ()
    if not labels or min(labels) < 0:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated class labels >= 0 such as 0,1, got {text!r}")
    return labels


def kebab(value: object) -> str:
    return str(value).replace("_", "-")


def add_run_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="NAME|PATH",
                   help="dataset name or path (default: the run's training data)")
    p.add_argument("--split", choices=("train", "test"),
                   help="default: test (user data without a test split: train)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
