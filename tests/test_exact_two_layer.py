"""Oracles for the two-layer linear-Gaussian hierarchy (vaelab.model.exact.TwoLayerLinearGaussian).

Everything is checked against an independent float64 numpy/scipy computation: the joint
Gaussian of (x, z_1, z_2) built explicitly from (A, a, D_1, B, b, D_0), its marginal over x
(scipy.stats.multivariate_normal) and the Gaussian conditioning formula for p(z | x).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from torch.distributions import MultivariateNormal

from vaelab.infer.objectives import elbo, elbo_terms, iwae_bound
from vaelab.infer.schemes import optimize_q
from vaelab.measure.evaluate import log_likelihood
from vaelab.model.exact import TwoLayerLinearGaussian
from vaelab.model.hierarchical import LayeredDistribution, LinearGaussianBottomUp

F64 = torch.float64
D, L1, L2 = 5, 3, 2


def make_model(seed: int = 3) -> TwoLayerLinearGaussian:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    return TwoLayerLinearGaussian(r(L1, L2), r(L1), 0.4 + torch.rand(L1, generator=g, dtype=F64),
                                  r(D, L1), r(D), 0.3 + torch.rand(D, generator=g, dtype=F64))


def numpy_joint(m: TwoLayerLinearGaussian) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D + L1 + L2] and covariance of (x, z_1, z_2), built by hand in numpy."""
    A = m.upper.weight.detach().numpy()
    a = m.upper.bias.detach().numpy()
    D1 = np.diag(m.upper.noise_scale.detach().numpy() ** 2)
    B = m.lower.weight.detach().numpy()
    b = m.lower.bias.detach().numpy()
    D0 = np.diag(m.lower.noise_scale.detach().numpy() ** 2)
    # (z_2, z_1, x) = T ε + μ with ε = (ε_2, ε_1, ε_0) ~ N(0, I)
    S1, S0 = np.sqrt(D1), np.sqrt(D0)
    T = np.zeros((L2 + L1 + D, L2 + L1 + D))
    T[:L2, :L2] = np.eye(L2)
    T[L2:L2 + L1, :L2] = A
    T[L2:L2 + L1, L2:L2 + L1] = S1
    T[L2 + L1:, :L2 + L1] = B @ T[L2:L2 + L1, :L2 + L1]
    T[L2 + L1:, L2 + L1:] = S0
    mu = np.concatenate([np.zeros(L2), a, B @ a + b])
    cov = T @ T.T
    order = np.r_[L2 + L1:L2 + L1 + D, L2:L2 + L1, 0:L2]          # → (x, z_1, z_2)
    return mu[order], cov[np.ix_(order, order)]


def numpy_posterior(m, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """p(z | x) by Gaussian conditioning of the numpy joint: means [B, L], covariance [L, L]."""
    mu, cov = numpy_joint(m)
    sxx, szx, szz = cov[:D, :D], cov[D:, :D], cov[D:, D:]
    gain = szx @ np.linalg.inv(sxx)
    return mu[D:] + (x - mu[:D]) @ gain.T, szz - gain @ szx.T


def data(m, n: int = 6, seed: int = 4) -> torch.Tensor:
    torch.manual_seed(seed)
    return m.marginal().sample((n,))


def test_log_marginal_matches_scipy_joint():
    m = make_model()
    x = data(m)
    mu, cov = numpy_joint(m)
    expected = multivariate_normal(mu[:D], cov[:D, :D]).logpdf(x.numpy())
    np.testing.assert_allclose(m.log_marginal(x).detach().numpy(), expected, rtol=0, atol=1e-10)


def test_log_joint_matches_scipy_joint_density():
    """log p(x, z) of the layered prior + decoder equals the full joint Gaussian's density."""
    m = make_model()
    x = data(m, 4)
    z = torch.randn(7, 4, L1 + L2, dtype=F64)
    mu, cov = numpy_joint(m)
    xz = np.concatenate([np.broadcast_to(x.numpy(), (7, 4, D)), z.numpy()], -1)
    expected = multivariate_normal(mu, cov).logpdf(xz)
    np.testing.assert_allclose(m.log_joint(x, z).detach().numpy(), expected, rtol=0, atol=1e-10)
    prior_expected = multivariate_normal(mu[D:], cov[D:, D:]).logpdf(z.numpy())
    np.testing.assert_allclose(m.prior().log_prob(z).detach().numpy(), prior_expected,
                               rtol=0, atol=1e-10)


def test_posterior_matches_numpy_conditioning():
    m = make_model()
    x = data(m)
    post = m.posterior(x)
    means, cov = numpy_posterior(m, x.numpy())
    np.testing.assert_allclose(post.mean.detach().numpy(), means, rtol=0, atol=1e-10)
    np.testing.assert_allclose(post.covariance_matrix.detach().numpy()[0], cov, atol=1e-10)


def test_prior_samples_have_the_joint_moments():
    m = make_model()
    with torch.no_grad():
        z = m.prior().sample((200_000,))
    mu, cov = numpy_joint(m)
    se = np.sqrt(np.diag(cov[D:, D:]) / z.shape[0])
    assert np.all(np.abs(z.mean(0).numpy() - mu[D:]) < 5 * se)
    np.testing.assert_allclose(np.cov(z.numpy().T), cov[D:, D:], atol=0.05)


def test_elbo_with_the_exact_posterior_is_log_px_for_every_draw():
    m = make_model()
    x = data(m)
    post = m.posterior(x)
    z = post.sample((5,))
    log_ratio = m.log_joint(x, z) - post.log_prob(z)                 # [5, B]
    exact = m.log_marginal(x)
    torch.testing.assert_close(log_ratio, exact.expand_as(log_ratio), rtol=0, atol=1e-9)
    torch.testing.assert_close(elbo(m, post, x, 3), exact, rtol=0, atol=1e-9)
    torch.testing.assert_close(iwae_bound(m, post, x, 4), exact, rtol=0, atol=1e-9)


def test_importance_sampling_with_the_exact_posterior_has_zero_variance():
    m = make_model()
    x = data(m)
    est = log_likelihood(m, m.posterior(x), x, num_samples=64, chunk_size=10)
    torch.testing.assert_close(est.log_likelihood, m.log_marginal(x), rtol=0, atol=1e-9)
    assert float(est.stderr.max()) < 1e-6
    torch.testing.assert_close(est.ess, torch.full_like(est.ess, 64.0), rtol=1e-9, atol=0)


def _structured_q(m, n: int, seed: int = 9) -> tuple[LinearGaussianBottomUp, torch.Tensor]:
    family = LinearGaussianBottomUp((L1, L2))
    g = torch.Generator().manual_seed(seed)
    raw = family.initial_params(n, dtype=F64) + 0.5 * torch.randn(
        n, family.param_size, generator=g, dtype=F64)
    return family, raw


def _q_joint(family: LinearGaussianBottomUp, raw: torch.Tensor, b: int):
    """Mean and covariance of the chain q(z_1) q(z_2 | z_1) for row b, assembled in numpy."""
    q = family(raw[b:b + 1])
    z0 = torch.zeros(1, L1 + L2, dtype=F64)
    first, second = q.step(0, q.split(z0)), None
    m1 = first.mean[0].detach().numpy()
    S1 = first.covariance_matrix[0].detach().numpy()
    e = np.eye(L1)
    # The conditional mean is linear in z_1: read C and c off basis vectors.
    c = q.step(1, {0: torch.zeros(1, L1, dtype=F64)}).mean[0].detach().numpy()
    C = np.stack([q.step(1, {0: torch.tensor(e[j:j + 1])}).mean[0].detach().numpy() - c
                  for j in range(L1)], 1)
    second = q.step(1, {0: torch.zeros(1, L1, dtype=F64)})
    S2 = second.covariance_matrix[0].detach().numpy()
    mean = np.concatenate([m1, C @ m1 + c])
    cov = np.block([[S1, S1 @ C.T], [C @ S1, C @ S1 @ C.T + S2]])
    return mean, cov


def _kl_gauss(m0, S0, m1, S1) -> float:
    inv = np.linalg.inv(S1)
    d = m1 - m0
    return 0.5 * (np.trace(inv @ S0) + d @ inv @ d - len(m0)
                  + np.linalg.slogdet(S1)[1] - np.linalg.slogdet(S0)[1])


def test_structured_q_density_matches_its_joint_gaussian():
    m = make_model()
    family, raw = _structured_q(m, 3)
    q = family(raw)
    z = q.sample((4,))
    for b in range(3):
        mean, cov = _q_joint(family, raw, b)
        np.testing.assert_allclose(q.log_prob(z)[:, b].detach().numpy(),
                                   multivariate_normal(mean, cov).logpdf(z[:, b].numpy()),
                                   atol=1e-10)


def test_gap_equals_closed_form_kl_for_a_structured_q(one_thread):
    """log p(x) − ELBO(q) = KL(q ‖ p(z | x)); the ELBO is Monte Carlo, within 4 standard errors."""
    m = make_model()
    x = data(m, 3)
    family, raw = _structured_q(m, 3)
    q = family(raw)
    torch.manual_seed(11)
    n = 100_000
    with torch.no_grad():
        z = q.sample((n,))
        ratios = (m.log_joint(x, z) - q.log_prob(z)).numpy()           # [n, B]
        elbo_mc = elbo_terms(m, q, x, 20_000, kl="mc").elbo.numpy()
    post_means, post_cov = numpy_posterior(m, x.numpy())
    logpx = m.log_marginal(x).detach().numpy()
    for b in range(3):
        mean, cov = _q_joint(family, raw, b)
        kl = _kl_gauss(mean, cov, post_means[b], post_cov)
        assert kl > 0.5                                                  # a real gap
        se = ratios[:, b].std() / math.sqrt(n)
        assert abs((logpx[b] - ratios[:, b].mean()) - kl) < 4 * se, (b, kl, se)
        assert abs((logpx[b] - elbo_mc[b]) - kl) < 4 * ratios[:, b].std() / math.sqrt(20_000)


def test_bottom_up_q_fitted_per_example_reaches_log_px(one_thread):
    """optimize_q over the bottom-up linear-Gaussian family (which contains p(z | x)) closes
    the gap: KL(q* ‖ p(z | x)) in closed form is below 0.02 nats, and the exact posterior
    itself, written in this family, has zero gap."""
    m = make_model()
    x = data(m, 4)
    family = LinearGaussianBottomUp((L1, L2))
    torch.manual_seed(5)
    raw, history = optimize_q(m, x, family.initial_params(4, dtype=F64), family, steps=1500,
                              lr=3e-2, num_samples=8, patience=60, lr_decays=3)
    post_means, post_cov = numpy_posterior(m, x.numpy())
    logpx = m.log_marginal(x).detach().numpy()
    for b in range(4):
        mean, cov = _q_joint(family, raw, b)
        assert _kl_gauss(mean, cov, post_means[b], post_cov) < 0.02
    start = _kl_gauss(*_q_joint(family, family.initial_params(1, dtype=F64), 0),
                      post_means[0], post_cov)
    assert start > 1.0                                                   # it had a gap to close
    assert abs(history[-1] - logpx.mean()) < 0.05
    exact_raw = _posterior_raw(family, post_means, post_cov)
    q_exact = family(exact_raw)
    z = q_exact.sample((3,))
    torch.testing.assert_close(m.log_joint(x, z) - q_exact.log_prob(z),
                               m.log_marginal(x).expand(3, -1), rtol=0, atol=1e-8)


def _posterior_raw(family: LinearGaussianBottomUp, means: np.ndarray, cov: np.ndarray):
    """Raw parameters of the family equal to p(z | x): p(z_1 | x) and p(z_2 | z_1)."""
    S11, S21, S22 = cov[:L1, :L1], cov[L1:, :L1], cov[L1:, L1:]
    C = S21 @ np.linalg.inv(S11)
    T1 = np.linalg.cholesky(S11)
    T2 = np.linalg.cholesky(S22 - C @ S21.T)
    rows = []
    for mean in means:
        c = mean[L1:] - C @ mean[:L1]
        parts = [mean[:L1], _raw_tril(T1, family.min_scale), C.ravel(), c,
                 _raw_tril(T2, family.min_scale)]
        rows.append(np.concatenate(parts))
    return torch.tensor(np.array(rows), dtype=F64)


def _raw_tril(T: np.ndarray, min_scale: float) -> np.ndarray:
    rows, cols = np.tril_indices(T.shape[0])
    vals = T[rows, cols].copy()
    diag = rows == cols
    vals[diag] = np.log(np.expm1(vals[diag] - min_scale))
    return vals


def test_posterior_is_a_multivariate_normal_over_both_layers():
    m = make_model()
    post = m.posterior(data(m, 2))
    assert isinstance(post, MultivariateNormal)
    assert tuple(post.batch_shape) == (2,) and tuple(post.event_shape) == (L1 + L2,)
    assert isinstance(m.prior(), LayeredDistribution)


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="top_weight"):
        TwoLayerLinearGaussian(torch.randn(4, 2), torch.randn(4), 1.0,
                               torch.randn(5, 3), torch.randn(5), 1.0)
