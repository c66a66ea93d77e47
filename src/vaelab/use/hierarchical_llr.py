"""The hierarchical likelihood ratio LLR^{>k} of a hierarchical VAE (Havtorn et al. 2021).

Havtorn, Frellsen, Hauberg & Maaløe (2021), "Hierarchical VAEs know what they don't know":
the likelihood of a hierarchical VAE is dominated by its low-level layers, which model local
statistics shared by many datasets; the semantic content sits in the top layers. Their score
compares the ELBO with a bound in which the layers above k are *not inferred* but drawn from
the model's own (conditional) prior:

    L(x)      = E_{q(z | x)} [log p(x, z) − log q(z | x)],
    L^{>k}(x) = E_{p(z_{>k}) q(z_{≤k} | x, z_{>k})} [log p(x, z) − log p(z_{>k})
                                                    − log q(z_{≤k} | x, z_{>k})],
    LLR^{>k}(x) = L(x) − L^{>k}(x),

layers numbered 1 (bottom) to n (top). L^{>k} is itself a lower bound on log p(x) (an ELBO
with the proposal p(z_{>k}) q(z_{≤k} | x, z_{>k})), so LLR^{>k} ≥ 0 in expectation whenever q
is a better proposal than the prior, and LLR^{>n} = 0 (nothing is replaced). Oriented as the
authors' code scores it: **higher = more anomalous**.

Here q(z_{≤k} | x, z_{>k}) is whatever the encoder's layered q gives layer i given the layers
already drawn: for ladder and top-down inference the lower layers read the prior draw of
z_{k+1}; for bottom-up inference (q(z_1 | x) q(z_2 | z_1)…) they do not depend on it. Both
bounds use the same seeded noise (common random numbers).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributions import Distribution

from vaelab import _checks
from vaelab._runtime import isolated_rng
from vaelab.model.layered import LayeredDistribution


def is_hierarchical(model: Any, q: Distribution) -> bool:
    """Whether both the model's prior p(z) and q(z | x) are layered (several latent layers)."""
    return isinstance(q, LayeredDistribution) and isinstance(model.prior(), LayeredDistribution)


def check_hierarchical(model: Any, q: Distribution) -> LayeredDistribution:
    """q as a :class:`LayeredDistribution`, or one ValueError line for a one-layer model."""
    if not is_hierarchical(model, q):
        raise ValueError("score: hierarchical-llr compares bounds across a hierarchy's latent "
                         "layers; expected a hierarchical model (trained with --latent-dim "
                         "L1,L2,...), got a model with one latent layer")
    assert isinstance(q, LayeredDistribution)    # is_hierarchical said so (for the checker)
    return q


def prior_above(model: Any, q: LayeredDistribution, k: int) -> LayeredDistribution:
    """The proposal of L^{>k}: p(z_{>k}) q(z_{≤k} | x, z_{>k}), batch as q's, event [Σ L_i].

    Layers above k (1-based) come from the model's prior, top down; layers 1..k from q's own
    conditionals, in q's order, given the layers already drawn. k = n gives q itself.
    """
    prior = model.prior()
    n = len(q.sizes)
    k = _checks.non_negative_int("k", k)
    if k > n:
        raise ValueError(f"k (--llr-k): expected a layer index in 0..{n} (the model has {n} latent "
                         f"layers), got {k}")
    order = [i for i in range(n - 1, -1, -1) if i >= k] + [i for i in q.order if i < k]

    def step(i: int, layers: dict[int, torch.Tensor]) -> Distribution:
        return prior.step(i, layers) if i >= k else q.step(i, layers)

    return LayeredDistribution(q.sizes, order, step, q.batch_shape)


def _bound(model: Any, proposal: Distribution, x: torch.Tensor, num_samples: int
           ) -> torch.Tensor:
    """E_proposal[log p(x, z) − log proposal(z)] over ``num_samples`` draws, [B]."""
    z = proposal.sample((num_samples,))
    return (model.log_joint(x, z) - proposal.log_prob(z)).mean(0)


def hierarchical_llr(model: Any, q: Distribution, x: torch.Tensor, *, k: int = 1,
                     num_samples: int = 16, seed: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(LLR^{>k}(x), L^{>k}(x)) per example, each [B], nats (module docstring).

    Args:
        model: a hierarchical model (``prior()`` and ``q`` are :class:`LayeredDistribution`).
        q: the encoder's q(z | x), batch [B].
        x: data [B, D].
        k: the layers 1..k keep q; the layers above take the prior (0 ≤ k ≤ n).
        num_samples: draws of z for each bound (Monte Carlo ELBOs, not importance-weighted).
        seed: both bounds draw from this seed (common random numbers).

    Raises ValueError (one line) for a model with one latent layer or k outside 0..n.
    """
    layered = check_hierarchical(model, q)
    num_samples = _checks.positive_int("num_samples", num_samples)
    proposal = prior_above(model, layered, k)
    with torch.no_grad():
        with isolated_rng(seed):
            full = _bound(model, layered, x, num_samples)
        with isolated_rng(seed):
            above = _bound(model, proposal, x, num_samples)
    return full - above, above
