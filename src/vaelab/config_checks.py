"""Checks of the config values that have a shape of their own (latent sizes, an image shape,
class labels, Adam's betas) or a range that ``vaelab._checks`` does not cover (a fraction in
[0, 1), a number >= 0), used by the config dataclasses of ``vaelab.config``.

Each returns the value in its stored form or raises naming the field, what was expected and
what was received.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from numbers import Real
from typing import Any, cast

from vaelab import _checks


def latent_sizes(value: object) -> int | tuple[int, ...]:
    """``latent_dim``: an integer (one latent layer) or latent sizes bottom to top (a hierarchy,
    ``vaelab.model.hierarchical``); a one-element sequence is that integer."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("latent_dim: expected an integer or a non-empty list of integers "
                             "(latent sizes, bottom to top), got []")
        sizes = tuple(_checks.positive_int("latent_dim", v) for v in value)
        return sizes[0] if len(sizes) == 1 else sizes
    return _checks.positive_int("latent_dim", value)


def image_shape(value: object) -> tuple[int, ...]:
    """``image_shape``: a sequence of integers >= 1 such as (1, 28, 28) → a tuple."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"image_shape: expected a sequence of integers such as (1, 28, 28), "
                        f"got {value!r}")
    return tuple(_checks.positive_int("image_shape", s) for s in value)


def fraction(name: str, value: object) -> float:
    """A number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a number in [0, 1), got {value!r} "
                        f"({type(value).__name__})")
    number = float(value)
    if not 0 <= number < 1:
        raise ValueError(f"{name}: expected a number in [0, 1), got {value}")
    return number


def non_negative_float(name: str, value: object) -> float:
    """A finite number >= 0 → float."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a number >= 0, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value}")
    return float(value)


def classes(value: object) -> tuple[int, ...]:
    """A non-empty sequence of class labels >= 0 → sorted tuple without repeats."""
    ok = not isinstance(value, (str, bytes)) and hasattr(value, "__iter__")
    labels: tuple[Any, ...] = tuple(cast(Iterable[Any], value)) if ok else ()
    if not labels or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                             for c in labels):
        raise ValueError(f"classes: expected a non-empty list of integer labels >= 0 such as "
                         f"[0, 1], got {value!r}")
    return tuple(sorted(set(labels)))


def betas(value: object) -> tuple[float, float]:
    """Adam's ``betas``: two numbers in [0, 1) → a pair of floats."""
    pair = cast(Sequence[Any], value)      # checked to be a sequence before it is read
    ok = not isinstance(value, (str, bytes)) and hasattr(value, "__len__") and len(pair) == 2
    if ok and all(isinstance(b, Real) and not isinstance(b, bool) for b in pair):
        betas = (float(pair[0]), float(pair[1]))
        if all(0 <= b < 1 for b in betas):
            return betas
    raise ValueError(f"betas: expected two numbers in [0, 1) such as (0.9, 0.999), got {value!r}")
