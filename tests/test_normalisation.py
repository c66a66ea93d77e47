"""Every likelihood and every prior is a normalised probability (or density) with the right
mean, at extreme parameters too, in float32 and float64.

The densities go through the library's own ``log_prob``; the integrals are composite
Gauss-Legendre quadrature in float64 over panels no wider than the density's own scale (two
standard deviations), the sums run over every value of a discrete x. Extreme means logits up
to ±100, log-scales down to −10 (and up to +10), locations at ±100, mixture weights near 0.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from vaelab.model import column_likelihoods, discretized_logistic, families, likelihoods, priors
from vaelab.model.vae import Encoder

DTYPES = [torch.float32, torch.float64]
F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def _tol(dtype: torch.dtype) -> float:
    return 2e-5 if dtype == torch.float32 else 1e-9


def _raw_for_scale(log_scale: float) -> float:
    """The raw number whose softplus is e^{log_scale}."""
    s = math.exp(log_scale)
    return s + math.log(-math.expm1(-s))


def _nodes(edges: np.ndarray, order: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on each panel between consecutive ``edges``."""
    x, w = np.polynomial.legendre.leggauss(order)
    edges = np.unique(edges)
    mid, half = (edges[1:] + edges[:-1]) / 2, (edges[1:] - edges[:-1]) / 2
    return (mid[:, None] + half[:, None] * x).ravel(), (half[:, None] * w).ravel()


def _panels(locs, scales, width: float = 40.0) -> np.ndarray:
    """Panel edges every 2σ over μ ± width·σ for each (μ, σ) (their union: every panel lies
    inside one panel of each component that covers it)."""
    return np.concatenate([np.linspace(m - width * s, m + width * s, int(width) + 1)
                           for m, s in zip(np.ravel(locs), np.ravel(scales), strict=True)])


def _integrate(log_density, edges: np.ndarray, dtype) -> tuple[float, float]:
    """(∫ p, ∫ x p) over the panels, p = exp(log_density(x [N, 1] in dtype)) → [N]."""
    x, w = _nodes(edges)
    lp = log_density(torch.tensor(x, dtype=dtype)[:, None]).detach().to(F64).numpy()
    p = np.exp(lp) * w
    return float(p.sum()), float((p * x).sum())


# ---------------------------------------------------------------------- likelihoods


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("logit", [-100.0, -20.0, 0.0, 3.0, 20.0, 100.0])
def test_bernoulli_sums_to_one_over_zero_and_one(logit, dtype):
    px = likelihoods.Bernoulli()(torch.tensor([[logit]], dtype=dtype))
    p = px.log_prob(torch.tensor([[0.0], [1.0]], dtype=dtype)).to(F64).exp()
    assert float(p.sum()) == pytest.approx(1.0, abs=_tol(dtype))
    assert float(px.mean) == pytest.approx(float(p[1]), abs=_tol(dtype))


#: (loc, log σ, transform, min_scale). The narrowest densities sit near 0, where float32 spaces
#: its values finely enough to integrate them (at 0.3 its step is 3e-8, a 1500th of e^-10).
GAUSSIAN_CASES = [
    (1e-3, -10.0, "exp", 0.0), (1e-3, -10.0, "softplus", 0.0), (0.3, -10.0, "softplus", 1e-3),
    (-100.0, 0.0, "exp", 0.0), (100.0, 10.0, "softplus", 0.0), (2.0, 10.0, "exp", 1e-3),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loc, log_scale, transform, min_scale", GAUSSIAN_CASES)
def test_gaussian_integrates_to_one_with_mean_loc(loc, log_scale, transform, min_scale, dtype):
    raw_scale = log_scale if transform == "exp" else _raw_for_scale(log_scale)
    sigma = math.exp(log_scale) + min_scale
    cases = {
        "network": (likelihoods.Gaussian(1, "network", transform, min_scale), [loc, raw_scale]),
        "learned": (likelihoods.Gaussian(1, "learned", transform, min_scale), [loc]),
        "fixed": (likelihoods.Gaussian(1, "fixed", min_scale=min_scale,
                                       fixed_scale=sigma), [loc]),
    }
    with torch.no_grad():
        cases["learned"][0].raw_scale.fill_(raw_scale)
    for lik, raw in cases.values():
        px = lik.to(dtype)(torch.tensor([raw], dtype=dtype))
        total, first = _integrate(px.log_prob, _panels(loc, sigma), dtype)
        assert total == pytest.approx(1.0, abs=_tol(dtype)), lik.scale_mode
        assert first == pytest.approx(loc, abs=_tol(dtype) * max(sigma, 1.0))
        assert float(px.mean) == pytest.approx(first, abs=_tol(dtype) * max(sigma, 1.0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loc, log_scale", [(0.5, -10.0), (130 / 255 + 0.3 / 256, 0.0),
                                            (-3.0, 0.0), (0.5, 10.0), (1.002, -10.0)])
def test_dequantized_gaussian_sums_to_its_mass_on_the_unit_interval(monkeypatch, loc,
                                                                    log_scale, dtype):
    """Σ_k E_u exp(log_prob(k/255)) = ∫_0^1 N(y; μ, σ) dy ≤ 1 (sub-normalised: a bound), the
    u draws replaced by Gauss-Legendre nodes on [0, 1]; its mean is that of its samples."""
    lik = likelihoods.Gaussian(1, "network", min_scale=1e-3, dequantize=True).to(dtype)
    px = lik(torch.tensor([[loc, _raw_for_scale(log_scale)]], dtype=dtype))
    sigma = math.exp(log_scale) + 1e-3
    nodes, weights = _nodes(np.linspace(0, 1, 2), order=48)
    k = torch.arange(256, dtype=dtype)[:, None] / 255
    total = 0.0
    for u, w in zip(nodes, weights, strict=True):
        monkeypatch.setattr(torch, "rand", lambda *shape, dtype=None, device=None, u=u:
                            torch.full(*shape, float(u), dtype=dtype))
        total += w * float(px.log_prob(k).to(F64).exp().sum())
    monkeypatch.undo()
    mass = stats.norm.cdf(1, loc, sigma) - stats.norm.cdf(0, loc, sigma)
    assert total == pytest.approx(mass, abs=_tol(dtype)) and total <= 1 + _tol(dtype)
    edges = np.r_[-np.inf, np.arange(1, 256) / 256, np.inf]      # x = clamp(⌊256 y⌋)/255
    levels = np.diff(stats.norm.cdf(edges, loc, sigma))
    want = float((levels * np.arange(256) / 255).sum())
    assert float(px.mean) == pytest.approx(want, abs=_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("logit", [-100.0, -50.0, -20.0, -16.0, 0.0, 1e-3, 16.0, 50.0, 100.0])
def test_continuous_bernoulli_integrates_to_one_with_its_mean(logit, dtype):
    px = likelihoods.ContinuousBernoulli()(torch.tensor([[logit]], dtype=dtype))
    total, first = _integrate(px.log_prob, np.linspace(0, 1, 401), dtype)
    assert total == pytest.approx(1.0, abs=_tol(dtype))
    assert float(px.mean) == pytest.approx(first, abs=_tol(dtype))


def _logistic_cases() -> list[tuple[str, list[float]]]:
    """(name, raw [P·1]) for one dimension: DiscretizedLogistic's [loc, raw scale], the
    3-component mixture's [logits × 3, loc × 3, raw scale × 3]."""
    single = [("discretized-logistic", [loc, raw])
              for loc in (-100.0, 0.0, 0.5, 130 / 255, 1.0, 100.0)
              for raw in (-100.0, _raw_for_scale(-10.0), 0.0, 10.0, 100.0)]
    mixture = [("discretized-logistic-mixture", [100.0, -100.0, 0.0, 0.2, 0.7, -100.0,
                                                  -100.0, 0.0, 100.0]),
               ("discretized-logistic-mixture", [0.0, -30.0, 30.0, 1.5, 128 / 255, -0.1,
                                                  _raw_for_scale(-10.0), 2.0, -5.0]),
               ("discretized-logistic-mixture", [-100.0, -100.0, -100.0, 0.0, 1.0, 0.5,
                                                  10.0, -100.0, 0.0])]
    return single + mixture


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, raw", _logistic_cases())
def test_discretized_logistics_sum_to_one_over_the_256_values(name, raw, dtype):
    lik = (discretized_logistic.DiscretizedLogistic() if name == "discretized-logistic"
           else discretized_logistic.DiscretizedLogisticMixture(3))
    px = lik(torch.tensor([raw], dtype=dtype))
    x = torch.arange(256, dtype=dtype)[:, None] / 255
    p = px.log_prob(x).to(F64).exp()
    assert float(p.sum()) == pytest.approx(1.0, abs=_tol(dtype))
    want = float((p * torch.arange(256, dtype=F64) / 255).sum())
    assert float(px.mean) == pytest.approx(want, abs=_tol(dtype))


# The likelihoods for table columns. Counts are summed over 0..N with N past the last value
# of non-negligible mass (the tail beyond N below 1e-15, by the distribution's own decay); the
# real-valued densities are integrated on a map of the real line onto a bounded interval.


def _raw_for(value: float) -> float:
    """The raw number whose softplus + 1e-8 is ``value`` (> 1e-8), in float64."""
    s = value - 1e-8
    return s + math.log(-math.expm1(-s))


def _count_sums(px, top: int, dtype) -> tuple[float, float]:
    """(Σ_{k=0}^{top} p(k), Σ k p(k)) of a one-column count distribution."""
    k = torch.arange(top + 1, dtype=F64)
    p = px.log_prob(k[:, None].to(dtype)).to(F64).exp()
    return float(p.sum()), float((k * p).sum())


#: (μ, θ, N): tiny and huge means, tiny (heavy tail) and huge (Poisson-like) inverse
#: dispersions; N puts the tail mass below 1e-15.
NB_CASES = [(1e-6, 1.0, 100), (5.0, 1e-3, 400_000), (5.0, 1e6, 200), (1e4, 0.5, 1_000_000),
            (1e4, 1e6, 20_000), (0.3, 30.0, 200)]


@pytest.mark.parametrize("mean, top", [(1e-6, 50), (0.5, 60), (30.0, 200), (1e4, 12_000)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_poisson_sums_to_one_with_its_mean(mean, top, dtype):
    if dtype == torch.float32 and mean > 100:
        pytest.skip("float32 log-factorials near 1e5 carry errors of 1e-2: float64 only")
    px = column_likelihoods.Poisson()(torch.tensor([[_raw_for(mean)]], dtype=F64).to(dtype))
    total, first = _count_sums(px, top, dtype)
    tol = _tol(dtype) if dtype == F64 else 1e-5
    assert total == pytest.approx(1.0, abs=tol)
    assert first == pytest.approx(mean, rel=tol) and float(px.mean) == pytest.approx(mean,
                                                                                    rel=tol)


@pytest.mark.parametrize("mean, theta, top", NB_CASES)
@pytest.mark.parametrize("zero_logit", [None, -100.0, 0.0, 100.0])
def test_negative_binomials_sum_to_one_with_their_means(mean, theta, top, zero_logit):
    """The negative binomial and its zero-inflated form (π from 0 to 1) in float64."""
    raw = [_raw_for(mean), _raw_for(theta)]
    if zero_logit is None:
        px = column_likelihoods.NegativeBinomial("example")(torch.tensor([raw], dtype=F64))
        keep = 1.0
    else:
        px = column_likelihoods.ZeroInflatedNegativeBinomial("example")(
            torch.tensor([[raw[0], zero_logit, raw[1]]], dtype=F64))
        keep = 1 / (1 + math.exp(zero_logit))
    total, first = _count_sums(px, top, F64)
    # torch's log-pmf takes lgamma(θ + x) − lgamma(θ): at θ = 1e6 that difference of two
    # numbers near 1e7 keeps 9 of float64's 16 digits, hence 1e-8 there.
    tol = 1e-8 if theta > 1e3 else 1e-9
    assert total == pytest.approx(1.0, abs=tol)
    assert first == pytest.approx(keep * mean, rel=tol, abs=1e-300)
    assert float(px.mean) == pytest.approx(keep * mean, rel=tol, abs=1e-300)


def test_negative_binomial_sums_to_one_in_float32_at_moderate_parameters():
    px = column_likelihoods.NegativeBinomial("example")(
        torch.tensor([[_raw_for(3.0), _raw_for(0.7)]], dtype=torch.float32))
    total, first = _count_sums(px, 400, torch.float32)
    assert total == pytest.approx(1.0, abs=1e-5) and first == pytest.approx(3.0, rel=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trials", [1, 16, 1000])
@pytest.mark.parametrize("logit", [-100.0, -3.0, 0.0, 0.7, 100.0])
def test_binomial_sums_to_one_over_zero_to_n(trials, logit, dtype):
    if dtype == torch.float32 and trials > 100:
        pytest.skip("float32 log-factorials near 6000 carry errors of 1e-4: float64 only")
    px = column_likelihoods.Binomial(trials)(torch.tensor([[logit]], dtype=dtype))
    total, first = _count_sums(px, trials, dtype)
    tol = _tol(dtype) if dtype == F64 else 1e-5
    tiny = 1e-300 if dtype == F64 else 1e-37              # below float32's normal numbers
    assert total == pytest.approx(1.0, abs=tol)
    want = trials * stats.logistic.cdf(logit)
    assert first == pytest.approx(want, rel=tol, abs=tiny)
    assert float(px.mean) == pytest.approx(want, rel=tol, abs=tiny)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("logits", [[100.0, -100.0, 0.0], [0.0, 0.0, 0.0], [-100.0, -100.0, 99.0],
                                    [3.0, -2.0, 1e-3]])
def test_categorical_sums_to_one_over_its_categories(logits, dtype):
    px = column_likelihoods.Categorical(3)(torch.tensor([logits], dtype=dtype))
    p = px.log_prob(torch.arange(3, dtype=dtype)[:, None]).to(F64).exp()
    assert float(p.sum()) == pytest.approx(1.0, abs=_tol(dtype))
    assert float(px.mean) == float(np.argmax(logits))          # the mode, a category


def _tan_integral(log_density, loc: float, scale: float, dtype) -> float:
    """∫ p over the real line as ∫ p(loc + s·tan u) s/cos²u du on (−π/2, π/2): panels denser
    where the density sits (|u| small), Gauss-Legendre on each."""
    u, w = _nodes(np.concatenate([np.linspace(-np.pi / 2, np.pi / 2, 401),
                                  np.linspace(-0.2, 0.2, 401)]), order=24)
    x = loc + scale * np.tan(u)
    lp = log_density(torch.tensor(x, dtype=dtype)[:, None]).detach().to(F64).numpy()
    return float((np.exp(lp) * scale / np.cos(u) ** 2 * w).sum())


@pytest.mark.parametrize("df", [1.0, 2.5, 30.0, 1e4, None])
@pytest.mark.parametrize("loc, log_scale", [(0.0, -10.0), (-100.0, 0.0), (100.0, 10.0),
                                            (3.0, None)])
def test_student_t_integrates_to_one(df, loc, log_scale):
    """ν fixed (1: Cauchy) or learned; σ from e^-10 to e^10, or at its floor (raw −100)."""
    lik = column_likelihoods.StudentT(df, min_scale=1e-3, data_dim=1).to(F64)
    raw_scale = -100.0 if log_scale is None else _raw_for_scale(log_scale)
    sigma = 1e-3 + (0.0 if log_scale is None else math.exp(log_scale))
    px = lik(torch.tensor([[loc, raw_scale]], dtype=F64))
    assert _tan_integral(px.log_prob, loc, sigma, F64) == pytest.approx(1.0, abs=1e-8)
    assert float(px.mean) == loc


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loc, log_scale", [(-30.0, 0.0), (0.0, None), (0.0, -10.0),
                                            (10.0, 1.0)])
def test_log_normal_integrates_to_one_with_its_mean(loc, log_scale, dtype):
    """On y = log x: ∫ p(e^y) e^y dy = 1 and ∫ e^y p(e^y) e^y dy = e^{μ + σ²/2}."""
    raw_scale = -100.0 if log_scale is None else _raw_for_scale(log_scale)
    sigma = 1e-3 + (0.0 if log_scale is None else math.exp(log_scale))
    px = column_likelihoods.LogNormal(1e-3)(torch.tensor([[loc, raw_scale]], dtype=dtype))
    y, w = _nodes(_panels(loc, sigma))
    x = torch.tensor(np.exp(y), dtype=dtype)[:, None]
    p = np.exp(px.log_prob(x).detach().to(F64).numpy() + y) * w
    tol = _tol(dtype) if dtype == F64 else 1e-4
    assert float(p.sum()) == pytest.approx(1.0, abs=tol)
    want = math.exp(loc + sigma**2 / 2)
    assert float((p * np.exp(y)).sum()) == pytest.approx(want, rel=tol)
    assert float(px.mean) == pytest.approx(want, rel=tol)


def test_every_likelihood_is_covered_here():
    covered = {"bernoulli", "gaussian", "continuous-bernoulli", "discretized-logistic",
               "discretized-logistic-mixture", "poisson", "negative-binomial",
               "zero-inflated-negative-binomial", "binomial", "categorical", "student-t",
               "log-normal", "mixed"}     # mixed: tests/test_mixed_likelihood.py sums to one
    assert covered == set(likelihoods.LIKELIHOODS)


# --------------------------------------------------------------------------- priors


def _prior_integral(p, locs, scales, dtype) -> tuple[float, float]:
    return _integrate(p.log_prob, _panels(locs, scales), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_standard_normal_integrates_to_one(dtype):
    p = priors.StandardNormal(1).to(dtype)()
    total, first = _prior_integral(p, [0.0], [1.0], dtype)
    assert total == pytest.approx(1.0, abs=_tol(dtype)) and abs(first) < _tol(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loc, log_scale", [(1e-3, -10.0), (-100.0, 10.0), (100.0, 0.0)])
def test_learned_normal_integrates_to_one_with_its_mean(loc, log_scale, dtype):
    prior = priors.LearnedNormal(1)
    with torch.no_grad():
        prior.learned_loc.fill_(loc)
        prior.raw_scale.fill_(_raw_for_scale(log_scale))
    p = prior.to(dtype)()
    loc = float(prior.learned_loc.detach())             # as stored (a float32 parameter)
    sigma = math.exp(log_scale)
    total, first = _prior_integral(p, [loc], [sigma], dtype)
    assert total == pytest.approx(1.0, abs=_tol(dtype))
    assert float(p.mean.detach()) == pytest.approx(first, abs=_tol(dtype) * max(sigma, 1.0))
    assert first == pytest.approx(loc, abs=_tol(dtype) * max(sigma, 1.0))


MOG_CASES = [   # (logits, locs, log-scales): weights near 0, scales from e^-10 to e^5
    ([0.0, -100.0, 5.0], [-50.0, 0.3, 40.0], [-10.0, 0.0, 5.0]),
    ([100.0, -100.0, 0.0], [0.001, 0.3, -0.2], [-10.0, 2.0, -3.0]),
    ([-30.0, 30.0, 0.0], [1.0, -0.001, 100.0], [0.0, -10.0, 10.0]),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("logits, locs, log_scales", MOG_CASES)
def test_mixture_of_gaussians_integrates_to_one_with_its_mean(logits, locs, log_scales, dtype):
    prior = priors.MixtureOfGaussians(1, 3)
    with torch.no_grad():
        prior.logits.copy_(torch.tensor(logits))
        prior.component_loc.copy_(torch.tensor(locs)[:, None])
        prior.raw_scale.copy_(torch.tensor([_raw_for_scale(s) for s in log_scales])[:, None])
    p = prior.to(dtype)()
    locs = prior.component_loc.detach().to(F64).ravel().tolist()   # as stored (float32)
    scales = np.exp(log_scales)
    total, first = _prior_integral(p, locs, scales, dtype)
    weights = np.exp(np.array(logits) - np.logaddexp.reduce(logits))
    spread = float(max(scales.max(), 1.0))
    assert total == pytest.approx(1.0, abs=_tol(dtype))
    assert first == pytest.approx(float(weights @ np.array(locs)), abs=_tol(dtype) * spread)
    assert float(p.mean.detach()) == pytest.approx(first, abs=_tol(dtype) * spread)


@pytest.mark.parametrize("dtype", DTYPES)
def test_vamp_prior_integrates_to_one_with_its_mean(dtype):
    """Three pseudo-inputs whose q (a diagonal Normal through an identity layer) sit at
    0.001, −30 and 50 with log-scales −10, 0 and 8."""
    raw = torch.tensor([[1e-3, _raw_for_scale(-10.0)], [-30.0, _raw_for_scale(0.0)],
                        [50.0, _raw_for_scale(8.0)]])
    net = nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.copy_(torch.eye(2))
        net.bias.zero_()
    encoder = Encoder(net, families.DiagonalNormal(1, min_scale=0.0)).to(dtype)
    prior = priors.VampPrior(1, 3, 2, encoder)
    with torch.no_grad():
        prior.pseudo_inputs.copy_(raw)
    p = prior.to(dtype)()
    locs = prior.pseudo_inputs[:, 0].detach().to(F64).tolist()        # as stored (float32)
    scales = np.exp([-10.0, 0.0, 8.0])
    total, first = _prior_integral(p, locs, scales, dtype)
    assert total == pytest.approx(1.0, abs=_tol(dtype))
    assert first == pytest.approx(np.mean(locs), abs=_tol(dtype) * scales.max())
    assert float(p.mean.detach()) == pytest.approx(first, abs=_tol(dtype) * scales.max())


def _moved_flow(spread: float, dtype) -> priors.FlowPrior:
    """A two-step MAF on L = 2 with every weight moved by spread·N(0, 1) (seeded) from the
    identity it starts as; at spread ≥ 1.5 many log-scales sit near the soft clamp (±5)."""
    torch.manual_seed(4)
    prior = priors.FlowPrior(2, steps=2, hidden=(16, 16)).double()
    with torch.no_grad():
        for param in prior.parameters():
            param.add_(spread * torch.randn_like(param))
    return prior.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_flow_prior_integrates_to_one_over_the_plane(dtype):
    """∫∫ p(z) dz = 1 on a tensor grid in z around its draws, and the mean by quadrature
    equals the mean of its draws (within 4 standard errors)."""
    p = _moved_flow(0.3, dtype)()
    draws = p.sample((20000,)).to(F64)
    low, high = draws.min(0).values, draws.max(0).values
    pad = (high - low) * 0.5
    (x0, w0), (x1, w1) = [_nodes(np.linspace(float(low[i] - pad[i]), float(high[i] + pad[i]),
                                             121)) for i in range(2)]
    grid = torch.tensor(np.stack(np.meshgrid(x0, x1, indexing="ij"), -1).reshape(-1, 2))
    with torch.no_grad():
        lp = torch.cat([p.log_prob(chunk.to(dtype)).to(F64) for chunk in grid.split(65536)])
    mass = lp.exp() * torch.tensor(np.outer(w0, w1).ravel())
    assert float(mass.sum()) == pytest.approx(1.0, abs=1e-4)
    mean = (mass[:, None] * grid).sum(0) / mass.sum()
    se = draws.std(0) / math.sqrt(draws.shape[0])
    assert bool(((mean - draws.mean(0)).abs() < 4 * se).all()), (mean, draws.mean(0), se)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spread", [0.3, 1.5, 3.0])
def test_flow_prior_integrates_to_one_through_its_own_map(spread, dtype):
    """Far from the identity the density is too sharp for a grid in z, so substitute z = T(u)
    (T: the flow's sampling map): ∫ p(T(u)) |det ∂T/∂u| du = 1 with the Jacobian by autograd
    (independent of the flow's own log-determinant) and u on a grid over [−8, 8]²; the mean
    ∫ T(u) p(T(u)) |det| du equals the mean of its draws (within 4 standard errors)."""
    p = _moved_flow(spread, dtype)()
    x, w = _nodes(np.linspace(-8, 8, 65), order=8)
    u = torch.tensor(np.stack(np.meshgrid(x, x, indexing="ij"), -1).reshape(-1, 2),
                     dtype=dtype, requires_grad=True)
    z = u
    for step in p.transforms:
        z = step(z)
    rows = [torch.autograd.grad(z[:, i].sum(), u, retain_graph=True)[0] for i in range(2)]
    det = (rows[0][:, 0] * rows[1][:, 1] - rows[0][:, 1] * rows[1][:, 0]).abs().to(F64)
    with torch.no_grad():
        mass = p.log_prob(z.detach()).to(F64).exp() * det * torch.tensor(np.outer(w, w).ravel())
    assert float(mass.sum()) == pytest.approx(1.0, abs=1e-4 if dtype == torch.float32
                                              else 1e-9)
    mean = (mass[:, None] * z.detach().to(F64)).sum(0)
    draws = p.sample((20000,)).to(F64)
    se = draws.std(0) / math.sqrt(draws.shape[0])
    assert bool(((mean - draws.mean(0)).abs() < 4 * se).all()), (mean, draws.mean(0), se)


def test_every_prior_is_covered_here():
    covered = {"standard_normal", "learned_normal", "mog", "vamp", "flow"}
    assert covered == set(priors.PRIORS)
