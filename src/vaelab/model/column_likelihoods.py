"""Observation models p_θ(x | z) for the columns of a table: counts, categories, positive and
heavy-tailed real values.

Role in vaelab: more :class:`~vaelab.model.likelihoods.Likelihood` classes, each a catalogue
entry (``vaelab.catalogue``), each registered by being defined (the base class collects its
subclasses). Every column of x [B, D] gets the same likelihood here; one likelihood per column
(mixed tables) builds on these.

* :class:`Poisson` — counts, mean μ = softplus(raw).

**What log_prob means.** The discrete ones are normalised probabilities of integer data as
given, so ``evaluate`` reports log p(x) in nats (and bits/dim). On vaelab's data kinds
(``vaelab.data``) integer tables read from CSV are "continuous" (or "binary" when all 0/1):
these likelihoods declare "probability" there and their support checks refuse every value
that is not an integer in range (one line naming the likelihood).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import distributions as D
from torch.distributions import Distribution, Independent

from vaelab.model.likelihoods import Likelihood

#: What the discrete likelihoods are on the data kinds integers arrive as.
_DISCRETE = {"binary": "probability", "continuous": "probability"}
_DENSITY = {"continuous": "density", "unit-interval": "density"}
#: Floor on a mean or an inverse dispersion: keeps log μ finite when softplus underflows.
_FLOOR = 1e-8
#: Integers 0–255 stored as integers are read as 8-bit data k/255 (``vaelab.data``).
_EIGHT_BIT_HINT = ("; integers 0–255 in .npy/.npz files are read as 8-bit data k/255: give "
                   "counts as floats or in a CSV")


def check_integers(x: torch.Tensor, name: str, likelihood: str, what: str,
                   high: int | None = None) -> torch.Tensor:
    """Raise a one-line ValueError unless every x is an integer in [0, ``high``].

    ``what`` says in words what the likelihood expects (e.g. "counts (integers >= 0)").
    """
    if x.numel() == 0:
        return x
    low, top = x.min().item(), x.max().item()
    fraction = (x - x.round()).abs()
    expects = f"{name}: the {likelihood} likelihood expects {what}"
    if low < 0:
        raise ValueError(f"{expects}, got negative values (the smallest {low:g})")
    if fraction.max().item() > 0:
        first = x.reshape(-1)[fraction.reshape(-1).argmax()].item()
        hint = _EIGHT_BIT_HINT if top <= 1 else ""
        raise ValueError(f"{expects}, got non-integer values (e.g. {first:g}){hint}")
    if high is not None and top > high:
        raise ValueError(f"{expects}, got values up to {top:g}, above {high}")
    return x


def _positive(raw: torch.Tensor, floor: float = _FLOOR) -> torch.Tensor:
    return F.softplus(raw) + floor


class _Columns(Likelihood):
    """Shared plumbing: the parameter-major layout raw [..., P·D] → P tensors [..., D]."""

    def _split(self, raw: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
        return tuple(raw.unflatten(-1, (parts, raw.shape[-1] // parts)).unbind(-2))

    def remedy(self) -> str:
        return "for counts use --likelihood poisson; for real data --likelihood gaussian"


class Poisson(_Columns):
    """p(x | z) = ∏_d Poisson(x_d; μ_d), μ = softplus(raw) + 1e-8; x_d ∈ {0, 1, 2, …}."""

    name = "poisson"
    meaning = _DISCRETE
    support = "counts"

    def forward(self, raw: torch.Tensor) -> Distribution:
        """raw [..., D] → Independent Poisson, event [D]."""
        return Independent(D.Poisson(_positive(raw), validate_args=False), 1,
                           validate_args=False)

    def check_support(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        return check_integers(x, name, self.name, "counts (integers >= 0)")
