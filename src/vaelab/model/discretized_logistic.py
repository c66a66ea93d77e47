"""The discretized logistic (mixture) likelihood of 8-bit data (Salimans, Karpathy, Chen &
Kingma 2017, PixelCNN++): per dimension a K-component mixture of logistics, each integrated
over the 256 bins of width 1/255 of x = k/255, so ``log_prob`` is a normalised probability of
8-bit (and binary) data.

* :class:`DiscretizedLogisticMixtureDistribution` — the distribution, on ``torch.distributions``.
* :class:`DiscretizedLogisticMixture` — its likelihood, 3·K decoder numbers per dimension.
* :class:`DiscretizedLogistic` — the one-component case, 2 numbers per dimension.

The rest of the observation models, the :class:`~vaelab.model.likelihoods.Likelihood` base
and its registry are in ``vaelab.model.likelihoods``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import Distribution

from vaelab import _checks
from vaelab.model.likelihoods import (
    EIGHT_BIT_MAX,
    Likelihood,
    _mean_of_levels,  # shared with the dequantized Gaussian's exact mean
    check_eight_bit,
)


def _log_bin_mass(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log P(bin of x) under Logistic(loc, scale) discretized to the 256 bins of width 1/255.

    Bin k covers [x − h, x + h] with h = 1/(2·255); bin 0 extends to −∞ and bin 255 to +∞
    (Salimans et al. 2017). With a = (x + h − loc)/s, b = (x − h − loc)/s,
    σ(a) − σ(b) = σ(a)·σ(−b)·(1 − e^{−(a−b)}), computed in log space (stable for any s).
    """
    half = 0.5 / EIGHT_BIT_MAX
    upper = (x + half - loc) / scale
    lower = (x - half - loc) / scale
    interior = (F.logsigmoid(upper) + F.logsigmoid(-lower)
                + torch.log(-torch.expm1(-(upper - lower))))
    first = x < half                      # k = 0
    last = x > 1 - half                   # k = 255
    return torch.where(first, F.logsigmoid(upper),
                       torch.where(last, F.logsigmoid(-lower), interior))


class DiscretizedLogisticMixtureDistribution(Distribution):
    """Per dimension, a K-component mixture of logistics discretized to 8-bit values.

    Parameters [..., D, K]: ``logits`` (mixture weights), ``loc``, ``scale`` > 0, on the data
    scale x = k/255. ``log_prob(x)`` for x [..., D] → Σ_d log Σ_j π_j P_j(bin of x_d), [...].
    Batch [...], event [D]. Dimensions are independent given z (no PixelCNN++ channel
    coupling: the decoder has the latent code, not the other channels).
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> None:
        self.logits, self.loc, self.scale = logits, loc, scale
        super().__init__(loc.shape[:-2], loc.shape[-2:-1], validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        """E[x] = Σ_j π_j Σ_{k=1}^{255} P_j(x ≥ k/255) / 255 exactly (bin k starts at
        (k − 1/2)/255), [..., D]; 255 sigmoids per value, so about as costly as 50 log_probs
        (the plug-in Σ_j π_j clamp(μ_j, 0, 1) is off by up to s near 0 and 1)."""
        return _mean_of_levels(self.loc, self.scale, torch.sigmoid_, EIGHT_BIT_MAX, offset=0.5,
                               weights=self.logits.softmax(-1))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """x [..., D] (k/255 values) → log P(x) [...], summed over the D dimensions."""
        per = _log_bin_mass(value.unsqueeze(-1), self.loc, self.scale)     # [..., D, K]
        return (per + self.logits.log_softmax(-1)).logsumexp(-1).sum(-1)

    def log_prob_per_dim(self, value: torch.Tensor) -> torch.Tensor:
        """log P(x_d) per dimension, [..., D] (masked bounds sum it over observed entries)."""
        per = _log_bin_mass(value.unsqueeze(-1), self.loc, self.scale)     # [..., D, K]
        return (per + self.logits.log_softmax(-1)).logsumexp(-1)

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> torch.Tensor:
        """Component j ~ π, logistic draw, rounded to the nearest bin; → [*shape, ..., D]."""
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.loc.shape
            gumbel = -torch.log(-torch.log(torch.rand(shape, dtype=self.loc.dtype,
                                                      device=self.loc.device)))
            pick = (self.logits + gumbel).argmax(-1, keepdim=True)
            loc = self.loc.expand(shape).gather(-1, pick).squeeze(-1)
            scale = self.scale.expand(shape).gather(-1, pick).squeeze(-1)
            u = torch.rand_like(loc).clamp(1e-6, 1 - 1e-6)
            x = loc + scale * (torch.log(u) - torch.log1p(-u))
            return (x * EIGHT_BIT_MAX).round().clamp(0, EIGHT_BIT_MAX) / EIGHT_BIT_MAX


class DiscretizedLogisticMixture(Likelihood):
    """p(x | z) = ∏_d Σ_j π_dj DiscretizedLogistic(x_d; μ_dj, s_dj), x_d ∈ {0, 1/255, …, 1}.

    The decoder gives 3·K numbers per dimension, laid out [logits | loc | raw scale] × K × D;
    s = softplus(raw) + ``min_scale``. A normalised probability of 8-bit data (and of binary
    data, as values 0 and 255): bits/dim are reported. Salimans et al. (2017).
    """

    name = "discretized-logistic-mixture"
    meaning = {"8-bit": "probability", "binary": "probability"}
    support = "8-bit"

    @classmethod
    def from_options(cls, data_dim: int | None = None, data_kind: str | None = None, *,
                     components: int = 5) -> Likelihood:
        """K = ``components`` (``--likelihood-components``)."""
        return cls(components)

    def __init__(self, components: int = 5, min_scale: float = 1e-4) -> None:
        super().__init__()
        self.components = _checks.positive_int("components", components)
        self.min_scale = _checks.positive_float("min_scale", min_scale)
        self.params_per_dim = 3 * self.components

    def forward(self, raw: torch.Tensor) -> Distribution:
        """raw [..., 3K·D] → distribution with batch [...], event [D]."""
        k = self.components
        raw = raw.unflatten(-1, (3, k, raw.shape[-1] // (3 * k))).movedim(-1, -2)
        logits, loc, raw_scale = raw.unbind(-3)                       # each [..., D, K]
        return DiscretizedLogisticMixtureDistribution(
            logits, loc, F.softplus(raw_scale) + self.min_scale)

    def check_support(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        return check_eight_bit(x, name, self.name)

    def config(self) -> dict:
        return {"name": self.name, "components": self.components, "min_scale": self.min_scale}


class DiscretizedLogistic(DiscretizedLogisticMixture):
    """The one-component case: p(x_d | z) = DiscretizedLogistic(x_d; μ_d, s_d); 2 numbers per
    dimension [loc | raw scale] × D. Salimans et al. (2017)."""

    name = "discretized-logistic"

    @classmethod   # the one-component case has no ``components`` option (the catalogue's too)
    def from_options(cls, data_dim: int | None = None,  # type: ignore[override]
                     data_kind: str | None = None) -> Likelihood:
        """No options: one logistic per value."""
        return cls()

    def __init__(self, min_scale: float = 1e-4) -> None:
        super().__init__(1, min_scale)
        self.params_per_dim = 2

    def forward(self, raw: torch.Tensor) -> Distribution:
        loc, raw_scale = raw.unflatten(-1, (2, raw.shape[-1] // 2)).unsqueeze(-1).unbind(-3)
        return DiscretizedLogisticMixtureDistribution(
            torch.zeros_like(loc), loc, F.softplus(raw_scale) + self.min_scale)

    def config(self) -> dict:
        return {"name": self.name, "min_scale": self.min_scale}
