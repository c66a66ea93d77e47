"""The contract every family, prior and likelihood keeps, and the errors bad input gets.

Parametrized over the registries (``families.FAMILIES``, ``priors.PRIORS``,
``likelihoods.LIKELIHOODS`` with every Gaussian scale mode and transform), so a new entry is
tested by being registered. Error tests assert that the message names the argument.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, Independent, MultivariateNormal, Normal, StudentT

import vaelab
from vaelab.config import ModelConfig
from vaelab.model import (
    column_likelihoods,
    discretized_logistic,
    exact,
    families,
    likelihoods,
    nets,
    priors,
)
from vaelab.model.mixed_likelihood import MixedLikelihood
from vaelab.model.vae import Encoder

DTYPES = [torch.float32, torch.float64]
LATENT = 3
DATA = 4
BATCH = 5


# ------------------------------------------------------------------------- families


@pytest.fixture(params=sorted(families.FAMILIES))
def family(request) -> families.Family:
    return families.FAMILIES[request.param](LATENT)


def _draw(q, n: int) -> torch.Tensor:
    """n draws [n, *batch, L]: rsample when q has it, else sample (a mixture q)."""
    return q.rsample((n,)) if q.has_rsample else q.sample((n,))


def _away_from_init(family: families.Family) -> families.Family:
    """The family in float64 with its own parameters (IAF's MADEs, zero-initialized so that
    they start as the identity) moved to seeded random values, so every input matters."""
    family = family.double()
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in family.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return family


@pytest.mark.parametrize("dtype", DTYPES)
def test_family_shapes_and_dtype(family, dtype):
    family = family.to(dtype)
    raw = torch.randn(BATCH, family.param_size, dtype=dtype)
    q = family(raw)
    assert q.batch_shape == (BATCH,) and q.event_shape == (LATENT,)
    z = _draw(q, 7)
    assert z.shape == (7, BATCH, LATENT) and z.dtype == dtype
    assert q.log_prob(z).shape == (7, BATCH)
    assert q.mean.shape == (BATCH, LATENT)
    q2 = family(torch.randn(2, BATCH, family.param_size, dtype=dtype))
    assert q2.batch_shape == (2, BATCH) and _draw(q2, 3).shape == (3, 2, BATCH, LATENT)
    if not q.has_rsample:   # a mixture: reparameterized draws from every component instead
        K = q.mixture_distribution.logits.shape[-1]
        assert q.component_distribution.rsample((3,)).shape == (3, BATCH, K, LATENT)


def test_family_rsample_gradients_reach_every_raw_parameter(family):
    family = _away_from_init(family)
    raw = torch.randn(BATCH, family.param_size, dtype=torch.float64, requires_grad=True)
    q = family(raw)
    if q.has_rsample:
        z = q.rsample((4,))
        value = (z * torch.randn_like(z)).sum()
    else:   # the stratified form Σ_k π_k f(z_k), z_k ~ q_k reparameterized
        z = q.component_distribution.rsample((4,))
        f = (z * torch.randn_like(z)).sum(-1)
        value = (q.mixture_distribution.probs * f).sum()
    (grad,) = torch.autograd.grad(value, raw)
    assert bool((grad != 0).all()), grad


def test_family_log_prob_gradients_reach_every_raw_parameter(family):
    family = _away_from_init(family)
    raw = torch.randn(BATCH, family.param_size, dtype=torch.float64, requires_grad=True)
    z = torch.randn(BATCH, LATENT, dtype=torch.float64)
    (grad,) = torch.autograd.grad(family(raw).log_prob(z).sum(), raw)
    assert bool((grad != 0).all()), grad


@pytest.mark.parametrize("magnitude, dtype", [(30.0, torch.float64), (10.0, torch.float32)])
def test_family_log_prob_finite_at_extreme_raw_parameters(family, magnitude, dtype):
    g = torch.Generator().manual_seed(3)
    signs = torch.randint(0, 2, (64, family.param_size), generator=g) * 2 - 1
    q = family.to(dtype)((magnitude * signs).to(dtype))
    z = torch.randn(64, LATENT, generator=g).to(dtype)
    assert bool(torch.isfinite(q.log_prob(z)).all())
    assert bool(torch.isfinite(q.log_prob(_draw(q, 2))).all())
    p = priors.StandardNormal(LATENT).to(dtype)()
    try:
        kl = torch.distributions.kl_divergence(q, p)
    except NotImplementedError:   # no closed form (mixture, IAF): the Monte Carlo estimate
        draws = _draw(q, 2)
        kl = (q.log_prob(draws) - p.log_prob(draws)).mean(0)
    assert bool(torch.isfinite(kl).all())


def test_diagonal_normal_log_prob_finite_at_extreme_raw_parameters_in_float32():
    family = families.DiagonalNormal(LATENT)
    signs = torch.randint(0, 2, (64, family.param_size)) * 2 - 1
    q = family(30.0 * signs.float())
    assert bool(torch.isfinite(q.log_prob(torch.randn(64, LATENT))).all())
    assert bool(torch.isfinite(q.log_prob(q.rsample((2,)))).all())


def test_full_covariance_log_prob_finite_at_extreme_raw_parameters_in_float32():
    # the condition number ~(3e6)^(L-1) of the factor at raw ±30 overflows float32 when ε is
    # solved back from z; q's own draws keep their ε (test_families checks the value exactly)
    family = families.FullCovarianceNormal(6)
    signs = torch.randint(0, 2, (64, family.param_size)) * 2 - 1
    q = family(30.0 * signs.float())
    assert bool(torch.isfinite(q.log_prob(q.rsample((2,)))).all())


@pytest.mark.parametrize("dtype", DTYPES)
def test_family_initial_params_give_standard_normal(family, dtype):
    raw = family.initial_params(2, BATCH, dtype=dtype)
    assert raw.shape == (2, BATCH, family.param_size) and raw.dtype == dtype
    assert family.initial_params(BATCH).dtype == torch.get_default_dtype()
    q = family.to(dtype)(raw)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    if isinstance(q, torch.distributions.TransformedDistribution):   # a flow (IAF): no closed
        z = torch.randn(2, BATCH, LATENT, dtype=dtype)                # mean; compare densities
        want = Independent(Normal(torch.zeros_like(z), torch.ones_like(z)), 1).log_prob(z)
        torch.testing.assert_close(q.log_prob(z), want, rtol=0, atol=tol)
        return
    torch.testing.assert_close(q.mean, torch.zeros(2, BATCH, LATENT, dtype=dtype),
                               rtol=0, atol=tol)
    cov = MultivariateNormal(q.mean, scale_tril=_scale_tril(q)).covariance_matrix
    torch.testing.assert_close(cov, torch.eye(LATENT, dtype=dtype).expand_as(cov),
                               rtol=0, atol=tol)


def _scale_tril(q) -> torch.Tensor:
    if isinstance(q, MultivariateNormal):
        return q.scale_tril
    if isinstance(q, torch.distributions.MixtureSameFamily):   # components all N(0, I) here
        return torch.diag_embed(q.variance.sqrt())
    return torch.diag_embed(q.base_dist.scale)


def test_family_config_round_trip(family):
    rebuilt = families.from_config(family.config())
    assert type(rebuilt) is type(family) and rebuilt.config() == family.config()
    raw = torch.randn(BATCH, family.param_size)
    z = torch.randn(BATCH, LATENT)
    torch.testing.assert_close(rebuilt(raw).log_prob(z), family(raw).log_prob(z))


def test_diagonal_normal_maps_raw_parameters_by_softplus_plus_floor():
    family = families.DiagonalNormal(2, min_scale=0.01)
    raw = torch.tensor([[0.5, -1.0, 0.3, -2.0]], dtype=torch.float64)
    q = family(raw)
    torch.testing.assert_close(q.mean, raw[:, :2])
    torch.testing.assert_close(q.stddev, F.softplus(raw[:, 2:]) + 0.01)


def test_full_covariance_maps_raw_parameters_to_a_cholesky_factor():
    family = families.FullCovarianceNormal(3, min_scale=0.01)
    raw = torch.arange(1.0, 10.0, dtype=torch.float64)[None] / 10     # loc 3, tril 6
    q = family(raw)
    torch.testing.assert_close(q.mean, raw[:, :3])
    t = raw[0, 3:]                           # row-major lower triangle: (0,0) (1,0) (1,1) ...
    sp = F.softplus
    want = torch.tensor([[sp(t[0]) + 0.01, 0, 0],
                         [t[1], sp(t[2]) + 0.01, 0],
                         [t[3], t[4], sp(t[5]) + 0.01]], dtype=torch.float64)
    torch.testing.assert_close(q.scale_tril[0], want)


# --------------------------------------------------------------------------- priors


#: Priors that start at N(0, I) exactly; a learned mixture starts with its components apart
#: (mog) or at the encoder's q of random pseudo-inputs (vamp).
STARTS_STANDARD = {"standard_normal", "learned_normal", "flow"}


@pytest.fixture(params=sorted(priors.PRIORS))
def prior(request):
    if request.param == "vamp":   # the encoder is injected (priors never import families)
        encoder = Encoder(nets.MLP(DATA, [8], 2 * LATENT), families.DiagonalNormal(LATENT))
        return priors.VampPrior(LATENT, 6, DATA, encoder)
    return priors.PRIORS[request.param](LATENT)


@pytest.mark.parametrize("dtype", DTYPES)
def test_prior_shapes_dtype_and_initial_standard_normal(prior, dtype):
    if isinstance(prior, priors.VampPrior):
        prior._encoder[0].to(dtype)      # held by reference: moved with the VAE, here by hand
    p = prior.to(dtype)()
    assert p.batch_shape == () and p.event_shape == (LATENT,)
    z = p.sample((7, BATCH))
    assert z.shape == (7, BATCH, LATENT) and z.dtype == dtype
    assert p.log_prob(z).shape == (7, BATCH) and bool(torch.isfinite(p.log_prob(z)).all())
    if prior.name not in STARTS_STANDARD:
        return
    reference = Independent(Normal(torch.zeros(LATENT, dtype=dtype),
                                   torch.ones(LATENT, dtype=dtype)), 1)
    torch.testing.assert_close(p.log_prob(z), reference.log_prob(z))


def test_prior_config_round_trip(prior):
    rebuilt = priors.from_config(prior.config())
    assert type(rebuilt) is type(prior) and rebuilt.config() == prior.config()


def test_learned_prior_gradients_reach_its_parameters_and_extremes_stay_finite():
    prior = priors.LearnedNormal(LATENT)
    z = torch.randn(BATCH, LATENT)
    grads = torch.autograd.grad(prior().log_prob(z).sum(), list(prior.parameters()))
    assert all(bool((g != 0).all()) for g in grads)
    p = prior()
    grads = torch.autograd.grad(p.rsample((4,)).pow(2).sum(), list(prior.parameters()))
    assert all(bool((g != 0).all()) for g in grads)
    with torch.no_grad():
        prior.learned_loc.copy_(torch.tensor([30.0, -30.0, 0.0]))
        prior.raw_scale.copy_(torch.tensor([-30.0, 30.0, -30.0]))
    assert bool(torch.isfinite(prior().log_prob(torch.randn(64, LATENT))).all())


def test_standard_normal_has_no_parameters():
    assert list(priors.StandardNormal(LATENT).parameters()) == []


# ---------------------------------------------------------------------- likelihoods


LIKELIHOOD_CASES = {
    "bernoulli": lambda: likelihoods.Bernoulli(),
    **{f"gaussian-{scale}-{transform}": (
        lambda scale=scale, transform=transform: likelihoods.Gaussian(
            data_dim=DATA, scale=scale, transform=transform))
       for scale in likelihoods.SCALE_MODES for transform in likelihoods.TRANSFORMS},
    "gaussian-dequantized": lambda: likelihoods.Gaussian(data_dim=DATA, dequantize=True),
    "continuous-bernoulli": lambda: likelihoods.ContinuousBernoulli(),
    "discretized-logistic": lambda: discretized_logistic.DiscretizedLogistic(),
    "discretized-logistic-mixture-3": lambda: discretized_logistic.DiscretizedLogisticMixture(3),
    "poisson": lambda: column_likelihoods.Poisson(),
    **{f"{cls.name}-{where}": (lambda cls=cls, where=where: cls(where, DATA))
       for cls in (column_likelihoods.NegativeBinomial,
                   column_likelihoods.ZeroInflatedNegativeBinomial)
       for where in column_likelihoods.DISPERSIONS},
    "binomial-16": lambda: column_likelihoods.Binomial(16),
    "categorical-3": lambda: column_likelihoods.Categorical(3),
    "student-t-learned": lambda: column_likelihoods.StudentT(data_dim=DATA),
    "student-t-3": lambda: column_likelihoods.StudentT(3.0),
    "log-normal": lambda: column_likelihoods.LogNormal(),
    "mixed": lambda: MixedLikelihood([
        {"name": "a", "likelihood": "categorical", "labels": ["x", "y"]},
        {"name": "b", "likelihood": "negative-binomial", "scale": 3.0},
        {"name": "c", "likelihood": "student-t", "loc": 1.0, "scale": 2.0}]),
}


def test_likelihood_cases_cover_the_registry():
    assert {case().name for case in LIKELIHOOD_CASES.values()} == set(likelihoods.LIKELIHOODS)


@pytest.fixture(params=sorted(LIKELIHOOD_CASES))
def likelihood(request) -> likelihoods.Likelihood:
    return LIKELIHOOD_CASES[request.param]()


def _data(lik, *shape, dtype=torch.float32):
    """Data in the likelihood's support: [0, 1] for the Bernoullis, 8-bit values k/255 for the
    likelihoods of 8-bit data (discretized, dequantized Gaussian), counts 0..9, category codes,
    positive values, real values otherwise."""
    if isinstance(lik, MixedLikelihood):          # a draw: every column in its support
        return lik(torch.zeros(*shape, dtype=dtype)).sample().to(dtype)
    if lik.name in ("bernoulli", "continuous-bernoulli"):
        return torch.rand(*shape, dtype=dtype)
    if lik.support in ("counts", "categories"):
        return torch.randint(0, getattr(lik, "categories", 10), shape).to(dtype)
    if lik.support == "positive":
        return torch.randn(*shape, dtype=dtype).exp()
    if lik.meaning_on("8-bit") != "score":
        return torch.randint(0, 256, shape).to(dtype) / 255
    return 3 * torch.randn(*shape, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_likelihood_shapes(likelihood, dtype):
    lik = likelihood.to(dtype)
    raw = torch.randn(7, BATCH, DATA * lik.params_per_dim, dtype=dtype)
    px = lik(raw)
    assert px.batch_shape == (7, BATCH) and px.event_shape == (DATA,)
    assert px.mean.shape == (7, BATCH, DATA) and px.mean.dtype == dtype
    lp = px.log_prob(_data(lik, BATCH, DATA, dtype=dtype))
    assert lp.shape == (7, BATCH) and lp.dtype == dtype


def test_likelihood_gradients_reach_raw_and_parameters(likelihood):
    raw = torch.randn(BATCH, DATA * likelihood.params_per_dim, requires_grad=True)
    lp = likelihood(raw).log_prob(_data(likelihood, BATCH, DATA)).sum()
    params = list(likelihood.parameters())
    grads = torch.autograd.grad(lp, [raw, *params])
    assert all(bool((g != 0).all()) for g in grads)


@pytest.mark.parametrize("dtype", DTYPES)
def test_likelihood_log_prob_finite_at_extreme_raw(likelihood, dtype):
    lik = likelihood.to(dtype)
    signs = torch.randint(0, 2, (64, DATA * lik.params_per_dim)) * 2 - 1
    with torch.no_grad():
        for p in lik.parameters():
            p.copy_(30.0 * (torch.randint(0, 2, p.shape) * 2 - 1))
    lp = lik((30.0 * signs).to(dtype)).log_prob(_data(lik, 64, DATA, dtype=dtype))
    assert bool(torch.isfinite(lp).all())


def test_likelihood_config_round_trip(likelihood):
    rebuilt = likelihoods.from_config(likelihood.config())
    assert type(rebuilt) is type(likelihood) and rebuilt.config() == likelihood.config()
    rebuilt.load_state_dict(likelihood.state_dict())
    raw = torch.randn(BATCH, DATA * likelihood.params_per_dim)
    x = _data(likelihood, BATCH, DATA)
    torch.manual_seed(5)                  # the dequantized Gaussian draws its noise u
    want = likelihood(raw).log_prob(x)
    torch.manual_seed(5)
    torch.testing.assert_close(rebuilt(raw).log_prob(x), want)


def test_bernoulli_log_prob_is_negative_binary_cross_entropy():
    logits = torch.randn(BATCH, DATA, dtype=torch.float64)
    x = torch.rand(BATCH, DATA, dtype=torch.float64)                # grey levels too
    p = torch.sigmoid(logits)
    want = (x * p.log() + (1 - x) * (1 - p).log()).sum(-1)
    torch.testing.assert_close(likelihoods.Bernoulli()(logits).log_prob(x), want)


@pytest.mark.parametrize("scale", likelihoods.SCALE_MODES)
@pytest.mark.parametrize("transform", likelihoods.TRANSFORMS)
def test_gaussian_log_prob_matches_the_density_by_hand(scale, transform):
    lik = likelihoods.Gaussian(data_dim=DATA, scale=scale, transform=transform, min_scale=0.01,
                               fixed_scale=0.6).double()
    raw = torch.randn(BATCH, DATA * lik.params_per_dim, dtype=torch.float64)
    positive = torch.exp if transform == "exp" else F.softplus
    if scale == "network":
        loc, sigma = raw[:, :DATA], positive(raw[:, DATA:]) + 0.01
    elif scale == "learned":
        loc, sigma = raw, positive(lik.raw_scale.detach()) + 0.01
        # initialized at σ = 1 (up to the float32 rounding of the stored raw value)
        torch.testing.assert_close(sigma, torch.ones(DATA, dtype=torch.float64),
                                   rtol=0, atol=1e-7)
    else:
        loc, sigma = raw, torch.full((DATA,), 0.6, dtype=torch.float64)
    x = torch.randn(BATCH, DATA, dtype=torch.float64)
    want = (-0.5 * ((x - loc) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi))
    torch.testing.assert_close(lik(raw).log_prob(x), want.sum(-1), rtol=0, atol=1e-12)


def test_bernoulli_support_check_names_the_argument():
    lik = likelihoods.Bernoulli()
    assert lik.check_support(torch.tensor([[0.0, 1.0, 0.5]])) is not None
    for bad in (torch.tensor([[0.0, 1.5]]), torch.tensor([[-0.1, 0.5]])):
        with pytest.raises(ValueError, match=r"data: the Bernoulli likelihood expects .*\[0, 1\]"):
            lik.check_support(bad, "data")


@pytest.mark.parametrize("kwargs, error, match", [
    ({"scale": "bogus"}, ValueError, "scale: expected one of"),
    ({"transform": "square"}, ValueError, "transform: expected one of"),
    ({"min_scale": -1.0}, ValueError, "min_scale"),
    ({"fixed_scale": 0.0}, ValueError, "fixed_scale"),
    ({"scale": "learned", "data_dim": None}, ValueError, "data_dim"),
    ({"data_dim": 0}, ValueError, "data_dim"),
])
def test_gaussian_rejects_bad_arguments_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        likelihoods.Gaussian(**{"data_dim": DATA, **kwargs})


@pytest.mark.parametrize("module, config, match", [
    (likelihoods, {"name": "zipf"}, "likelihood: expected one of"),
    (families, {"name": "flow", "latent_dim": 2}, "family: expected one of"),
    (priors, {"name": "autoregressive", "latent_dim": 2}, "prior: expected one of"),
])
def test_from_config_rejects_unknown_names(module, config, match):
    with pytest.raises(ValueError, match=match):
        module.from_config(config)


# ------------------------------------------------------------ errors on bad input


def _bernoulli_vae() -> vaelab.VAE:
    return vaelab.build_vae(ModelConfig(data_dim=DATA, latent_dim=LATENT, hidden=(8,)))


def _call(entry: str, model, q, x, **kwargs):
    if entry == "elbo":
        return vaelab.elbo(model, q, x, **kwargs)
    if entry == "elbo_terms":
        return vaelab.elbo_terms(model, q, x, **kwargs)
    if entry == "iwae_bound":
        return vaelab.iwae_bound(model, q, x, **{"num_samples": 3, **kwargs})
    return vaelab.log_likelihood(model, q, x, **{"num_samples": 3, **kwargs})


ENTRIES = ["elbo", "elbo_terms", "iwae_bound", "log_likelihood"]


def _good_q(batch: int = BATCH):
    return families.DiagonalNormal(LATENT)(torch.zeros(batch, 2 * LATENT))


BAD_X = {
    "wrong trailing size": (torch.rand(BATCH, DATA + 1), ValueError,
                            rf"x: expected shape \[batch, {DATA}\], got \[{BATCH}, {DATA + 1}\]"),
    "one-dimensional": (torch.rand(DATA), ValueError, r"x: expected shape \[batch"),
    "three-dimensional": (torch.rand(2, BATCH, DATA), ValueError, r"x: expected shape \[batch"),
    "integer dtype": (torch.ones(BATCH, DATA, dtype=torch.int64), TypeError,
                      "x: expected a floating-point tensor, got dtype torch.int64"),
    "not a tensor": ([[0.0] * DATA] * BATCH, TypeError, "x: expected a torch.Tensor"),
    "nan": (torch.full((BATCH, DATA), math.nan), ValueError, "x: expected finite values"),
    "inf": (torch.tensor([[0.0] * DATA] * (BATCH - 1) + [[0.0, math.inf, 0.0, 0.0]]),
            ValueError, r"x: expected finite values, got 1 non-finite \(first at index \(4, 1\)"),
    "outside [0, 1]": (torch.full((BATCH, DATA), 2.0), ValueError,
                       r"x: the Bernoulli likelihood expects values in \[0, 1\]"),
}


@pytest.mark.parametrize("case", sorted(BAD_X))
@pytest.mark.parametrize("entry", ENTRIES)
def test_bad_x_is_rejected_by_name(entry, case):
    x, error, match = BAD_X[case]
    with pytest.raises(error, match=match):
        _call(entry, _bernoulli_vae(), _good_q(), x)


BAD_Q = {
    "event size": (lambda: families.DiagonalNormal(LATENT + 1)(torch.zeros(BATCH, 8)),
                   ValueError, r"q: expected event_shape \[3\] \(the prior's\), got \[4\]"),
    "batch size": (lambda: _good_q(BATCH + 2), ValueError,
                   r"q: expected batch_shape \[5\] \(one q per row of x\), got \[7\]"),
    "unbatched": (lambda: priors.StandardNormal(LATENT)(), ValueError,
                  r"q: expected batch_shape \[5\]"),
    "not a distribution": (lambda: torch.zeros(BATCH, LATENT), TypeError,
                           "q: expected a torch.distributions.Distribution"),
}


@pytest.mark.parametrize("case", sorted(BAD_Q))
@pytest.mark.parametrize("entry", ENTRIES)
def test_bad_q_is_rejected_by_name(entry, case):
    make_q, error, match = BAD_Q[case]
    with pytest.raises(error, match=match):
        _call(entry, _bernoulli_vae(), make_q(), torch.rand(BATCH, DATA))


@pytest.mark.parametrize("num_samples, error", [(0, ValueError), (-1, ValueError),
                                                (1.0, TypeError), ("3", TypeError),
                                                (True, TypeError)])
@pytest.mark.parametrize("entry", ENTRIES)
def test_bad_num_samples_is_rejected_by_name(entry, num_samples, error):
    with pytest.raises(error, match="num_samples: expected an integer >= 1"):
        _call(entry, _bernoulli_vae(), _good_q(), torch.rand(BATCH, DATA),
              num_samples=num_samples)


@pytest.mark.parametrize("kl", ["exact", "Analytic", None, ""])
@pytest.mark.parametrize("entry", ["elbo", "elbo_terms"])
def test_unknown_kl_mode_is_rejected_by_name(entry, kl):
    with pytest.raises(ValueError, match="kl: expected one of 'auto', 'analytic', 'mc'"):
        _call(entry, _bernoulli_vae(), _good_q(), torch.rand(BATCH, DATA), kl=kl)


@pytest.mark.parametrize("base", ["laplace_free_student_t", "transformed"])
def test_analytic_kl_without_closed_form_is_rejected_by_name(base):
    loc = torch.zeros(BATCH, LATENT)
    if base == "laplace_free_student_t":
        q = Independent(StudentT(4.0, loc, torch.ones_like(loc)), 1)
    else:
        q = torch.distributions.TransformedDistribution(
            Independent(Normal(loc, torch.ones_like(loc)), 1),
            [torch.distributions.transforms.TanhTransform()])
    with pytest.raises(ValueError, match=r"kl: 'analytic' needs a registered closed form"):
        vaelab.elbo(_bernoulli_vae(), q, torch.rand(BATCH, DATA), kl="analytic")
    assert vaelab.elbo(_bernoulli_vae(), q, torch.rand(BATCH, DATA), kl="auto").shape == (BATCH,)


def test_laplace_q_has_a_closed_form_kl_against_a_normal_prior():
    # Independent(Laplace) against Independent(Normal) *is* registered in torch, so
    # kl="analytic" works there; it must match the Monte Carlo estimate.
    loc = torch.randn(BATCH, LATENT, dtype=torch.float64)
    q = Independent(torch.distributions.Laplace(loc, 0.5 + torch.rand_like(loc)), 1)
    p = priors.StandardNormal(LATENT).double()()
    analytic = torch.distributions.kl_divergence(q, p)
    z = q.sample((40000,))
    values = q.log_prob(z) - p.log_prob(z)
    se = values.std(0) / math.sqrt(z.shape[0])
    assert bool(((values.mean(0) - analytic).abs() < 4 * se).all())


def test_iwae_needs_a_reparameterizable_q():
    model = exact.GaussianMixture(torch.zeros(2), torch.randn(2, DATA), torch.ones(2, DATA))
    q = Categorical(logits=torch.zeros(BATCH, 2))
    with pytest.raises(TypeError, match="q: iwae_bound needs a reparameterizable q"):
        vaelab.iwae_bound(model, q, torch.randn(BATCH, DATA), 3)


def test_elbo_needs_a_reparameterizable_or_enumerable_q():
    class NoGradient(Normal):
        has_rsample = False

    loc = torch.zeros(BATCH, LATENT)
    q = Independent(NoGradient(loc, torch.ones_like(loc)), 1)
    with pytest.raises(TypeError, match="q: expected a reparameterizable or enumerable"):
        vaelab.elbo(_bernoulli_vae(), q, torch.rand(BATCH, DATA))


# ------------------------------------------------------------- on the device under test

def _on(module, device):
    """A float32 copy of module on device (a VampPrior's encoder, held by reference, too)."""
    import copy

    twin = copy.deepcopy(module).to(device, torch.float32)
    if isinstance(twin, priors.VampPrior):
        twin._encoder[0].to(device, torch.float32)
    return twin


def _close(got: torch.Tensor, expected: torch.Tensor, device) -> None:
    assert got.device.type == torch.device(device).type
    torch.testing.assert_close(got.cpu().double(), expected, rtol=1e-4, atol=1e-3)


@pytest.mark.device
def test_every_family_on_the_device_matches_the_cpu(family, device):
    family = _away_from_init(family)
    raw = torch.randn(BATCH, family.param_size, dtype=torch.float64)
    q = family(raw)
    z = _draw(q, 6).detach()
    q_dev = _on(family, device)(raw.to(device, torch.float32))
    _close(q_dev.log_prob(z.to(device, torch.float32)), q.log_prob(z).detach(), device)
    assert _draw(q_dev, 2).device.type == torch.device(device).type


@pytest.mark.device
def test_every_prior_on_the_device_matches_the_cpu(prior, device):
    p = prior.double()
    if isinstance(prior, priors.VampPrior):
        prior._encoder[0].double()
    z = torch.randn(6, BATCH, LATENT, dtype=torch.float64)
    p_dev = _on(prior, device)()
    _close(p_dev.log_prob(z.to(device, torch.float32)), p().log_prob(z).detach(), device)
    assert p_dev.sample((3,)).device.type == torch.device(device).type


@pytest.mark.device
def test_every_likelihood_on_the_device_matches_the_cpu(likelihood, device):
    lik = likelihood.double()
    raw = torch.randn(BATCH, DATA * lik.params_per_dim, dtype=torch.float64)
    x = _data(lik, BATCH, DATA, dtype=torch.float64)
    px_dev = _on(lik, device)(raw.to(device, torch.float32))
    expected = lik(raw).log_prob(x).detach()
    if torch.equal(expected, lik(raw).log_prob(x).detach()):   # not a random (dequantized) one
        _close(px_dev.log_prob(x.to(device, torch.float32)), expected, device)
    else:
        assert px_dev.log_prob(x.to(device, torch.float32)).isfinite().all()
    _close(px_dev.mean, lik(raw).mean.detach(), device)
