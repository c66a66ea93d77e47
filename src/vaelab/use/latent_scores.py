"""Anomaly scores in the latent space: the code's density under the aggregate posterior, and
its distance to the nearest training codes. Both are oriented **higher = more anomalous**.

The code of x is the mean of the encoder's q(z | x) (for a hierarchy, its plug-in mean over
every layer, as ``vaelab encode`` writes it).

* :func:`aggregate_posterior_nll` — −log q̄(μ(x)) with q̄(z) = (1/N) Σ_n q(z | x_n), the
  *aggregate posterior* of N reference (training) examples (Makhzani et al. 2016; Hoffman &
  Johnson 2016, "ELBO surgery"). This is the exact mixture of the reference examples'
  posteriors (N components, the encoder's own family), not a GMM fitted to codes: nothing is
  fitted, and a code far from every training posterior gets a low density. In nats.
* :func:`knn_distance` — the mean Euclidean distance from μ(x) to its k nearest reference codes
  (scikit-learn ``NearestNeighbors``), the latent-space version of the k-NN baseline on
  pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch.distributions import Distribution

from vaelab import _checks


def codes(encoder: Callable[[torch.Tensor], Distribution], x: torch.Tensor,
          batch_size: int = 500) -> torch.Tensor:
    """E_q[z | x] of every row of x [N, D] → [N, L], in batches, without gradients."""
    batch_size = _checks.positive_int("batch_size", batch_size)
    with torch.no_grad():
        return torch.cat([encoder(x[i:i + batch_size]).mean
                          for i in range(0, x.shape[0], batch_size)])


def aggregate_posterior_nll(encoder: Callable[[torch.Tensor], Distribution], z: torch.Tensor,
                            reference: torch.Tensor, *, chunk_size: int = 500
                            ) -> torch.Tensor:
    """−log (1/N) Σ_n q(z | x_n) for each row of z [B, L], over the reference rows x_n
    [N, D] (encoded ``chunk_size`` at a time); → [B], nats.

    Works for any q whose ``log_prob`` takes z of shape [B, C, L] against a batch [C] (torch's
    distributions and vaelab's layered q do).
    """
    z = _checks.tensor("z", z)
    if z.dim() != 2 or reference.dim() != 2 or reference.shape[0] == 0:
        raise ValueError(f"reference: expected codes z [B, L] and reference rows [N >= 1, D], "
                         f"got z {list(z.shape)} and reference {list(reference.shape)}")
    chunk_size = _checks.positive_int("chunk_size", chunk_size)
    parts = []
    with torch.no_grad():
        for start in range(0, reference.shape[0], chunk_size):
            q = encoder(reference[start:start + chunk_size])
            count = q.batch_shape[0]
            # [B, C, L]: every code against every reference posterior of the chunk
            parts.append(q.log_prob(z.unsqueeze(-2).expand(z.shape[0], count, z.shape[-1])))
        log_q = torch.cat(parts, dim=-1)                         # [B, N]
    return -(log_q.logsumexp(-1) - math.log(reference.shape[0]))


def knn_distance(z: object, reference_codes: object, *, neighbours: int = 5) -> np.ndarray:
    """Mean Euclidean distance from each code z [B, L] to its ``neighbours`` nearest reference
    codes [N, L] (N ≥ neighbours) → float64 [B]."""
    from sklearn.neighbors import NearestNeighbors

    z, ref = _checks.to_numpy(z, np.float64), _checks.to_numpy(reference_codes, np.float64)
    neighbours = _checks.positive_int("neighbours", neighbours)
    if ref.ndim != 2 or z.ndim != 2 or ref.shape[1] != z.shape[1]:
        raise ValueError(f"reference_codes: expected [N, {z.shape[-1]}] codes like z, got "
                         f"{list(ref.shape)}")
    if neighbours > ref.shape[0]:
        raise ValueError(f"neighbours (--neighbours): expected at most the {ref.shape[0]} "
                         f"reference examples, got {neighbours}")
    index = NearestNeighbors(n_neighbors=neighbours).fit(ref)
    return index.kneighbors(z)[0].mean(1)
