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
from scipy import integrate, stats

from vaelab.config import ModelConfig
from vaelab.fit.step import TrainStep
from vaelab.infer.schemes import build_inference
from vaelab.model import _bernoulli_fast, discretized_logistic, likelihoods
from vaelab.model.vae import build_vae

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
    px = discretized_logistic.DiscretizedLogistic()(torch.tensor([[0.5, 0.0]], dtype=torch.float64))
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


@pytest.mark.parametrize("make", [discretized_logistic.DiscretizedLogistic,
                                  lambda: discretized_logistic.DiscretizedLogisticMixture(3),
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


# --------------------------------------------------------------- image and real-valued likelihoods
# Oracles (float64) for the image and real-valued likelihoods: discretized logistic
# (mixture) against logistic CDF differences and normalisation over all 256 values; the
# continuous Bernoulli's normaliser against numerical integration, at and near λ = 1/2; the
# dequantized Gaussian's bound against the exact discrete probability and its change of scale;
# samplers against probabilities; refusals outside the support; the fast MLP paths apply only
# where they should.


pytestmark = pytest.mark.usefixtures("one_thread")   # small tensors, shared cores

F64 = torch.float64
LEVELS = torch.arange(256, dtype=F64) / 255


def _mixture(logits, loc, scale) -> discretized_logistic.DiscretizedLogisticMixtureDistribution:
    as_t = lambda v: torch.as_tensor(v, dtype=F64).reshape(1, 1, -1)  # noqa: E731 - [1, D=1, K]
    return discretized_logistic.DiscretizedLogisticMixtureDistribution(as_t(logits), as_t(loc),
                                                              as_t(scale))


def _reference_masses(loc: float, scale: float) -> np.ndarray:
    """P(k), k = 0..255, of Logistic(loc, scale) put in bins [k/255 ± 1/510], edges open."""
    edges = np.concatenate([[-np.inf], (np.arange(255) + 0.5) / 255, [np.inf]])
    lo, hi = edges[:-1], edges[1:]
    by_cdf = stats.logistic.cdf(hi, loc, scale) - stats.logistic.cdf(lo, loc, scale)
    by_sf = stats.logistic.sf(lo, loc, scale) - stats.logistic.sf(hi, loc, scale)
    return np.where(lo > loc, by_sf, by_cdf)      # no cancellation in either tail


CASES = [(0.5, 0.1), (0.0, 0.01), (1.0, 0.05), (0.3, 1e-4), (0.7, 3.0), (-2.0, 0.2),
         (4.0, 0.5), (0.5 + 0.5 / 255, 1e-3)]


@pytest.mark.parametrize("loc, scale", CASES)
def test_discretized_logistic_bin_masses_are_logistic_cdf_differences(loc, scale):
    d = _mixture([0.0], [loc], [scale])
    log_p = d.log_prob(LEVELS.view(256, 1, 1))                   # [256, 1]
    reference = _reference_masses(loc, scale)
    big = reference > 1e-200
    np.testing.assert_allclose(log_p.exp().squeeze(1).numpy()[big], reference[big],
                               rtol=1e-9, atol=1e-300)
    assert torch.isfinite(log_p).all()
    assert float(log_p.squeeze(1).logsumexp(0)) == pytest.approx(0.0, abs=1e-12)


def test_edge_bins_reach_to_infinity():
    d = _mixture([0.0], [0.5], [0.1])
    log_p = d.log_prob(LEVELS[[0, 255]].view(2, 1, 1)).squeeze(1)
    first = stats.logistic.cdf(0.5 / 255, loc=0.5, scale=0.1)
    last = stats.logistic.sf(254.5 / 255, loc=0.5, scale=0.1)
    np.testing.assert_allclose(log_p.exp().numpy(), [first, last], rtol=1e-12)


def test_far_tails_stay_accurate_in_log_space():
    """An interior bin 40 scales away: σ(a) − σ(b) underflows naively, the log form does not."""
    loc, scale, k = 0.9, 0.01, 10
    d = _mixture([0.0], [loc], [scale])
    got = float(d.log_prob(LEVELS[k].view(1, 1, 1)))
    lo, hi = (k - 0.5) / 255, (k + 0.5) / 255
    log_hi = stats.logistic.logcdf(hi, loc=loc, scale=scale)
    log_lo = stats.logistic.logcdf(lo, loc=loc, scale=scale)
    assert got == pytest.approx(log_hi + math.log1p(-math.exp(log_lo - log_hi)), rel=1e-10)


def test_mixture_is_the_weighted_sum_and_sums_to_one():
    logits, locs, scales = [0.3, -1.0, 2.0], [0.1, 0.5, 0.95], [0.02, 0.3, 0.005]
    d = _mixture(logits, locs, scales)
    p = d.log_prob(LEVELS.view(256, 1, 1)).squeeze(1).exp().numpy()
    weights = torch.tensor(logits, dtype=F64).softmax(0).numpy()
    reference = sum(w * _reference_masses(m, s) for w, m, s in zip(weights, locs, scales,
                                                                    strict=True))
    np.testing.assert_allclose(p, reference, rtol=1e-10)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("components", [1, 3])
def test_likelihood_module_sums_to_one_per_dimension(components):
    torch.manual_seed(0)
    lik = (discretized_logistic.DiscretizedLogistic() if components == 1
           else discretized_logistic.DiscretizedLogisticMixture(components))
    d = lik(3 * torch.randn(2, lik.params_per_dim * 4, dtype=F64))   # B = 2, D = 4
    for dim in range(4):
        x = torch.zeros(256, 2, 4, dtype=F64)
        x[:, :, dim] = LEVELS.view(256, 1)
        rest = d.log_prob(torch.zeros(2, 4, dtype=F64))            # the other dims at 0
        base = rest - _one_dim(d, torch.zeros(2, 4, dtype=F64), dim)
        total = (d.log_prob(x) - base).logsumexp(0)
        torch.testing.assert_close(total, torch.zeros(2, dtype=F64), atol=1e-12, rtol=0)


def _one_dim(d, x, dim):
    per = discretized_logistic._log_bin_mass(x.unsqueeze(-1), d.loc, d.scale)
    return (per + d.logits.log_softmax(-1)).logsumexp(-1)[..., dim]


def test_raw_parameter_layout_is_parameter_major():
    lik = discretized_logistic.DiscretizedLogisticMixture(2)
    raw = torch.arange(12, dtype=F64).view(1, 12)          # D = 2: [logits|loc|scale]×K×D
    d = lik(raw)
    torch.testing.assert_close(d.logits, torch.tensor([[[0.0, 2.0], [1.0, 3.0]]], dtype=F64))
    torch.testing.assert_close(d.loc, torch.tensor([[[4.0, 6.0], [5.0, 7.0]]], dtype=F64))


def test_sampler_frequencies_match_the_bin_masses():
    torch.manual_seed(0)
    d = _mixture([0.0, 0.5], [0.2, 0.6], [0.05, 0.01])
    n = 200_000
    draws = (d.sample((n,)).squeeze() * 255).round().long()
    counts = torch.bincount(draws, minlength=256).double().numpy()
    p = d.log_prob(LEVELS.view(256, 1, 1)).squeeze(1).exp().numpy()
    se = np.sqrt(n * p * (1 - p)) + 1e-9
    assert np.all(np.abs(counts - n * p) < 5 * se + 1)


def test_gradients_stay_finite_at_extremes():
    raw = torch.tensor([[-40.0, 40.0, 0.0, -40.0, 40.0, 0.0]], dtype=F64, requires_grad=True)
    lik = discretized_logistic.DiscretizedLogistic()
    x = torch.tensor([[0.0, 1.0, 128 / 255]], dtype=F64)
    lik(raw).log_prob(x).sum().backward()
    assert torch.isfinite(raw.grad).all()


# --------------------------------------------------------------------------- continuous Bernoulli


LAMBDAS = [1e-3, 0.1, 0.3, 0.499, 0.4999, 0.49999, 0.5, 0.50001, 0.5001, 0.501, 0.7, 0.999]


@pytest.mark.parametrize("lam", LAMBDAS)
def test_continuous_bernoulli_integrates_to_one(lam):
    logit = math.log(lam) - math.log1p(-lam)
    d = likelihoods.ContinuousBernoulli()(torch.tensor([[logit]], dtype=F64))

    def density(x: float) -> float:
        return float(d.log_prob(torch.tensor([[x]], dtype=F64)).exp())

    total, error = integrate.quad(density, 0.0, 1.0, epsabs=1e-13, epsrel=1e-13)
    assert total == pytest.approx(1.0, abs=1e-10)
    # the normaliser against its closed form C(λ) = 2 atanh(1 − 2λ) / (1 − 2λ), C(½) = 2
    t = 1 - 2 * lam
    log_c = math.log(2.0) if t == 0 else math.log(2 * math.atanh(t) / t)
    log_p0 = float(d.log_prob(torch.zeros(1, 1, dtype=F64)))      # log C + log(1 − λ)
    assert log_p0 == pytest.approx(log_c + math.log1p(-lam), abs=1e-10)


@pytest.mark.parametrize("lam", [0.4999, 0.5, 0.5001, 0.502])
def test_continuous_bernoulli_float32_is_accurate_near_one_half(lam):
    logit = math.log(lam) - math.log1p(-lam)
    d32 = likelihoods.ContinuousBernoulli()(torch.tensor([[logit]], dtype=torch.float32))
    d64 = likelihoods.ContinuousBernoulli()(torch.tensor([[logit]], dtype=F64))
    x = torch.tensor([[0.0], [0.3], [1.0]])
    np.testing.assert_allclose(d32.log_prob(x).numpy(), d64.log_prob(x.double()).numpy(),
                               atol=2e-5)


# --------------------------------------------------------------------------- dequantized Gaussian


def _exact_log_mass(k: int, loc: float, scale: float) -> float:
    """log P(k) = log ∫_{k/256}^{(k+1)/256} N(y; loc, scale) dy (the discrete model it bounds)."""
    lo, hi = k / 256, (k + 1) / 256
    if lo > loc:                                  # upper tail: survival functions, no cancelling
        big, small = stats.norm.logsf(lo, loc, scale), stats.norm.logsf(hi, loc, scale)
    else:
        big, small = stats.norm.logcdf(hi, loc, scale), stats.norm.logcdf(lo, loc, scale)
    return big + math.log1p(-math.exp(small - big))


def _expected_bound(k: int, loc: float, scale: float) -> float:
    """E_u[log N((k + u)/256; loc, scale)] − log 256 by quadrature over u ∈ [0, 1)."""
    value, _ = integrate.quad(lambda u: stats.norm.logpdf((k + u) / 256, loc, scale), 0, 1,
                              epsabs=1e-12)
    return value - math.log(256)


@pytest.mark.parametrize("k, loc, scale", [(0, 0.0, 0.002), (100, 0.4, 0.003),
                                           (200, 0.1, 0.01), (255, 0.99, 0.001),
                                           (37, 0.15, 0.05)])
def test_dequantized_bound_never_exceeds_the_discrete_probability(k, loc, scale):
    assert _expected_bound(k, loc, scale) <= _exact_log_mass(k, loc, scale) + 1e-12


@pytest.mark.parametrize("k", [3, 128, 250])
def test_dequantized_bound_approaches_the_probability_as_the_density_smooths(k):
    """gap = log P(k) − E_u[bound] ≥ 0 falls as σ grows past the bin width 1/256."""
    gaps = [_exact_log_mass(k, 0.5, s) - _expected_bound(k, 0.5, s)
            for s in (0.01, 0.05, 0.5, 5.0)]
    assert all(g >= -1e-12 for g in gaps)
    assert gaps == sorted(gaps, reverse=True)
    assert gaps[-1] < 1e-9                       # σ = 1280 bins: tight to 1e-9 nats
    if k == 128:
        assert gaps[1] < 1e-6                    # near the mode, tight already at σ = 13 bins


def test_dequantized_log_prob_is_the_density_minus_d_log_256():
    """The change of scale is exactly D·log 256 nats (a = 256: y = (k + u)/256 ∈ [0, 1))."""
    torch.manual_seed(3)
    d_dim = 7
    lik = likelihoods.Gaussian(dequantize=True, min_scale=0.0)
    raw = torch.randn(2, 3, 2 * d_dim, dtype=F64)
    dist = lik(raw)
    x = torch.randint(0, 256, (3, d_dim)).double() / 255
    torch.manual_seed(11)
    got = dist.log_prob(x)                                        # [2, 3]
    torch.manual_seed(11)
    u = torch.rand(2, 3, d_dim, dtype=F64)                       # the same draw
    y = (torch.round(x * 255) + u) / 256
    loc, scale = raw.chunk(2, -1)
    density = torch.distributions.Normal(loc, torch.nn.functional.softplus(scale)).log_prob(y)
    torch.testing.assert_close(got, density.sum(-1) - d_dim * math.log(256), rtol=0, atol=1e-12)


def test_dequantized_importance_average_is_unbiased_for_the_discrete_probability():
    torch.manual_seed(0)
    loc, scale, k = 0.3, 0.004, 77
    raw = torch.tensor([[loc, math.log(math.expm1(scale))]], dtype=F64)
    dist = likelihoods.Gaussian(dequantize=True, min_scale=0.0)(raw.expand(200_000, 2))
    w = dist.log_prob(torch.full((200_000, 1), k / 255, dtype=F64)).exp()
    exact = math.exp(_exact_log_mass(k, loc, scale))
    assert abs(float(w.mean()) - exact) < 4 * float(w.std()) / math.sqrt(len(w))


# --------------------------------------------------------------------------- support


@pytest.mark.parametrize("lik", [discretized_logistic.DiscretizedLogistic(),
                                 discretized_logistic.DiscretizedLogisticMixture(2),
                                 likelihoods.Gaussian(dequantize=True)])
@pytest.mark.parametrize("values", [[0.5], [-1 / 255], [256 / 255], [0.1]])
def test_eight_bit_likelihoods_refuse_other_values_in_one_line(lik, values):
    x = torch.tensor([[0.0, *values]])
    with pytest.raises(ValueError, match="8-bit data") as err:
        lik.check_support(x, "x")
    assert "\n" not in str(err.value)
    lik.check_support(torch.tensor([[0.0, 1 / 255, 1.0]]), "x")        # lattice values pass


def test_continuous_bernoulli_refuses_values_outside_the_unit_interval():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        likelihoods.ContinuousBernoulli().check_support(torch.tensor([[0.2, 1.5]]))


#: The options a likelihood cannot do without (its number of trials, of categories).
REQUIRED = {"binomial": {"trials": 16}, "categorical": {"categories": 3},
            "mixed": {"columns": [{"name": "a", "likelihood": "poisson"},
                                  {"name": "b", "likelihood": "categorical",
                                   "labels": ["x", "y"]}]}}


@pytest.mark.parametrize("name", list(likelihoods.LIKELIHOODS))
def test_config_round_trip(name):
    lik = likelihoods.from_model_config(ModelConfig(
        data_dim=3, likelihood=name, data_kind="8-bit",
        likelihood_options=REQUIRED[name] if name in REQUIRED else None))
    again = likelihoods.from_config(lik.config())
    assert type(again) is type(lik) and again.config() == lik.config()


# --------------------------------------------------------------------------- fast paths


@pytest.mark.parametrize("net, likelihood, fast", [
    ("mlp", "bernoulli", True), ("conv", "bernoulli", False),
    ("mlp", "discretized-logistic", False), ("mlp", "continuous-bernoulli", False),
    ("mlp", "gaussian", False), ("conv", "discretized-logistic-mixture", False)])
def test_fast_mlp_paths_apply_only_to_the_mlp_bernoulli_vae(net, likelihood, fast):
    """The MLP fast paths (hand gradient, plain-tensor log-weights) only for the MLP Bernoulli
    VAE; the plain-tensor autograd ELBO (any nets) only for a Bernoulli likelihood."""
    config = ModelConfig(data_dim=16, image_shape=(1, 4, 4), latent_dim=2, hidden=(8,),
                         net=net, conv_channels=(4,), likelihood=likelihood,
                         data_kind="binary")
    model = build_vae(config)
    x = torch.bernoulli(torch.full((3, 16), 0.5))
    q = model.encode(x)
    assert _bernoulli_fast.applies(model, q, x) is fast
    step = TrainStep(model, build_inference("amortized", model, 3), compile=False)
    assert (step._grad is not None) is fast
    assert (step._fast is not None) is (likelihood == "bernoulli")
    result = step(x, torch.arange(3), 1.0)
    assert math.isfinite(result.elbo)
