"""Estimators of log p(x): importance sampling, AIS and BDMC, one small class each.

Every estimator follows one protocol (:class:`Estimator`), so ``vaelab.measure.evaluate`` and
the command line never ask which one they hold:

* ``estimator(model, q, x)`` → :class:`vaelab.measure.evaluate.LogLikelihoodEstimate`
  (per-example log p̂(x) [B], its standard error, its ESS) for x [B, D] given the encoder's q;
* ``draws`` — independent weights per example behind the estimate; ``unit`` says what they are
  ("sample" or "chain"); ``is_plain`` — True for IS with the encoder's q (evaluate's own path);
* ``cost()`` — evaluations of log p(x, z) per example: ``forward`` and ``gradient`` (a gradient
  evaluation is one forward and one backward pass, about 3× the time);
* ``describe()`` — JSON-ready: name, options, what the number is, a one-line ``summary``, cost;
* ``extra(model, n, seed=, batch_size=)`` — results beyond log p̂ ({} except for BDMC).

What each number is:

* :class:`ImportanceSampling` (``is``) — k draws from a proposal (:mod:`vaelab.measure.proposals`:
  ``encoder``, ``refined``, ``mixture``); a stochastic lower bound on log p(x) (Burda et al.
  2016), tight as k → ∞; SE is the delta-method Monte Carlo error over the k weights.
* :class:`AnnealedImportanceSampling` (``ais``) — forward AIS from the encoder's q (or the
  prior) with HMC (:mod:`vaelab.measure.ais`); also a stochastic lower bound, tight as the
  schedule lengthens; SE across the C chains.
* :class:`BDMC` (``bdmc``) — the ``ais`` estimate on the data, plus a sandwich on data simulated
  from the model (:mod:`vaelab.measure.bdmc`, Grosse et al. 2015): its gap is how far the same
  AIS schedule is from exact on the model's own samples.

Each class builds from its catalogue options (``vaelab.catalogue``, kind "estimator"):
:func:`build_estimator` is the one way in by name.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import ClassVar, Protocol

import torch
from torch.distributions import Distribution

from vaelab import catalogue
from vaelab.infer.objectives import GenerativeModel
from vaelab.measure import ais as ais_
from vaelab.measure import bdmc as bdmc_
from vaelab.measure import shard
from vaelab.measure.evaluate import LogLikelihoodEstimate, log_likelihood
from vaelab.measure.proposals import build_proposal

ESTIMATORS = catalogue.names("estimator")


class Estimator(Protocol):
    """What every log p(x) estimator offers (see the module docstring)."""

    name: ClassVar[str]
    unit: ClassVar[str]

    def __call__(self, model: GenerativeModel, q: Distribution, x: torch.Tensor
                 ) -> LogLikelihoodEstimate: ...

    @property
    def draws(self) -> int: ...

    @property
    def is_plain(self) -> bool: ...

    def cost(self) -> dict: ...

    def describe(self) -> dict: ...

    def extra(self, model: GenerativeModel, n: int, *, seed: int = 0,
              batch_size: int = 100) -> dict: ...


def build_estimator(name: str, **options: object) -> Estimator:
    """The estimator called ``name`` ("is", "ais", "bdmc") with its options, checked; an
    option it does not have is a ValueError naming those it has."""
    return catalogue.get("estimator", name, "estimator").build(**options)


def _check(instance: Estimator) -> None:
    """Validate a dataclass estimator's fields against its catalogue options."""
    entry = catalogue.get("estimator", type(instance).name)
    for option in entry.options:
        option.validate(getattr(instance, option.name), option.name)


@dataclass(frozen=True)
class ImportanceSampling:
    """log p̂(x) = log (1/k) Σ_i p(x, z_i) / r(z_i), z_i ~ r, r a proposal.

    Attributes:
        proposal: "encoder" (the encoder's q), "refined" (q fitted per example) or "mixture"
            (1/2 refined + 1/2 encoder).
        num_samples: k. refine_steps, refine_draws, refine_lr: the refined proposal's Adam
            budget (at most ``refine_steps`` steps of ``refine_draws`` draws) and step size.
    """

    name: ClassVar[str] = "is"
    unit: ClassVar[str] = "sample"
    proposal: str = "encoder"
    num_samples: int = 1000
    refine_steps: int = 100
    refine_draws: int = 8
    refine_lr: float = 5e-2

    def __post_init__(self) -> None:
        _check(self)

    @classmethod
    def from_options(cls, *, proposal: str = "encoder", num_samples: int = 1000,
                     refine_steps: int = 100, refine_draws: int = 8,
                     refine_lr: float = 5e-2) -> ImportanceSampling:
        return cls(proposal, num_samples, refine_steps, refine_draws, refine_lr)

    def __call__(self, model: GenerativeModel, q: Distribution, x: torch.Tensor
                 ) -> LogLikelihoodEstimate:
        """log p̂(x) for x [B, D] given the encoder's q (batch [B]) → tensors [B]."""
        proposal, _ = build_proposal(self.proposal, model, q, x, steps=self.refine_steps,
                                     lr=self.refine_lr, optimizer_samples=self.refine_draws)
        return log_likelihood(model, proposal, x, self.num_samples)

    @property
    def draws(self) -> int:
        return self.num_samples

    @property
    def is_plain(self) -> bool:
        """True for the standard protocol, IS with the encoder's q (evaluate's own path)."""
        return self.proposal == "encoder"

    def cost(self) -> dict:
        """k forward evaluations; the refinement's gradient evaluations are an upper bound
        (its optimizer may stop early)."""
        grad = 0 if self.proposal == "encoder" else self.refine_steps * self.refine_draws
        return {"forward": self.num_samples, "gradient": grad}

    def describe(self) -> dict:
        bound = "" if self.proposal == "encoder" else "at most "
        return {"name": self.name, "unit": self.unit, **asdict(self),
                "meaning": "stochastic lower bound on log p(x): importance sampling with k "
                           f"draws from the {self.proposal} proposal",
                "summary": f"IS, k = {self.num_samples}, {self.proposal} proposal",
                "gradient_bound": bound, "cost_per_example": self.cost()}

    def extra(self, model: GenerativeModel, n: int, *, seed: int = 0,
              batch_size: int = 100) -> dict:
        return {}


@dataclass(frozen=True)
class AnnealedImportanceSampling:
    """Forward AIS with HMC from ``init`` ("encoder": q(z | x), or "prior") over ``steps``
    tempered distributions, ``chains`` chains per example, ``leapfrog`` steps per transition."""

    name: ClassVar[str] = "ais"
    unit: ClassVar[str] = "chain"
    steps: int = 100
    chains: int = 8
    leapfrog: int = 3
    init: str = "encoder"

    def __post_init__(self) -> None:
        _check(self)

    @classmethod
    def from_options(cls, *, steps: int = 100, chains: int = 8, leapfrog: int = 3,
                     init: str = "encoder") -> AnnealedImportanceSampling:
        return cls(steps, chains, leapfrog, init)

    def __call__(self, model: GenerativeModel, q: Distribution, x: torch.Tensor
                 ) -> LogLikelihoodEstimate:
        """log p̂(x) for x [B, D], AIS started at q (batch [B]) or the prior → tensors [B]."""
        r = ais_.ais(model, x, init=q if self.init == "encoder" else None,
                     steps=self.steps, chains=self.chains, leapfrog=self.leapfrog)
        return LogLikelihoodEstimate(r.log_likelihood, r.stderr, r.ess, self.chains)

    @property
    def draws(self) -> int:
        return self.chains

    @property
    def is_plain(self) -> bool:
        return False

    def cost(self) -> dict:
        return {"forward": 0, "gradient": ais_.cost(self.chains, self.steps, self.leapfrog)}

    def describe(self) -> dict:
        return {"name": self.name, "unit": self.unit, **asdict(self),
                "meaning": "stochastic lower bound on log p(x): forward AIS with HMC, "
                           "log-mean-exp over C chains, SE across chains",
                "summary": f"{self.name.upper()}, {self.steps} steps × {self.chains} "
                           f"chains, {self.leapfrog} leapfrog"
                           + ("" if self.init == "encoder" else ", from the prior"),
                "gradient_bound": "", "cost_per_example": self.cost()}

    def extra(self, model: GenerativeModel, n: int, *, seed: int = 0,
              batch_size: int = 100) -> dict:
        return {}


@dataclass(frozen=True)
class BDMC(AnnealedImportanceSampling):
    """:class:`AnnealedImportanceSampling` on the data, plus (:meth:`extra`) the BDMC sandwich
    of the same schedule on data simulated from the model."""

    name: ClassVar[str] = "bdmc"

    def extra(self, model: GenerativeModel, n: int, *, seed: int = 0,
              batch_size: int = 100) -> dict:
        """{"bdmc": the sandwich on ``n`` simulated examples} (see :meth:`sandwich`)."""
        return {"bdmc": self.sandwich(model, n, seed=seed, batch_size=batch_size)}

    def sandwich(self, model: GenerativeModel, n: int, *, seed: int = 0,
                 batch_size: int = 100) -> dict:
        """BDMC with this AIS schedule on n examples simulated from the model (seeded),
        sharded over torchrun ranks like the evaluation → JSON-ready summary
        (:meth:`vaelab.measure.bdmc.BDMCResult.summary` plus ``seconds``)."""
        start = time.perf_counter()
        x, z = bdmc_.simulate(model, n, torch.Generator().manual_seed(seed))
        x, z = x.to(_device(model)), z.to(_device(model))
        init = getattr(model, "encode", None) if self.init == "encoder" else None

        def run(a: int, b: int) -> dict[str, torch.Tensor]:
            r = bdmc_.bdmc(model, x[a:b], z[a:b], init=init, chains=self.chains,
                           steps=self.steps, leapfrog=self.leapfrog)
            return {"lower": r.lower.log_likelihood, "upper": r.upper.log_likelihood}

        parts = shard.measure_batches(run, n, batch_size, seed)
        out = bdmc_.summarize(parts["lower"], parts["upper"], self.chains, self.steps,
                              self.leapfrog)
        return {**out, "seconds": round(time.perf_counter() - start, 2),
                "meaning": "forward AIS (lower) and reverse AIS from the exact latent (upper) "
                           "on data simulated from the model; gap = how far this AIS schedule "
                           "is from exact on the model's own samples"}


def summary_of(described: dict) -> str:
    """The one-line summary of a saved ``describe()`` (eval.json's "estimator"), rebuilding it
    for files written before summaries were saved."""
    if "summary" in described:
        return str(described["summary"])
    entry = catalogue.get("estimator", described.get("name", "is"))
    if "ais_init" in described:     # the field's name before AIS had its own class
        described = {**described, "init": described["ais_init"]}
    options = {o.name: described[o.name] for o in entry.options if o.name in described}
    return entry.build(**options).describe()["summary"]


def _device(model: GenerativeModel) -> torch.device:
    params = list(model.parameters()) if hasattr(model, "parameters") else []
    return params[0].device if params else torch.device("cpu")
