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
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

import torch
from torch.distributions import Distribution, kl_divergence

from vaelab import _checks
from vaelab.model import _bernoulli_fast

KL_MODES = ("auto", "analytic", "mc")


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
    if _bernoulli_fast.applies(model, q, x):
        return _bernoulli_fast.log_weights(model, q, x, num_samples)
    z = q.rsample((num_samples,)) if q.has_rsample else q.sample((num_samples,))
    return model.log_joint(x, z) - q.log_prob(z)


def iwae_bound(model: GenerativeModel, q: Distribution, x: torch.Tensor, num_samples: int,
               *, validate: bool = True) -> torch.Tensor:
    """Importance-weighted bound L_k (Burda et al. 2016) per data point, [B].

    L_k = logsumexp_i(log w_i) − log k, log w_i = log p(x, z_i) − log q(z_i), z_i ~ q;
    L_1 is the ELBO, L_k ≤ L_{k+1} ≤ log p(x) in expectation.
    """
    if validate:
        x = check_inputs(model, q, x, num_samples)
    if not q.has_rsample:
        raise TypeError(f"q: iwae_bound needs a reparameterizable q, got {type(q).__name__}")
    lw = log_weights(model, q, x, num_samples)
    return lw.logsumexp(0) - math.log(num_samples)
