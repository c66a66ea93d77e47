"""BDMC itself (``vaelab.measure.bdmc``), not only AIS: its simulated pairs are draws of the
joint p(z) p(x | z), its reverse chains start at the given exact draws of each example's own
posterior, and its upper bound is one on the exact log p(x) of a linear-Gaussian model."""

from __future__ import annotations

import math

import torch
from conftest import F64, make_linear_gaussian

from vaelab.measure import ais, bdmc


def test_simulated_pairs_have_the_model_joint_covariance_and_residual_variance():
    """On x = W z + b + σ ε: E[(x − b) zᵀ] = W (z ~ N(0, I)) and x − W z − b has variance σ²
    per dimension, within 4 standard errors over 20,000 pairs (z shuffled across examples
    would give 0 and W Wᵀ + σ²)."""
    model = make_linear_gaussian(5, 3, per_dim_noise=True).requires_grad_(False)
    n = 20000
    x, z = bdmc.simulate(model, n, torch.Generator().manual_seed(3))
    centred = x - model.bias
    products = centred[:, :, None] * z[:, None, :]                    # [n, D, L]
    se = products.std(0) / math.sqrt(n)
    assert bool(((products.mean(0) - model.weight).abs() < 4 * se).all())
    assert float(se.max()) < 0.05                                       # the check has teeth
    squares = (centred - z @ model.weight.T) ** 2                      # [n, D]
    se = squares.std(0) / math.sqrt(n)
    assert bool(((squares.mean(0) - model.noise_scale**2).abs() < 4 * se).all())


def test_bdmc_is_forward_ais_and_reverse_ais_from_the_given_draws():
    """With a fixed seed, bdmc(x, z) equals forward AIS then reverse AIS whose every chain
    starts at z (each example's own exact posterior draw), weight for weight."""
    model = make_linear_gaussian(5, 3).requires_grad_(False)
    x, z = bdmc.simulate(model, 6, torch.Generator().manual_seed(5))
    options = {"steps": 4, "chains": 3, "leapfrog": 2, "step_size": 0.3}
    torch.manual_seed(11)
    got = bdmc.bdmc(model, x, z, **options)
    torch.manual_seed(11)
    lower = ais.ais(model, x, **options)
    upper = ais.ais(model, x, direction="reverse", start_z=z.expand(3, *z.shape), **options)
    torch.testing.assert_close(got.lower.log_weights, lower.log_weights, rtol=0, atol=0)
    torch.testing.assert_close(got.upper.log_weights, upper.log_weights, rtol=0, atol=0)


def test_bdmc_single_chain_upper_bound_lies_above_the_exact_log_p_x():
    """From the prior with a short schedule (T = 3) the bounds are loose, so their sides
    show: over 400 simulated examples the mean single-chain reverse bound −log w_rev exceeds
    the exact log p(x) and the forward one log w falls below it (each by more than 4 SE of
    the mean difference; started at another example's z the reverse bound falls below)."""
    model = make_linear_gaussian(5, 3).requires_grad_(False)
    x, z = bdmc.simulate(model, 400, torch.Generator().manual_seed(7))
    torch.manual_seed(13)
    sand = bdmc.bdmc(model, x, z, steps=3, chains=2, leapfrog=2, step_size=0.3)
    exact = model.log_marginal(x).to(F64)
    above = (-sand.upper.log_weights).mean(0) - exact                   # [B]
    below = exact - sand.lower.log_weights.mean(0)
    for diff in (above, below):
        assert float(diff.mean()) > 4 * float(diff.std() / math.sqrt(diff.numel()))
