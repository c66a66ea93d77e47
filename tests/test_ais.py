"""Oracles for HMC, AIS and BDMC on the linear-Gaussian model, whose p(z | x) and log p(x) are
exact (vaelab.model.exact.LinearGaussian): invariance of the exact posterior, weights unbiased
for p(x), the BDMC sandwich around log p(x) closing as the schedule lengthens, and exactness
when the initial distribution is the posterior."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import F64, make_linear_gaussian

from vaelab.measure import ais, bdmc, hmc
from vaelab.model import exact


@pytest.fixture
def lg_setup():
    model = make_linear_gaussian(5, 3).requires_grad_(False)
    x = model.sample(4, generator=torch.Generator().manual_seed(2))
    return model, x, model.log_marginal(x)


def _posterior_target(model, x) -> hmc.Target:
    def target(z):
        value, grad = hmc.value_and_grad(lambda v: model.log_joint(x, v), z)
        return value, grad, ()
    return target


def test_hmc_leaves_the_exact_posterior_invariant(lg_setup, one_thread):
    """Chains started at exact posterior draws stay exactly distributed: after 30 transitions
    the mean and covariance over 4000 chains match the closed form within 4 standard errors."""
    model, x, _ = lg_setup
    post = model.posterior(x)
    chains = 2000
    state = hmc.start(_posterior_target(model, x), post.sample((chains,)))
    eps = torch.full((x.shape[0],), 0.4, dtype=F64)
    moved = torch.zeros(chains, x.shape[0], dtype=torch.bool)
    accepts = []
    for _ in range(30):
        before = state.z
        state, acc = hmc.transition(_posterior_target(model, x), state, eps, 4)
        moved |= (state.z != before).any(-1)
        accepts.append(acc.mean())
    z, mean, cov = state.z, post.mean, post.covariance_matrix[0]
    var = torch.diagonal(cov)
    se_mean = (var / chains).sqrt()
    assert ((z.mean(0) - mean).abs() < 4 * se_mean).all()
    emp = torch.einsum("cbi,cbj->bij", z - mean, z - mean) / chains         # [B, L, L]
    se_cov = ((var[:, None] * var[None, :] + cov**2) / chains).sqrt()
    assert ((emp - cov).abs() < 4 * se_cov).all()
    assert moved.float().mean() > 0.95                   # the chains really moved
    assert 0.5 < float(torch.stack(accepts).mean()) < 1.0


def test_hmc_converges_to_the_posterior_from_the_prior(lg_setup, one_thread):
    """Started at the prior (far from p(z | x)), 60 transitions reach the posterior mean."""
    model, x, _ = lg_setup
    post = model.posterior(x)
    state = hmc.start(_posterior_target(model, x), torch.randn(1000, 4, 3, dtype=F64))
    eps = torch.full((4,), 0.4, dtype=F64)
    for _ in range(60):
        state, _ = hmc.transition(_posterior_target(model, x), state, eps, 4)
    se = (torch.diagonal(post.covariance_matrix[0]) / 1000).sqrt()
    assert ((state.z.mean(0) - post.mean).abs() < 5 * se).all()


def test_hmc_rejects_non_finite_end_points(lg_setup):
    model, x, _ = lg_setup
    z0 = model.posterior(x).sample((8,))
    state = hmc.start(_posterior_target(model, x), z0)
    new, acc = hmc.transition(_posterior_target(model, x), state,
                              torch.full((4,), 1e200, dtype=F64), 3)
    assert torch.equal(new.z, z0) and bool((acc == 0).all())


def test_schedule_endpoints_and_monotone():
    for kind in ais.SCHEDULES:
        b = ais.schedule(50, kind)
        assert b.shape == (51,) and b[0] == 0 and b[-1] == 1 and bool((b.diff() > 0).all())
    torch.testing.assert_close(ais.schedule(4, "linear"),
                               torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=F64))


def test_forward_ais_weights_are_unbiased_for_p_x(lg_setup, one_thread):
    """E[w] = p(x) for any schedule: with 20,000 chains and T = 4 (fixed step, from the prior),
    log-mean-exp of the weights is within 4 delta-method SEs of the exact log p(x)."""
    model, x, exact_ll = lg_setup
    r = ais.ais(model, x, steps=4, chains=20000, leapfrog=3, step_size=0.3, adapt=False)
    assert r.log_weights.shape == (20000, 4)
    assert ((r.log_likelihood - exact_ll).abs() < 4 * r.stderr).all()
    assert (r.stderr < 0.05).all()                      # the check has teeth


def test_bdmc_brackets_log_p_x_and_closes_as_steps_grow(lg_setup, one_thread):
    """Single-chain bounds E[log w] ≤ log p(x) ≤ E[−log w_rev] (means over 400 chains from the
    prior, within 4 SE) whose gap shrinks like 1/T (about 6, 1.2 and 0.16 nats at T = 2, 20,
    200); at T = 200 the log-mean-exp estimates of both directions are within 0.1 nat."""
    model, x, exact_ll = lg_setup
    chains = 400
    z = model.posterior(x).sample((chains,))
    gaps = {}
    for steps in (2, 20, 200):
        lower = ais.ais(model, x, steps=steps, chains=chains, leapfrog=3, step_size=0.3)
        upper = ais.ais(model, x, steps=steps, chains=chains, leapfrog=3, step_size=0.3,
                        direction="reverse", start_z=z)
        lo, up = lower.log_weights, -upper.log_weights                 # per chain, [C, B]
        se_lo, se_up = lo.std(0) / math.sqrt(chains), up.std(0) / math.sqrt(chains)
        assert (lo.mean(0) - exact_ll < 4 * se_lo).all()
        assert (exact_ll - up.mean(0) < 4 * se_up).all()
        gaps[steps] = float((up.mean(0) - lo.mean(0)).mean())
    assert gaps[2] > 3 and gaps[20] < gaps[2] / 3 and gaps[200] < gaps[20] / 4
    assert gaps[200] < 0.25
    assert ((lower.log_likelihood - exact_ll).abs() < 0.1).all()
    assert ((upper.log_likelihood - exact_ll).abs() < 0.1).all()


def test_every_estimator_is_exact_from_the_exact_posterior(lg_setup):
    """With p₀ = p(z | x), h(z) = log p(x, z) − log p(z | x) = log p(x) at every z: forward
    and reverse AIS (any T) and BDMC return log p(x) to rounding, with zero SE."""
    model, x, exact_ll = lg_setup
    post = model.posterior(x)
    for steps in (1, 7):
        fwd = ais.ais(model, x, init=post, steps=steps, chains=5, leapfrog=2)
        rev = ais.ais(model, x, init=post, steps=steps, chains=5, leapfrog=2,
                      direction="reverse", start_z=post.sample((5,)))
        for r in (fwd, rev):
            torch.testing.assert_close(r.log_likelihood, exact_ll, rtol=0, atol=1e-9)
            assert (r.stderr < 1e-6).all()
    xs, zs = bdmc.simulate(model, 3, torch.Generator().manual_seed(5))
    sand = bdmc.bdmc(model, xs, zs, init=model.posterior, steps=5, chains=4, leapfrog=2)
    torch.testing.assert_close(sand.gap, torch.zeros(3, dtype=F64), rtol=0, atol=1e-9)
    torch.testing.assert_close(sand.lower.log_likelihood, model.log_marginal(xs), rtol=0,
                               atol=1e-9)


def test_bdmc_simulates_exact_pairs_and_summarizes(lg_setup):
    model, _, _ = lg_setup
    x, z = bdmc.simulate(model, 4000, torch.Generator().manual_seed(1))
    # x ~ p(x) = N(b, W Wᵀ + σ² I): compare the sample mean with b (an independent check)
    se = model.marginal().covariance_matrix.diagonal().sqrt() / math.sqrt(4000)
    assert ((x.mean(0) - model.bias).abs() < 4 * se).all()
    assert z.shape == (4000, 3)
    r = bdmc.bdmc(model, x[:3], z[:3], steps=3, chains=6, leapfrog=2)
    s = r.summary()
    assert s["num_examples"] == 3 and s["chains"] == 6
    assert s["gradient_evaluations_per_example"] == 2 * 6 * (1 + 2 * 2)
    assert s["gap"]["mean"] == pytest.approx(float(r.gap.mean()))


def test_ais_errors_name_the_argument(lg_setup):
    model, x, _ = lg_setup
    with pytest.raises(ValueError, match="start_z"):
        ais.ais(model, x, direction="reverse")
    with pytest.raises(ValueError, match="direction"):
        ais.ais(model, x, direction="sideways")
    with pytest.raises(ValueError, match="chains"):
        ais.ais(model, x, chains=0)
    with pytest.raises(ValueError, match="target_accept"):
        ais.ais(model, x, target_accept=1.5)
    with pytest.raises(ValueError, match="init"):
        ais.ais(model, x, init=model.posterior(x[:2]))
    mix = exact.GaussianMixture(torch.zeros(2, dtype=F64), torch.randn(2, 5, dtype=F64),
                                torch.ones(2, 5, dtype=F64))
    with pytest.raises(TypeError, match="continuous latent"):
        ais.ais(mix, x, steps=2, chains=2)


def test_hmc_builds_the_step_size_on_the_chains_device(lg_setup):
    """A float step size becomes a tensor on z's device: with another default device (as a
    CUDA chain beside a CPU default) the transition is unchanged."""
    model, x, _ = lg_setup
    z0 = model.posterior(x).sample((8,), )
    target = _posterior_target(model, x)
    torch.manual_seed(3)
    expected, _ = hmc.transition(target, hmc.start(target, z0), 0.3, 2)
    torch.manual_seed(3)
    with torch.device("meta"):               # tensors built without a device land on meta
        got, _ = hmc.transition(target, hmc.start(target, z0), 0.3, 2)
    assert got.z.device == z0.device and torch.equal(got.z, expected.z)


@pytest.mark.device
def test_is_ais_and_bdmc_on_the_device_find_the_exact_log_likelihood(device):
    """On the device under test (float64, as the oracle): importance sampling, forward AIS
    and both BDMC directions land within 4 SE (and 0.2 nat) of the closed-form log p(x)."""
    from vaelab.measure.evaluate import log_likelihood

    model = make_linear_gaussian(5, 3).requires_grad_(False).to(device)
    x = model.sample(4, generator=torch.Generator().manual_seed(2)).to(device)
    exact_ll = model.log_marginal(x)
    post = model.posterior(x)
    q = torch.distributions.Independent(torch.distributions.Normal(
        post.mean, 1.3 * post.variance.sqrt()), 1)               # close to, not, p(z | x)
    est = log_likelihood(model, q, x, num_samples=4000)
    forward = ais.ais(model, x, steps=50, chains=200, leapfrog=3, step_size=0.3)
    xs, zs = bdmc.simulate(model, 3, torch.Generator().manual_seed(5))
    sandwich = bdmc.bdmc(model, xs.to(device), zs.to(device), steps=200, chains=100,
                         leapfrog=3, step_size=0.3)
    for value, se, exact_value in ((est.log_likelihood, est.stderr, exact_ll),
                                   (forward.log_likelihood, forward.stderr, exact_ll),
                                   (sandwich.lower.log_likelihood, sandwich.lower.stderr,
                                    model.log_marginal(xs.to(device))),
                                   (sandwich.upper.log_likelihood, sandwich.upper.stderr,
                                    model.log_marginal(xs.to(device)))):
        assert value.device.type == device.type
        assert ((value - exact_value).abs() < 4 * se + 1e-3).all()
        assert ((value - exact_value).abs() < 0.2).all()                # the check has teeth
