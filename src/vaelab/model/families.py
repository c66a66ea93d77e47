"""Variational families q(z): raw parameters (from an encoder or a free table) → Distribution.

Every family returns a ``torch.distributions.Distribution`` with batch_shape [B] and
event_shape [latent_dim] that supports ``rsample`` (the reparameterization trick,
Kingma & Welling 2014), so the same ELBO code serves all of them.

* :class:`DiagonalNormal` — N(loc, diag scale²), the standard VAE posterior.
* :class:`FullCovarianceNormal` — N(loc, L Lᵀ) with a Cholesky factor L, a richer q that can
  represent correlated posteriors (it is exact for linear-Gaussian models).

This module also registers closed-form KL divergences between a full-covariance Normal and an
``Independent(Normal)`` so ``kl_divergence`` works for every Gaussian pairing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal
from torch.distributions.kl import register_kl

from vaelab import _checks


class Family(nn.Module):
    """Base: ``param_size`` raw numbers per data point → q(z) with event_shape [latent_dim]."""

    name = "family"

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = _checks.positive_int("latent_dim", latent_dim)

    @property
    def param_size(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def initial_params(self, *batch: int, dtype: torch.dtype | None = None,
                       device: torch.device | str | None = None) -> torch.Tensor:
        """Raw parameters [*batch, param_size] giving q = N(0, I): a neutral starting point.

        ``dtype`` and ``device`` default to torch's defaults; ask for float64 here rather than
        casting a float32 result, which would leave the scale 1 ± 1e-8.
        """
        raise NotImplementedError

    def config(self) -> dict:
        return {"name": self.name, "latent_dim": self.latent_dim}


class DiagonalNormal(Family):
    """q(z) = N(z; loc, diag(scale²)); raw [..., 2L] = [loc, raw_scale], scale = softplus + floor.

    Args:
        latent_dim: L.
        min_scale: floor on the scale, keeps log q finite.
    """

    name = "diagonal_normal"

    def __init__(self, latent_dim: int, min_scale: float = 1e-5) -> None:
        super().__init__(latent_dim)
        self.min_scale = float(min_scale)

    @property
    def param_size(self) -> int:
        return 2 * self.latent_dim

    def forward(self, raw: torch.Tensor) -> Distribution:
        """raw: [..., 2L] → Independent(Normal(loc, scale), 1), batch [...], event [L]."""
        loc, raw_scale = raw.chunk(2, dim=-1)
        return self.from_params(loc, F.softplus(raw_scale) + self.min_scale)

    @staticmethod
    def from_params(loc: torch.Tensor, scale: torch.Tensor) -> Distribution:
        """Build q from loc and scale, both [..., L]."""
        return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)

    def initial_params(self, *batch: int, dtype: torch.dtype | None = None,
                       device: torch.device | str | None = None) -> torch.Tensor:
        raw = torch.zeros(*batch, self.param_size, dtype=dtype, device=device)
        raw[..., self.latent_dim:] = math.log(math.expm1(1.0 - self.min_scale))
        return raw

    def config(self) -> dict:
        return {**super().config(), "min_scale": self.min_scale}


class FullCovarianceNormal(Family):
    """q(z) = N(z; loc, L Lᵀ); raw [..., L + L(L+1)/2] = [loc, lower triangle of L].

    The diagonal of the Cholesky factor goes through softplus + ``min_scale``.
    """

    name = "full_covariance_normal"

    def __init__(self, latent_dim: int, min_scale: float = 1e-5) -> None:
        super().__init__(latent_dim)
        self.min_scale = float(min_scale)
        rows, cols = torch.tril_indices(latent_dim, latent_dim)
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)

    @property
    def param_size(self) -> int:
        return self.latent_dim + self.latent_dim * (self.latent_dim + 1) // 2

    def forward(self, raw: torch.Tensor) -> Distribution:
        """raw: [..., param_size] → MultivariateNormal, batch [...], event [L]."""
        L = self.latent_dim
        loc, tri = raw[..., :L], raw[..., L:]
        tril = raw.new_zeros(*raw.shape[:-1], L, L)
        tril[..., self._rows, self._cols] = tri
        diag = F.softplus(tril.diagonal(dim1=-2, dim2=-1)) + self.min_scale
        tril = tril.tril(-1) + torch.diag_embed(diag)
        return MultivariateNormal(loc, scale_tril=tril, validate_args=False)

    def initial_params(self, *batch: int, dtype: torch.dtype | None = None,
                       device: torch.device | str | None = None) -> torch.Tensor:
        raw = torch.zeros(*batch, self.param_size, dtype=dtype, device=device)
        diag_pos = self.latent_dim + torch.nonzero(self._rows == self._cols).squeeze(-1)
        raw[..., diag_pos] = math.log(math.expm1(1.0 - self.min_scale))
        return raw

    def config(self) -> dict:
        return {**super().config(), "min_scale": self.min_scale}


FAMILIES: dict[str, type[Family]] = {
    "diagonal_normal": DiagonalNormal,
    "full_covariance_normal": FullCovarianceNormal,
}


def from_config(config: dict) -> Family:
    """Rebuild a family from :meth:`Family.config` output."""
    config = dict(config)
    name = _checks.one_of("family", config.pop("name", None), tuple(FAMILIES))
    return FAMILIES[name](**config)


def _is_diagonal_normal(d: Distribution) -> bool:
    return isinstance(d, Independent) and isinstance(d.base_dist, Normal) and (
        d.reinterpreted_batch_ndims == 1
    )


def as_multivariate_normal(d: Independent) -> MultivariateNormal:
    """View an Independent(Normal, 1) as the equivalent MultivariateNormal (diagonal)."""
    return MultivariateNormal(d.base_dist.loc, scale_tril=torch.diag_embed(d.base_dist.scale))


@register_kl(MultivariateNormal, Independent)
def _kl_mvn_independent(p: MultivariateNormal, q: Independent) -> torch.Tensor:
    if not _is_diagonal_normal(q):
        raise NotImplementedError
    return torch.distributions.kl_divergence(p, as_multivariate_normal(q))


@register_kl(Independent, MultivariateNormal)
def _kl_independent_mvn(p: Independent, q: MultivariateNormal) -> torch.Tensor:
    if not _is_diagonal_normal(p):
        raise NotImplementedError
    return torch.distributions.kl_divergence(as_multivariate_normal(p), q)
