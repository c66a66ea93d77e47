"""Observation models p_θ(x | z) on ``torch.distributions``.

A likelihood turns the decoder network's raw output into a distribution over x with
batch_shape [..., B] and event_shape [D]:

* :class:`Bernoulli` — logits; for binary data or grey levels in [0, 1] (Kingma & Welling 2014).
* :class:`Gaussian` — N(μ_θ(z), diag σ²) where σ comes from the network (the lecture's
  σ_θ(z)), is a learned per-dimension parameter, or is fixed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli as TorchBernoulli
from torch.distributions import Distribution, Independent
from torch.distributions import Normal as TorchNormal

from vaelab import _checks


class Likelihood(nn.Module):
    """Base: ``params_per_dim`` raw numbers per data dimension → a Distribution over x."""

    name: str = "likelihood"
    params_per_dim: int = 1

    def forward(self, raw: torch.Tensor) -> Distribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_support(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """Raise ValueError if ``x`` holds values outside this likelihood's support."""
        return x

    def config(self) -> dict:
        """JSON-serializable constructor arguments (for saved models)."""
        return {"name": self.name}


class Bernoulli(Likelihood):
    """p(x | z) = ∏_d Bernoulli(x_d; sigmoid(logits_d)); x_d ∈ [0, 1].

    For grey levels in (0, 1) ``log_prob`` is the negative binary cross-entropy, the usual
    (unnormalized) objective on non-binarized images.
    """

    name = "bernoulli"

    def forward(self, raw: torch.Tensor) -> Distribution:
        """raw: logits [..., D] → Independent Bernoulli, event_shape [D]."""
        return Independent(TorchBernoulli(logits=raw, validate_args=False), 1, validate_args=False)

    def check_support(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        low, high = x.min().item(), x.max().item()
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"{name}: the Bernoulli likelihood expects values in [0, 1], "
                f"got values in [{low:g}, {high:g}]"
            )
        return x


SCALE_MODES = ("network", "learned", "fixed")
TRANSFORMS = ("softplus", "exp")


class Gaussian(Likelihood):
    """p(x | z) = N(x; μ_θ(z), diag σ²).

    Args:
        data_dim: D; required when ``scale="learned"``.
        scale: ``"network"`` — the decoder outputs [μ, raw σ] (2·D numbers), the lecture's
            μ_θ(z), σ_θ(z); ``"learned"`` — one learned σ_d per dimension; ``"fixed"`` —
            σ = ``fixed_scale``.
        transform: ``"softplus"`` or ``"exp"`` maps raw numbers to σ > 0.
        min_scale: floor added to σ so log_prob stays finite when σ would collapse.
    """

    name = "gaussian"

    def __init__(
        self,
        data_dim: int | None = None,
        scale: str = "network",
        transform: str = "softplus",
        min_scale: float = 1e-3,
        fixed_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.scale_mode = _checks.one_of("scale", scale, SCALE_MODES)
        self.transform = _checks.one_of("transform", transform, TRANSFORMS)
        self.min_scale = float(min_scale) if min_scale == 0 else _checks.positive_float(
            "min_scale", min_scale)
        self.fixed_scale = _checks.positive_float("fixed_scale", fixed_scale)
        self.data_dim = None if data_dim is None else _checks.positive_int("data_dim", data_dim)
        self.params_per_dim = 2 if self.scale_mode == "network" else 1
        if self.scale_mode == "learned":
            if self.data_dim is None:
                raise ValueError(
                    "data_dim: expected an integer >= 1 when scale='learned', got None")
            self.raw_scale = nn.Parameter(torch.full((self.data_dim,), self._inverse(1.0)))

    def _inverse(self, s: float) -> float:
        s = s - self.min_scale
        return math.log(s) if self.transform == "exp" else math.log(math.expm1(s))

    def positive(self, raw: torch.Tensor) -> torch.Tensor:
        """Map raw numbers to σ = transform(raw) + min_scale > 0."""
        pos = torch.exp(raw) if self.transform == "exp" else F.softplus(raw)
        return pos + self.min_scale

    def forward(self, raw: torch.Tensor) -> Distribution:
        """raw: [..., D] (or [..., 2D] for scale='network') → Independent Normal, event [D]."""
        if self.scale_mode == "network":
            loc, raw_scale = raw.chunk(2, dim=-1)
            scale = self.positive(raw_scale)
        elif self.scale_mode == "learned":
            loc, scale = raw, self.positive(self.raw_scale).expand_as(raw)
        else:
            loc, scale = raw, torch.full_like(raw, self.fixed_scale)
        return Independent(TorchNormal(loc, scale, validate_args=False), 1, validate_args=False)

    def config(self) -> dict:
        return {
            "name": self.name, "data_dim": self.data_dim, "scale": self.scale_mode,
            "transform": self.transform, "min_scale": self.min_scale,
            "fixed_scale": self.fixed_scale,
        }


LIKELIHOODS: dict[str, type[Likelihood]] = {"bernoulli": Bernoulli, "gaussian": Gaussian}


def from_config(config: dict) -> Likelihood:
    """Rebuild a likelihood from :meth:`Likelihood.config` output."""
    config = dict(config)
    name = _checks.one_of("likelihood", config.pop("name", None), tuple(LIKELIHOODS))
    return LIKELIHOODS[name](**config)
