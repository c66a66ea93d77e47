"""Closed-form models checked against independent computations (float64, seeded).

LinearGaussian: log p(x) against the Gaussian density written out with slogdet/solve, and
p(z | x) against Bayes' rule (log p(x, z) − log p(z | x) = log p(x) for every z) and against
Gaussian conditioning. GaussianMixture: log p(x) and responsibilities against a loop over
components; the ELBO at the exact posterior; EM monotonicity, tightness after each E-step and
recovery of separated clusters.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, MultivariateNormal

import vaelab
from vaelab.model import exact

F64 = torch.float64
LOG_2PI = math.log(2 * math.pi)


# ------------------------------------------------------------------- LinearGaussian


def test_log_marginal_matches_gaussian_density_by_hand(linear_gaussian, lg_data):
    w, b, s = linear_gaussian.weight, linear_gaussian.bias, linear_gaussian.noise_scale
    cov = w @ w.T + torch.diag(s**2)
    diff = lg_data - b
    maha = (diff * torch.linalg.solve(cov, diff.T).T).sum(-1)
    want = -0.5 * (lg_data.shape[1] * LOG_2PI + torch.linalg.slogdet(cov)[1] + maha)
    torch.testing.assert_close(linear_gaussian.log_marginal(lg_data), want, rtol=0, atol=1e-10)


def test_posterior_satisfies_bayes_rule_at_every_z(linear_gaussian, lg_data):
    post = linear_gaussian.posterior(lg_data)
    z = 2 * torch.randn(4, lg_data.shape[0], linear_gaussian.latent_dim, dtype=F64)
    log_px = linear_gaussian.log_joint(lg_data, z) - post.log_prob(z)     # [4, B]
    torch.testing.assert_close(log_px, linear_gaussian.log_marginal(lg_data).expand(4, -1),
                               rtol=0, atol=1e-10)


def test_posterior_matches_gaussian_conditioning(linear_gaussian, lg_data):
    # Joint of (z, x): Cov(z, x) = Wᵀ, so p(z|x) = N(Wᵀ C⁻¹ (x − b), I − Wᵀ C⁻¹ W).
    w, b, s = linear_gaussian.weight, linear_gaussian.bias, linear_gaussian.noise_scale
    cov_x = w @ w.T + torch.diag(s**2)
    gain = torch.linalg.solve(cov_x, w).T                                 # Wᵀ C⁻¹, [L, D]
    post = linear_gaussian.posterior(lg_data)
    torch.testing.assert_close(post.mean, (lg_data - b) @ gain.T, rtol=0, atol=1e-10)
    cov = torch.eye(w.shape[1], dtype=F64) - gain @ w
    torch.testing.assert_close(post.covariance_matrix, cov.expand(lg_data.shape[0], -1, -1),
                               rtol=0, atol=1e-10)
    assert post.batch_shape == (lg_data.shape[0],) and post.event_shape == (w.shape[1],)


def test_marginal_matches_ancestral_samples(make_lg):
    model = make_lg(3, 2, per_dim_noise=True, seed=7)
    x = model.sample(20000, generator=torch.Generator().manual_seed(8))
    marginal = model.marginal()
    se = (marginal.variance / x.shape[0]).sqrt()
    assert bool(((x.mean(0) - marginal.mean).abs() < 4 * se).all())
    emp_cov = torch.cov(x.T)
    # Sample covariance entries have sd ≈ sqrt((Σ_ii Σ_jj + Σ_ij²) / n).
    cov = marginal.covariance_matrix
    sd = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / x.shape[0]).sqrt()
    assert bool(((emp_cov - cov).abs() < 4 * sd).all())


def test_noise_scale_forms_agree(make_lg):
    model = make_lg(4, 2, seed=9)
    per_dim = exact.LinearGaussian(model.weight, model.bias, torch.full((4,), 0.7, dtype=F64))
    scalar_tensor = exact.LinearGaussian(model.weight, model.bias, torch.tensor(0.7, dtype=F64))
    x = model.sample(3, generator=torch.Generator().manual_seed(10))
    for other in (per_dim, scalar_tensor):
        torch.testing.assert_close(other.log_marginal(x), model.log_marginal(x))
    torch.testing.assert_close(model.noise_scale, torch.full((4,), 0.7, dtype=F64))


def test_elbo_closed_form_at_shifted_q_drops_by_the_kl(linear_gaussian, lg_data):
    # Shift the posterior mean by δ: the gap must be exactly ½ δᵀ Σ⁻¹ δ (a KL between equal
    # covariances), a formula independent of elbo_closed_form's terms.
    post = linear_gaussian.posterior(lg_data)
    delta = torch.tensor([0.3, -0.2, 0.5], dtype=F64)
    shifted = MultivariateNormal(post.loc + delta, scale_tril=post.scale_tril)
    gap = linear_gaussian.log_marginal(lg_data) - linear_gaussian.elbo_closed_form(lg_data, shifted)
    precision = torch.linalg.inv(post.covariance_matrix[0])
    torch.testing.assert_close(gap, (0.5 * delta @ precision @ delta).expand(lg_data.shape[0]),
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"weight": torch.zeros(4, dtype=F64)}, ValueError, r"weight: expected shape \[D, L\]"),
    ({"weight": torch.zeros(4, 2, dtype=torch.int64)}, TypeError, "weight: .*floating"),
    ({"weight": [[1.0, 2.0]]}, TypeError, "weight: expected a torch.Tensor"),
    ({"bias": torch.zeros(3, dtype=F64)}, ValueError, r"bias: expected shape \[4\]"),
    ({"noise_scale": 0.0}, ValueError, "noise_scale: .*> 0"),
    ({"noise_scale": -1.0}, ValueError, "noise_scale"),
    ({"noise_scale": math.inf}, ValueError, "noise_scale: .*finite"),
    ({"noise_scale": math.nan}, ValueError, "noise_scale"),
    ({"noise_scale": "1"}, TypeError, "noise_scale"),
    ({"noise_scale": torch.ones(3, dtype=F64)}, ValueError, r"noise_scale: .*\[4\].*\[3\]"),
    ({"noise_scale": torch.ones(4, 1, dtype=F64)}, ValueError, "noise_scale: .*shape"),
    ({"noise_scale": torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=F64)}, ValueError,
     "noise_scale: .*> 0"),
    ({"noise_scale": torch.tensor([1.0, math.inf, 1.0, 1.0], dtype=F64)}, ValueError,
     "noise_scale: .*finite"),
])
def test_linear_gaussian_rejects_bad_arguments_by_name(kwargs, error, match):
    args = {"weight": torch.zeros(4, 2, dtype=F64), "bias": torch.zeros(4, dtype=F64),
            "noise_scale": 1.0, **kwargs}
    with pytest.raises(error, match=match):
        exact.LinearGaussian(**args)


def test_linear_gaussian_rejects_bad_data_by_name(linear_gaussian):
    with pytest.raises(ValueError, match=r"x: expected shape \[batch, 5\], got \[2, 4\]"):
        linear_gaussian.log_marginal(torch.zeros(2, 4, dtype=F64))
    with pytest.raises(ValueError, match="x: expected finite"):
        linear_gaussian.posterior(torch.full((2, 5), math.nan, dtype=F64))


# ------------------------------------------------------------------ GaussianMixture


def make_mixture(seed: int = 21, num_components: int = 3, data_dim: int = 2,
                 spread: float = 3.0) -> exact.GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    return exact.GaussianMixture(torch.randn(num_components, generator=g, dtype=F64),
                                 spread * torch.randn(num_components, data_dim, generator=g,
                                                      dtype=F64),
                                 0.5 + torch.rand(num_components, data_dim, generator=g,
                                                  dtype=F64))


def mixture_by_hand(model: exact.GaussianMixture, x: torch.Tensor):
    """log p(x) and p(z = k | x) with an explicit loop over components and dimensions."""
    weights = torch.softmax(model.logits.detach(), 0)
    loc, scale = model.loc.detach(), model.log_scale.detach().exp()
    joint = torch.zeros(x.shape[0], len(weights), dtype=F64)
    for k in range(len(weights)):
        log_density = torch.zeros(x.shape[0], dtype=F64)
        for d in range(x.shape[1]):
            z = (x[:, d] - loc[k, d]) / scale[k, d]
            log_density += -0.5 * z**2 - torch.log(scale[k, d]) - 0.5 * LOG_2PI
        joint[:, k] = torch.log(weights[k]) + log_density
    log_px = torch.log(joint.exp().sum(1))
    return log_px, (joint - log_px[:, None]).exp()


def test_mixture_log_marginal_and_responsibilities_match_hand_computation():
    model = make_mixture()
    x = model.sample(8, generator=torch.Generator().manual_seed(22))
    log_px, resp = mixture_by_hand(model, x)
    torch.testing.assert_close(model.log_marginal(x), log_px, rtol=0, atol=1e-10)
    post = model.posterior(x)
    assert isinstance(post, Categorical) and post.batch_shape == (8,)
    torch.testing.assert_close(post.probs.sum(-1), torch.ones(8, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(post.probs, resp, rtol=0, atol=1e-10)


def test_mixture_elbo_at_posterior_is_log_marginal_and_below_it_elsewhere():
    model = make_mixture()
    x = model.sample(8, generator=torch.Generator().manual_seed(23))
    post = model.posterior(x)
    for kl in ("auto", "analytic", "mc"):
        torch.testing.assert_close(vaelab.elbo(model, post, x, kl=kl), model.log_marginal(x),
                                   rtol=0, atol=1e-10)
    # Any other q: gap = KL(q ‖ p(z|x)) (Categorical vs Categorical, computed by hand).
    q = Categorical(logits=torch.randn(8, 3, dtype=F64))
    gap = model.log_marginal(x) - vaelab.elbo(model, q, x)
    want = (q.probs * (q.probs.log() - post.probs.log())).sum(-1)
    torch.testing.assert_close(gap, want, rtol=0, atol=1e-10)
    assert bool((gap > 0).all())


def test_mixture_sample_and_decode_shapes():
    model = make_mixture()
    x = model.sample(5)
    assert x.shape == (5, 2) and x.dtype == F64
    z = torch.tensor([[0, 1], [2, 2]])
    px = model.decode(z)
    assert px.batch_shape == (2, 2) and px.event_shape == (2,)
    torch.testing.assert_close(px.mean[1, 0], model.loc[2].detach())


def test_em_is_monotone_and_tight_after_every_e_step():
    truth = make_mixture(seed=24, spread=1.5)
    x = truth.sample(200, generator=torch.Generator().manual_seed(25))
    model = exact.GaussianMixture.init_from_data(x, 3, generator=torch.Generator().manual_seed(26))
    gaps = []

    def on_e_step(m, q):
        gaps.append((m.log_marginal(x) - vaelab.elbo(m, q, x)).abs().max().item())

    history = model.fit_em(x, num_iters=25, tol=0.0, on_e_step=on_e_step)
    assert len(history) == len(gaps) == 25
    assert max(gaps) < 1e-10
    steps = torch.tensor(history, dtype=F64).diff()
    assert bool((steps > -1e-10).all()), steps.min()
    assert history[-1] - history[0] > 0.05                  # EM actually moved


def test_em_recovers_well_separated_clusters():
    g = torch.Generator().manual_seed(27)
    loc = torch.tensor([[-6.0, 0.0], [0.0, 6.0], [6.0, 0.0]], dtype=F64)
    scale = torch.tensor([[0.5, 0.8], [1.0, 0.4], [0.7, 0.7]], dtype=F64)
    truth = exact.GaussianMixture(torch.log(torch.tensor([0.2, 0.3, 0.5], dtype=F64)), loc, scale)
    x = truth.sample(3000, generator=g)
    model = exact.GaussianMixture(torch.zeros(3, dtype=F64),
                                  torch.tensor([[-3.0, 1.0], [1.0, 3.0], [3.0, -1.0]], dtype=F64),
                                  torch.full((3, 2), 2.0, dtype=F64))
    history = model.fit_em(x, num_iters=200, tol=1e-10)
    order = torch.cdist(loc, model.loc.detach()).argmin(1)   # fitted component nearest each
    assert sorted(order.tolist()) == [0, 1, 2]               # true one: a permutation
    torch.testing.assert_close(model.loc.detach()[order], loc, rtol=0, atol=0.1)
    torch.testing.assert_close(model.log_scale.detach().exp()[order], scale, rtol=0.1, atol=0)
    torch.testing.assert_close(torch.softmax(model.logits.detach(), 0)[order],
                               torch.tensor([0.2, 0.3, 0.5], dtype=F64), rtol=0, atol=0.03)
    # The fit reaches the likelihood of the true parameters (up to sampling error).
    assert history[-1] >= truth.log_marginal(x).mean().item() - 1e-6


@pytest.mark.parametrize("kwargs, error, match", [
    ({"loc": torch.zeros(3, dtype=F64)}, ValueError, r"loc: expected shape \[K, D\]"),
    ({"logits": torch.zeros(2, dtype=F64)}, ValueError, "logits, scale"),
    ({"scale": torch.ones(3, 3, dtype=F64)}, ValueError, "logits, scale"),
    ({"scale": torch.zeros(3, 2, dtype=F64)}, ValueError, "scale: .*> 0"),
    ({"scale": torch.full((3, 2), math.inf, dtype=F64)}, ValueError, "scale: .*finite"),
    ({"logits": [0.0, 0.0, 0.0]}, TypeError, "logits: expected a torch.Tensor"),
    ({"scale": torch.ones(3, 2, dtype=torch.int64)}, TypeError, "scale: .*floating"),
])
def test_gaussian_mixture_rejects_bad_arguments_by_name(kwargs, error, match):
    args = {"logits": torch.zeros(3, dtype=F64), "loc": torch.zeros(3, 2, dtype=F64),
            "scale": torch.ones(3, 2, dtype=F64), **kwargs}
    with pytest.raises(error, match=match):
        exact.GaussianMixture(**args)


def test_exact_models_build_their_tensors_on_the_data_device():
    """Every tensor the closed forms create follows the model's or the data's device: with
    another default device (a CUDA model beside a CPU default) the results are unchanged."""
    from conftest import make_linear_gaussian

    lg = make_linear_gaussian(5, 3)
    x = lg.sample(6, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(4)
    two = exact.TwoLayerLinearGaussian(torch.randn(3, 2, generator=g, dtype=F64),
                                       torch.randn(3, generator=g, dtype=F64), 0.5,
                                       lg.weight.detach(), lg.bias.detach(), 0.7)
    expected = (lg.posterior(x).mean, lg.elbo_closed_form(x, lg.posterior(x)),
                two.log_marginal(x), exact.GaussianMixture.init_from_data(
                    x, 2, torch.Generator().manual_seed(0)).log_marginal(x))
    with torch.device("meta"):               # tensors built without a device land on meta
        rebuilt = exact.LinearGaussian(lg.weight.detach(), lg.bias.detach(), 0.7)
        got = (lg.posterior(x).mean, lg.elbo_closed_form(x, lg.posterior(x)),
               two.log_marginal(x), exact.GaussianMixture.init_from_data(
                   x, 2, torch.Generator().manual_seed(0)).log_marginal(x))
    assert rebuilt.noise_scale.device == lg.weight.device
    for a, b in zip(got, expected, strict=True):
        assert b.device == a.device and torch.allclose(a, b)
