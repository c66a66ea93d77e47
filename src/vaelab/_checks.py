"""Argument validation shared by every module.

Each check raises ``ValueError`` or ``TypeError`` with one line that names the argument,
what was expected and what was received, as DESIGN.md asks for user input.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch
from numpy.typing import DTypeLike


def positive_int(name: str, value: object) -> int:
    """Return ``value`` as an int if it is an integer >= 1, else raise."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name}: expected an integer >= 1, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value}")
    return int(value)


def non_negative_int(name: str, value: object) -> int:
    """Return ``value`` as an int if it is an integer >= 0, else raise."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name}: expected an integer >= 0, got {value!r} ({type(value).__name__})")
    if value < 0:
        raise ValueError(f"{name}: expected an integer >= 0, got {value}")
    return int(value)


def positive_float(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite number > 0, else raise."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a number > 0, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value}")
    return float(value)


def one_of(name: str, value: object, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return str(value)


def tensor(name: str, value: object) -> torch.Tensor:
    """Return ``value`` if it is a floating-point tensor, else raise TypeError."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {value.dtype}")
    return value


def finite(name: str, value: torch.Tensor) -> torch.Tensor:
    """Raise ValueError naming the count and first position of non-finite entries."""
    bad = ~torch.isfinite(value)
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name}: expected finite values, got {int(bad.sum())} non-finite "
            f"(first at index {first}: {value[first].item()})"
        )
    return value


def data_batch(name: str, x: object, data_dim: int) -> torch.Tensor:
    """Check that ``x`` is a finite float tensor of shape [B, data_dim]."""
    x = tensor(name, x)
    if x.dim() != 2 or x.shape[-1] != data_dim:
        raise ValueError(
            f"{name}: expected shape [batch, {data_dim}], got {list(x.shape)}"
        )
    return finite(name, x)


def to_numpy(value: object, dtype: DTypeLike | None = None) -> np.ndarray:
    """``value`` as a numpy array; a torch tensor on any device (CUDA, needing grad, bf16)
    is detached and copied to the host first, where ``np.asarray`` of it would raise."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:     # numpy has no bf16: widen, values unchanged
            value = value.float()
        value = value.numpy()
    return np.asarray(value, dtype=dtype)
