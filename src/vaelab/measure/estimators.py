"""Which estimator of log p(x) the evaluation protocol uses: IS with a proposal, AIS, BDMC.

:class:`Estimator` is the callable that ``vaelab.measure.evaluate.evaluate_model(estimator=…)``
calls per batch in place of encoder-q importance sampling: ``estimator(model, q, x)`` →
:class:`vaelab.measure.evaluate.LogLikelihoodEstimate` (per-example log p̂(x) [B], its standard
error, its ESS). What each number is:

* ``is`` — importance sampling with k draws from a proposal (:mod:`vaelab.measure.proposals`:
  ``encoder``, ``refined``, ``mixture``); a stochastic lower bound on log p(x) (Burda et al.
  2016), tight as k → ∞; SE is the delta-method Monte Carlo error over the k weights.
* ``ais`` — forward annealed importance sampling from the encoder's q (or the prior) with HMC
  (:mod:`vaelab.measure.ais`); also a stochastic lower bound, tight as the schedule lengthens;
  SE across the C chains.
* ``bdmc`` — the ``ais`` estimate on the data, plus a sandwich on data simulated from the model
  (:mod:`vaelab.measure.bdmc`, :func:`simulated_sandwich`): its gap is how far the same AIS
  schedule is from exact on the model's own samples.

Cost, per example, in evaluations of log p(x, z) (one decoder pass each; a *gradient*
evaluation is one forward and one backward pass, about 3× the time): see :meth:`Estimator.cost`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch.distributions import Distribution

from vaelab import _checks
from vaelab.infer.objectives import GenerativeModel
from vaelab.measure import ais as ais_
from vaelab.measure import bdmc as bdmc_
from vaelab.measure import shard
from vaelab.measure.evaluate import LogLikelihoodEstimate, log_likelihood
from vaelab.measure.proposals import PROPOSALS, build_proposal

ESTIMATORS = ("is", "ais", "bdmc")
AIS_INITS = ("encoder", "prior")


@dataclass(frozen=True)
class Estimator:
    """How log p(x) is estimated per example (see the module docstring).

    Attributes:
        name: "is", "ais" or "bdmc".
        proposal: IS proposal, "encoder", "refined" or "mixture" (``is`` only).
        num_samples: k importance samples (``is``).
        steps, chains, leapfrog: AIS schedule length T, chains C, leapfrog steps L.
        ais_init: "encoder" (start AIS at q(z | x)) or "prior".
        refine_steps, refine_draws, refine_lr: the refined proposal's Adam budget (at most
            ``refine_steps`` steps of ``refine_draws`` draws each) and step size.
    """

    name: str = "is"
    proposal: str = "encoder"
    num_samples: int = 1000
    steps: int = 100
    chains: int = 8
    leapfrog: int = 3
    ais_init: str = "encoder"
    refine_steps: int = 100
    refine_lr: float = 5e-2
    refine_draws: int = 8

    def __post_init__(self) -> None:
        _checks.one_of("estimator", self.name, ESTIMATORS)
        _checks.one_of("proposal", self.proposal, PROPOSALS)
        _checks.one_of("ais_init", self.ais_init, AIS_INITS)
        for field in ("num_samples", "steps", "chains", "leapfrog", "refine_steps",
                      "refine_draws"):
            _checks.positive_int(field, getattr(self, field))
        _checks.positive_float("refine_lr", self.refine_lr)
        if self.name != "is" and self.proposal != "encoder":
            raise ValueError(f"proposal: applies to the 'is' estimator only, got proposal "
                             f"{self.proposal!r} with estimator {self.name!r}")

    def __call__(self, model: GenerativeModel, q: Distribution, x: torch.Tensor
                 ) -> LogLikelihoodEstimate:
        """log p̂(x) for x [B, D] given the encoder's q (batch [B]) → tensors [B]."""
        if self.name == "is":
            proposal, _ = build_proposal(self.proposal, model, q, x, steps=self.refine_steps,
                                         lr=self.refine_lr, optimizer_samples=self.refine_draws)
            return log_likelihood(model, proposal, x, self.num_samples)
        r = ais_.ais(model, x, init=q if self.ais_init == "encoder" else None,
                     steps=self.steps, chains=self.chains, leapfrog=self.leapfrog)
        return LogLikelihoodEstimate(r.log_likelihood, r.stderr, r.ess, self.chains)

    @property
    def is_plain(self) -> bool:
        """True for the standard protocol, IS with the encoder's q."""
        return self.name == "is" and self.proposal == "encoder"

    @property
    def draws(self) -> int:
        """Independent weights per example behind the estimate: k for IS, C for AIS."""
        return self.num_samples if self.name == "is" else self.chains

    def cost(self) -> dict:
        """Evaluations of log p(x, z) per example: ``forward`` (no gradient) and ``gradient``
        (an upper bound for the refined proposals, whose optimizer may stop early)."""
        if self.name == "is":
            grad = 0 if self.proposal == "encoder" else self.refine_steps * self.refine_draws
            return {"forward": self.num_samples, "gradient": grad}
        return {"forward": 0, "gradient": ais_.cost(self.chains, self.steps, self.leapfrog)}

    def describe(self) -> dict:
        """JSON-ready: the options, what the number is, and the cost per example."""
        meaning = ("stochastic lower bound on log p(x): importance sampling with k draws from "
                   f"the {self.proposal} proposal" if self.name == "is" else
                   "stochastic lower bound on log p(x): forward AIS with HMC, log-mean-exp "
                   "over C chains, SE across chains")
        return {**asdict(self), "meaning": meaning, "cost_per_example": self.cost()}


def simulated_sandwich(model: GenerativeModel, n: int, estimator: Estimator, *, seed: int = 0,
                       batch_size: int = 100) -> dict:
    """BDMC with ``estimator``'s AIS schedule on n examples simulated from the model (seeded),
    sharded over torchrun ranks like the evaluation → JSON-ready summary
    (:meth:`vaelab.measure.bdmc.BDMCResult.summary` plus ``seconds``)."""
    start = time.perf_counter()
    x, z = bdmc_.simulate(model, n, torch.Generator().manual_seed(seed))
    x, z = x.to(_device(model)), z.to(_device(model))
    init = getattr(model, "encode", None) if estimator.ais_init == "encoder" else None

    def run(a: int, b: int) -> dict[str, torch.Tensor]:
        r = bdmc_.bdmc(model, x[a:b], z[a:b], init=init, chains=estimator.chains,
                       steps=estimator.steps, leapfrog=estimator.leapfrog)
        return {"lower": r.lower.log_likelihood, "upper": r.upper.log_likelihood}

    parts = shard.measure_batches(run, n, batch_size, seed)
    out = bdmc_.summarize(parts["lower"], parts["upper"], estimator.chains, estimator.steps,
                          estimator.leapfrog)
    return {**out, "seconds": round(time.perf_counter() - start, 2),
            "meaning": "forward AIS (lower) and reverse AIS from the exact latent (upper) on "
                       "data simulated from the model; gap = how far this AIS schedule is from "
                       "exact on the model's own samples"}


def _device(model: GenerativeModel) -> torch.device:
    params = list(model.parameters()) if hasattr(model, "parameters") else []
    return params[0].device if params else torch.device("cpu")
