"""Bounds on the observed data: the masked ELBO and IWAE bound (MIWAE) and not-MIWAE.

With x = (x_obs, x_mis), the mask m (True = observed) and a q(z | x_obs), the marginal of the
observed part is log p(x_obs) = log ∫ p(z) ∏_{d observed} p(x_d | z) dz for a decoder that
factorizes over dimensions, so every bound of ``vaelab.infer.objectives`` carries over with
the likelihood summed over observed entries only (Mattei & Frellsen 2019, "MIWAE", eq. 4):

    log w_k = log p(z_k) + Σ_d m_d log p(x_d | z_k) − log q(z_k | x_obs),  z_k ~ q,
    L_K = E[log (1/K) Σ_k w_k] ≤ log p(x_obs)     (the masked ELBO is K = 1).

Missing not at random (Ipsen, Mattei & Frellsen 2021, "not-MIWAE", eq. 9): with a model of the
missingness p(m | x), each weight also carries log p(m | x_obs, x̃_mis,k), x̃_mis,k ~ p(x_mis | z_k)
(reparameterized for a Gaussian decoder); for a Bernoulli decoder the missing values are summed
out exactly, p(m_d = 1 | z) = Σ_{v ∈ {0,1}} p(x_d = v | z) p(m_d = 1 | v). The bound is then on
log p(x_obs, m).

The same draws give the imputations (``vaelab.use.impute``): ``MaskedDraws.mean`` [K, B, D] is
E[x | z_k] (for not-MIWAE, E[x | z_k, m] or the draw x̃_k), ``sample`` one draw of x given z_k.
Shapes: x [B, D] (0 at missing entries), mask [B, D] bool, results [K, B] or [B].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Distribution, Independent

from vaelab import _checks
from vaelab.infer.objectives import ELBOTerms, GenerativeModel, path_log_prob

#: logits of P(m_d = 1 (missing) | x) for values x [..., D] → [..., D].
MissingLogits = Callable[[torch.Tensor], torch.Tensor]


class MaskedDraws(NamedTuple):
    """K importance draws for a batch, each [K, B] or [K, B, D].

    ``log_likelihood`` = Σ_obs log p(x_d | z_k) (+ log p(m | x) for not-MIWAE), ``log_prior`` =
    log p(z_k), ``log_q`` = log q(z_k); ``mean``/``sample`` as in the module docstring (None
    unless asked for).
    """

    log_likelihood: torch.Tensor
    log_prior: torch.Tensor
    log_q: torch.Tensor
    mean: torch.Tensor | None
    sample: torch.Tensor | None
    z: torch.Tensor | None = None

    @property
    def log_weights(self) -> torch.Tensor:
        """log w_k = log p(x_obs(, m), z_k) − log q(z_k), [K, B]."""
        return self.log_likelihood + self.log_prior - self.log_q


def check_mask(mask: object, x: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """A mask must be a bool tensor of x's shape [B, D] with finite x wherever it is True."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"{name}: expected a bool tensor (True = observed), got {got}")
    if mask.shape != x.shape:
        raise ValueError(f"{name}: expected shape {list(x.shape)} (that of x), "
                         f"got {list(mask.shape)}")
    bad = mask & ~torch.isfinite(x)
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name}: marks {int(bad.sum())} non-finite values of x as observed, "
                         f"the first at index {first}")
    return mask


def per_dim_log_prob(px: Distribution, x: torch.Tensor) -> torch.Tensor:
    """log p(x_d | z) per dimension for a decoder with event [D] that factorizes: [..., D].

    Works for ``Independent(base, 1)`` (Bernoulli, Gaussian, continuous Bernoulli) and for any
    distribution with a ``log_prob_per_dim(x)`` method; raises TypeError otherwise.
    """
    if isinstance(px, Independent) and px.reinterpreted_batch_ndims == 1:
        return px.base_dist.log_prob(x)
    per_dim = getattr(px, "log_prob_per_dim", None)
    if per_dim is None:
        raise TypeError(f"likelihood: masked bounds need log p(x_d | z) per dimension; "
                        f"{type(px).__name__} has no log_prob_per_dim")
    return per_dim(x)


def _missingness_term(px: Distribution, x: torch.Tensor, mask: torch.Tensor,
                      logits_of: MissingLogits, want_mean: bool):
    """(log p(m | x_obs, ·) [K, B], mean [K, B, D] or None, draw [K, B, D]) (Ipsen et al.)."""
    missing = ~mask
    base = getattr(px, "base_dist", None)
    if isinstance(base, Bernoulli):            # sum the binary missing values out exactly
        probs = base.probs
        lo, hi = logits_of(torch.zeros_like(probs)), logits_of(torch.ones_like(probs))
        l0 = torch.log1p(-probs.clamp(max=1 - 1e-7)) + F.logsigmoid(lo)   # x = 0 and missing
        l1 = torch.log(probs.clamp(min=1e-30)) + F.logsigmoid(hi)         # x = 1 and missing
        mis = torch.logaddexp(l0, l1)
        obs = F.logsigmoid(-logits_of(x))                                 # log P(observed | x)
        term = torch.where(missing, mis, obs).sum(-1)
        cond = torch.sigmoid(l1 - l0)                                     # P(x = 1 | z, missing)
        return term, (cond if want_mean else None), torch.bernoulli(cond.detach())
    draw = px.rsample() if px.has_rsample else px.sample()
    filled = torch.where(mask, x, draw)
    logits = logits_of(filled)
    term = -F.binary_cross_entropy_with_logits(
        logits, missing.to(logits.dtype).expand_as(logits), reduction="none").sum(-1)
    return term, (filled if want_mean else None), filled


def masked_draws(model: GenerativeModel, q: Distribution, x: torch.Tensor, mask: torch.Tensor,
                 num_samples: int, *, missing_logits: MissingLogits | None = None,
                 want_imputations: bool = False, path_log_q: bool = False) -> MaskedDraws:
    """K reparameterized draws z_k ~ q and their masked log-weight terms (see module doc).

    Args:
        model: a generative model (prior(), decode(z)); its decoder must factorize over D.
        q: q(z | x_obs), batch [B], event [L], with rsample.
        x: values [B, D]; entries where ``mask`` is False are ignored (may hold anything
            finite; pass 0).
        mask: bool [B, D], True = observed.
        num_samples: K.
        missing_logits: logits of P(missing | x) (not-MIWAE), or None (MIWAE).
        want_imputations: also return ``mean`` and ``sample`` [K, B, D].
        path_log_q: ``log_q`` with its gradient through z only
            (:func:`vaelab.infer.objectives.path_log_prob`, for DReG); ``z`` [K, B, L] is
            returned either way.
    """
    _checks.positive_int("num_samples", num_samples)
    if not q.has_rsample:
        raise TypeError(f"q: masked bounds need a reparameterizable q, got {type(q).__name__}")
    z = q.rsample((num_samples,))
    px = model.decode(z)
    log_lik = (per_dim_log_prob(px, x) * mask).sum(-1)
    mean = sample = None
    if missing_logits is not None:
        term, mean, sample = _missingness_term(px, x, mask, missing_logits, want_imputations)
        log_lik = log_lik + term
    elif want_imputations:
        mean, sample = px.mean, px.sample()
    log_q = path_log_prob(q, z) if path_log_q else q.log_prob(z)
    return MaskedDraws(log_lik, model.prior().log_prob(z), log_q, mean, sample, z)


def masked_iwae_bound(model: GenerativeModel, q: Distribution, x: torch.Tensor,
                      mask: torch.Tensor, num_samples: int, *,
                      missing_logits: MissingLogits | None = None) -> torch.Tensor:
    """MIWAE bound L_K on log p(x_obs) (on log p(x_obs, m) with ``missing_logits``), [B]."""
    lw = masked_draws(model, q, x, mask, num_samples, missing_logits=missing_logits).log_weights
    return lw.logsumexp(0) - math.log(num_samples)


def masked_elbo_terms(model: GenerativeModel, q: Distribution, x: torch.Tensor,
                      mask: torch.Tensor, num_samples: int = 1, *,
                      missing_logits: MissingLogits | None = None) -> ELBOTerms:
    """Masked ELBO = E_q[Σ_obs log p(x_d | z) (+ log p(m | x))] − KL(q ‖ p(z)), terms [B].

    The KL is the Monte Carlo E_q[log q − log p(z)] over the same K draws (the ``mc`` form).
    """
    d = masked_draws(model, q, x, mask, num_samples, missing_logits=missing_logits)
    expected = d.log_likelihood.mean(0)
    kl = (d.log_q - d.log_prior).mean(0)
    return ELBOTerms(expected - kl, expected, kl)
