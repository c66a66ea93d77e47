"""Component flags from the catalogue: the flag choosing each kind, and each option's flag.

Role in vaelab: a likelihood, network, family, prior, objective, schedule or estimator is
offered on the command line as ``vaelab.catalogue`` lists it: its names and help lines under
the flag that chooses it (:data:`CHOOSER`), then one flag per option, whose help says which
components have it; so a new component needs nothing here. A component option's flag given
for another component is one line naming both (:func:`check_component_flags`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from vaelab import catalogue
from vaelab.cli.common import UsageError

#: The flag that picks each kind of component (``vaelab.catalogue``).
CHOOSER = {"likelihood": "--likelihood", "network": "--net", "family": "--family",
           "prior": "--prior", "objective": "--objective", "kl-schedule": "--kl-schedule",
           "lr-schedule": "--lr-schedule", "optimizer": "--optimizer",
           "estimator": "--estimator"}


MODEL_KINDS = ("likelihood", "network", "family", "prior")


TRAIN_KINDS = ("objective", "kl-schedule", "lr-schedule")


def dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _option_type(option: catalogue.Option) -> Callable[[str], object]:
    """argparse type of a component option: its catalogue check, in the CLI's words."""
    def parse(text: str) -> object:
        try:
            return option.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = option.expected
    return parse


def add_component(p: argparse._ActionsContainer, kind: str, what: str,
                   skip: tuple[str, ...] = (), **choose: Any) -> None:
    """The flag picking a ``kind`` of component, with the catalogue's names and help lines,
    then each component option's flag (its help says which components have it)."""
    names = catalogue.names(kind)
    lines = "; ".join(f"{e.name}: {e.help}" for e in catalogue.entries(kind))
    p.add_argument(CHOOSER[kind], choices=names, help=f"{what}. {lines} (default {names[0]})",
                   **choose)
    for flag, (option, owners) in catalogue.flags(kind).items():
        if flag in skip:
            continue
        whose = " or ".join(f"{CHOOSER[kind]} {owner}" for owner in owners)
        default = option.default
        default = (",".join(map(str, default)) if isinstance(default, tuple) else
                   {True: "on", False: "off"}.get(default, default)
                   if isinstance(default, bool) else default)
        text = f"{option.help} ({whose}" + ("" if default is None else f"; default {default}")
        text += ")"
        if option.check == "bool":
            p.add_argument(flag, action="store_true", default=None, help=text)
        else:
            p.add_argument(flag, type=_option_type(option), metavar=option.metavar or "X",
                           help=text)


def component_values(args: argparse.Namespace, kinds: tuple[str, ...]) -> dict:
    """The component flags as config keys (the chosen names and each option's flat key;
    None = not given)."""
    out = {}
    for kind in kinds:
        out[catalogue.FIELDS[kind]] = getattr(args, dest(CHOOSER[kind]))
        for flag, (option, _) in catalogue.flags(kind).items():
            out[option.key or option.name] = getattr(args, dest(flag))
    return out


def check_component_flags(args: argparse.Namespace, chosen: dict[str, str]) -> None:
    """A component option's flag given on the command line must belong to the chosen
    component (``chosen``: kind → name): ``--q-components: needs --family mixture, got
    --family iaf``."""
    for kind, name in chosen.items():
        for flag in catalogue.flags(kind):
            if getattr(args, dest(flag)) is not None:
                try:
                    catalogue.check_flag_owner(kind, flag, name, CHOOSER[kind])
                except ValueError as exc:
                    raise UsageError(str(exc)) from None
