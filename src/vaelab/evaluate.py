"""Measuring a trained model: log-likelihood by importance sampling, bits/dim, active units.

log p(x) is estimated by importance sampling with q as the proposal (Burda et al. 2016;
Rezende, Mohamed & Wierstra 2014):

    p̂(x) = (1/k) Σ_i w_i,  w_i = p(x, z_i) / q(z_i),  z_i ~ q(z | x),

processed in chunks of samples so memory stays bounded whatever k is, and vectorized over the
batch. With the running sums S₁ = Σ w_i and S₂ = Σ w_i² kept in log space, the effective sample
size is ESS = S₁² / S₂ (Kong 1992) and the delta-method standard error of log p̂ is
sqrt((k / ESS − 1) / (k − 1)): zero when every weight is equal (q = p(z | x)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.distributions import Distribution

from vaelab import _checks
from vaelab.objectives import GenerativeModel, check_inputs, log_weights

#: Elements of the largest per-chunk tensor ([chunk, B, D]) when chunk_size is automatic.
DEFAULT_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class LogLikelihoodEstimate:
    """Importance-sampling estimate of log p(x), per data point.

    Attributes:
        log_likelihood: log p̂(x), [B].
        stderr: delta-method standard error of log p̂(x), [B] (NaN when num_samples = 1).
        ess: effective sample size of the importance weights, [B], in [1, num_samples].
        num_samples: k.
    """

    log_likelihood: torch.Tensor
    stderr: torch.Tensor
    ess: torch.Tensor
    num_samples: int


def auto_chunk_size(batch_size: int, data_dim: int, num_samples: int) -> int:
    """Samples per chunk so the [chunk, B, D] tensors stay near 2²⁴ elements."""
    return max(1, min(num_samples, DEFAULT_CHUNK_ELEMENTS // max(1, batch_size * data_dim)))


def log_likelihood(model: GenerativeModel, q: Distribution, x: torch.Tensor,
                   num_samples: int = 5000, chunk_size: int | None = None
                   ) -> LogLikelihoodEstimate:
    """Estimate log p(x) per data point by importance sampling with proposal q.

    Args:
        model: generative model (``prior()``, ``decode()``, ``log_joint()``, ``check_data()``).
        q: proposal, batch [B], event [L]; typically the encoder's q(z | x).
        x: data [B, D].
        num_samples: k ≥ 1 importance samples per data point (5000 is the usual protocol).
        chunk_size: samples drawn per step; None picks one that bounds memory.

    Returns:
        :class:`LogLikelihoodEstimate` with tensors [B]. Runs under ``torch.no_grad``.
    """
    x = check_inputs(model, q, x, num_samples)
    if chunk_size is None:
        chunk_size = auto_chunk_size(x.shape[0], x.shape[-1], num_samples)
    chunk_size = _checks.positive_int("chunk_size", chunk_size)
    with torch.no_grad():
        lse1 = lse2 = None
        for start in range(0, num_samples, chunk_size):
            lw = log_weights(model, q, x, min(chunk_size, num_samples - start))   # [c, B]
            c1, c2 = lw.logsumexp(0), (2 * lw).logsumexp(0)
            lse1 = c1 if lse1 is None else torch.logaddexp(lse1, c1)
            lse2 = c2 if lse2 is None else torch.logaddexp(lse2, c2)
        k = num_samples
        ess = (2 * lse1 - lse2).exp()
        if k > 1:
            stderr = ((k / ess - 1).clamp_min(0) / (k - 1)).sqrt()
        else:
            stderr = torch.full_like(ess, math.nan)
        return LogLikelihoodEstimate(lse1 - math.log(k), stderr, ess, k)


def bits_per_dim(nats_per_example: float | torch.Tensor, data_dim: int) -> float | torch.Tensor:
    """Convert a negative log-likelihood in nats per example to bits per dimension."""
    return nats_per_example / (data_dim * math.log(2))


def active_units(q_means: torch.Tensor, threshold: float = 1e-2) -> tuple[int, torch.Tensor]:
    """Active latent units (Burda et al. 2016): A_u = Var_x(E_q[z_u | x]) > threshold.

    Args:
        q_means: E_q[z | x] for many x, [N, L].
        threshold: activity cut-off (1e-2 in the paper).

    Returns:
        (number of active units, per-unit activity [L]).
    """
    if q_means.dim() != 2 or q_means.shape[0] < 2:
        raise ValueError(f"q_means: expected shape [N >= 2, L], got {list(q_means.shape)}")
    activity = q_means.var(0)
    return int((activity > threshold).sum()), activity
