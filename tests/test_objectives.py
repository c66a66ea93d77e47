"""ELBO and IWAE against closed forms on the linear-Gaussian model (float64, seeded).

Oracles: ``LinearGaussian.log_marginal`` (exact log p(x)), ``LinearGaussian.posterior`` (exact
p(z | x)), ``elbo_closed_form`` and ``torch.distributions.kl_divergence``. Monte Carlo
estimates are compared with a tolerance derived from their own sample standard error, computed
over independent replicate rows (x repeated, one q per row), never with a fixed slack.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import (
    Independent,
    MultivariateNormal,
    StudentT,
    kl_divergence,
)

import vaelab
from vaelab.config import ModelConfig
from vaelab.model import families, priors

F64 = torch.float64
FAMILY_CLASSES = [families.DiagonalNormal, families.FullCovarianceNormal]


def mean_and_se(values: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample mean and its standard error along ``dim``."""
    n = values.shape[dim]
    return values.mean(dim), values.std(dim) / math.sqrt(n)


def random_q(family_cls, batch: int, latent_dim: int, seed: int = 3):
    """A random (non-posterior) q from a vaelab family, with its raw parameters [B, P]."""
    family = family_cls(latent_dim)
    g = torch.Generator().manual_seed(seed)
    raw = 0.7 * torch.randn(batch, family.param_size, generator=g, dtype=F64)
    return family, raw


def as_mvn(q) -> MultivariateNormal:
    return q if isinstance(q, MultivariateNormal) else families.as_multivariate_normal(q)


def whitened_noise(k: int, latent_dim: int, seed: int = 5) -> torch.Tensor:
    """ε [k, L] with sample mean exactly 0 and sample second moment exactly I.

    For an integrand that is a polynomial of degree ≤ 2 in ε (every term of the linear-Gaussian
    ELBO, and its gradients), the k-sample average over these ε equals the expectation exactly.
    """
    eps = torch.randn(k, latent_dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    eps = eps - eps.mean(0)
    chol = torch.linalg.cholesky(eps.T @ eps / k)
    return torch.linalg.solve_triangular(chol, eps.T, upper=False).T


def fix_noise(q, eps: torch.Tensor):
    """Make ``q.rsample((k,))`` return loc + A ε_i (A the scale factor), still differentiable."""
    scale_tril = q.scale_tril if isinstance(q, MultivariateNormal) else torch.diag_embed(
        q.base_dist.scale)

    def rsample(sample_shape=()):
        assert tuple(sample_shape) == (eps.shape[0],)
        return q.mean + (scale_tril @ eps[:, None, :, None]).squeeze(-1)

    q.rsample = rsample
    return q


def detached(q: MultivariateNormal) -> MultivariateNormal:
    return MultivariateNormal(q.loc.detach(), scale_tril=q.scale_tril.detach())


# ---------------------------------------------------------------- 1. q = exact posterior


@pytest.mark.parametrize("num_samples", [1, 7, 100])
def test_elbo_mc_at_posterior_equals_log_marginal_for_every_sample(linear_gaussian, lg_data,
                                                                    num_samples):
    post = linear_gaussian.posterior(lg_data)
    value = vaelab.elbo(linear_gaussian, post, lg_data, num_samples, kl="mc")
    torch.testing.assert_close(value, linear_gaussian.log_marginal(lg_data), rtol=0, atol=1e-10)


def test_elbo_closed_form_at_posterior_equals_log_marginal(linear_gaussian, lg_data):
    post = linear_gaussian.posterior(lg_data)
    torch.testing.assert_close(linear_gaussian.elbo_closed_form(lg_data, post),
                               linear_gaussian.log_marginal(lg_data), rtol=0, atol=1e-10)


def test_elbo_analytic_kl_at_posterior_is_unbiased_with_positive_variance(linear_gaussian,
                                                                           lg_data):
    reps = 2000
    x = lg_data.repeat_interleave(reps, 0)
    values = vaelab.elbo(linear_gaussian, linear_gaussian.posterior(x), x, 1, kl="analytic")
    mean, se = mean_and_se(values.detach().view(-1, reps))
    truth = linear_gaussian.log_marginal(lg_data)
    assert bool((se > 1e-3).all())            # analytic KL: the estimator is not zero-variance
    assert bool(((mean - truth).abs() < 4 * se).all()), (mean - truth) / se


# ---------------------------------------------------- 2. gap = KL(q ‖ p(z|x)) for random q


@pytest.mark.parametrize("family_cls", FAMILY_CLASSES)
def test_gap_equals_kl_to_posterior_in_closed_form(linear_gaussian, lg_data, family_cls):
    family, raw = random_q(family_cls, lg_data.shape[0], linear_gaussian.latent_dim)
    q = family(raw)
    post = linear_gaussian.posterior(lg_data)
    gap = linear_gaussian.log_marginal(lg_data) - linear_gaussian.elbo_closed_form(lg_data, q)
    kl = kl_divergence(as_mvn(q), post)
    torch.testing.assert_close(gap, kl, rtol=0, atol=1e-10)
    assert bool((gap > 1e-3).all())            # strictly below log p(x) for q ≠ posterior


@pytest.mark.parametrize("kl", ["mc", "analytic"])
@pytest.mark.parametrize("family_cls", FAMILY_CLASSES)
def test_monte_carlo_elbo_matches_closed_form_within_its_standard_error(
        linear_gaussian, lg_data, family_cls, kl):
    reps = 2000
    family, raw = random_q(family_cls, lg_data.shape[0], linear_gaussian.latent_dim)
    x = lg_data.repeat_interleave(reps, 0)
    q_rep = family(raw.repeat_interleave(reps, 0))
    values = vaelab.elbo(linear_gaussian, q_rep, x, 2, kl=kl).detach().view(-1, reps)
    mean, se = mean_and_se(values)
    closed = linear_gaussian.elbo_closed_form(lg_data, family(raw)).detach()
    assert bool(((mean - closed).abs() < 4 * se).all()), (mean - closed) / se
    # The standard error is small next to the gap, so a wrong gap would be detected.
    gap = linear_gaussian.log_marginal(lg_data) - closed
    assert bool((gap > 10 * se).all())
    assert bool((mean < linear_gaussian.log_marginal(lg_data) - 4 * se).all())


@pytest.mark.parametrize("family_cls", FAMILY_CLASSES)
def test_elbo_terms_split_into_expected_log_likelihood_and_kl(linear_gaussian, lg_data,
                                                              family_cls):
    family, raw = random_q(family_cls, lg_data.shape[0], linear_gaussian.latent_dim)
    q = fix_noise(family(raw), whitened_noise(64, linear_gaussian.latent_dim))
    terms = vaelab.elbo_terms(linear_gaussian, q, lg_data, 64, kl="analytic")
    prior = linear_gaussian.prior()
    torch.testing.assert_close(terms.kl, kl_divergence(as_mvn(q), families.as_multivariate_normal(
        prior).expand(q.batch_shape)), rtol=0, atol=1e-10)
    torch.testing.assert_close(terms.elbo, terms.expected_log_likelihood - terms.kl)
    torch.testing.assert_close(terms.rate, terms.kl)
    torch.testing.assert_close(terms.distortion, -terms.expected_log_likelihood)
    torch.testing.assert_close(terms.elbo, linear_gaussian.elbo_closed_form(lg_data, q),
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("kl", ["mc", "analytic"])
@pytest.mark.parametrize("family_cls", FAMILY_CLASSES)
def test_elbo_with_second_moment_matched_noise_is_exact(linear_gaussian, lg_data, family_cls,
                                                        kl):
    # Every ELBO integrand here is quadratic in ε, so noise with exact moments gives the exact
    # expectation: a deterministic check of each term (entropy, KL sign, trace term).
    family, raw = random_q(family_cls, lg_data.shape[0], linear_gaussian.latent_dim)
    q = fix_noise(family(raw), whitened_noise(50, linear_gaussian.latent_dim))
    value = vaelab.elbo(linear_gaussian, q, lg_data, 50, kl=kl)
    torch.testing.assert_close(value, linear_gaussian.elbo_closed_form(lg_data, q),
                               rtol=0, atol=1e-10)


# ----------------------------------------------------------------------- 3. IWAE


def test_iwae_bound_rises_with_k_towards_log_marginal(make_lg):
    model = make_lg(4, 2, per_dim_noise=True, seed=11)
    x = model.sample(1, generator=torch.Generator().manual_seed(12))
    family, raw = random_q(families.DiagonalNormal, 1, 2, seed=13)
    truth = model.log_marginal(x)
    means, ses = [], []
    with torch.no_grad():
        for k, reps in [(1, 20000), (10, 4000), (100, 1000), (1000, 200)]:
            q = family(raw.repeat_interleave(reps, 0))
            values = vaelab.iwae_bound(model, q, x.repeat_interleave(reps, 0), k)
            mean, se = mean_and_se(values.view(1, reps))
            means.append(mean)
            ses.append(se)
    for i in range(3):
        diff_se = (ses[i] ** 2 + ses[i + 1] ** 2).sqrt()
        assert bool((means[i + 1] - means[i] > 4 * diff_se).all()), (i, means, ses)
    for mean, se in zip(means, ses, strict=True):
        assert bool((mean < truth + 3 * se).all())
    gap_1, gap_1000 = truth - means[0], truth - means[-1]
    assert bool((gap_1000 < 0.02 * gap_1).all()), (gap_1, gap_1000)


def test_iwae_with_one_sample_is_the_elbo(linear_gaussian, lg_data):
    family, raw = random_q(families.FullCovarianceNormal, lg_data.shape[0], 3)
    torch.manual_seed(7)
    iwae = vaelab.iwae_bound(linear_gaussian, family(raw), lg_data, 1)
    torch.manual_seed(7)
    elbo = vaelab.elbo(linear_gaussian, family(raw), lg_data, 1, kl="mc")
    torch.testing.assert_close(iwae, elbo, rtol=0, atol=1e-10)

    reps = 4000
    values = vaelab.iwae_bound(linear_gaussian, family(raw.repeat_interleave(reps, 0)),
                               lg_data.repeat_interleave(reps, 0), 1).detach()
    mean, se = mean_and_se(values.view(-1, reps))
    closed = linear_gaussian.elbo_closed_form(lg_data, family(raw)).detach()
    assert bool(((mean - closed).abs() < 4 * se).all()), (mean - closed) / se


@pytest.mark.parametrize("num_samples", [1, 5, 64])
def test_iwae_at_posterior_is_exact_for_every_k(linear_gaussian, lg_data, num_samples):
    post = linear_gaussian.posterior(lg_data)
    torch.testing.assert_close(vaelab.iwae_bound(linear_gaussian, post, lg_data, num_samples),
                               linear_gaussian.log_marginal(lg_data), rtol=0, atol=1e-10)


def test_iwae_is_logmeanexp_of_the_importance_weights(linear_gaussian, lg_data):
    family, raw = random_q(families.DiagonalNormal, lg_data.shape[0], 3)
    q = fix_noise(family(raw), whitened_noise(9, 3))
    z = q.rsample((9,))
    log_w = linear_gaussian.log_joint(lg_data, z) - q.log_prob(z)
    expected = torch.log(log_w.exp().mean(0))           # direct, not log-space
    torch.testing.assert_close(vaelab.iwae_bound(linear_gaussian, q, lg_data, 9), expected,
                               rtol=0, atol=1e-10)


# ------------------------------------------------- 5. analytic KL vs Monte Carlo KL


def gaussian_kl(p: MultivariateNormal, q: MultivariateNormal) -> torch.Tensor:
    """KL(p ‖ q) = ½[tr(Σq⁻¹Σp) + (μq−μp)ᵀΣq⁻¹(μq−μp) − L + log|Σq| − log|Σp|], by hand."""
    cov_p, cov_q = p.covariance_matrix, q.covariance_matrix
    cov_p, cov_q = torch.broadcast_tensors(cov_p, cov_q)
    diff = (q.loc - p.loc).expand(cov_p.shape[:-1])
    solve = torch.linalg.solve(cov_q, cov_p)
    maha = (diff * torch.linalg.solve(cov_q, diff[..., None]).squeeze(-1)).sum(-1)
    logdet = torch.linalg.slogdet(cov_q)[1] - torch.linalg.slogdet(cov_p)[1]
    return 0.5 * (solve.diagonal(dim1=-2, dim2=-1).sum(-1) + maha - p.event_shape[0] + logdet)


def _learned_prior(latent_dim: int):
    prior = priors.LearnedNormal(latent_dim).double()
    with torch.no_grad():
        prior.learned_loc.copy_(torch.tensor([0.5, -1.0, 0.25], dtype=F64))
        prior.raw_scale.copy_(torch.tensor([-0.5, 0.3, 1.2], dtype=F64))
    return prior()


KL_PAIRS = {
    "diag||standard": (families.DiagonalNormal, "standard", False),
    "full||standard": (families.FullCovarianceNormal, "standard", False),
    "standard||diag": (families.DiagonalNormal, "standard", True),
    "standard||full": (families.FullCovarianceNormal, "standard", True),
    "full||learned": (families.FullCovarianceNormal, "learned", False),
    "learned||full": (families.FullCovarianceNormal, "learned", True),
}


@pytest.mark.parametrize("pair", list(KL_PAIRS))
def test_registered_kl_matches_hand_formula_and_monte_carlo(pair):
    family_cls, prior_name, reverse = KL_PAIRS[pair]
    family, raw = random_q(family_cls, 4, 3, seed=17)
    q = family(raw)
    prior = (priors.StandardNormal(3).double()() if prior_name == "standard"
             else _learned_prior(3))
    p_, q_ = (prior, q) if reverse else (q, prior)
    analytic = kl_divergence(p_, q_)
    assert analytic.shape == (4,)
    exact = gaussian_kl(as_mvn(p_).expand((4,)), as_mvn(q_).expand((4,)))
    torch.testing.assert_close(analytic, exact, rtol=0, atol=1e-10)

    z = p_.sample((20000,))
    if reverse:                                  # prior has batch [], z [n, L] → [n, 1, L]
        z = z[:, None, :]
    values = p_.log_prob(z) - q_.log_prob(z)     # [n, 4]
    mean, se = mean_and_se(values, dim=0)
    assert bool(((mean - analytic).abs() < 4 * se).all()), (mean - analytic) / se


def test_diagonal_and_full_covariance_kl_agree_with_each_other():
    family, raw = random_q(families.DiagonalNormal, 5, 3, seed=19)
    diag = family(raw)
    full, full_raw = random_q(families.FullCovarianceNormal, 5, 3, seed=20)
    q_full = full(full_raw)
    torch.testing.assert_close(kl_divergence(diag, q_full),
                               gaussian_kl(as_mvn(diag), q_full), rtol=0, atol=1e-10)
    torch.testing.assert_close(kl_divergence(q_full, diag),
                               gaussian_kl(q_full, as_mvn(diag)), rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", ["diagonal_normal", "full_covariance_normal"])
@pytest.mark.parametrize("prior", ["standard_normal", "learned_normal"])
def test_analytic_and_mc_elbo_agree_in_expectation_on_a_vae(family, prior):
    torch.manual_seed(23)
    config = ModelConfig(data_dim=6, latent_dim=3, hidden=(8,), likelihood="gaussian",
                         prior=prior, family=family)
    model = vaelab.build_vae(config).double()
    if prior == "learned_normal":
        with torch.no_grad():
            model.prior_module.learned_loc.normal_()
            model.prior_module.raw_scale.normal_()
    x = torch.randn(3, 6, dtype=F64)
    reps = 5000
    with torch.no_grad():
        q = model.encode(x.repeat_interleave(reps, 0))
        torch.manual_seed(24)
        analytic = vaelab.elbo_terms(model, q, x.repeat_interleave(reps, 0), 1, kl="analytic")
        torch.manual_seed(24)
        mc = vaelab.elbo_terms(model, q, x.repeat_interleave(reps, 0), 1, kl="mc")
    # Same noise: the expected log-likelihood terms are identical, only the KL estimator differs.
    torch.testing.assert_close(mc.expected_log_likelihood, analytic.expected_log_likelihood)
    mean, se = mean_and_se((mc.elbo - analytic.elbo).view(3, reps))
    assert bool((mean.abs() < 4 * se).all()), mean / se
    assert bool((se > 1e-4).all())


def test_auto_kl_falls_back_to_monte_carlo_without_a_closed_form(linear_gaussian, lg_data):
    loc = torch.zeros(lg_data.shape[0], 3, dtype=F64)
    q = Independent(StudentT(5.0, loc, torch.ones_like(loc)), 1)
    torch.manual_seed(3)
    auto = vaelab.elbo(linear_gaussian, q, lg_data, 10, kl="auto")
    torch.manual_seed(3)
    mc = vaelab.elbo(linear_gaussian, q, lg_data, 10, kl="mc")
    torch.testing.assert_close(auto, mc, rtol=0, atol=0)
    with pytest.raises(ValueError, match="kl: 'analytic'.*StudentT"):
        vaelab.elbo(linear_gaussian, q, lg_data, 10, kl="analytic")


# ------------------------------------------------------------------------ 6. gradients


def _grads(value: torch.Tensor, tensors) -> list[torch.Tensor]:
    return list(torch.autograd.grad(value.sum(), tensors))


@pytest.mark.parametrize("kl", ["mc", "analytic"])
@pytest.mark.parametrize("family_cls", FAMILY_CLASSES)
def test_reparameterized_gradients_equal_closed_form_gradients(linear_gaussian, lg_data,
                                                                family_cls, kl):
    family, raw = random_q(family_cls, lg_data.shape[0], 3)
    raw = raw.requires_grad_()
    theta = [linear_gaussian.weight, linear_gaussian.bias, linear_gaussian.log_noise_scale]
    eps = whitened_noise(40, 3)
    mc = vaelab.elbo(linear_gaussian, fix_noise(family(raw), eps), lg_data, 40, kl=kl)
    closed = linear_gaussian.elbo_closed_form(lg_data, family(raw))
    for got, want in zip(_grads(mc, [raw, *theta]), _grads(closed, [raw, *theta]), strict=True):
        assert want.abs().max() > 1e-3
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


def test_random_noise_gradients_are_unbiased_within_standard_error(make_lg):
    model = make_lg(4, 2, per_dim_noise=True, seed=29)
    x = model.sample(1, generator=torch.Generator().manual_seed(30))
    reps = 20000
    loc0 = torch.tensor([[0.3, -0.4]], dtype=F64)
    raw0 = torch.tensor([[-0.5, 0.2]], dtype=F64)
    # One leaf row per replicate, so each row's gradient is an independent one-sample estimate.
    loc = loc0.repeat(reps, 1).requires_grad_()
    raw_scale = raw0.repeat(reps, 1).requires_grad_()
    q = families.DiagonalNormal.from_params(loc, torch.nn.functional.softplus(raw_scale))
    value = vaelab.elbo(model, q, x.expand(reps, -1), 1, kl="analytic")
    per_row = torch.cat(_grads(value, [loc, raw_scale]), dim=-1)          # [reps, 4]
    mean, se = mean_and_se(per_row, dim=0)

    loc1, raw1 = loc0.clone().requires_grad_(), raw0.clone().requires_grad_()
    q1 = families.DiagonalNormal.from_params(loc1, torch.nn.functional.softplus(raw1))
    want = torch.cat(_grads(model.elbo_closed_form(x, q1), [loc1, raw1]), dim=-1)[0]
    assert bool(((mean - want).abs() < 4 * se).all()), (mean - want) / se
    assert bool((se < 0.05 * want.abs()).any())


def test_elbo_gradient_at_fixed_posterior_is_the_score_of_log_marginal(linear_gaussian, lg_data):
    # Fisher's identity: ∇θ log p(x) = E_{p(z|x)}[∇θ log p(x, z)] = ∇θ ELBO(q = p(z|x) held fixed).
    theta = [linear_gaussian.weight, linear_gaussian.bias, linear_gaussian.log_noise_scale]
    post = detached(linear_gaussian.posterior(lg_data))
    want = _grads(linear_gaussian.log_marginal(lg_data), theta)
    closed = _grads(linear_gaussian.elbo_closed_form(lg_data, post), theta)
    mc = _grads(vaelab.elbo(linear_gaussian, fix_noise(post, whitened_noise(30, 3)), lg_data,
                            30, kl="mc"), theta)
    for w, c, m in zip(want, closed, mc, strict=True):
        assert w.abs().max() > 1e-2
        torch.testing.assert_close(c, w, rtol=0, atol=1e-9)
        torch.testing.assert_close(m, w, rtol=0, atol=1e-9)


@pytest.fixture
def small_problem(make_lg):
    """A per-dimension-noise model (D = 4, L = 2) and two data points, for gradcheck."""
    model = make_lg(4, 2, per_dim_noise=True, seed=33)
    return model, model.sample(2, generator=torch.Generator().manual_seed(34))


@pytest.mark.parametrize("family_cls", FAMILY_CLASSES)
def test_closed_form_elbo_gradcheck(small_problem, family_cls):
    model, x = small_problem
    family, raw = random_q(family_cls, 2, 2)

    def fn(raw):
        return model.elbo_closed_form(x, family(raw))

    assert torch.autograd.gradcheck(fn, (raw.requires_grad_(),))


@pytest.mark.parametrize("objective", ["elbo_mc", "elbo_analytic", "iwae"])
@pytest.mark.parametrize("family_cls", FAMILY_CLASSES)
def test_sampled_objectives_gradcheck(small_problem, family_cls, objective):
    model, x = small_problem
    family, raw = random_q(family_cls, 2, 2)

    def fn(raw):
        torch.manual_seed(31)                      # same noise at every evaluation
        q = family(raw)
        if objective == "iwae":
            return vaelab.iwae_bound(model, q, x, 4)
        return vaelab.elbo(model, q, x, 4, kl=objective[5:])

    assert torch.autograd.gradcheck(fn, (raw.requires_grad_(),))
