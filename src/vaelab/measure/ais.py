"""Annealed importance sampling (AIS) of log p(x), forward and reverse, with HMC transitions.

Neal (2001), "Annealed importance sampling"; for decoder-based models Wu, Burda, Salakhutdinov
& Grosse (2017), "On the quantitative analysis of decoder-based generative models". A geometric
path of unnormalised densities joins an initial distribution p₀ (the prior p(z), or the
encoder's q(z | x)) to the posterior p(z | x) ∝ p(x, z):

    f_t(z) = p₀(z)^{1−β_t} p(x, z)^{β_t},  0 = β_0 < β_1 < … < β_T = 1,
    Z_0 = 1,  Z_T = p(x).

Forward AIS draws z ~ p₀, and for t = 1 … T multiplies its weight by f_t(z) / f_{t−1}(z) =
exp((β_t − β_{t−1}) h(z)), h(z) = log p(x, z) − log p₀(z), then moves z by an HMC transition
that leaves f_t invariant (:mod:`vaelab.measure.hmc`; the last one is skipped, it cannot change
the weight). E[w] = p(x), so log-mean-exp over C independent chains is a stochastic *lower*
bound on log p(x) (Jensen), exact as T → ∞ or when p₀ = p(z | x).

Reverse AIS (Grosse, Ghahramani & Adams 2015, "Sandwiching the marginal likelihood using
bidirectional Monte Carlo") starts from an exact posterior sample z ~ p(z | x) and runs the
same chain backwards: E[exp(−s)] = 1 / p(x) for s = Σ_t (β_t − β_{t−1}) h(z_t), so
−log-mean-exp(−s) over chains is a stochastic *upper* bound (:mod:`vaelab.measure.bdmc`).

Schedule: sigmoidal, β_t ∝ σ(δ (2t/T − 1)) rescaled to [0, 1] with δ = 4 (Grosse et al. 2015;
Wu et al. 2017). Step sizes: one per example, adapted after every transition toward an
acceptance rate of 0.65 (:func:`vaelab.measure.hmc.adapt_step_size`). Caveat: adapting the
step from the chains' own acceptances makes later transitions depend on earlier states, which
strictly breaks AIS's unbiasedness; the effect is small and shrinks with C (Wu et al. 2017 use
the same scheme); pass ``adapt=False`` for the exact algorithm with a fixed step.

Per example the C chains give log p̂(x) = log-mean-exp of their log-weights, with the
delta-method standard error across chains sqrt((C / ESS − 1) / (C − 1)) and ESS = (Σw)² / Σw²
(as for importance sampling in :mod:`vaelab.measure.evaluate`). Shapes: x [B, D], chains z
[C, B, L], results [B].
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.distributions import Distribution

from vaelab import _checks
from vaelab.infer.objectives import GenerativeModel
from vaelab.measure import hmc
from vaelab.measure.evaluate import from_log_sums

SCHEDULES = ("sigmoid", "linear")
DIRECTIONS = ("forward", "reverse")


def schedule(steps: int, kind: str = "sigmoid", sharpness: float = 4.0) -> torch.Tensor:
    """β_0 = 0 < … < β_T = 1 as a float64 tensor [T + 1] (T = ``steps`` ≥ 1)."""
    steps = _checks.positive_int("steps", steps)
    kind = _checks.one_of("schedule", kind, SCHEDULES)
    t = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if kind == "linear":
        return t
    s = torch.sigmoid(sharpness * (2 * t - 1))
    return (s - s[0]) / (s[-1] - s[0])


class AISResult(NamedTuple):
    """Per-example AIS estimates; tensors [B] unless said otherwise.

    Attributes:
        log_weights: per-chain log-weights [C, B] (reverse: −s, the log of 1/p̂ per chain).
        log_likelihood: forward: log-mean-exp of the log-weights (a stochastic lower bound);
            reverse: −log-mean-exp(−s) (a stochastic upper bound).
        stderr: delta-method standard error across chains (NaN when C = 1).
        ess: effective number of chains, in [1, C].
        acceptance: mean HMC acceptance probability over transitions and chains.
        step_size: the final (adapted) leapfrog step size.
        num_chains, num_steps, num_leapfrog: C, T, L.
        direction: "forward" or "reverse".
    """

    log_weights: torch.Tensor
    log_likelihood: torch.Tensor
    stderr: torch.Tensor
    ess: torch.Tensor
    acceptance: torch.Tensor
    step_size: torch.Tensor
    num_chains: int
    num_steps: int
    num_leapfrog: int
    direction: str

    @property
    def gradient_evaluations(self) -> int:
        """Evaluations of log p(x, z) with its gradient per example (:func:`cost`)."""
        return cost(self.num_chains, self.num_steps, self.num_leapfrog)


def cost(chains: int, steps: int, leapfrog: int) -> int:
    """Evaluations of log p(x, z) with its gradient per example of one AIS run:
    C (1 + (T − 1) L) (the last transition is skipped)."""
    return chains * (1 + (steps - 1) * leapfrog)


def log_mean_exp_and_se(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-mean-exp over dim 0, delta-method SE, ESS) of log-weights [C, B] → three [B]."""
    return from_log_sums(log_w.logsumexp(0), (2 * log_w).logsumexp(0), log_w.shape[0])


class _Initial:
    """p₀ with batch [B]: the prior (shared by every example) or a q(z | x) with batch [B]."""

    def __init__(self, model: GenerativeModel, init: Distribution | None, batch: int) -> None:
        self.dist = model.prior() if init is None else init
        if init is not None and tuple(init.batch_shape) != (batch,):
            raise ValueError(f"init: expected batch_shape [{batch}] (one q per row of x), got "
                             f"{list(init.batch_shape)}")
        self.batch = batch

    def sample(self, chains: int) -> torch.Tensor:
        shape = (chains, self.batch) if tuple(self.dist.batch_shape) == () else (chains,)
        with torch.no_grad():
            z = self.dist.sample(shape)
        if not z.is_floating_point() or z.dim() != 3:
            raise TypeError(f"model: AIS with HMC needs a continuous latent z [C, B, L], got "
                            f"samples of dtype {z.dtype} and shape {list(z.shape)} from "
                            f"{type(self.dist).__name__}")
        return z

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self.dist.log_prob(z)


def _parts(model: GenerativeModel, x: torch.Tensor, initial: _Initial, z: torch.Tensor
           ) -> tuple[torch.Tensor, ...]:
    """(log p₀(z), log p(x, z), their gradients) at z [C, B, L]: [C, B] ×2, [C, B, L] ×2."""
    with torch.inference_mode(False), torch.enable_grad():
        z = z.detach().clone().requires_grad_(True)
        li, lj = initial.log_prob(z), model.log_joint(x, z)
        (gi,) = torch.autograd.grad(li.sum(), z) if li.requires_grad else (torch.zeros_like(z),)
        (gj,) = torch.autograd.grad(lj.sum(), z)
    return li.detach(), lj.detach(), gi.detach(), gj.detach()


def _annealed(parts: tuple[torch.Tensor, ...], beta: float
              ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """log f_β = log p₀ + β (log p(x, z) − log p₀) and its gradient, from the cached parts."""
    li, lj, gi, gj = parts
    return li + beta * (lj - li), gi + beta * (gj - gi), parts


def _target(model, x, initial, beta: float) -> hmc.Target:
    return lambda z: _annealed(_parts(model, x, initial, z), beta)


def _retarget(state: hmc.HMCState, beta: float) -> hmc.HMCState:
    value, grad, parts = _annealed(state.extras, beta)
    return hmc.HMCState(state.z, value, grad, parts)


def _check_options(steps, chains, leapfrog, step_size, target_accept, direction):
    _checks.positive_int("steps", steps)
    _checks.positive_int("chains", chains)
    _checks.positive_int("leapfrog", leapfrog)
    _checks.positive_float("step_size", step_size)
    if not 0 < _checks.positive_float("target_accept", target_accept) < 1:
        raise ValueError(f"target_accept: expected a number in (0, 1), got {target_accept}")
    _checks.one_of("direction", direction, DIRECTIONS)


def ais(model: GenerativeModel, x: torch.Tensor, *, init: Distribution | None = None,
        steps: int = 100, chains: int = 16, leapfrog: int = 10, step_size: float = 0.05,
        target_accept: float = 0.65, adapt: bool = True, schedule_kind: str = "sigmoid",
        direction: str = "forward", start_z: torch.Tensor | None = None) -> AISResult:
    """Estimate log p(x) per example by AIS from ``init`` (None: the prior) to p(z | x).

    Args:
        model: generative model with a continuous latent (``prior()``, ``log_joint()``).
        x: data [B, D].
        init: p₀, a distribution with batch [B] (e.g. the encoder's q(z | x)); None: p(z).
        steps: T ≥ 1 intermediate distributions (T = 1 is importance sampling from p₀).
        chains: C independent chains per example.
        leapfrog: L leapfrog steps per HMC transition.
        step_size: initial ε (adapted per example toward ``target_accept`` if ``adapt``).
        schedule_kind: "sigmoid" or "linear" (:func:`schedule`).
        direction: "forward" (lower bound) or "reverse" (upper bound; needs ``start_z``).
        start_z: reverse only: exact posterior samples [C, B, L] of p(z | x).

    Returns:
        :class:`AISResult`. Needs autograd for HMC, so it turns it on locally.

    Raises:
        ValueError/TypeError: bad options, a discrete latent, or a reverse run without start_z.
    """
    _check_options(steps, chains, leapfrog, step_size, target_accept, direction)
    x = model.check_data(x)
    initial = _Initial(model, init, x.shape[0])
    if direction == "reverse":
        if start_z is None or start_z.dim() != 3 or start_z.shape[:2] != (chains, x.shape[0]):
            got = None if start_z is None else list(start_z.shape)
            raise ValueError(f"start_z: reverse AIS expected exact posterior samples "
                             f"[{chains}, {x.shape[0]}, L], got {got}")
        z = start_z.detach()
    else:
        z = initial.sample(chains)
    betas = schedule(steps, schedule_kind).tolist()
    order = range(1, steps + 1) if direction == "forward" else range(steps, 0, -1)
    state = hmc.start(_target(model, x, initial, betas[0 if direction == "forward" else -1]), z)
    eps = torch.full((x.shape[0],), step_size, dtype=z.dtype, device=z.device)
    log_w, accepted = torch.zeros_like(state.log_density), []
    for t in order:
        if direction == "forward":
            log_w += (betas[t] - betas[t - 1]) * (state.extras[1] - state.extras[0])
        if t < steps:
            state, acc = hmc.transition(_target(model, x, initial, betas[t]),
                                        _retarget(state, betas[t]), eps, leapfrog)
            accepted.append(acc.mean(0))
            eps = hmc.adapt_step_size(eps, acc, target_accept) if adapt else eps
        if direction == "reverse":
            log_w -= (betas[t] - betas[t - 1]) * (state.extras[1] - state.extras[0])
    return _result(log_w, accepted, eps, steps, leapfrog, direction)


def _result(log_w: torch.Tensor, accepted: list[torch.Tensor], eps: torch.Tensor, steps: int,
            leapfrog: int, direction: str) -> AISResult:
    estimate, se, ess = log_mean_exp_and_se(log_w)
    if direction == "reverse":
        estimate = -estimate
    acceptance = (torch.stack(accepted).mean(0) if accepted
                  else torch.full_like(estimate, math.nan))
    return AISResult(log_w, estimate, se, ess, acceptance, eps, log_w.shape[0], steps,
                     leapfrog, direction)
