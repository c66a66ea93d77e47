"""A table's columns matched to a run's by name: the one rule every reader of a run's data uses.

Role in vaelab: part of :mod:`vaelab.data`. A run trained on a table with named columns (a CSV
header, a DataFrame's names, a mixed table's schema) records them; data with names given to it
later (evaluate, impute, score, encode, ..., or the loaded run's methods) are matched to them
by name, never by position: the same names in another order are put in the run's order, a
missing or unknown name is one line naming the data, the missing and the unexpected names.
Data without names (.npy, arrays, tensors) and runs that recorded none are taken by position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any


def column_order(given: Sequence[Any] | None, expected: Sequence[Any] | None,
                 where: str, source: str = "") -> list[int] | None:
    """The positions in ``given`` (the data's column names) of each of ``expected`` (the
    run's), in the run's order; None when the data can be taken as they are: either has no
    names, or the names are the same in the same order.

    Raises ValueError (one line naming ``where`` and ``source``, e.g. the flag and the file)
    when a name of the run is missing from the data or the data have a name the run lacks."""
    if given is None or expected is None:
        return None
    have, want = [str(c) for c in given], [str(c) for c in expected]
    if have == want:
        return None
    missing = [n for n in want if n not in have]
    unexpected = [n for n in have if n not in want]
    of = f" {source}" if source else ""
    if missing or unexpected:
        raise ValueError(f"{where}: expected the {len(want)} columns the run was trained on "
                         f"(matched by name, in any order), got{of} {len(have)} columns: "
                         f"missing {_names(missing)}; unexpected {_names(unexpected)}")
    repeated = sorted({n for n in have + want if have.count(n) > 1 or want.count(n) > 1})
    if repeated:
        raise ValueError(f"{where}: expected distinct column names to match the run's by name, "
                         f"got{of} the name {repeated[0]!r} more than once")
    return [have.index(n) for n in want]


def in_run_order(dataset: Any, expected: Sequence[Any] | None, where: str,
                 source: str = "") -> Any:
    """A :class:`vaelab.data.Dataset` whose ``columns`` name its values, in the run's order
    (``expected``) by :func:`column_order`; itself when it is in that order or has no names."""
    order = column_order(dataset.columns, expected, where, source)
    if order is None:
        return dataset
    return replace(dataset, x=dataset.x[:, order].contiguous(),
                   columns=tuple(str(c) for c in expected or ()))


def _names(names: list[str], limit: int = 8) -> str:
    if not names:
        return "none"
    more = f", … ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more
