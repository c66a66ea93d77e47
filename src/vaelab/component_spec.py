"""How a component is described: its :class:`Option` settings (each with its check) and its
:class:`Entry` (kind, name, home, options, help, facts).

Role in vaelab: a leaf like ``vaelab.catalogue`` (no torch, no other vaelab module), which
lists every component as one :class:`Entry`; this module is the machinery those entries are
made of (the checks of option values, resolving a home, validating a component's options).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, cast

#: What each check accepts, in the words of the error messages.
CHECKS = {
    "int>=1": "an integer >= 1",
    "int>=0": "an integer >= 0",
    "float": "a finite number",
    "float>0": "a finite number > 0",
    "float>=0": "a finite number >= 0",
    "fraction": "a number in [0, 1)",
    "unit": "a number in (0, 1]",
    "bool": "true or false",
    "choice": "one of the choices",
    "ints>=1": "a non-empty list of integers >= 1",
    "sizes": "a list of integers >= 1 (empty: none)",
    "betas": "two numbers in [0, 1) such as (0.9, 0.999)",
    "any": "any value",
}


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _scalar(check: str, value: object) -> bool:
    """True when ``value`` passes ``check`` (a key of :data:`CHECKS`, not a sequence check)."""
    if check in ("int>=1", "int>=0"):
        return _is_int(value) and int(cast(Integral, value)) >= (1 if check == "int>=1" else 0)
    if not _is_number(value) or not math.isfinite(number := float(cast(Real, value))):
        return False
    return {"float": True, "float>0": number > 0, "float>=0": number >= 0,
            "fraction": 0 <= number < 1, "unit": 0 < number <= 1}[check]


@dataclass(frozen=True)
class Option:
    """One setting of a component.

    Attributes:
        name: the keyword of the class's ``from_options`` (snake_case).
        check: a key of :data:`CHECKS`; ``choices`` lists the values of a "choice".
        default: the value when not given (None: no default, the option may stay unset).
        help: one line, for ``--help`` and the report.
        flag: the command-line flag (None: settable in config files only).
        key: the flat key of a run's config.json before options were nested (None: none).
        metavar: the placeholder ``--help`` shows.
    """

    name: str
    check: str
    default: object
    help: str
    flag: str | None = None
    key: str | None = None
    choices: tuple[str, ...] = ()
    metavar: str | None = None

    @property
    def expected(self) -> str:
        """The accepted values, in words."""
        if self.check == "choice":
            return "one of " + ", ".join(map(repr, self.choices))
        return CHECKS[self.check]

    def validate(self, value: object, where: str | None = None) -> object:
        """``value`` normalised (tuples for lists, floats for numbers) or a one-line error.

        ``where`` names the setting in the message (default: the option's name); None as a
        value is accepted only when the default is None.
        """
        where = where or self.name
        if value is None and self.default is None:
            return None
        if self.check == "choice":
            if value not in self.choices:
                raise ValueError(f"{where}: expected {self.expected}, got {value!r}")
            return value
        if self.check == "bool":
            if not isinstance(value, bool):
                raise TypeError(f"{where}: expected true or false, got {value!r}")
            return value
        if self.check in ("ints>=1", "sizes", "betas"):
            return self._sequence(value, where)
        if self.check == "any":
            return value
        if not _scalar(self.check, value):
            error = TypeError if not _is_number(value) else ValueError
            raise error(f"{where}: expected {self.expected}, got {value!r}")
        number = cast(float, value)       # a real number: _scalar just checked it
        return int(number) if self.check.startswith("int") else float(number)

    def _sequence(self, value: object, where: str) -> tuple:
        ok = not isinstance(value, (str, bytes)) and hasattr(value, "__iter__")
        items: tuple[Any, ...] = tuple(cast(Iterable[Any], value)) if ok else ()
        sizes = ok and all(_scalar("int>=1", v) for v in items)
        if (self.check == "sizes" and sizes) or (self.check == "ints>=1" and sizes and items):
            return tuple(int(v) for v in items)
        if self.check == "betas" and len(items) == 2 and all(_scalar("fraction", b)
                                                             for b in items):
            return tuple(float(b) for b in items)
        raise (ValueError if ok else TypeError)(f"{where}: expected {self.expected}, "
                                                f"got {value!r}")

    def parse(self, text: str) -> object:
        """A command-line string → the value, checked (ValueError in the CLI's words)."""
        try:
            if self.check.startswith("int>"):
                value: object = int(text)
            elif self.check in ("float", "float>0", "float>=0", "fraction", "unit"):
                value = float(text)
            elif self.check in ("ints>=1", "sizes"):
                value = tuple(int(part) for part in text.split(","))
            elif self.check == "betas":
                value = tuple(float(part) for part in text.split(","))
            else:
                value = text
            return self.validate(value)
        except (TypeError, ValueError):
            example = " such as 512,256" if self.check in ("ints>=1", "sizes") else ""
            raise ValueError(f"expected {self.expected}{example}, got {text!r}") from None


@dataclass(frozen=True)
class Entry:
    """One component: its kind, name, home, options, help and facts (see the module doc)."""

    kind: str
    name: str
    home: str
    help: str
    options: tuple[Option, ...] = ()
    facts: dict = field(default_factory=dict, hash=False, compare=False)

    def resolve(self) -> Any:
        """The class (or function) at :attr:`home`, imported now (its type is known only once
        imported, hence Any)."""
        module, _, attribute = self.home.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def option(self, name: str) -> Option:
        """The option called ``name`` (KeyError if this component has none)."""
        for option in self.options:
            if option.name == name:
                return option
        raise KeyError(name)

    def defaults(self) -> dict:
        """{option name: default} of every option."""
        return {o.name: o.default for o in self.options}

    def validate(self, options: object, where: str) -> dict:
        """All of this component's options, checked, defaults filled in.

        ``where`` names the setting in messages (e.g. ``prior_options``). Raises TypeError for
        a non-dict and ValueError for an option this component does not have, naming those
        it has.
        """
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise TypeError(f"{where}: expected a table/dict of options, got "
                            f"{type(options).__name__}")
        unknown = sorted(set(options) - {o.name for o in self.options})
        if unknown:
            have = [o.name for o in self.options]
            expected = f"one of {have}" if have else "none"
            raise ValueError(f"{where}: {self.kind} {self.name!r} has no option "
                             f"{unknown[0]!r}; expected {expected}")
        out = {o.name: o.validate(options.get(o.name, o.default), f"{where}.{o.name}")
               for o in self.options}
        for low, high in self.facts.get("ordered", ()):     # bounds: low < high when both
            a, b = cast(float | None, out[low]), cast(float | None, out[high])
            if a is not None and b is not None and not float(a) < float(b):
                flag = self.option(low).flag
                raise ValueError(f"{where}.{low}" + (f" ({flag})" if flag else "") +
                                 f": expected a number below {where}.{high} = {float(b):g}, "
                                 f"got {float(a):g}")
        return out

    def build(self, *context: object, **options: object) -> Any:
        """``resolve().from_options(*context, **options)`` with the options validated."""
        return self.resolve().from_options(*context, **self.validate(options, self.kind))
