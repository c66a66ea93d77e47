"""Importance-sampling proposals for log p(x): the encoder's q, a refined q, a defensive mixture.

The importance-sampling estimate of :func:`vaelab.measure.evaluate.log_likelihood` is only as
good as its proposal: its bias and variance grow with how far the proposal is from p(z | x)
(roughly with KL(p(z | x) ‖ proposal) and the χ² divergence; Burda et al. 2016). Three
proposals, each with batch [B] and event [L]:

* ``encoder`` — q_φ(z | x), the amortized encoder's output (the standard protocol).
* ``refined`` — q*, the same family with its parameters optimized for each example by Adam on
  the example's own ELBO, starting at the encoder's output (:func:`vaelab.infer.schemes.
  optimize_q`; the q* of Cremer, Li & Duvenaud 2018, as in :mod:`vaelab.measure.gaps`). It
  closes the amortization gap, so its samples sit where the posterior is.
* ``mixture`` — ½ q* + ½ q_φ with the draws split evenly (defensive importance sampling,
  Hesterberg 1995; the deterministic mixture of :class:`vaelab.measure.gaps.
  DeterministicMixture`): each weight is at most twice that of either component, so where q*
  is over-confident (an ELBO-optimal q is mode-seeking, narrower than the posterior) the
  encoder's wider q keeps the weights bounded.

Refinement costs ``optimizer_samples`` gradient evaluations of log p(x, z) per Adam step and
example; :func:`build_proposal` returns that count so it enters the estimator's cost.
"""

from __future__ import annotations

from typing import cast

import torch
from torch.distributions import Distribution

from vaelab import _checks
from vaelab.infer.objectives import GenerativeModel
from vaelab.infer.schemes import optimize_q
from vaelab.measure.gaps import DeterministicMixture, PerExampleEncoder

PROPOSALS = ("encoder", "refined", "mixture")


def refine(model: GenerativeModel, x: torch.Tensor, encoder: object, *,
           steps: int = 100, lr: float = 5e-2, optimizer_samples: int = 8, patience: int = 20
           ) -> tuple[Distribution, int]:
    """q* for every row of x [B, D], from the encoder's output → (q*, Adam steps taken).

    ``encoder``: a ``vaelab.model.vae.Encoder`` or a hierarchical encoder — anything with
    ``per_example(x)`` (the family with its x-dependent parameters free per example, and the
    encoder's values to start from; :mod:`vaelab.measure.gaps`). Raises TypeError otherwise.
    """
    if not callable(getattr(encoder, "per_example", None)):
        raise TypeError(f"encoder: the refined and mixture proposals need a model with an "
                        f"encoder (vaelab.model.vae.Encoder or a hierarchical one), got "
                        f"{type(encoder).__name__}")
    with torch.inference_mode(False), torch.enable_grad():
        x = x.clone()
        family, raw = cast(PerExampleEncoder, encoder).per_example(x)
        raw_star, history = optimize_q(model, x, raw, family, steps=steps, lr=lr,
                                       num_samples=optimizer_samples, patience=patience)
    with torch.no_grad():
        return family(raw_star), len(history)


def build_proposal(name: str, model: GenerativeModel, q: Distribution, x: torch.Tensor, *,
                   steps: int = 100, lr: float = 5e-2, optimizer_samples: int = 8
                   ) -> tuple[Distribution, int]:
    """The proposal ``name`` for x [B, D] given the encoder's q → (proposal, gradient
    evaluations of log p(x, z) spent per example building it: 0 for ``encoder``)."""
    name = _checks.one_of("proposal", name, PROPOSALS)
    if name == "encoder":
        return q, 0
    optimizer_samples = _checks.positive_int("optimizer_samples", optimizer_samples)
    q_star, taken = refine(model, x, getattr(model, "encoder", None), steps=steps, lr=lr,
                           optimizer_samples=optimizer_samples)
    cost = taken * optimizer_samples
    return (q_star, cost) if name == "refined" else (DeterministicMixture(q_star, q), cost)
