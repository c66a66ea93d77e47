"""Whether a tensor is still a distribution's own last draw.

Role in vaelab: a q whose log-density at an arbitrary point must undo its draw numerically (a
full-covariance Normal's triangular solve of z − loc) is exact at its own draws when it reads
the ε it drew instead (``vaelab.model.families.DrawnMultivariateNormal``, and a layered q of
such layers, ``vaelab.model.layered.LayeredDistribution``). Both must tell their own draw
from any other point: the same memory, shape, strides and type, and not changed in place
since (its version counter; an inference tensor has none, so a copy is compared instead).
"""

from __future__ import annotations

import torch

#: A draw and what tells it unchanged: its version counter, or a copy (an inference tensor).
DrawRecord = tuple[torch.Tensor, int | torch.Tensor]


def record(z: torch.Tensor) -> DrawRecord:
    """What :func:`is_draw` compares a later value with."""
    return z, (z.clone() if z.is_inference() else z._version)


def is_draw(value: object, drawn: DrawRecord | None) -> bool:
    """Whether ``value`` is the recorded draw itself (or its detached view, which shares its
    memory and version counter: the score term of a path gradient), unchanged."""
    if drawn is None or not isinstance(value, torch.Tensor):
        return False
    z, unchanged = drawn
    if not (value.data_ptr() == z.data_ptr() and value.shape == z.shape
            and value.stride() == z.stride() and value.dtype == z.dtype):
        return False
    if isinstance(unchanged, torch.Tensor):
        return torch.equal(value, unchanged)
    return not value.is_inference() and value._version == unchanged
