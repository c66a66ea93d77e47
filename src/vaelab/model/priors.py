"""Priors p(z): modules that return a ``torch.distributions.Distribution`` when called.

* :class:`StandardNormal` — N(0, I), the lecture's simplest prior.
* :class:`LearnedNormal` — N(μ, diag σ²) with learned μ, σ (the lecture's "the parameters of
  that Gaussian are learned").

A prior has batch_shape [] and event_shape [latent_dim]; buffers and parameters follow the
module to its device and dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from vaelab import _checks


class StandardNormal(nn.Module):
    """p(z) = N(0, I_L)."""

    name = "standard_normal"

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = _checks.positive_int("latent_dim", latent_dim)
        self.register_buffer("loc", torch.zeros(self.latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(self.latent_dim), persistent=False)

    def forward(self) -> Distribution:
        """→ Independent(Normal(0, 1), 1): batch [], event [L]."""
        return Independent(Normal(self.loc, self.scale, validate_args=False), 1,
                           validate_args=False)

    def config(self) -> dict:
        return {"name": self.name, "latent_dim": self.latent_dim}


class LearnedNormal(StandardNormal):
    """p(z) = N(μ, diag σ²) with μ and σ = softplus(ρ) learned, initialized at N(0, I)."""

    name = "learned_normal"

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.learned_loc = nn.Parameter(torch.zeros(self.latent_dim))
        self.raw_scale = nn.Parameter(torch.full((self.latent_dim,), 0.5413248546129181))

    def forward(self) -> Distribution:
        scale = F.softplus(self.raw_scale)
        return Independent(Normal(self.learned_loc, scale, validate_args=False), 1,
                           validate_args=False)


PRIORS: dict[str, type[StandardNormal]] = {
    "standard_normal": StandardNormal, "learned_normal": LearnedNormal,
}


def from_config(config: dict) -> StandardNormal:
    """Rebuild a prior from its ``config()``."""
    config = dict(config)
    name = _checks.one_of("prior", config.pop("name", None), tuple(PRIORS))
    return PRIORS[name](**config)
