"""Hamiltonian Monte Carlo transitions, batched over chains and examples.

Duane, Kennedy, Pendleton & Roweth (1987); Neal (2011), "MCMC using Hamiltonian dynamics".
One transition for a target density π(z) ∝ exp(U(z)) with identity mass matrix: draw a momentum
p ~ N(0, I), follow ``num_leapfrog`` leapfrog steps of size ε of the Hamiltonian
H(z, p) = −U(z) + ½‖p‖², and accept the end point with probability min(1, exp(H₀ − H₁)). The
leapfrog map is volume-preserving and reversible, so the transition satisfies detailed balance
with respect to π and leaves it invariant, whatever ε and L (the tests check it on a
linear-Gaussian posterior).

Shapes: z [C, B, L] (chains, examples, latent dims); the target returns U(z) [C, B] and its
gradient [C, B, L]; the step size ε is a tensor broadcastable to [C, B] (one per example, [B],
or one per chain, [C, B]). Every chain accepts or rejects on its own. A non-finite end point is
rejected (its acceptance probability is 0).

Cost: a transition evaluates the target and its gradient ``num_leapfrog`` times (the gradient
at the start point is carried over from the previous transition).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from vaelab import _checks

#: U(z) and ∇U(z) together, plus any extra per-chain tensors [C, B, ...] to carry along.
Target = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]]


class HMCState(NamedTuple):
    """A batch of chain positions with their cached log-density and gradient.

    Attributes:
        z: positions [C, B, L].
        log_density: U(z) [C, B].
        grad: ∇U(z) [C, B, L].
        extras: per-chain tensors [C, B, ...] the target returned with U (e.g. its parts).
    """

    z: torch.Tensor
    log_density: torch.Tensor
    grad: torch.Tensor
    extras: tuple[torch.Tensor, ...]


def value_and_grad(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """fn(z) [C, B] and its gradient with respect to z [C, B, L], both detached.

    Each chain's value depends on its own z only, so the gradient of the sum is the per-chain
    gradient. Runs with autograd on even inside ``torch.no_grad``/``inference_mode``.
    """
    with torch.inference_mode(False), torch.enable_grad():
        z = z.detach().clone().requires_grad_(True)
        value = fn(z)
        (grad,) = torch.autograd.grad(value.sum(), z)
    return value.detach(), grad.detach()


def start(target: Target, z: torch.Tensor) -> HMCState:
    """The state at positions z [C, B, L] (one evaluation of the target)."""
    value, grad, extras = target(z)
    return HMCState(z.detach(), value, grad, extras)


def leapfrog(target: Target, state: HMCState, momentum: torch.Tensor, step_size: torch.Tensor,
             num_leapfrog: int) -> tuple[HMCState, torch.Tensor]:
    """``num_leapfrog`` leapfrog steps of size ``step_size`` [C, B, 1] → (end state, momentum).

    A chain whose position stops being finite is marked with log-density −∞ (so the
    transition rejects it) and evaluated at its start point instead.
    """
    p = momentum + 0.5 * step_size * state.grad
    z, end = state.z, state
    bad = torch.zeros(z.shape[:-1], dtype=torch.bool, device=z.device)
    for i in range(num_leapfrog):
        z = z + step_size * p
        bad |= ~torch.isfinite(z).all(-1)
        z = torch.where(bad[..., None], state.z, z)     # evaluate diverged chains somewhere valid
        end = start(target, z)
        if i < num_leapfrog - 1:
            p = p + step_size * end.grad
    value = torch.where(bad, torch.full_like(end.log_density, -torch.inf), end.log_density)
    return end._replace(log_density=value), p + 0.5 * step_size * end.grad


def transition(target: Target, state: HMCState, step_size: torch.Tensor, num_leapfrog: int,
               ) -> tuple[HMCState, torch.Tensor]:
    """One HMC transition of every chain → (new state, acceptance probability [C, B]).

    Args:
        target: z [C, B, L] → (U(z) [C, B], ∇U(z) [C, B, L], extras).
        state: current :class:`HMCState`.
        step_size: ε > 0, broadcastable to [C, B] ([B] per example or [C, B] per chain).
        num_leapfrog: L ≥ 1 leapfrog steps.
    """
    num_leapfrog = _checks.positive_int("num_leapfrog", num_leapfrog)
    c, b, _ = state.z.shape
    # a float or CPU step size joins z on z's device (a CUDA chain would else mix devices)
    eps = torch.as_tensor(step_size, dtype=state.z.dtype, device=state.z.device)
    eps = eps.expand(c, b)[..., None]
    p0 = torch.randn_like(state.z)
    end, p1 = leapfrog(target, state, p0, eps, num_leapfrog)
    h0 = -state.log_density + 0.5 * p0.square().sum(-1)
    h1 = -end.log_density + 0.5 * p1.square().sum(-1)
    log_accept = (h0 - h1).clamp_max(0.0)
    finite = torch.isfinite(log_accept) & torch.isfinite(end.grad).all(-1)
    log_accept = torch.where(finite, log_accept, torch.full_like(log_accept, -torch.inf))
    accept = torch.rand_like(log_accept).log() < log_accept                 # [C, B]
    return _select(accept, end, state), log_accept.exp()


def _select(accept: torch.Tensor, new: HMCState, old: HMCState) -> HMCState:
    """Per chain: the new state where ``accept`` [C, B], else the old one."""
    pick = accept[..., None]
    return HMCState(torch.where(pick, new.z, old.z),
                    torch.where(accept, new.log_density, old.log_density),
                    torch.where(pick, new.grad, old.grad),
                    tuple(torch.where(accept.reshape(accept.shape + (1,) * (n.dim() - 2)), n, o)
                          for n, o in zip(new.extras, old.extras, strict=True)))


def adapt_step_size(step_size: torch.Tensor, accept_prob: torch.Tensor, target: float = 0.65,
                    rate: float = 1.0, bounds: tuple[float, float] = (1e-4, 2.0)) -> torch.Tensor:
    """ε ← ε · exp(rate · (mean acceptance − target)), clamped to ``bounds``.

    ``step_size`` [B] (per example: the acceptance [C, B] is averaged over chains) or [C, B]
    (per chain). Wu, Burda, Salakhutdinov & Grosse (2017) adapt toward 0.65 in the same way.
    """
    acc = accept_prob.mean(0) if step_size.dim() == 1 else accept_prob
    return (step_size * torch.exp(rate * (acc - target))).clamp(*bounds)
