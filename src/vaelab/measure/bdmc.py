"""Bidirectional Monte Carlo (BDMC): a sandwich around log p(x) on data simulated from the model.

Grosse, Ghahramani & Adams (2015), "Sandwiching the marginal likelihood using bidirectional
Monte Carlo"; applied to decoder-based models by Wu, Burda, Salakhutdinov & Grosse (2017).
Draw (z, x) from the model, z ~ p(z), x ~ p(x | z): then z is an *exact* sample of the
posterior p(z | x). Forward AIS on x (:func:`vaelab.measure.ais.ais`) is a stochastic lower
bound on log p(x); reverse AIS started at that z is a stochastic upper bound. The gap
upper − lower bounds, in expectation, how far the forward AIS estimate is from log p(x) for data
like the model's own samples; it shrinks to 0 as the schedule lengthens, and it says how long a
schedule must be before its forward estimates on real data can be trusted (on real data only
the lower bound is available: there is no exact posterior sample there).

Shapes: x [B, D], z [B, L]; results [B].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.distributions import Distribution

from vaelab import _checks
from vaelab._runtime import isolated_rng
from vaelab.infer.objectives import GenerativeModel
from vaelab.measure import ais as ais_


class BDMCResult(NamedTuple):
    """Forward (lower) and reverse (upper) AIS on the same simulated x [B, D]."""

    lower: ais_.AISResult
    upper: ais_.AISResult

    @property
    def gap(self) -> torch.Tensor:
        """upper − lower per example, [B] (≥ 0 in expectation)."""
        return self.upper.log_likelihood - self.lower.log_likelihood

    def summary(self) -> dict:
        """Means over examples (nats) with standard errors across examples, JSON-ready."""
        return summarize(self.lower.log_likelihood, self.upper.log_likelihood,
                         self.lower.num_chains, self.lower.num_steps, self.lower.num_leapfrog)


def summarize(lower: torch.Tensor, upper: torch.Tensor, chains: int, steps: int,
              leapfrog: int) -> dict:
    """JSON-ready sandwich from per-example bounds lower, upper [n]: mean and SE across
    examples of each and of the gap (SE None for n = 1), the largest gap, the cost."""
    out: dict[str, Any] = {}
    for name, v in (("lower", lower), ("upper", upper), ("gap", upper - lower)):
        v = v.double()
        se = float(v.std() / v.numel() ** 0.5) if v.numel() > 1 else None
        out[name] = {"mean": float(v.mean()), "se": se}
    out["gap"]["max"] = float((upper - lower).max())
    out.update(num_examples=int(lower.numel()), chains=chains, steps=steps, leapfrog=leapfrog,
               gradient_evaluations_per_example=2 * ais_.cost(chains, steps, leapfrog))
    return out


def simulate(model: GenerativeModel, n: int, generator: torch.Generator | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """n draws z ~ p(z), x ~ p(x | z) → (x [n, D], z [n, L]); z is an exact posterior sample."""
    n = _checks.positive_int("n", n)
    with torch.no_grad():
        z = _draw(model.prior(), (n,), generator)
        x = _draw(model.decode(z), (), generator)
    return x, z


def _draw(d: Distribution, shape: tuple[int, ...], generator: torch.Generator | None):
    if generator is None:
        return d.sample(shape)
    with isolated_rng(int(torch.randint(0, 2**62, (), generator=generator))):
        return d.sample(shape)


def bdmc(model: GenerativeModel, x: torch.Tensor, z: torch.Tensor, *,
         init: Callable[[torch.Tensor], Distribution] | None = None, chains: int = 16,
         **ais_options) -> BDMCResult:
    """Forward and reverse AIS on simulated pairs (x [B, D], z [B, L]) → :class:`BDMCResult`.

    Args:
        model: the generative model x and z were drawn from (:func:`simulate`).
        x, z: the simulated data and its latent (an exact posterior sample).
        init: x → p₀ with batch [B] (e.g. the encoder); None: the prior.
        chains: C chains in each direction; all reverse chains start at the same z.
        ais_options: steps, leapfrog, step_size, target_accept, adapt, schedule_kind
            (:func:`vaelab.measure.ais.ais`).
    """
    x = model.check_data(x)
    if z.dim() != 2 or z.shape[0] != x.shape[0]:
        raise ValueError(f"z: expected one latent per row of x, [{x.shape[0]}, L], got "
                         f"{list(z.shape)}")
    chains = _checks.positive_int("chains", chains)
    with torch.no_grad():
        p0 = None if init is None else init(x)
    lower = ais_.ais(model, x, init=p0, chains=chains, **ais_options)
    start = z.detach().expand(chains, *z.shape)
    upper = ais_.ais(model, x, init=p0, chains=chains, direction="reverse", start_z=start,
                     **ais_options)
    return BDMCResult(lower, upper)
