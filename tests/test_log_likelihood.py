"""``vaelab.log_likelihood`` (importance sampling) against exact log p(x) on closed-form models.

Oracles: the exact log-marginal; an independent computation of p̂, ESS and the delta-method
standard error from the very same importance samples (a replayed proposal); and the empirical
coverage of the stated standard error over many independent replicates.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Distribution, MultivariateNormal

import vaelab
from vaelab.model import exact

F64 = torch.float64


class ReplayProposal(Distribution):
    """A proposal whose draws come, in order, from a fixed bank of samples [N, B, L].

    log_prob is the base distribution's, so the importance weights are those of the base
    proposal evaluated at known points: the estimator can be recomputed independently.
    """

    has_rsample = True

    def __init__(self, base: Distribution, bank: torch.Tensor) -> None:
        self.base, self.bank, self.used, self.calls = base, bank, 0, 0
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    def rsample(self, sample_shape=()) -> torch.Tensor:
        (n,) = tuple(sample_shape)
        out = self.bank[self.used:self.used + n]
        assert out.shape[0] == n, "the estimator drew more samples than num_samples"
        self.used += n
        self.calls += 1
        return out

    sample = rsample

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(value)


def independent_estimate(model, base: Distribution, x: torch.Tensor, bank: torch.Tensor):
    """p̂ = mean w, ESS = (Σw)²/Σw², se = sd(w)/(√k · mean w), in plain (rescaled) weights."""
    log_w = model.log_joint(x, bank) - base.log_prob(bank)              # [k, B]
    shift = log_w.max(0).values
    w = (log_w - shift).exp()
    k = w.shape[0]
    log_p = w.mean(0).log() + shift
    ess = w.sum(0) ** 2 / (w**2).sum(0)
    se = w.std(0) / (math.sqrt(k) * w.mean(0))
    return log_p, ess, se


def shifted_overdispersed(post: MultivariateNormal, reps: int) -> MultivariateNormal:
    """N(m + ½·sd, 2Σ): a poor but finite-variance proposal (needs Σ_q > Σ_post / 2)."""
    loc = post.loc + 0.5 * post.stddev
    scale_tril = 2.0**0.5 * post.scale_tril[0]                         # one factor, broadcast
    return MultivariateNormal(loc.expand(reps, -1), scale_tril=scale_tril)


class DecodeCounter:
    """Wrap ``model.decode`` to count the calls (one per chunk if the batch is vectorized)."""

    def __init__(self, model) -> None:
        self.calls = 0
        self.sizes: list[tuple[int, ...]] = []
        original = model.decode

        def decode(z):
            self.calls += 1
            self.sizes.append(tuple(z.shape))
            return original(z)

        model.decode = decode


# ------------------------------------------------------------ exact posterior proposal


@pytest.mark.parametrize("num_samples, chunk_size", [(2, 7), (10, 7), (1000, 64)])
def test_exact_posterior_proposal_gives_log_marginal_with_zero_stderr(linear_gaussian, lg_data,
                                                                       num_samples, chunk_size):
    est = vaelab.log_likelihood(linear_gaussian, linear_gaussian.posterior(lg_data), lg_data,
                                num_samples=num_samples, chunk_size=chunk_size)
    torch.testing.assert_close(est.log_likelihood, linear_gaussian.log_marginal(lg_data).detach(),
                               rtol=0, atol=1e-10)
    torch.testing.assert_close(est.ess, torch.full_like(est.ess, num_samples), rtol=1e-9, atol=0)
    assert bool((est.stderr < 1e-6).all())
    assert est.num_samples == num_samples
    assert est.log_likelihood.shape == est.stderr.shape == est.ess.shape == (lg_data.shape[0],)


def test_single_sample_has_undefined_stderr_and_unit_ess(linear_gaussian, lg_data):
    est = vaelab.log_likelihood(linear_gaussian, linear_gaussian.prior().expand((6,)), lg_data,
                                num_samples=1)
    assert bool(est.stderr.isnan().all())
    torch.testing.assert_close(est.ess, torch.ones_like(est.ess), rtol=1e-12, atol=0)


def test_gaussian_mixture_with_exact_responsibilities_is_exact():
    g = torch.Generator().manual_seed(4)
    model = exact.GaussianMixture(torch.randn(3, generator=g, dtype=F64),
                                  3 * torch.randn(3, 2, generator=g, dtype=F64),
                                  0.5 + torch.rand(3, 2, generator=g, dtype=F64))
    x = model.sample(5, generator=g)
    est = vaelab.log_likelihood(model, model.posterior(x), x, num_samples=50, chunk_size=8)
    torch.testing.assert_close(est.log_likelihood, model.log_marginal(x).detach(),
                               rtol=0, atol=1e-10)
    torch.testing.assert_close(est.ess, torch.full_like(est.ess, 50), rtol=1e-9, atol=0)


# ------------------------------------------- estimator = independent recomputation


@pytest.mark.parametrize("chunk_size", [1, 7, 100, 1000, None])
def test_chunked_estimate_equals_independent_computation_on_the_same_samples(make_lg, chunk_size):
    model = make_lg(4, 2, per_dim_noise=True, seed=41)
    x = model.sample(3, generator=torch.Generator().manual_seed(42))
    base = MultivariateNormal(torch.zeros(3, 2, dtype=F64), torch.eye(2, dtype=F64) * 1.5)
    bank = base.sample((100,))
    q = ReplayProposal(base, bank)
    counter = DecodeCounter(model)
    est = vaelab.log_likelihood(model, q, x, num_samples=100, chunk_size=chunk_size)
    assert q.used == 100
    expected_chunks = 1 if chunk_size is None else math.ceil(100 / chunk_size)
    assert counter.calls == q.calls == expected_chunks
    log_p, ess, se = independent_estimate(model, base, x, bank)
    torch.testing.assert_close(est.log_likelihood, log_p.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(est.ess, ess.detach(), rtol=1e-9, atol=0)
    torch.testing.assert_close(est.stderr, se.detach(), rtol=1e-9, atol=0)
    # A poor proposal: the weights are far from uniform, so ESS and stderr are informative.
    assert bool((est.ess < 50).all()) and bool((est.stderr > 0.05).all())


def test_stderr_covers_the_truth_at_the_nominal_rate(make_lg):
    # Shifted, overdispersed proposal with finite weight variance and k = 300: the delta method
    # is valid. A stderr 1.2× too small or too large moves the 95% coverage out of [0.93, 0.97].
    model = make_lg(4, 2, seed=43)
    x0 = model.sample(1, generator=torch.Generator().manual_seed(44))
    truth = model.log_marginal(x0).item()
    reps = 3000
    q = shifted_overdispersed(model.posterior(x0), reps)
    est = vaelab.log_likelihood(model, q, x0.expand(reps, -1), num_samples=300)
    err = est.log_likelihood - truth
    z = err / est.stderr
    cover_95 = (z.abs() < 1.96).double().mean().item()
    cover_68 = (z.abs() < 1.0).double().mean().item()
    assert 0.93 < cover_95 < 0.97, cover_95
    assert 0.64 < cover_68 < 0.72, cover_68
    ratio = est.stderr.mean().item() / err.std().item()
    assert 0.9 < ratio < 1.1, ratio
    assert 0.3 < (est.ess / 300).mean().item() < 0.9           # genuinely non-uniform weights


def test_standard_normal_proposal_is_biased_low_and_reports_it(make_lg):
    # q = p(z) = N(0, I): unbiased in p̂ hence biased low in log p̂ (Jensen), ESS ≪ k, and the
    # errors still match the stated standard error in size.
    model = make_lg(4, 2, seed=43)
    x0 = model.sample(1, generator=torch.Generator().manual_seed(44))
    truth = model.log_marginal(x0).item()
    reps = 1000
    q = MultivariateNormal(torch.zeros(reps, 2, dtype=F64), scale_tril=torch.eye(2, dtype=F64))
    est = vaelab.log_likelihood(model, q, x0.expand(reps, -1), num_samples=200, chunk_size=64)
    err = est.log_likelihood - truth
    assert err.mean().item() < -3 * err.std().item() / math.sqrt(reps)
    assert (est.ess / 200).mean().item() < 0.2
    p_ratio = (est.log_likelihood - truth).exp()                # p̂ / p, unbiased for 1
    assert abs(p_ratio.mean().item() - 1) < 4 * p_ratio.std().item() / math.sqrt(reps)
    assert 0.8 < est.stderr.median().item() / err.std().item() < 1.25


# ------------------------------------------------------------------- chunking


def test_chunk_size_does_not_change_the_distribution_of_estimates(make_lg):
    model = make_lg(4, 2, seed=45)
    x0 = model.sample(1, generator=torch.Generator().manual_seed(46))
    truth = model.log_marginal(x0).item()
    reps = 1000
    q = shifted_overdispersed(model.posterior(x0), reps)
    x = x0.expand(reps, -1)
    torch.manual_seed(47)
    one = vaelab.log_likelihood(model, q, x, num_samples=100, chunk_size=100)
    torch.manual_seed(47)
    many = vaelab.log_likelihood(model, q, x, num_samples=100, chunk_size=7)
    for est in (one, many):
        err = est.log_likelihood - truth
        assert abs(err.mean().item()) < 4 * err.std().item() / math.sqrt(reps) + 0.01
    diff = one.log_likelihood.mean() - many.log_likelihood.mean()
    se_diff = math.sqrt((one.log_likelihood.var() + many.log_likelihood.var()).item() / reps)
    assert abs(diff.item()) < 4 * se_diff
    sd_ratio = (one.log_likelihood.std() / many.log_likelihood.std()).item()
    assert 0.9 < sd_ratio < 1.1
    torch.testing.assert_close(one.stderr.mean(), many.stderr.mean(), rtol=0.05, atol=0)
    torch.testing.assert_close(one.ess.mean(), many.ess.mean(), rtol=0.05, atol=0)


def test_large_batch_is_vectorized_one_decode_per_chunk(make_lg):
    model = make_lg(2, 1, seed=48)
    x = model.sample(1000, generator=torch.Generator().manual_seed(49))
    counter = DecodeCounter(model)
    est = vaelab.log_likelihood(model, model.posterior(x), x, num_samples=1000, chunk_size=250)
    assert counter.calls == 4
    assert all(size[:2] == (250, 1000) for size in counter.sizes), counter.sizes
    torch.testing.assert_close(est.log_likelihood, model.log_marginal(x).detach(),
                               rtol=0, atol=1e-9)
    assert est.log_likelihood.shape == (1000,)


def test_automatic_chunk_size_bounds_the_chunk(make_lg, monkeypatch):
    from vaelab.measure import evaluate

    monkeypatch.setattr(evaluate, "DEFAULT_CHUNK_ELEMENTS", 4000)
    model = make_lg(4, 2, seed=50)
    x = model.sample(10, generator=torch.Generator().manual_seed(51))
    counter = DecodeCounter(model)
    vaelab.log_likelihood(model, model.posterior(x), x, num_samples=1000)
    assert counter.calls > 1
    assert all(size[0] * size[1] * 4 <= 4000 for size in counter.sizes), counter.sizes


# ------------------------------------------------------------------- bad input


@pytest.mark.parametrize("num_samples, error", [(0, ValueError), (-3, ValueError),
                                                (2.5, TypeError), (True, TypeError)])
def test_bad_num_samples_is_named(linear_gaussian, lg_data, num_samples, error):
    with pytest.raises(error, match="num_samples"):
        vaelab.log_likelihood(linear_gaussian, linear_gaussian.posterior(lg_data), lg_data,
                              num_samples=num_samples)


@pytest.mark.parametrize("chunk_size, error", [(0, ValueError), (-1, ValueError),
                                               (1.5, TypeError)])
def test_bad_chunk_size_is_named(linear_gaussian, lg_data, chunk_size, error):
    with pytest.raises(error, match="chunk_size"):
        vaelab.log_likelihood(linear_gaussian, linear_gaussian.posterior(lg_data), lg_data,
                              num_samples=10, chunk_size=chunk_size)


def test_proposal_with_wrong_batch_is_named(linear_gaussian, lg_data):
    with pytest.raises(ValueError, match=r"q: expected batch_shape \[6\]"):
        vaelab.log_likelihood(linear_gaussian, linear_gaussian.posterior(lg_data[:2]), lg_data,
                              num_samples=10)
