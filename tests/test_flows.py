"""Oracles for vaelab.model.flows: MADE masks, IAF/MAF log-determinants, inverses, densities.

Every check is float64 and independent of the code under test: autograd Jacobians
(``torch.autograd.functional.jacobian``) for the autoregressive structure and log|det|, the
change-of-variables formula by hand, and numerical integration of a flow density.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal, TransformedDistribution

from vaelab.model import flows

D, C = 4, 3
ORDERS = [torch.arange(D), torch.tensor([2, 0, 3, 1]), torch.arange(D).flip(0)]


def _made(order: torch.Tensor, context_dim: int = C, seed: int = 0) -> flows.MADE:
    """A float64 MADE with seeded random weights (the output layer too: not the identity)."""
    made = flows.MADE(D, [16, 12], 2, context_dim, order).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in made.parameters():
            p.copy_(0.6 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return made


def _context(*batch: int) -> torch.Tensor:
    return torch.randn(*batch, C, dtype=torch.float64)


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: "".join(map(str, o.tolist())))
def test_made_outputs_depend_only_on_earlier_inputs_in_the_order(order):
    made, h = _made(order), _context()
    x = torch.randn(D, dtype=torch.float64)
    for out in range(2):
        J = torch.autograd.functional.jacobian(lambda v, o=out: made(v, h)[o], x)  # [out, in]
        allowed = order[None, :] < order[:, None]                  # input i before output j
        assert bool((J[~allowed] == 0).all()), J
        assert bool((J[allowed] != 0).all()), J          # and the mask removes nothing else
    # the first coordinate in the order sees only the context, which reaches every output
    Jh = torch.autograd.functional.jacobian(lambda c: made(x, c)[0], h)
    assert bool((Jh != 0).all())


def test_made_output_layer_starts_at_zero_and_rejects_bad_orders():
    made = flows.MADE(D, [8], 2, C)
    loc, s = made(torch.randn(5, D), torch.randn(5, C))
    assert bool((loc == 0).all()) and bool((s == 0).all())
    with pytest.raises(ValueError, match="order: expected a permutation"):
        flows.MADE(D, [8], 2, 0, torch.tensor([0, 0, 1, 2]))
    with pytest.raises(ValueError, match="context: expected a tensor"):
        made(torch.randn(5, D))


@pytest.mark.parametrize("gated", [False, True], ids=["affine", "gated"])
@pytest.mark.parametrize("conditioner", ["input", "output"])
@pytest.mark.parametrize("order", ORDERS, ids=lambda o: "".join(map(str, o.tolist())))
def test_log_det_equals_autograd_jacobian_and_jacobian_is_triangular(conditioner, order, gated):
    made, h = _made(order), _context()
    t = flows.AffineAutoregressive(made, h, conditioner, cache_size=0, gated=gated)
    for seed in range(3):
        x = torch.randn(D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        J = torch.autograd.functional.jacobian(t, x)
        sign, logabsdet = torch.linalg.slogdet(J)
        torch.testing.assert_close(t.log_abs_det_jacobian(x, t(x)), logabsdet,
                                   rtol=0, atol=1e-12)
        assert sign > 0
        perm = torch.argsort(order)                    # coordinates in autoregressive order
        J_ordered = J[perm][:, perm]
        assert bool((J_ordered.triu(1) == 0).all()), J_ordered
        assert bool((J_ordered.diagonal() > 0).all())


@pytest.mark.parametrize("gated", [False, True], ids=["affine", "gated"])
@pytest.mark.parametrize("conditioner", ["input", "output"])
def test_inverse_of_forward_is_the_identity_batched_with_broadcast_context(conditioner, gated):
    made, h = _made(ORDERS[1]), _context(5)                      # context [B, C]
    if gated:   # keep σ away from 0: the inverse of a strong contraction is astronomically
        with torch.no_grad():        # large, and the flow of that overflows (correctly)
            made.out.weight.mul_(0.3)
    t = flows.AffineAutoregressive(made, h, conditioner, cache_size=0, gated=gated)
    x = torch.randn(7, 5, D, dtype=torch.float64)                 # [k, B, D]
    y = t(x)
    assert y.shape == x.shape
    torch.testing.assert_close(t.inv(y), x, rtol=0, atol=1e-10)
    torch.testing.assert_close(t(t.inv(x)), x, rtol=0, atol=1e-10)
    ladj = t.log_abs_det_jacobian(x, y)
    assert ladj.shape == (7, 5)
    # every row uses its own context: row b's value equals the unbatched computation
    t1 = flows.AffineAutoregressive(made, h[2], conditioner, cache_size=0, gated=gated)
    torch.testing.assert_close(y[:, 2], t1(x[:, 2]), rtol=0, atol=1e-12)


def test_zero_initialized_steps_are_the_identity():
    for conditioner in ("input", "output"):
        made = flows.MADE(D, [8], 2, C).double()
        t = flows.AffineAutoregressive(made, _context(), conditioner)
        x = torch.randn(3, D, dtype=torch.float64)
        assert torch.equal(t(x), x) and bool((t.log_abs_det_jacobian(x, x) == 0).all())


def test_a_gated_step_is_kingmas_update_and_only_contracts():
    """y = σ ⊙ x + (1 − σ) ⊙ m with (m, raw) from the MADE and σ = sigmoid(raw + 2), written
    out by hand; log|det| = Σ log σ < 0 even where the MADE's raw outputs are huge (the
    affine step's would stretch by e^5 per coordinate there); a fresh step is y = σ(2) x."""
    made, h = _made(ORDERS[1]), _context()
    t = flows.AffineAutoregressive(made, h, "input", cache_size=0, gated=True)
    x = torch.randn(6, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    m, raw = made(x, h)
    sigma = 1 / (1 + torch.exp(-(raw + 2.0)))
    torch.testing.assert_close(t(x), sigma * x + (1 - sigma) * m, rtol=0, atol=1e-12)
    torch.testing.assert_close(t.log_abs_det_jacobian(x, t(x)), sigma.log().sum(-1),
                               rtol=0, atol=1e-12)
    with torch.no_grad():                     # fresh copies of x: no MADE pass is reused
        made.out.bias.fill_(40.0)             # raw ≫ 0: σ → 1 from below, never above
        big = t.log_abs_det_jacobian(x.clone(), None)
        made.out.bias.fill_(-40.0)            # raw ≪ 0: σ → 0, a strong contraction
        small = t.log_abs_det_jacobian(x.clone(), None)
    assert bool((big <= 0).all()) and bool((small < -30).all())
    fresh = flows.AffineAutoregressive(flows.MADE(D, [8], 2, C).double(), h, "input",
                                       gated=True)
    torch.testing.assert_close(fresh(x), x / (1 + math.exp(-2.0)), rtol=0, atol=1e-14)


def _flow(conditioner: str, context: torch.Tensor | None, dim: int = D,
          steps: int = 3, weight_scale: float = 0.5) -> TransformedDistribution:
    mades = flows.made_stack(dim, steps, [16], 0 if context is None else C).double()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in mades.parameters():
            p.copy_(weight_scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    base = Independent(Normal(torch.zeros(dim, dtype=torch.float64),
                              torch.ones(dim, dtype=torch.float64)), 1)
    return TransformedDistribution(
        base, [flows.AffineAutoregressive(m, context, conditioner) for m in mades])


@pytest.mark.parametrize("conditioner", ["input", "output"])
def test_stacked_flow_density_is_the_change_of_variables_by_hand(conditioner):
    context = _context() if conditioner == "input" else None
    flow = _flow(conditioner, context)
    u = torch.randn(D, dtype=torch.float64)

    def forward(v: torch.Tensor) -> torch.Tensor:
        for t in flow.transforms:
            v = t._call(v)                      # no cache: the map itself
        return v

    z = forward(u)
    J = torch.autograd.functional.jacobian(forward, u)
    by_hand = (-0.5 * u.square().sum() - 0.5 * D * math.log(2 * math.pi)
               - torch.linalg.slogdet(J)[1])
    fresh = z.detach().clone()                  # not the cached output: inverts for real
    torch.testing.assert_close(flow.log_prob(fresh), by_hand, rtol=0, atol=1e-10)
    # reversing the order between steps makes every coordinate depend on every other
    assert bool((J != 0).all())


def test_flow_density_integrates_to_one_in_two_dimensions():
    flow = _flow("output", None, dim=2, steps=2, weight_scale=0.3)
    assert float((flow.sample((100_000,)).abs() > 12).any(-1).double().mean()) == 0
    grid = torch.linspace(-14, 14, 1401, dtype=torch.float64)
    zz = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        density = flow.log_prob(zz).exp().reshape(len(grid), len(grid)).numpy()
    step = float(grid[1] - grid[0])
    total = np.trapezoid(np.trapezoid(density, dx=step, axis=1), dx=step)
    assert abs(total - 1) < 1e-4, total


def test_rsample_then_log_prob_uses_the_cache_and_matches_the_sequential_inverse():
    h = _context(6)
    flow = _flow("input", h)
    base_like = flow.base_dist.expand((6,))
    flow = TransformedDistribution(base_like, flow.transforms)
    z = flow.rsample((4,))
    cached = flow.log_prob(z)
    recomputed = flow.log_prob(z.detach().clone())
    torch.testing.assert_close(cached, recomputed, rtol=1e-10, atol=1e-8)
    assert z.shape == (4, 6, D) and cached.shape == (4, 6)
