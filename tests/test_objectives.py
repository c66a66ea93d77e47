"""ELBO and IWAE against closed forms on the linear-Gaussian model (float64, seeded).

Oracles: ``LinearGaussian.log_marginal`` (exact log p(x)), ``LinearGaussian.posterior`` (exact
p(z | x)), ``elbo_closed_form`` and ``torch.distributions.kl_divergence``. Monte Carlo
estimates are compared with a tolerance derived from their own sample standard error, computed
over independent replicate rows (x repeated, one q per row), never with a fixed slack.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import (
    Categorical,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    StudentT,
    kl_divergence,
)

import vaelab
from vaelab.config import ModelConfig
from vaelab.infer import objectives as obj
from vaelab.model import families, priors
from vaelab.model.exact import LinearGaussian

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


# -------------------------------------------------------------- IWAE, DReG, mixtures and free bits
# Training objectives (IWAE, DReG, β, free bits) and the stratified mixture estimators.
#
# Oracles, float64 throughout: the linear-Gaussian model's exact log p(x); gradients written out
# by hand (DReG) or by central finite differences of the bound with the noise held fixed (IWAE);
# a mixture q's ELBO by quadrature on a dense grid (one latent dimension) and by brute-force
# Monte Carlo from ``MixtureSameFamily.sample``; KLs per dimension written out by hand. Monte
# Carlo comparisons use tolerances from their own standard errors over independent replicate
# rows (one q per row), never a fixed slack.


def lg_model(data_dim: int = 5, latent_dim: int = 3, seed: int = 1) -> LinearGaussian:
    g = torch.Generator().manual_seed(seed)
    return LinearGaussian(torch.randn(data_dim, latent_dim, generator=g, dtype=F64),
                          torch.randn(data_dim, generator=g, dtype=F64), 0.7)


def data(model: LinearGaussian, n: int, seed: int = 2) -> torch.Tensor:
    torch.manual_seed(seed)
    return model.marginal().sample((n,)).detach()


def diag_raw(batch: int, latent_dim: int, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.5 * torch.randn(batch, 2 * latent_dim, generator=g, dtype=F64)


def mixture(logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> MixtureSameFamily:
    """q = Σ_k π_k N(loc_k, diag scale_k²): logits [B, K], loc/scale [B, K, L]."""
    return MixtureSameFamily(Categorical(logits=logits), Independent(Normal(loc, scale), 1))


def mean_se(values: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return values.mean(dim), values.std(dim) / math.sqrt(values.shape[dim])


def fixed_noise_q(loc: torch.Tensor, scale: torch.Tensor, eps: torch.Tensor):
    """Independent(Normal(loc, scale)) whose rsample((K,)) returns loc + scale ε (eps [K, B, L])."""
    q = families.DiagonalNormal.from_params(loc, scale)

    def rsample(sample_shape=()):
        assert tuple(sample_shape) == (eps.shape[0],)
        return loc + scale * eps

    q.rsample = rsample
    return q


# --------------------------------------------------------------- IWAE with K = 1 is the ELBO


@pytest.mark.parametrize("objective", ["iwae", "iwae-dreg"])
@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_iwae_objectives_with_one_sample_are_the_elbo_on_the_same_noise(objective, beta):
    model = lg_model()
    x = data(model, 6)
    q = families.DiagonalNormal(3)(diag_raw(6, 3))
    torch.manual_seed(11)
    got = obj.training_terms(model, q, x, objective=objective, num_samples=1, kl_weight=beta)
    torch.manual_seed(11)
    terms = obj.elbo_terms(model, q, x, 1, kl="mc")
    expected = terms.expected_log_likelihood - beta * terms.kl
    torch.testing.assert_close(got.objective, expected.detach(), rtol=0, atol=1e-12)
    if objective == "iwae":   # the surrogate is the bound itself
        torch.testing.assert_close(got.surrogate.detach(), expected.detach(), rtol=0, atol=1e-12)
    # the reported ELBO is the true one (β = 1): E log p(x|z) − analytic KL, same draw
    torch.testing.assert_close(got.terms.expected_log_likelihood,
                               terms.expected_log_likelihood.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(got.terms.kl, obj.elbo_terms(model, q, x, 1, kl="analytic").kl
                               .detach(), rtol=0, atol=1e-12)


def test_elbo_objective_is_the_beta_weighted_elbo_and_reports_the_true_one():
    model = lg_model()
    x = data(model, 6)
    q = families.DiagonalNormal(3)(diag_raw(6, 3))
    torch.manual_seed(5)
    got = obj.training_terms(model, q, x, objective="elbo", num_samples=3, kl_weight=0.25)
    torch.manual_seed(5)
    terms = obj.elbo_terms(model, q, x, 3)
    torch.testing.assert_close(got.surrogate.detach(),
                               (terms.expected_log_likelihood - 0.25 * terms.kl).detach(),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(got.terms.elbo, terms.elbo.detach(), rtol=0, atol=1e-12)
    assert bool((got.terms.elbo < got.objective - 1e-3).all())   # β < 1 inflates the objective


# ---------------------------------------------------- IWAE rises with K to log p(x) (exact model)


def test_iwae_objective_rises_with_k_to_the_exact_log_marginal():
    model = lg_model()
    x1 = data(model, 1)
    reps = 1000
    x = x1.expand(reps, -1)
    q = families.DiagonalNormal(3)(diag_raw(1, 3).expand(reps, -1))
    truth = float(model.log_marginal(x1).detach())
    means, ses = [], []
    for k in (1, 4, 32, 256):
        torch.manual_seed(k)
        values = obj.training_terms(model, q, x, objective="iwae", num_samples=k).objective
        m, se = mean_se(values)
        means.append(float(m))
        ses.append(float(se))
    for i in range(len(means) - 1):
        assert means[i + 1] > means[i] + 3 * math.hypot(ses[i], ses[i + 1]), (means, ses)
    assert all(m < truth + 3 * s for m, s in zip(means, ses, strict=True))
    assert truth - means[-1] < 0.05 * (truth - means[0]), (truth, means)


# --------------------------------------------------------------- gradients: hand and FD oracles


def _iwae_bound_fixed(model, loc, scale, eps, x) -> torch.Tensor:
    """The IWAE bound summed over the batch, written out for the linear-Gaussian model."""
    z = loc + scale * eps
    lw = (model.decode(z).log_prob(x) + model.prior().log_prob(z)
          - Normal(loc, scale).log_prob(z).sum(-1))
    return (lw.logsumexp(0) - math.log(eps.shape[0])).sum()


def _finite_difference(fn, tensors: list[torch.Tensor], h: float = 1e-6) -> list[torch.Tensor]:
    out = []
    for t in tensors:
        grad = torch.zeros_like(t)
        flat, gflat = t.data.view(-1), grad.view(-1)
        for i in range(flat.numel()):
            old = float(flat[i])
            flat[i] = old + h
            up = float(fn())
            flat[i] = old - h
            down = float(fn())
            flat[i] = old
            gflat[i] = (up - down) / (2 * h)
        out.append(grad)
    return out


def _mixture_grads(model, raw, eps, x, objective):
    model.zero_grad()
    raw = raw.detach().clone().requires_grad_(True)
    loc, raw_scale = raw.chunk(2, -1)
    scale = torch.nn.functional.softplus(raw_scale)
    q = fixed_noise_q(loc, scale, eps)
    terms = obj.training_terms(model, q, x, objective=objective, num_samples=eps.shape[0])
    terms.surrogate.sum().backward()
    return raw.grad, [p.grad.clone() for p in model.parameters()], terms


def test_iwae_gradient_equals_finite_differences_of_the_bound():
    model = lg_model()
    x = data(model, 3)
    raw = diag_raw(3, 3)
    eps = torch.randn(7, 3, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    g_raw, g_theta, terms = _mixture_grads(model, raw, eps, x, "iwae")
    raw_v = raw.clone()

    def bound():
        loc, rs = raw_v.chunk(2, -1)
        return _iwae_bound_fixed(model, loc, torch.nn.functional.softplus(rs), eps, x)

    with torch.no_grad():
        fd_raw, *fd_theta = _finite_difference(bound, [raw_v, *model.parameters()])
        torch.testing.assert_close(terms.objective.sum(), bound(), rtol=0, atol=1e-10)
    torch.testing.assert_close(g_raw, fd_raw, rtol=1e-6, atol=1e-7)
    for got, want in zip(g_theta, fd_theta, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_dreg_gradient_equals_the_hand_derived_formula_and_theta_gets_the_iwae_gradient():
    model = lg_model()
    x = data(model, 3)
    raw = diag_raw(3, 3)
    eps = torch.randn(7, 3, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    g_raw, g_theta, _ = _mixture_grads(model, raw, eps, x, "iwae-dreg")
    _, g_theta_iwae, _ = _mixture_grads(model, raw, eps, x, "iwae")
    for got, want in zip(g_theta, g_theta_iwae, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # Tucker et al. 2019, eq. 7: Σ_i w̃_i² ∂log w_i/∂z_i ∂z_i/∂φ, written out for N(Wz + b, σ²I)
    with torch.no_grad():
        loc, raw_scale = raw.chunk(2, -1)
        scale = torch.nn.functional.softplus(raw_scale)
        z = loc + scale * eps
        w, b, s2 = model.weight, model.bias, model.noise_scale ** 2
        resid = x - z @ w.T - b
        lw = (-0.5 * (resid ** 2 / s2).sum(-1) - 0.5 * (z ** 2).sum(-1)
              + 0.5 * (eps ** 2).sum(-1) + scale.log().sum(-1))    # + constants
        wt = torch.softmax(lw, 0)
        dlw_dz = (resid / s2) @ w - z + (z - loc) / scale ** 2
        coef = (wt ** 2)[..., None] * dlw_dz
        want = torch.cat([coef.sum(0), (coef * eps).sum(0) * torch.sigmoid(raw_scale)], -1)
    torch.testing.assert_close(g_raw, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_dreg_has_the_iwae_gradient_in_expectation_and_a_higher_snr_at_k64(beta):
    model = lg_model()
    x1 = data(model, 1)
    reps, k = 3000, 64
    x = x1.expand(reps, -1)
    raw0 = diag_raw(1, 3, seed=8).expand(reps, -1)
    grads = {}
    for objective in ("iwae", "iwae-dreg"):
        raw = raw0.clone().requires_grad_(True)
        torch.manual_seed(21)                       # the same draws: paired comparison
        q = families.DiagonalNormal(3)(raw)
        obj.training_terms(model, q, x, objective=objective, num_samples=k,
                           kl_weight=beta).surrogate.sum().backward()
        grads[objective] = raw.grad
    diff_mean, diff_se = mean_se(grads["iwae-dreg"] - grads["iwae"])
    assert bool((diff_mean.abs() < 4 * diff_se).all()), diff_mean / diff_se
    iwae_mean, iwae_se = mean_se(grads["iwae"])
    assert bool((iwae_mean.abs() > 4 * iwae_se).any())       # the test has something to see
    snr = {name: g.mean(0).abs() / g.std(0) for name, g in grads.items()}
    if beta == 1.0:   # Tucker et al. 2019 / Rainforth et al. 2018: IWAE's φ-SNR decays with K
        ratio = snr["iwae-dreg"] / snr["iwae"]
        assert bool((ratio > 1.5).all()) and float(ratio.mean()) > 2, snr


def test_dreg_refuses_a_mixture_and_free_bits_refuse_iwae():
    model = lg_model(latent_dim=2)
    x = data(model, 2)
    q = mixture(torch.zeros(2, 2, dtype=F64), torch.zeros(2, 2, 2, dtype=F64),
                torch.ones(2, 2, 2, dtype=F64))
    with pytest.raises(ValueError, match="iwae-dreg"):
        obj.training_terms(model, q, x, objective="iwae-dreg", num_samples=2)
    with pytest.raises(ValueError, match="free_bits"):
        obj.training_terms(model, q, x, objective="iwae", free_bits=0.5)
    with pytest.raises(ValueError, match="objective"):
        obj.training_terms(model, q, x, objective="vimco")
    with pytest.raises(ValueError, match="kl_weight"):
        obj.training_terms(model, q, x, kl_weight=-1.0)


# --------------------------------------------------------------- free bits


def test_free_bits_batch_mean_is_the_clamped_per_dimension_kl_and_its_gradient():
    g = torch.Generator().manual_seed(6)
    loc = (torch.randn(8, 4, generator=g, dtype=F64) * torch.tensor([0.05, 0.3, 1.0, 2.0],
                                                                      dtype=F64)).requires_grad_()
    scale = (0.5 + torch.rand(8, 4, generator=g, dtype=F64)).requires_grad_()
    q = Independent(Normal(loc, scale), 1)
    prior = Independent(Normal(torch.zeros(4, dtype=F64), torch.ones(4, dtype=F64)), 1)
    kl_bj = -scale.log() + (scale ** 2 + loc ** 2) / 2 - 0.5        # by hand
    lam = 0.3
    fb = obj.free_bits_kl(q, prior, torch.distributions.kl_divergence(q, prior), lam)
    mean_kl = kl_bj.detach().mean(0)
    assert bool((mean_kl < lam).any()) and bool((mean_kl > lam).any())   # both cases occur
    want = torch.clamp(mean_kl, min=lam).sum()
    torch.testing.assert_close(fb.mean(), want, rtol=0, atol=1e-12)
    (g_loc,) = torch.autograd.grad(fb.mean(), loc)
    (g_hand,) = torch.autograd.grad((kl_bj * (mean_kl >= lam)).mean(0).sum(), loc)
    torch.testing.assert_close(g_loc, g_hand, rtol=0, atol=1e-12)
    assert bool((g_loc[:, mean_kl < lam] == 0).all())


def test_free_bits_group_the_whole_latent_for_a_full_covariance_q():
    family = families.FullCovarianceNormal(3)
    q = family(0.4 * torch.randn(5, family.param_size, dtype=F64))
    prior = Independent(Normal(torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)), 1)
    kl = torch.distributions.kl_divergence(q, prior)
    high = float(kl.mean()) / 3 + 0.1                            # λ·L above the batch mean
    torch.testing.assert_close(obj.free_bits_kl(q, prior, kl, high),
                               torch.full_like(kl, 3 * high), rtol=0, atol=1e-12)
    low = float(kl.mean()) / 3 - 0.1
    torch.testing.assert_close(obj.free_bits_kl(q, prior, kl, low), kl, rtol=0, atol=0)


def test_free_bits_change_the_objective_but_not_the_reported_elbo():
    model = lg_model()
    x = data(model, 6)
    q = families.DiagonalNormal(3)(diag_raw(6, 3))
    out = {}
    for lam in (0.0, 5.0):
        torch.manual_seed(3)
        out[lam] = obj.training_terms(model, q, x, objective="elbo", free_bits=lam)
    torch.testing.assert_close(out[0.0].terms.elbo, out[5.0].terms.elbo, rtol=0, atol=0)
    assert float(out[5.0].objective.mean()) < float(out[0.0].objective.mean()) - 1.0


# --------------------------------------------------------------- the stratified mixture estimators


def random_mixture(batch: int, k: int, latent: int, seed: int = 9, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(batch, k, generator=g, dtype=F64),
              torch.randn(batch, k, latent, generator=g, dtype=F64),
              0.3 + 0.5 * torch.rand(batch, k, latent, generator=g, dtype=F64)]
    return [p.requires_grad_(requires_grad) for p in params]


def test_mixture_with_one_component_is_the_diagonal_family_on_the_same_noise():
    model = lg_model()
    x = data(model, 4)
    loc, scale = torch.randn(4, 3, dtype=F64), 0.5 + torch.rand(4, 3, dtype=F64)
    q_mix = mixture(torch.zeros(4, 1, dtype=F64), loc[:, None], scale[:, None])
    q_diag = families.DiagonalNormal.from_params(loc, scale)
    assert obj.is_stratifiable(q_mix) and not obj.is_stratifiable(q_diag)
    for fn in (lambda q: obj.elbo_terms(model, q, x, 5, kl="mc").elbo,
               lambda q: obj.iwae_bound(model, q, x, 5),
               lambda q: obj.training_terms(model, q, x, objective="iwae", num_samples=5)
               .objective):
        torch.manual_seed(13)
        a = fn(q_mix)
        torch.manual_seed(13)
        b = fn(q_diag)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_stratified_values_match_an_independent_numpy_computation():
    model = lg_model(latent_dim=2)
    x = data(model, 3)
    logits, loc, scale = random_mixture(3, 4, 2)
    q = mixture(logits, loc, scale)
    s = 6
    eps = torch.randn(s, 3, 4, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    q.component_distribution.rsample = lambda shape: loc + scale * eps
    elbo = obj.elbo_terms(model, q, x, s).elbo.detach().numpy()
    siwae = obj.iwae_bound(model, q, x, s).detach().numpy()
    # numpy: z [S, B, K, L]; mixture density Σ_j π_j N(z; μ_j, σ_j) by hand
    z = (loc + scale * eps).detach().numpy()
    mu, sd = loc.detach().numpy(), scale.detach().numpy()
    log_pi = logits.log_softmax(-1).detach().numpy()                       # [B, K]
    W, b = model.weight.detach().numpy(), model.bias.detach().numpy()
    sigma = float(model.noise_scale[0].detach())
    xn = x.numpy()

    def log_normal(v, m, s_):
        return (-0.5 * ((v - m) / s_) ** 2 - np.log(s_) - 0.5 * np.log(2 * np.pi)).sum(-1)

    log_q = np.logaddexp.reduce(
        log_pi[None, :, None, :] + log_normal(z[:, :, :, None, :], mu[None, :, None],
                                              sd[None, :, None]), axis=-1)      # [S, B, K]
    log_joint = log_normal(z, 0.0, 1.0) + log_normal(
        xn[None, :, None, :], z @ W.T + b, sigma)
    lw = log_joint - log_q
    pi = np.exp(log_pi)
    want_elbo = (pi * lw.mean(0)).sum(-1)
    want_siwae = np.logaddexp.reduce((log_pi[None] + lw).transpose(1, 0, 2).reshape(3, -1),
                                     axis=-1) - np.log(s)
    np.testing.assert_allclose(elbo, want_elbo, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(siwae, want_siwae, rtol=1e-12, atol=1e-10)


def test_stratified_elbo_is_unbiased_against_brute_force_monte_carlo():
    model = lg_model(latent_dim=2)
    x1 = data(model, 1)
    logits, loc, scale = random_mixture(1, 3, 2, seed=4)
    reps = 4000
    q_rep = mixture(logits.expand(reps, -1), loc.expand(reps, -1, -1),
                    scale.expand(reps, -1, -1))
    torch.manual_seed(1)
    values = obj.elbo_terms(model, q_rep, x1.expand(reps, -1), 1).elbo.detach()
    m, se = mean_se(values)
    q = mixture(logits, loc, scale)
    z = q.sample((400_000,))                                       # [N, 1, L], no stratifying
    brute = (model.log_joint(x1, z) - q.log_prob(z)).detach()[:, 0]
    bm, bse = mean_se(brute)
    assert abs(float(m - bm)) < 4 * math.hypot(float(se), float(bse)), (m, bm, se, bse)
    gap = float(model.log_marginal(x1).detach()) - float(bm)
    assert gap > 20 * math.hypot(float(se), float(bse))      # a bias of the size of the gap shows


def _quadrature_elbo(model, logits, loc, scale, x):
    """ELBO of a 1-D mixture q by the trapezoid rule on a dense grid; x [1, D]."""
    z = torch.linspace(-14, 14, 40001, dtype=F64)[:, None, None]       # [N, 1, 1]
    q = mixture(logits, loc, scale)
    log_q = q.log_prob(z)                                           # [N, 1]
    integrand = log_q.exp() * (model.log_joint(x, z) - log_q)
    return torch.trapezoid(integrand[:, 0], z[:, 0, 0])


def test_stratified_gradient_is_unbiased_against_quadrature_including_the_weights():
    model = lg_model(data_dim=3, latent_dim=1, seed=5)
    x1 = data(model, 1)
    logits, loc, scale = random_mixture(1, 2, 1, seed=7)
    with torch.no_grad():
        exact = _quadrature_elbo(model, logits, loc, scale, x1)
        params = [logits.clone(), loc.clone(), scale.clone()]
        fd = _finite_difference(lambda: _quadrature_elbo(model, *params, x1), params, h=1e-5)
    reps = 20000
    rep = [p.expand(reps, *p.shape[1:]).clone().requires_grad_(True)
           for p in (logits, loc, scale)]
    torch.manual_seed(2)
    values = obj.elbo_terms(model, mixture(*rep), x1.expand(reps, -1), 1).elbo
    values.sum().backward()
    m, se = mean_se(values.detach())
    assert abs(float(m - exact)) < 4 * float(se)
    for param, want in zip(rep, fd, strict=True):
        gm, gse = mean_se(param.grad)
        assert bool(((gm - want[0]).abs() < 4 * gse + 1e-6).all()), (gm, want, gse)
        assert bool((want.abs() > 10 * gse).any())    # the gradient is resolved, not noise


def test_stratified_iwae_rises_with_samples_to_log_p_and_starts_above_the_elbo():
    model = lg_model(latent_dim=2)
    x1 = data(model, 1)
    logits, loc, scale = random_mixture(1, 3, 2, seed=4)
    reps = 1000
    q = mixture(logits.expand(reps, -1), loc.expand(reps, -1, -1), scale.expand(reps, -1, -1))
    x = x1.expand(reps, -1)
    truth = float(model.log_marginal(x1).detach())
    torch.manual_seed(0)
    elbo_m, elbo_se = mean_se(obj.elbo_terms(model, q, x, 1).elbo.detach())
    stats = []
    for s in (1, 8, 64):
        torch.manual_seed(s)
        stats.append(mean_se(obj.iwae_bound(model, q, x, s).detach()))
    assert float(stats[0][0]) > float(elbo_m) + 3 * math.hypot(stats[0][1], elbo_se)
    for (a, sa), (b, sb) in zip(stats, stats[1:], strict=False):
        assert float(b) > float(a) + 3 * math.hypot(float(sa), float(sb))
    assert all(float(m) < truth + 3 * float(s) for m, s in stats)
    assert truth - float(stats[-1][0]) < 0.1 * (truth - float(elbo_m))
