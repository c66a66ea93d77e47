"""The hierarchical likelihood ratio LLR^{>k} of a hierarchical VAE (Havtorn et al. 2021).

Havtorn, Frellsen, Hauberg & Maaløe (2021), "Hierarchical VAEs know what they don't know":
the likelihood of a hierarchical VAE is dominated by its low-level layers, which model local
statistics shared by many datasets, so out-of-distribution data can be likely; the semantic
content sits in the top layers. Their score asks whether the top layers alone explain x: it
compares the ELBO with a bound in which the k lowest layers are *not inferred* but drawn from
the model's conditional prior given the inferred layers above them:

    L(x)      = E_{q(z | x)} [log p(x, z) − log q(z | x)],
    L^{>k}(x) = E_{q(z_{>k} | x) p(z_{≤k} | z_{>k})} [log p(x, z) − log q(z_{>k} | x)
                                                      − log p(z_{≤k} | z_{>k})]
              = E_{q(z_{>k} | x) p(z_{≤k} | z_{>k})} [log p(x | z) + log p(z_{>k})
                                                      − log q(z_{>k} | x)],
    LLR^{>k}(x) = L(x) − L^{>k}(x),

layers numbered 1 (bottom) to n (top). In-distribution, the inferred top layers carry what
the image is, and the prior's low layers fill in details that fit, so L^{>k} stays close to
L; out of distribution the low layers inferred from x explain it (L is high) while the top
layers' version does not (L^{>k} is low), so LLR^{>k} is large. Oriented as the authors' code
scores it (their ``ood-llr.py``: the k lowest stages decoded from p, score = ELBO − L^{>k}):
**higher = more anomalous**.

L^{>k} is itself a lower bound on log p(x) (an ELBO with the proposal
q(z_{>k} | x) p(z_{≤k} | z_{>k})). k = 0 replaces nothing, so LLR^{>0} = 0 exactly (both
bounds use the same seeded noise, common random numbers); k = n draws every layer from the
prior: L^{>n} = E_{p(z)}[log p(x | z)]. For 0 < k < n the layers above k are drawn from q
first, which needs q(z_{>k} | x) without the layers below: ladder and top-down inference give
it (q is built from the top down); bottom-up inference (q(z_1 | x) q(z_2 | z_1) …) does not,
and is refused in one line. The authors' code decodes the skipped layers' prior *mode*; here
they are sampled, as in the paper's definition.
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


def refusal(q: LayeredDistribution, k: int) -> str | None:
    """Why L^{>k} cannot be formed from this q (one line), or None when it can: for 0 < k < n
    the layers above k are drawn from q before any layer below, so q must draw each of them
    from the layers above it alone (top-down or ladder inference), never from a lower one."""
    if not 0 < k < len(q.sizes):
        return None
    drawn_before = {i: q.order[:q.order.index(i)] for i in q.order}
    if all(j > i for i in q.order if i >= k for j in drawn_before[i]):
        return None
    return ("hierarchical-llr: expected a model with top-down or ladder inference (L^{>k} "
            "draws the layers above k from q(z_{>k} | x) alone), got bottom-up inference, "
            "whose q reaches the upper layers only through the lower ones; train with "
            "--hierarchy top-down or ladder (or draw every layer from the prior: k = n)")


def prior_below(model: Any, q: LayeredDistribution, k: int) -> LayeredDistribution:
    """The proposal of L^{>k}: q(z_{>k} | x) p(z_{≤k} | z_{>k}), batch as q's, event [Σ L_i].

    Layers above k (1-based) come from q, in q's order; layers k … 1 from the model's
    conditional prior, top down, given the layers already drawn. k = 0 gives q itself.
    Raises ValueError (one line) for k outside 0..n, or for 0 < k < n with a q that is not
    built from the top down (bottom-up inference draws z_{>k} only through z_{≤k}).
    """
    prior = model.prior()
    n = len(q.sizes)
    k = _checks.non_negative_int("k", k)
    if k > n:
        raise ValueError(f"k (--llr-k): expected a layer index in 0..{n} (the model has {n} latent "
                         f"layers), got {k}")
    reason = refusal(q, k)
    if reason is not None:
        raise ValueError(reason)
    order = [i for i in q.order if i >= k] + list(range(k - 1, -1, -1))

    def step(i: int, layers: dict[int, torch.Tensor]) -> Distribution:
        return q.step(i, layers) if i >= k else prior.step(i, layers)

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
        k: the layers 1..k are drawn from the conditional prior; the layers above keep q
            (0 ≤ k ≤ n).
        num_samples: draws of z for each bound (Monte Carlo ELBOs, not importance-weighted).
        seed: both bounds draw from this seed (common random numbers).

    Raises ValueError (one line) for a model with one latent layer, k outside 0..n, or
    bottom-up inference with 0 < k < n.
    """
    layered = check_hierarchical(model, q)
    num_samples = _checks.positive_int("num_samples", num_samples)
    proposal = prior_below(model, layered, k)
    with torch.no_grad():
        with isolated_rng(seed):
            full = _bound(model, layered, x, num_samples)
        with isolated_rng(seed):
            above = _bound(model, proposal, x, num_samples)
    return full - above, above
