"""Variational objectives: the ELBO and the importance-weighted bound, one value per data point.

For any q(z) and x (the lecture's central inequality):

    log p_θ(x) ≥ ELBO(x; θ, q) = E_q[log p_θ(x, z)] + H(q) = E_q[log p_θ(x | z)] − KL(q ‖ p(z)),

with gap log p_θ(x) − ELBO = KL(q ‖ p_θ(z | x)) (Kingma & Welling 2014; Jordan et al. 1999).
The importance-weighted bound (Burda, Grosse & Salakhutdinov 2016)

    L_k = E[log (1/k) Σ_i p(x, z_i) / q(z_i)],  z_i ~ q,

rises with k towards log p(x). Every function takes a model through the protocol of
``vaelab.model.vae`` (``prior()``, ``decode(z)``, ``log_joint(x, z)``, ``check_data(x)``) and a
q with batch_shape [B], so neural and closed-form models share this code. Shapes: x [B, D],
samples [k, B, L], results [B].

Training objectives (:func:`training_terms`, one code path for every model, family, prior and
inference scheme; the trainer only reduces and differentiates the surrogate it returns):

* ``"elbo"`` — E_q[log p(x|z)] − β · KL, with optional free bits (Kingma et al. 2016, "Improved
  variational inference with inverse autoregressive flow", §C.8): per latent dimension j, the
  KL averaged over the batch is clamped from below, Σ_j max(λ, mean_b KL_bj) (see
  :func:`free_bits_kl` for the exact variant);
* ``"iwae"`` — L_K above (Burda et al. 2016), its ordinary reparameterized gradient;
* ``"iwae-dreg"`` — the same bound; θ gets the ordinary IWAE gradient, q's parameters the
  doubly-reparameterized gradient Σ_i w̃_i² ∂log w_i/∂z_i ∂z_i/∂φ (Tucker, Lawson, Gu &
  Maddison 2019), which has no score-function term, so its signal-to-noise ratio does not
  vanish as K grows (Rainforth et al. 2018).

For the IWAE objectives a KL weight β < 1 tempers the log-weights,
log w_i = log p(x|z_i) + β (log p(z_i) − log q(z_i)), which for K = 1 is the β-ELBO; DReG's
coefficient then becomes w̃_i ((1 − β) + β w̃_i) (the same derivation, with the score term
scaled by β). Whatever the objective, :func:`training_terms` also returns the true ELBO terms
(β = 1, no free bits) from the same draws, which is what is reported.

Mixture q (:func:`is_stratifiable`: a ``MixtureSameFamily`` with a ``Categorical`` mixing
distribution and a reparameterizable component distribution, batch [B, K]) is handled by the
stratified estimators, automatically, in :func:`elbo_terms`, :func:`iwae_bound` and
:func:`training_terms`: S reparameterized draws from every component k, weighted by the
mixture weights π_k, so the weights get exact gradients (Roeder, Wu & Duvenaud 2017;
Morningstar, Vikram, Ham, Gallagher & Dillon 2021, "Automatic differentiation variational
inference with mixtures"):

    ELBO = Σ_k π_k E_{z ~ q_k}[log p(x, z) − log q(z)],
    SIWAE_S = E[log (1/S) Σ_s Σ_k π_k p(x, z_ks) / q(z_ks)],  z_ks ~ q_k,

where q(z) = Σ_k π_k q_k(z) is the whole mixture's density; both are lower bounds on log p(x)
and SIWAE with S = 1 is at least the stratified ELBO.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple, Protocol, TypeGuard, cast

import torch
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    Normal,
    kl_divergence,
)

from vaelab import _checks, catalogue
from vaelab.model import _bernoulli_fast

if TYPE_CHECKING:
    from vaelab.model.vae import VAE

KL_MODES = ("auto", "analytic", "mc")
OBJECTIVES = catalogue.names("objective")

#: An ELBO below this (nats per example) means the model has diverged: no data set a model has
#: learned gives such a bound. Training (``vaelab.fit.train``) and evaluation
#: (``vaelab.measure.honest``) both warn on it.
DIVERGED_ELBO = -1e8


class GenerativeModel(Protocol):
    """What the objectives need of a model p(x, z)."""

    def prior(self) -> Distribution: ...
    def decode(self, z: torch.Tensor) -> Distribution: ...
    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor: ...
    def check_data(self, x: object, name: str = "x") -> torch.Tensor: ...


class ELBOTerms(NamedTuple):
    """Per-data-point ELBO and its two terms, each [B].

    ``expected_log_likelihood`` = E_q[log p(x | z)] (minus the distortion);
    ``kl`` = KL(q ‖ p(z)) (the rate); ``elbo`` = expected_log_likelihood − kl.
    """

    elbo: torch.Tensor
    expected_log_likelihood: torch.Tensor
    kl: torch.Tensor

    @property
    def distortion(self) -> torch.Tensor:
        """−E_q[log p(x | z)], [B]."""
        return -self.expected_log_likelihood

    @property
    def rate(self) -> torch.Tensor:
        """KL(q ‖ p(z)), [B]."""
        return self.kl


def check_inputs(model: GenerativeModel, q: Distribution, x: object,
                 num_samples: int) -> torch.Tensor:
    """Validate (model, q, x, num_samples) once; returns x. Raises ValueError/TypeError."""
    _checks.positive_int("num_samples", num_samples)
    x = model.check_data(x, "x")
    if not isinstance(q, Distribution):
        raise TypeError(f"q: expected a torch.distributions.Distribution, got {type(q).__name__}")
    prior_event = tuple(model.prior().event_shape)
    if tuple(q.event_shape) != prior_event:
        raise ValueError(f"q: expected event_shape {list(prior_event)} (the prior's), "
                         f"got {list(q.event_shape)}")
    if tuple(q.batch_shape) != (x.shape[0],):
        raise ValueError(f"q: expected batch_shape [{x.shape[0]}] (one q per row of x), "
                         f"got {list(q.batch_shape)}")
    return x


def _particles(q: Distribution, num_samples: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """z [S, B, ...] and weights [S, B] (None = uniform) for expectations under q.

    Reparameterized samples when q has rsample (Kingma & Welling 2014); exact enumeration
    of the support for discrete q that can be enumerated (e.g. Categorical).
    """
    if q.has_rsample:
        return q.rsample((num_samples,)), None
    if q.has_enumerate_support:
        z = q.enumerate_support(expand=True)
        return z, q.log_prob(z).exp()
    raise TypeError(f"q: expected a reparameterizable or enumerable distribution, "
                    f"got {type(q).__name__}")


def _expect(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return values.mean(0) if weights is None else (weights * values).sum(0)


def describe(d: Distribution) -> str:
    """Name a distribution for messages, looking through wrappers: 'Independent(Normal)'."""
    base = getattr(d, "base_dist", None)
    return type(d).__name__ if base is None else f"{type(d).__name__}({describe(base)})"


def _kl(q: Distribution, prior: Distribution, z: torch.Tensor, weights: torch.Tensor | None,
        kl: str) -> torch.Tensor:
    if kl != "mc":
        try:
            return kl_divergence(q, prior)
        except NotImplementedError:
            if kl == "analytic":
                raise ValueError(f"kl: 'analytic' needs a registered closed form for "
                                 f"KL({describe(q)} ‖ {describe(prior)}); "
                                 f"got none, use kl='mc' or 'auto'") from None
    return _expect(q.log_prob(z) - prior.log_prob(z), weights)


def elbo_terms(model: GenerativeModel, q: Distribution, x: torch.Tensor, num_samples: int = 1,
               kl: str = "auto", *, validate: bool = True) -> ELBOTerms:
    """ELBO(x; q) = E_q[log p(x | z)] − KL(q ‖ p(z)) per data point, with both terms.

    Args:
        model: a generative model (see ``GenerativeModel``).
        q: variational distribution, batch [B], event [L].
        x: data [B, D].
        num_samples: k reparameterized samples for the Monte Carlo expectations.
        kl: ``"analytic"`` — KL by ``torch.distributions.kl_divergence`` (error if the pair
            has no closed form); ``"mc"`` — the lecture's E_q[log p(x, z)] − E_q[log q(z)]
            form, estimated with the same samples; ``"auto"`` — analytic when registered.
        validate: check the inputs (set False on hot paths whose data were checked once).

    Returns:
        :class:`ELBOTerms` of tensors [B], differentiable w.r.t. θ and q's parameters.
    """
    kl = _checks.one_of("kl", kl, KL_MODES)
    if validate:
        x = check_inputs(model, q, x, num_samples)
    if is_stratifiable(q):
        if kl == "analytic":
            raise ValueError(f"kl: 'analytic' needs a registered closed form for "
                             f"KL({describe(q)} ‖ {describe(model.prior())}); got none, use "
                             f"kl='mc' or 'auto'")
        return stratified_elbo_terms(model, q, x, num_samples)
    z, weights = _particles(q, num_samples)
    expected = _expect(model.decode(z).log_prob(x), weights)
    kl_term = _kl(q, model.prior(), z, weights, kl)
    return ELBOTerms(expected - kl_term, expected, kl_term)


def elbo(model: GenerativeModel, q: Distribution, x: torch.Tensor, num_samples: int = 1,
         kl: str = "auto", *, validate: bool = True) -> torch.Tensor:
    """ELBO(x; q) per data point, [B]; see :func:`elbo_terms` for the arguments."""
    return elbo_terms(model, q, x, num_samples, kl, validate=validate).elbo


def log_weights(model: GenerativeModel, q: Distribution, x: torch.Tensor,
                num_samples: int) -> torch.Tensor:
    """Importance log-weights log p(x, z_i) − log q(z_i), z_i ~ q; → [k, B].

    Uses ``rsample`` when q has it, so the result is differentiable; the one particle loop
    shared by :func:`iwae_bound` and ``vaelab.measure.evaluate.log_likelihood``. For the standard
    VAE
    (N(0, I) prior, Bernoulli MLP decoder, diagonal-Normal q) the same numbers come from
    plain tensors in ``vaelab.model._bernoulli_fast``, with the same draws for the same seed.
    """
    if _bernoulli_fast.applies(model, q, x):      # the standard VAE with a diagonal-Normal q
        return _bernoulli_fast.log_weights(cast("VAE", model), cast(Independent, q), x,
                                           num_samples)
    z = q.rsample((num_samples,)) if q.has_rsample else q.sample((num_samples,))
    return model.log_joint(x, z) - q.log_prob(z)


def iwae_bound(model: GenerativeModel, q: Distribution, x: torch.Tensor, num_samples: int,
               *, validate: bool = True) -> torch.Tensor:
    """Importance-weighted bound L_k (Burda et al. 2016) per data point, [B].

    L_k = logsumexp_i(log w_i) − log k, log w_i = log p(x, z_i) − log q(z_i), z_i ~ q;
    L_1 is the ELBO, L_k ≤ L_{k+1} ≤ log p(x) in expectation. A mixture q
    (:func:`is_stratifiable`) gets the stratified bound :func:`stratified_iwae_bound` with
    ``num_samples`` draws per component.
    """
    if validate:
        x = check_inputs(model, q, x, num_samples)
    if is_stratifiable(q):
        return stratified_iwae_bound(model, q, x, num_samples)
    if not q.has_rsample:
        raise TypeError(f"q: iwae_bound needs a reparameterizable q, got {type(q).__name__}")
    lw = log_weights(model, q, x, num_samples)
    return lw.logsumexp(0) - math.log(num_samples)


# --------------------------------------------------------------------------- mixtures of q


def is_stratifiable(q: Distribution) -> TypeGuard[MixtureSameFamily]:
    """True when q is a mixture the stratified estimators handle.

    That is a ``torch.distributions.MixtureSameFamily`` whose ``mixture_distribution`` is a
    ``Categorical`` (weights π, batch [B], K categories) and whose ``component_distribution``
    has ``rsample`` (e.g. ``Independent(Normal)``, batch [B, K], event [L]). Such a q has no
    ``rsample`` of its own (drawing the component is discrete), so the objectives draw from
    every component instead.
    """
    return (isinstance(q, MixtureSameFamily)
            and isinstance(q.mixture_distribution, Categorical)
            and q.component_distribution.has_rsample)


def _stratified_draws(model: GenerativeModel, q: MixtureSameFamily, x: torch.Tensor,
                      num_samples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                  torch.Tensor]:
    """Draws z_ks ~ q_k and their terms: (log p(x|z), log p(z) − log q(z), log π, z).

    z [S, K, B, L] (S = num_samples reparameterized draws from each of the K components);
    the two log terms [S, K, B], with q(z) the whole mixture's density; log π [K, B].
    """
    components = q.component_distribution               # batch [B, K], event [L]
    event_dims = len(q.event_shape)
    z = components.rsample((num_samples,)).movedim(-1 - event_dims, 1)   # [S, K, B, L]
    log_lik = model.decode(z).log_prob(x)
    log_ratio = model.prior().log_prob(z) - q.log_prob(z)
    log_pi = q.mixture_distribution.logits.movedim(-1, 0)  # normalized by Categorical
    return log_lik, log_ratio, log_pi, z


def stratified_elbo_terms(model: GenerativeModel, q: MixtureSameFamily, x: torch.Tensor,
                          num_samples: int = 1) -> ELBOTerms:
    """Stratified ELBO of a mixture q = Σ_k π_k q_k per data point (Roeder et al. 2017).

    ELBO = Σ_k π_k E_{q_k}[log p(x, z) − log q(z)], each expectation over ``num_samples``
    reparameterized draws from q_k (so K · num_samples decoder passes per data point), split
    as E[log p(x|z)] = Σ_k π_k E_{q_k} log p(x|z) and KL = Σ_k π_k E_{q_k}[log q(z) − log p(z)]
    (a Monte Carlo KL: a mixture has no closed form). Unbiased; with K = 1 it is the ordinary
    Monte Carlo ELBO of the component. Returns :class:`ELBOTerms` of [B], differentiable
    w.r.t. θ, the components and the weights π.
    """
    log_lik, log_ratio, log_pi, _ = _stratified_draws(model, q, x, num_samples)
    pi = log_pi.exp()
    expected = (pi * log_lik.mean(0)).sum(0)
    kl = -(pi * log_ratio.mean(0)).sum(0)
    return ELBOTerms(expected - kl, expected, kl)


def stratified_iwae_bound(model: GenerativeModel, q: MixtureSameFamily, x: torch.Tensor,
                          num_samples: int, *, beta: float = 1.0) -> torch.Tensor:
    """Stratified importance-weighted bound SIWAE_S (Morningstar et al. 2021) per point, [B].

    SIWAE_S = log (1/S) Σ_s Σ_k π_k exp(log w_ks), log w_ks = log p(x|z_ks) + β (log p(z_ks) −
    log q(z_ks)), z_ks ~ q_k, S = ``num_samples``. With β = 1 it is a lower bound on log p(x)
    whose expectation rises with S to log p(x), and SIWAE_1 ≥ the stratified ELBO.
    """
    log_lik, log_ratio, log_pi, _ = _stratified_draws(model, q, x, num_samples)
    lw = log_lik + beta * log_ratio
    return (log_pi + lw).flatten(0, 1).logsumexp(0) - math.log(num_samples)


# --------------------------------------------------------------------------- training objectives


class TrainingTerms(NamedTuple):
    """What one training step needs, per data point ([B] each).

    ``surrogate``: maximize it; its gradient is the objective's gradient estimator (its value
    is the objective's except for DReG, whose surrogate value has no meaning);
    ``objective``: the optimized objective's value (β, free bits, L_K), detached;
    ``terms``: the true ELBO (β = 1, no free bits) and its two terms from the same draws,
    detached — what metrics report.
    """

    surrogate: torch.Tensor
    objective: torch.Tensor
    terms: ELBOTerms


def _is_diagonal_normal(d: Distribution) -> TypeGuard[Independent]:
    return (isinstance(d, Independent) and isinstance(d.base_dist, Normal)
            and d.reinterpreted_batch_ndims == 1)


def free_bits_kl(q: Distribution, prior: Distribution, kl: torch.Tensor,
                 free_bits: float) -> torch.Tensor:
    """The KL term with free bits λ = ``free_bits`` nats per latent dimension, [B].

    The variant (Kingma et al. 2016, §C.8, one group per latent dimension): with KL_bj the
    closed-form KL of dimension j for data point b (q and p(z) both diagonal Normal), the
    batch's term is Σ_j max(λ, mean_b KL_bj). Returned per data point so that its batch mean
    is exactly that: dimension j contributes KL_bj when mean_b KL_bj ≥ λ and the constant λ
    (no gradient) otherwise. When q or p(z) does not factorize over dimensions (full
    covariance, mixtures, flows, learned mixture priors) the whole latent vector is one group
    with threshold λ · L applied to ``kl`` [B], except a hierarchical q
    (``vaelab.model.hierarchical``), whose groups are its latent layers: layer i's Monte Carlo
    rate against λ · L_i. The batch is what the caller passes (under
    torchrun, one rank's shard).
    """
    if free_bits <= 0:
        return kl
    if _is_diagonal_normal(q) and _is_diagonal_normal(prior):
        groups, threshold = kl_divergence(q.base_dist, prior.base_dist), free_bits
    elif hasattr(q, "free_bits_groups"):    # a hierarchy: one group per latent layer, λ · L_i
        groups, threshold = q.free_bits_groups(prior, free_bits)
    else:
        groups, threshold = kl[:, None], free_bits * q.event_shape.numel()
    below = groups.detach().mean(0) < threshold
    return torch.where(below, torch.zeros_like(groups) + threshold, groups).sum(-1)


def path_log_prob(q: Distribution, z: torch.Tensor) -> torch.Tensor:
    """log q(z) with only its gradient through z: value log q(z), score term removed.

    d/dφ log q_φ(z(φ)) = ∂log q/∂z · dz/dφ + ∂log q_φ/∂φ |_z; the second part is the gradient
    of log q_φ(z.detach()), so log q(z) − log q(z.detach()) + stop(log q(z.detach())) keeps the
    value and the first part only (Roeder et al. 2017; Tucker et al. 2019). Works for any q
    (costs a second log_prob; a flow q must invert z for it).
    """
    log_q = q.log_prob(z)
    if not (torch.is_grad_enabled() and z.requires_grad):
        return log_q
    fixed = q.log_prob(z.detach())
    return log_q - fixed + fixed.detach()


def dreg_surrogate(lw: torch.Tensor, z: torch.Tensor, kl_weight: float = 1.0) -> torch.Tensor:
    """The doubly-reparameterized IWAE surrogate (Tucker, Lawson, Gu & Maddison 2019), [B].

    ``lw`` [K, B] are the log-weights log p(x | z_i) + β (log p(z_i) − log q(z_i)) computed
    with :func:`path_log_prob` for log q, from the reparameterized draws ``z`` [K, B, L]. The
    value Σ_i w̃_i lw_i (w̃ = softmax(lw), held fixed) has θ-gradient Σ_i w̃_i ∇_θ lw_i, the
    IWAE gradient; a hook on z scales the path gradient into q's parameters by
    w̃_i ((1 − β) + β w̃_i), DReG's w̃_i² for β = 1. The value itself is not the bound.
    """
    w = torch.softmax(lw.detach(), 0)                              # w̃_i, [K, B]
    if z.requires_grad:
        scale = ((1.0 - kl_weight) + kl_weight * w)[..., None]
        z.register_hook(lambda grad: grad * scale)
    return (w * lw).sum(0)


def _elbo_objective(model: GenerativeModel, q: Distribution, x: torch.Tensor,
                    num_samples: int, kl_weight: float, free_bits: float) -> TrainingTerms:
    terms = elbo_terms(model, q, x, num_samples, validate=False)
    # p(z) is built again only when free bits need it (a VampPrior's is an encoder pass)
    kl = terms.kl if free_bits <= 0 else free_bits_kl(q, model.prior(), terms.kl, free_bits)
    value = terms.expected_log_likelihood - kl_weight * kl
    return TrainingTerms(value, value.detach(), _detached(terms))


def _detached(terms: ELBOTerms) -> ELBOTerms:
    return ELBOTerms(*(t.detach() for t in terms))


def _iwae_objective(model: GenerativeModel, q: Distribution, x: torch.Tensor,
                    num_samples: int, kl_weight: float, dreg: bool) -> TrainingTerms:
    """IWAE / DReG on K = ``num_samples`` reparameterized draws from a non-mixture q."""
    if not q.has_rsample:
        raise TypeError(f"q: the IWAE objectives need a reparameterizable q, got {describe(q)}")
    z = q.rsample((num_samples,))                                  # [K, B, L]
    log_lik = model.decode(z).log_prob(x)                          # [K, B]
    prior = model.prior()
    log_p_z = prior.log_prob(z)
    log_q = path_log_prob(q, z) if dreg else q.log_prob(z)
    lw = log_lik + kl_weight * (log_p_z - log_q)
    bound = lw.logsumexp(0) - math.log(num_samples)
    surrogate = dreg_surrogate(lw, z, kl_weight) if dreg else bound
    with torch.no_grad():
        expected = log_lik.mean(0)
        kl = _kl(q, prior, z, None, "auto")
    terms = ELBOTerms((expected - kl).detach(), expected.detach(), kl.detach())
    return TrainingTerms(surrogate, bound.detach(), terms)


def _stratified_iwae_objective(model: GenerativeModel, q: MixtureSameFamily, x: torch.Tensor,
                               num_samples: int, kl_weight: float) -> TrainingTerms:
    """SIWAE on ``num_samples`` draws per component; the stratified ELBO from the same draws."""
    log_lik, log_ratio, log_pi, _ = _stratified_draws(model, q, x, num_samples)
    lw = log_lik + kl_weight * log_ratio
    bound = (log_pi + lw).flatten(0, 1).logsumexp(0) - math.log(num_samples)
    with torch.no_grad():
        pi = log_pi.exp()
        expected = (pi * log_lik.mean(0)).sum(0)
        kl = -(pi * log_ratio.mean(0)).sum(0)
    return TrainingTerms(bound, bound.detach(), ELBOTerms(expected - kl, expected, kl))


class ELBOObjective:
    """The ELBO (Monte Carlo over ``num_samples`` draws; the stratified ELBO for a mixture q),
    with optional free bits λ per latent dimension (Kingma et al. 2016)."""

    def __init__(self, free_bits: float = 0.0) -> None:
        self.free_bits = float(free_bits)

    @classmethod
    def from_options(cls, *, free_bits: float = 0.0) -> ELBOObjective:
        return cls(free_bits)

    def __call__(self, model: GenerativeModel, q: Distribution, x: torch.Tensor,
                 num_samples: int, kl_weight: float) -> TrainingTerms:
        return _elbo_objective(model, q, x, num_samples, kl_weight, self.free_bits)


class IWAEObjective:
    """The importance-weighted bound on K = ``num_samples`` draws (Burda et al. 2016); for a
    mixture q the stratified IWAE (Morningstar et al. 2021)."""

    dreg = False

    @classmethod
    def from_options(cls) -> IWAEObjective:
        return cls()

    def __call__(self, model: GenerativeModel, q: Distribution, x: torch.Tensor,
                 num_samples: int, kl_weight: float) -> TrainingTerms:
        if is_stratifiable(q):
            if self.dreg:
                raise ValueError("objective: 'iwae-dreg' is not available for a mixture q (the "
                                 "doubly-reparameterized form of the stratified bound is not "
                                 "derived here); expected 'iwae' (stratified IWAE) or 'elbo'")
            return _stratified_iwae_objective(model, q, x, num_samples, kl_weight)
        return _iwae_objective(model, q, x, num_samples, kl_weight, self.dreg)


class DReGObjective(IWAEObjective):
    """The IWAE bound with the doubly-reparameterized encoder gradient (Tucker et al. 2019)."""

    dreg = True

    @classmethod
    def from_options(cls) -> DReGObjective:
        return cls()


def training_terms(model: GenerativeModel, q: Distribution, x: torch.Tensor, *,
                   objective: str = "elbo", num_samples: int = 1, kl_weight: float = 1.0,
                   free_bits: float = 0.0, validate: bool = True) -> TrainingTerms:
    """The training objective's surrogate, its value and the true ELBO terms, each [B].

    Args:
        model, q, x: as in :func:`elbo_terms` (q batch [B], event [L]; x [B, D]).
        objective: ``"elbo"``, ``"iwae"`` or ``"iwae-dreg"`` (see the module docstring; the
            classes :class:`ELBOObjective`, :class:`IWAEObjective`, :class:`DReGObjective`).
        num_samples: Monte Carlo samples for the ELBO; K for the IWAE objectives (per mixture
            component for a mixture q).
        kl_weight: β ≥ 0, the weight of the KL term (tempering the log-weights for IWAE).
        free_bits: λ ≥ 0 nats per latent dimension (``"elbo"`` only; see :func:`free_bits_kl`).
        validate: check the inputs first.

    Raises:
        ValueError: unknown objective, negative β or λ, free bits with an IWAE objective,
            ``"iwae-dreg"`` with a mixture q (its DReG form is not derived here).
    """
    entry = catalogue.get("objective", objective, "objective")
    if validate:
        x = check_inputs(model, q, x, num_samples)
        for name, value in (("kl_weight", kl_weight), ("free_bits", free_bits)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: expected a finite number >= 0, got {value}")
    has_free_bits = any(o.name == "free_bits" for o in entry.options)
    if free_bits > 0 and not has_free_bits:
        raise ValueError(f"free_bits: applies to objective 'elbo' only; expected 0 with "
                         f"objective {objective!r}, got {free_bits}")
    options = {"free_bits": free_bits} if has_free_bits else {}
    return entry.resolve().from_options(**options)(model, q, x, num_samples, kl_weight)
