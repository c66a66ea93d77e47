"""Exact values of the likelihoods at given raw numbers, against independent float64 references.

* the continuous Bernoulli's log p, mean and gradient at |η| = 20, 50, 100 in float32 and
  float64, against its normaliser and mean by quadrature (scipy), and its integral = 1;
* the discretized logistic's scale and log-probability for given raw numbers (the CDF
  difference around x computed by hand in numpy).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from vaelab.model import likelihoods

DTYPES = [torch.float32, torch.float64]
EXTREME_LOGITS = [-100.0, -50.0, -20.0, 20.0, 50.0, 100.0]


def _cb_reference(eta: float) -> tuple[float, float]:
    """(A(η), E[x]) of p(x) ∝ e^{ηx} on [0, 1] by quadrature, scaled by e^{−max(η, 0)} so that
    nothing overflows: A = max(η, 0) + log ∫ e^{η x − max(η, 0)} dx."""
    top = max(eta, 0.0)
    width = 1 / max(abs(eta), 1.0)                 # the mass sits within ~1/|η| of an end
    edge = [1 - width] if eta > 0 else [width]
    opts = {"points": edge, "epsabs": 0, "epsrel": 1e-13, "limit": 200}
    mass = integrate.quad(lambda x: math.exp(eta * x - top), 0, 1, **opts)[0]
    first = integrate.quad(lambda x: x * math.exp(eta * x - top), 0, 1, **opts)[0]
    return top + math.log(mass), first / mass


def test_the_quadrature_reference_matches_the_closed_form():      # the oracle is right
    for eta in EXTREME_LOGITS + [0.3, -2.0]:
        log_norm, mean = _cb_reference(eta)
        closed = math.log(abs(math.expm1(eta)) / abs(eta)) if abs(eta) < 700 else None
        assert log_norm == pytest.approx(closed, rel=1e-12, abs=1e-12)
        assert mean == pytest.approx(1 / (1 - math.exp(-eta)) - 1 / eta, rel=1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eta", EXTREME_LOGITS)
def test_continuous_bernoulli_log_prob_mean_and_gradient_are_exact_at_extreme_logits(
        eta, dtype):
    x = np.array([0.0, 0.3, 0.7, 1.0])
    log_norm, mean = _cb_reference(eta)
    logits = torch.full((4, 1), eta, dtype=dtype, requires_grad=True)
    px = likelihoods.ContinuousBernoulli()(logits)
    lp = px.log_prob(torch.tensor(x, dtype=dtype)[:, None])
    (grad,) = torch.autograd.grad(lp.sum(), logits)
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12,
                                                                         "atol": 1e-12}
    np.testing.assert_allclose(lp.detach().double().numpy(), eta * x - log_norm, **tol)
    np.testing.assert_allclose(px.mean.detach().double().numpy()[:, 0], mean, **tol)
    np.testing.assert_allclose(grad.double().numpy()[:, 0], x - mean, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eta", EXTREME_LOGITS + [-1e-3, 0.0, 0.05, 0.1, 3.0])
def test_continuous_bernoulli_integrates_to_one_with_the_right_mean(eta, dtype):
    px = likelihoods.ContinuousBernoulli()(torch.tensor([[eta]], dtype=dtype))

    def density(x: float) -> float:
        return math.exp(px.log_prob(torch.tensor([[x]], dtype=dtype)).item())

    tol = 1e-5 if dtype == torch.float32 else 1e-10
    width = 1 / max(abs(eta), 1.0)
    opts = {"points": [width, 1 - width], "limit": 200, "epsabs": tol / 10}
    total = integrate.quad(density, 0, 1, **opts)[0]
    first = integrate.quad(lambda x: x * density(x), 0, 1, **opts)[0]
    assert total == pytest.approx(1.0, abs=tol)
    assert px.mean.item() == pytest.approx(first, abs=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_continuous_bernoulli_samples_have_its_mean_at_extreme_logits(dtype):
    logits = torch.tensor([-100.0, -20.0, 0.0, 0.01, 20.0, 100.0], dtype=dtype)
    px = likelihoods.ContinuousBernoulli()(logits[None])
    draws = px.sample((40000,)).double()[:, 0]                   # [n, 6]
    assert bool(((draws >= 0) & (draws <= 1)).all())
    se = draws.std(0) / math.sqrt(draws.shape[0])
    want = torch.tensor([_cb_reference(e)[1] for e in logits.tolist()], dtype=torch.float64)
    assert bool(((draws.mean(0) - want).abs() < 4 * se).all()), (draws.mean(0), want)


def test_discretized_logistic_maps_raw_numbers_to_loc_and_softplus_scale():
    px = likelihoods.DiscretizedLogistic()(torch.tensor([[0.5, 0.0]], dtype=torch.float64))
    assert px.loc.item() == 0.5
    assert px.scale.item() == pytest.approx(math.log(2) + 1e-4, rel=1e-14)
    assert px.scale.item() == pytest.approx(0.6932471806, abs=1e-10)
    x = 128 / 255
    scale = math.log(2) + 1e-4
    cdf = [1 / (1 + math.exp(-(x + s / 510 - 0.5) / scale)) for s in (1, -1)]
    by_hand = math.log(cdf[0] - cdf[1])
    assert by_hand == pytest.approx(-6.561191911416, abs=1e-11)
    lp = px.log_prob(torch.tensor([[x]], dtype=torch.float64)).item()
    assert lp == pytest.approx(-6.561191911416, abs=1e-11)


@pytest.mark.parametrize("make", [likelihoods.DiscretizedLogistic,
                                  lambda: likelihoods.DiscretizedLogisticMixture(3),
                                  lambda: likelihoods.Gaussian(4, dequantize=True)],
                         ids=["logistic", "mixture", "dequantized"])
def test_exact_means_are_differentiable_and_agree_with_and_without_autograd(make):
    """The exact means are computed in place when nothing records gradients and out of place
    when autograd does: the same values, and a gradient equal to central differences."""
    lik = make().double()
    raw = torch.randn(3, 4 * lik.params_per_dim, dtype=torch.float64, requires_grad=True)
    mean = lik(raw).mean
    (grad,) = torch.autograd.grad(mean.sum(), raw)
    with torch.no_grad():
        torch.testing.assert_close(lik(raw).mean, mean, rtol=0, atol=1e-14)
        step = torch.zeros_like(raw)
        step[1, 2] = 1e-6
        central = (lik(raw + step).mean.sum() - lik(raw - step).mean.sum()) / 2e-6
    assert float(grad[1, 2]) == pytest.approx(float(central), rel=1e-6, abs=1e-9)
