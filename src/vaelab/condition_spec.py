"""What a conditional VAE is conditioned on, as a run records it (no torch: config reads it).

A conditional VAE (Sohn, Lee & Yan 2015) models p_θ(x | z, c) and q_φ(z | x, c) for a known
condition c of each example. The condition is a JSON dict, stored in ``config.json``:

* ``source``: ``"labels"`` (the dataset's class labels), ``"columns"`` (columns of a table,
  taken out of x) or ``"given"`` (c handed to ``vaelab.fit.train.train`` beside x,
  ``dataset=(x, c)``);
* ``columns``: the column names (source ``"columns"``);
* ``kind``: ``"categorical"`` — c is one-hot over ``levels`` (the distinct values seen in
  training, sorted) — or ``"real"`` — c is the values standardized by ``loc`` and ``scale``
  (the training rows' mean and standard deviation per column).

What a user asks for (``{"source": "labels"}``, ``"labels"`` or ``"batch,age"``) is
*unresolved*; training resolves it from the data (``vaelab.data.condition.resolve``), and the
resolved spec is all a loaded run needs to turn a value into c (:func:`encode_value`).
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

SOURCES = ("labels", "columns", "given")
KINDS = ("categorical", "real")
KEYS = ("source", "columns", "kind", "levels", "loc", "scale")
#: More levels than this make one-hot inputs wider than most images: refused with a hint.
MAX_LEVELS = 1000


def parse(value: object, name: str = "condition") -> dict | None:
    """A condition as written by a user or a run → its checked dict (None: no condition).

    ``"labels"`` and ``"given"`` name a source; any other string is comma-separated column
    names. Raises ValueError naming ``name`` for unknown keys or ill-formed values.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text in ("labels", "given"):
            return {"source": text}
        names = [c.strip() for c in text.split(",")]
        if not text or not all(names):
            raise ValueError(f"{name}: expected 'labels' or comma-separated column names such "
                             f"as 'batch,age', got {value!r}")
        return {"source": "columns", "columns": names}
    if not isinstance(value, dict):
        raise TypeError(f"{name}: expected 'labels', column names or a dict, got "
                        f"{type(value).__name__}")
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise ValueError(f"{name}: unknown keys {unknown}; expected a subset of {list(KEYS)}")
    spec = dict(value)
    if spec.get("source") not in SOURCES:
        raise ValueError(f"{name}.source: expected one of {list(SOURCES)}, "
                         f"got {spec.get('source')!r}")
    if spec["source"] == "columns":
        cols = spec.get("columns")
        if not isinstance(cols, list) or not cols or not all(isinstance(c, str) for c in cols):
            raise ValueError(f"{name}.columns: expected a non-empty list of column names, "
                             f"got {cols!r}")
    if "kind" in spec and spec["kind"] not in KINDS:
        raise ValueError(f"{name}.kind: expected one of {list(KINDS)}, got {spec['kind']!r}")
    if spec.get("kind") == "categorical":
        _check_levels(spec.get("levels"), name)
    if spec.get("kind") == "real":
        _check_scales(spec, name)
    return spec


def _check_levels(levels: object, name: str) -> None:
    if levels is None:
        return                                   # unresolved: found in the data
    if not isinstance(levels, list) or not levels or not all(
            isinstance(v, (int, str)) and not isinstance(v, bool) for v in levels) or len(
            set(map(str, levels))) != len(levels):
        raise ValueError(f"{name}.levels: expected a non-empty list of distinct integers or "
                         f"strings, got {levels!r}")
    if len(levels) > MAX_LEVELS:
        raise ValueError(too_many_levels(len(levels), name))


def too_many_levels(count: int, name: str = "--condition") -> str:
    """The one line for a categorical condition with too many levels (why, what to do)."""
    return (f"{name}: expected a categorical condition with at most {MAX_LEVELS} levels, got "
            f"{count} (one input per level would outweigh the data and most levels would have "
            f"a handful of examples); group the levels, or pass numbers as a real condition "
            f"(kind 'real')")


def _check_scales(spec: dict, name: str) -> None:
    loc, scale = spec.get("loc"), spec.get("scale")
    if loc is None and scale is None:
        return
    good = (isinstance(loc, list) and isinstance(scale, list) and loc
            and len(loc) == len(scale)
            and all(isinstance(v, Real) and math.isfinite(v) for v in loc)
            and all(isinstance(v, Real) and math.isfinite(v) and float(v) > 0 for v in scale))
    if not good:
        raise ValueError(f"{name}.loc/scale: expected two equal-length lists of finite numbers "
                         f"(scale > 0), got loc={loc!r}, scale={scale!r}")


def is_resolved(spec: dict | None) -> bool:
    """Whether ``spec`` knows its levels or its loc/scale (what a trained run records)."""
    if spec is None:
        return False
    return ("levels" in spec) if spec.get("kind") == "categorical" else (
        spec.get("kind") == "real" and "loc" in spec)


def dim(spec: dict) -> int:
    """The width C of c: the number of levels, or of real columns."""
    if not is_resolved(spec):
        raise ValueError("condition: expected a resolved condition (levels or loc/scale "
                         "found in the training data), got one without them")
    return len(spec["levels"]) if spec["kind"] == "categorical" else len(spec["loc"])


def describe(spec: dict) -> str:
    """One phrase for logs: what c is."""
    where = ", ".join(spec.get("columns", [])) or spec["source"]
    if spec.get("kind") == "categorical":
        levels = spec.get("levels", [])
        shown = ", ".join(map(str, levels[:10])) + (", …" if len(levels) > 10 else "")
        return f"{where}: categorical, {len(levels)} levels ({shown}), one-hot"
    return f"{where}: real, {dim(spec)} standardized value(s)"


def level_index(spec: dict, value: Any, flag: str = "--condition") -> int:
    """The position of ``value`` among a categorical spec's levels (a string matches a
    level's text, so ``"3"`` finds the level 3); one line naming ``flag`` otherwise."""
    levels = spec["levels"]
    for i, level in enumerate(levels):
        if level == value or str(level) == str(value).strip():
            return i
    names = spec.get("names") or {}          # class name → label (with_class_names)
    wanted = str(value).strip().casefold()
    for name, label in names.items():
        if name.casefold() == wanted and label in levels:
            return levels.index(label)
    shown = levels if len(levels) <= 20 else [*levels[:20], "…"]
    named = (f" or their class names {[n for n, lab in names.items() if lab in levels]}"
             if names else "")
    raise ValueError(f"{flag}: expected one of the run's condition levels {shown}{named}, "
                     f"got {value!r}")


def with_class_names(spec: dict, data: str) -> dict:
    """``spec`` with ``names`` (class name → label) when its levels are the class labels of
    a data set whose classes have names (Fashion-MNIST's "Sneaker" is label 7), so a level
    can be given by its name; else ``spec`` as it is."""
    if spec.get("source") != "labels" or spec.get("kind") != "categorical":
        return spec
    from vaelab.data.named import CLASS_NAMES

    classes = CLASS_NAMES.get(data)
    if classes is None:
        return spec
    return {**spec, "names": {name: label for label, name in enumerate(classes)}}


def encode_value(spec: dict, value: Any, flag: str = "--condition") -> list[float]:
    """c for one value, as a list of C floats: one-hot for a level, standardized numbers
    for a real condition (a string of comma-separated numbers, or a sequence of them)."""
    if spec["kind"] == "categorical":
        row = [0.0] * dim(spec)
        row[level_index(spec, value, flag)] = 1.0
        return row
    numbers = _numbers(value, flag)
    if len(numbers) != dim(spec):
        names = ",".join(spec.get("columns", [])) or f"{dim(spec)} values"
        raise ValueError(f"{flag}: expected {dim(spec)} comma-separated number(s) ({names}), "
                         f"got {value!r}")
    return [(v - m) / s for v, m, s in zip(numbers, spec["loc"], spec["scale"], strict=True)]


def _numbers(value: Any, flag: str) -> list[float]:
    items = value.split(",") if isinstance(value, str) else (
        list(value) if hasattr(value, "__iter__") else [value])
    try:
        numbers = [float(v) for v in items]
    except (TypeError, ValueError):
        numbers = []
    if not numbers or not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"{flag}: expected finite numbers such as '0.5,2', got {value!r}")
    return numbers
