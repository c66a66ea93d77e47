"""Variational families q(z): raw parameters (from an encoder or a free table) → Distribution.

Every family returns a ``torch.distributions.Distribution`` with batch_shape [B] and
event_shape [latent_dim] that supports ``rsample`` (the reparameterization trick,
Kingma & Welling 2014), so the same ELBO code serves all of them.

* :class:`DiagonalNormal` — N(loc, diag scale²), the standard VAE posterior.
* :class:`FullCovarianceNormal` — N(loc, L Lᵀ) with a Cholesky factor L, a richer q that can
  represent correlated posteriors (it is exact for linear-Gaussian models).
* :class:`MixtureNormal` — Σ_k π_k N(loc_k, diag scale_k²), K diagonal components
  (``MixtureSameFamily``; no ``rsample``: train it with the stratified estimator, Roeder, Grant,
  Phillips, Dalton & Marks 2017, Morningstar, Vikram, Ham, Gallagher & Dillon 2021).
* :class:`IAFNormal` — a diagonal Normal pushed through T inverse autoregressive flow steps
  whose MADEs also read a context vector h from the encoder (Kingma, Salimans, Jozefowicz,
  Chen, Sutskever & Welling 2016; MADE: Germain et al. 2015), see ``vaelab.model.flows``.

This module also registers closed-form KL divergences between a full-covariance Normal and an
``Independent(Normal)`` so ``kl_divergence`` works for every Gaussian pairing.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    Transform,
    TransformedDistribution,
)
from torch.distributions.kl import register_kl
from torch.distributions.utils import _standard_normal

from vaelab import _checks, catalogue
from vaelab.model import draws, flows


class Family(nn.Module):
    """Base: ``param_size`` raw numbers per data point → q(z) with event_shape [latent_dim]."""

    name = "family"
    #: A mixture q has no ``rsample``: objectives take the stratified expectation over its
    #: components (the catalogue's ``mixture`` fact says the same for torch-free code).
    is_mixture: bool = False

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = _checks.positive_int("latent_dim", latent_dim)

    @classmethod
    def from_options(cls, latent_dim: int) -> Family:
        """This family over ``latent_dim`` latents from its catalogue options (none here)."""
        return cls(latent_dim)

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


def _softplus_inverse_one(min_scale: float) -> float:
    """raw with softplus(raw) + min_scale = 1."""
    return math.log(math.expm1(1.0 - min_scale))


class DiagonalNormal(Family):
    """q(z) = N(z; loc, diag(scale²)); raw [..., 2L] = [loc, raw_scale], scale = softplus + floor.

    With log-variance bounds [lo, hi] (``--q-min-logvar``, ``--q-max-logvar``; either may be
    absent) the scale is then clamped to [e^{lo/2}, e^{hi/2}], i.e. log σ² to [lo, hi], as the
    VampPrior code's hard-tanh on log σ² does (Tomczak & Welling 2018): an encoder whose raw
    output runs off to ±∞ still gives a finite, bounded q, while inside the bounds the scale
    and its gradient are exactly those of the unbounded family (outside, the gradient of the
    scale is 0, the price of a hard clamp).

    Args:
        latent_dim: L.
        min_scale: floor on the scale, keeps log q finite.
        min_logvar, max_logvar: the bounds on log σ² (None: unbounded on that side).
    """

    name = "diagonal_normal"

    def __init__(self, latent_dim: int, min_scale: float = 1e-5, min_logvar: float | None = None,
                 max_logvar: float | None = None) -> None:
        super().__init__(latent_dim)
        self.min_scale = float(min_scale)
        self.min_logvar, self.max_logvar = logvar_bounds(min_logvar, max_logvar)

    @classmethod
    def from_options(cls, latent_dim: int, *, min_logvar: float | None = None,
                     max_logvar: float | None = None) -> DiagonalNormal:
        """Over ``latent_dim`` latents, log σ² bounded by ``min_logvar``/``max_logvar``."""
        return cls(latent_dim, min_logvar=min_logvar, max_logvar=max_logvar)

    @property
    def bounded(self) -> bool:
        """Whether log σ² is clamped (code that computes q's scale by hand must not run)."""
        return self.min_logvar is not None or self.max_logvar is not None

    @property
    def param_size(self) -> int:
        return 2 * self.latent_dim

    def forward(self, raw: torch.Tensor) -> Distribution:
        """raw: [..., 2L] → Independent(Normal(loc, scale), 1), batch [...], event [L]."""
        loc, raw_scale = raw.chunk(2, dim=-1)
        scale = F.softplus(raw_scale) + self.min_scale
        if self.bounded:
            scale = clamp_logvar(scale, self.min_logvar, self.max_logvar)
        return self.from_params(loc, scale)

    @staticmethod
    def from_params(loc: torch.Tensor, scale: torch.Tensor) -> Distribution:
        """Build q from loc and scale, both [..., L]."""
        return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)

    def initial_params(self, *batch: int, dtype: torch.dtype | None = None,
                       device: torch.device | str | None = None) -> torch.Tensor:
        raw = torch.zeros(*batch, self.param_size, dtype=dtype, device=device)
        raw[..., self.latent_dim:] = _softplus_inverse_one(self.min_scale)
        return raw

    def config(self) -> dict:
        bounds = {k: v for k, v in (("min_logvar", self.min_logvar),
                                    ("max_logvar", self.max_logvar)) if v is not None}
        return {**super().config(), "min_scale": self.min_scale, **bounds}


def logvar_bounds(low: float | None, high: float | None) -> tuple[float | None, float | None]:
    """(low, high) checked: finite numbers or None, low < high when both are given."""
    out = []
    for name, value in (("q_min_logvar (--q-min-logvar)", low),
                        ("q_max_logvar (--q-max-logvar)", high)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise ValueError(f"{name}: expected a finite number (a bound on log σ²) or none, "
                             f"got {value!r}")
        out.append(None if value is None else float(value))
    if out[0] is not None and out[1] is not None and not out[0] < out[1]:
        raise ValueError(f"q_min_logvar (--q-min-logvar): expected a lower bound below "
                         f"q_max_logvar {out[1]:g}, got {out[0]:g}")
    return out[0], out[1]


def clamp_logvar(scale: torch.Tensor, low: float | None, high: float | None) -> torch.Tensor:
    """σ with log σ² clamped to [low, high] (None: no bound): σ clamped to [e^{low/2},
    e^{high/2}], the identity (value and gradient) strictly inside."""
    return scale.clamp(None if low is None else math.exp(0.5 * low),
                       None if high is None else math.exp(0.5 * high))


class DrawnMultivariateNormal(MultivariateNormal):
    """N(loc, L Lᵀ) whose ``log_prob`` of its own last draw reads the draw's ε, not z − loc.

    z = loc + L ε is rounded to the float type; recovering ε from it by the triangular solve
    divides that rounding by L's diagonal and carries it down the rows, so an ill-conditioned
    L (diagonal near ``min_scale``, large off-diagonal) turns a 1e-6 rounding of z into ε of
    1e4 or more and log q of q's own draw into −1e10: an ELBO of +1e10 that the optimizer then
    chases. At its own draw log q = log N(ε; 0, I) − Σ log L_ii exactly; the value uses the
    drawn ε and the gradient (in z, loc and L, at that ε) goes through a zero-valued solve.
    Any other point, or the draw changed in place, takes MultivariateNormal's log_prob.
    """

    #: the last draw z (with what tells it unchanged, ``vaelab.model.draws``) and its ε
    _draw: tuple[draws.DrawRecord, torch.Tensor] | None = None

    def rsample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()
                ) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        # torch's own draw, so a run's random stream is MultivariateNormal's
        eps = _standard_normal(shape, dtype=self.loc.dtype, device=self.loc.device)
        z = self.loc + (self._unbroadcasted_scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
        self._draw = (draws.record(z), eps)
        return z

    @property
    def drawn_eps(self) -> torch.Tensor | None:
        """ε of the last draw (None before any): a layered q reads it back at its own draw."""
        return None if self._draw is None else self._draw[1]

    def _is_draw(self, value: torch.Tensor) -> bool:
        return self._draw is not None and draws.is_draw(value, self._draw[0])

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if not self._is_draw(value):
            return super().log_prob(value)
        assert self._draw is not None
        return self.log_prob_at(value, self._draw[1])

    def log_prob_at(self, value: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """log q(value) for value = loc + L ε drawn with this ``eps`` (by this q, or by one
        with the same loc and L): log N(ε; 0, I) − Σ log L_ii, with the gradient of the
        density at value (in value, loc and L) through a zero-valued solve."""
        tril, loc = self._unbroadcasted_scale_tril, self.loc
        # zero in value; its gradient is that of L⁻¹(value − loc) at ε: L⁻¹(dz − dloc − dL ε)
        delta = ((value - value.detach()) - (loc - loc.detach())
                 - ((tril - tril.detach()) @ eps.unsqueeze(-1)).squeeze(-1))
        if delta.requires_grad:
            tril_b = tril.detach().expand(*delta.shape, delta.shape[-1])
            eps = eps + torch.linalg.solve_triangular(tril_b, delta.unsqueeze(-1),
                                                      upper=False).squeeze(-1)
        half_log_det = tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return (-0.5 * (self._event_shape[0] * math.log(2 * math.pi) + eps.pow(2).sum(-1))
                - half_log_det)


class FullCovarianceNormal(Family):
    """q(z) = N(z; loc, L Lᵀ); raw [..., L + L(L+1)/2] = [loc, lower triangle of L].

    The diagonal of the Cholesky factor goes through softplus + ``min_scale``. q is a
    :class:`DrawnMultivariateNormal`: log q of its own draws stays exact when L is
    ill-conditioned (an MC KL against a prior with no closed form reads it).
    """

    name = "full_covariance_normal"
    _rows: torch.Tensor      # buffers: the lower triangle's indices
    _cols: torch.Tensor

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
        return DrawnMultivariateNormal(loc, scale_tril=tril, validate_args=False)

    def initial_params(self, *batch: int, dtype: torch.dtype | None = None,
                       device: torch.device | str | None = None) -> torch.Tensor:
        raw = torch.zeros(*batch, self.param_size, dtype=dtype, device=device)
        diag_pos = self.latent_dim + torch.nonzero(self._rows == self._cols).squeeze(-1)
        raw[..., diag_pos] = _softplus_inverse_one(self.min_scale)
        return raw

    def config(self) -> dict:
        return {**super().config(), "min_scale": self.min_scale}


class MixtureNormal(Family):
    """q(z) = Σ_k π_k N(z; loc_k, diag scale_k²), K components, a ``MixtureSameFamily``.

    raw [..., K + 2KL] = [logits (K), then per component [loc (L), raw_scale (L)]];
    π = softmax(logits), scale = softplus(raw_scale) + ``min_scale``. With K = 1 it is
    :class:`DiagonalNormal` of raw[..., 1:] exactly.

    Interface for the stratified estimator (Morningstar et al. 2021): the returned q has
    ``q.component_distribution`` = Independent(Normal), batch [..., B, K], event [L], whose
    ``rsample`` gives reparameterized draws from every component, and
    ``q.mixture_distribution.logits`` [..., B, K] (normalized log π). ``q.log_prob`` is the
    mixture density; ``q.sample`` draws from the mixture (not reparameterizable: q has no
    ``rsample``, so an ELBO must take the stratified expectation
    Σ_k π_k E_{q_k}[log p(x, z) − log q(z)]).
    """

    name = "mixture"
    is_mixture = True

    @classmethod
    def from_options(cls, latent_dim: int, *, components: int = 4) -> MixtureNormal:
        """K = ``components`` (``--q-components``)."""
        return cls(latent_dim, components)

    def __init__(self, latent_dim: int, components: int = 4, min_scale: float = 1e-5) -> None:
        super().__init__(latent_dim)
        self.components = _checks.positive_int("components", components)
        self.min_scale = float(min_scale)

    @property
    def param_size(self) -> int:
        return self.components * (1 + 2 * self.latent_dim)

    def forward(self, raw: torch.Tensor) -> MixtureSameFamily:
        """raw [..., P] → MixtureSameFamily, batch [...], event [L]."""
        K = self.components
        logits, rest = raw[..., :K], raw[..., K:].unflatten(-1, (K, 2 * self.latent_dim))
        loc, raw_scale = rest.chunk(2, dim=-1)
        components = DiagonalNormal.from_params(loc, F.softplus(raw_scale) + self.min_scale)
        return MixtureSameFamily(Categorical(logits=logits, validate_args=False), components,
                                 validate_args=False)

    def initial_params(self, *batch: int, dtype: torch.dtype | None = None,
                       device: torch.device | str | None = None) -> torch.Tensor:
        """Every component N(0, I) with equal weights (the draws break the symmetry)."""
        raw = torch.zeros(*batch, self.components, 2 * self.latent_dim, dtype=dtype,
                          device=device)
        raw[..., self.latent_dim:] = _softplus_inverse_one(self.min_scale)
        logits = torch.zeros(*batch, self.components, dtype=dtype, device=device)
        return torch.cat([logits, raw.flatten(-2)], dim=-1)

    def config(self) -> dict:
        return {**super().config(), "components": self.components, "min_scale": self.min_scale}


MEAN_SAMPLES = 256


class IAFDistribution(TransformedDistribution):
    """A ``TransformedDistribution`` whose ``mean`` is a seeded Monte Carlo estimate.

    E_q[z] has no closed form for a flow; ``mean`` averages ``MEAN_SAMPLES`` draws made with a
    private generator (seed 0), so it is deterministic, leaves torch's global RNG alone and has
    a standard error of about std(z) / 16 per coordinate.
    """

    #: ``mean`` is an estimate costing MEAN_SAMPLES flow passes per row: callers that only
    #: need a statistic over many rows (the validation's active units) may use fewer rows.
    mean_is_estimate = True

    @property
    def mean(self) -> torch.Tensor:
        base = cast(Independent, self.base_dist).base_dist   # the diagonal Normal of z₀
        generator = torch.Generator(device=base.loc.device).manual_seed(0)
        shape = (MEAN_SAMPLES, *base.loc.shape)
        eps = torch.randn(shape, generator=generator, dtype=base.loc.dtype,
                          device=base.loc.device)
        z = base.loc + base.scale * eps
        for transform in self.transforms:
            z = transform(z)
        return z.mean(0)


class IAFNormal(Family):
    """q(z | x): z_0 ~ N(loc, diag scale²), z_t = μ_t + exp(s_t) ⊙ z_{t−1}, t = 1..T.

    (μ_t, s_t) = MADE_t(z_{t−1}, h) with the autoregressive order reversed at every step
    (Kingma et al. 2016, eq. 10, with the context h). log q(z_T) = log N(z_0) − Σ_t Σ_i s_{t,i}.
    With ``update="gated"`` each step is their stable form z_t = σ_t ⊙ z_{t−1} + (1 − σ_t) ⊙
    m_t, σ_t = sigmoid(raw + 2) (:class:`~vaelab.model.flows.AffineAutoregressive`): steps only
    contract, and a fresh step scales z by sigmoid(2) = 0.88 instead of being the identity.
    raw [..., 2L + C] = [loc, raw_scale, h]; the MADEs are this module's parameters (shared
    by all data points: φ). An affine step starts as the identity (zero output layers), so
    :meth:`initial_params` gives q = N(0, I) before training. No KL has a closed form: the
    objectives use the Monte Carlo KL. Density of a point not drawn from q costs L MADE passes
    per step (the draws themselves are cached).

    Args:
        latent_dim: L. steps: T ≥ 1 (``--q-flow-steps``). context_dim: C (default max(2L, 16)).
        hidden: MADE hidden sizes (default two layers of max(4L, 32)). min_scale: as
            :class:`DiagonalNormal`. update: "affine" or "gated" (``--q-flow-update``).
    """

    name = "iaf"

    @classmethod
    def from_options(cls, latent_dim: int, *, flow_steps: int = 2,
                     flow_update: str = "affine") -> IAFNormal:
        """T = ``flow_steps`` (``--q-flow-steps``); ``flow_update`` (``--q-flow-update``):
        "affine" or "gated" steps."""
        return cls(latent_dim, flow_steps, update=flow_update)

    def __init__(self, latent_dim: int, steps: int = 2, context_dim: int | None = None,
                 hidden: tuple[int, ...] | list[int] | None = None,
                 min_scale: float = 1e-5, update: str = "affine") -> None:
        super().__init__(latent_dim)
        self.steps = _checks.positive_int("steps", steps)
        self.update = _checks.one_of("update", update, ("affine", "gated"))
        L = self.latent_dim
        self.context_dim = _checks.positive_int(
            "context_dim", max(2 * L, 16) if context_dim is None else context_dim)
        width = max(4 * L, 32)
        self.hidden = tuple((width, width) if hidden is None else hidden)
        self.min_scale = float(min_scale)
        self.mades = flows.made_stack(L, self.steps, self.hidden, self.context_dim)

    @property
    def param_size(self) -> int:
        return 2 * self.latent_dim + self.context_dim

    def forward(self, raw: torch.Tensor) -> IAFDistribution:
        """raw [..., 2L + C] → IAFDistribution, batch [...], event [L] (rsample, log_prob)."""
        L = self.latent_dim
        base = DiagonalNormal.from_params(raw[..., :L],
                                          F.softplus(raw[..., L:2 * L]) + self.min_scale)
        context = raw[..., 2 * L:]
        steps: list[Transform] = [
            flows.AffineAutoregressive(cast(flows.MADE, made), context, "input",
                                       gated=self.update == "gated") for made in self.mades]
        return IAFDistribution(base, steps, validate_args=False)

    def initial_params(self, *batch: int, dtype: torch.dtype | None = None,
                       device: torch.device | str | None = None) -> torch.Tensor:
        raw = torch.zeros(*batch, self.param_size, dtype=dtype, device=device)
        raw[..., self.latent_dim:2 * self.latent_dim] = _softplus_inverse_one(self.min_scale)
        return raw

    def config(self) -> dict:
        return {**super().config(), "steps": self.steps, "context_dim": self.context_dim,
                "hidden": list(self.hidden), "min_scale": self.min_scale,
                "update": self.update}


#: saved name → class: every Family defined above (the catalogue test pins it to its entries).
FAMILIES: dict[str, type[Family]] = {
    c.name: c for c in list(globals().values())
    if isinstance(c, type) and issubclass(c, Family) and c is not Family}


def from_config(config: dict) -> Family:
    """Rebuild a family from :meth:`Family.config` output."""
    config = dict(config)
    name = _checks.one_of("family", config.pop("name", None), tuple(FAMILIES))
    return FAMILIES[name](**config)


def build(name: str, latent_dim: int, **options: object) -> Family:
    """The family called ``name`` (either spelling) with its catalogue options, e.g.
    ``build("mixture", 20, components=4)``; an option the family lacks is an error."""
    return catalogue.get("family", name).build(latent_dim, **options)


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
