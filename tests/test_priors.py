"""The mixture-of-Gaussians prior learns all of its parameters: the gradient of Σ_n log p(z_n)
against the responsibilities computed independently in numpy (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from vaelab.config import FAMILY_NAMES, PRIOR_NAMES, ModelConfig
from vaelab.fit.step import TrainStep, _GaussianBernoulliELBO
from vaelab.infer.schemes import build_inference
from vaelab.model import _bernoulli_fast, families, nets, priors
from vaelab.model.vae import Encoder, build_vae


def test_mixture_of_gaussians_gradients_are_the_responsibility_sums():
    """With π = softmax(a), r_nk = π_k N(z_n; μ_k, σ_k²) / p(z_n):
    ∂/∂a_k = Σ_n r_nk − N π_k; ∂/∂μ_k = Σ_n r_nk (z_n − μ_k)/σ_k²;
    ∂/∂ρ_k = Σ_n r_nk ((z_n − μ_k)²/σ_k³ − 1/σ_k) · sigmoid(ρ_k), σ = softplus(ρ)."""
    prior = priors.MixtureOfGaussians(2, 3).double()
    g = torch.Generator().manual_seed(21)
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64))
        prior.component_loc.copy_(torch.randn(3, 2, generator=g, dtype=torch.float64))
        prior.raw_scale.copy_(torch.randn(3, 2, generator=g, dtype=torch.float64))
    z = torch.randn(5, 2, generator=g, dtype=torch.float64)
    total = prior().log_prob(z).sum()
    got = torch.autograd.grad(total, [prior.logits, prior.component_loc, prior.raw_scale])

    a = np.array([0.3, -0.2, 0.5])
    mu = prior.component_loc.detach().numpy()
    rho = prior.raw_scale.detach().numpy()
    sigma = np.log1p(np.exp(rho))
    zz = z.numpy()
    pi = np.exp(a) / np.exp(a).sum()
    diff = zz[:, None, :] - mu[None]                                        # [N, K, L]
    log_comp = (-0.5 * (diff / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)).sum(-1)
    joint = np.log(pi) + log_comp                                           # [N, K]
    r = np.exp(joint - np.logaddexp.reduce(joint, axis=1, keepdims=True))
    want_logits = r.sum(0) - 5 * pi
    want_loc = (r[:, :, None] * diff / sigma**2).sum(0)
    want_raw = ((r[:, :, None] * (diff**2 / sigma**3 - 1 / sigma)).sum(0)
                / (1 + np.exp(-rho)))
    np.testing.assert_allclose(got[0].numpy(), want_logits, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(got[1].numpy(), want_loc, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(got[2].numpy(), want_raw, rtol=1e-12, atol=1e-13)
    assert np.abs(want_logits).min() > 1e-3                     # every weight would move


# ------------------------------------------------------------------------ every q with every prior
# Oracles for the learned priors (vaelab.model.priors) and their wiring into the VAE.
#
# * MoG with K = 1 equals the learned Gaussian; its density equals scipy's explicit mixture;
# * the VampPrior's density equals the explicit mixture (1/K) Σ_k q(z | u_k) of the encoder's q at
#   the pseudo-inputs, evaluated one pseudo-input at a time and with scipy;
# * the flow prior is the change of variables from N(0, I) (autograd Jacobian), integrates to one,
#   and its draws are the flow applied to N(0, I) draws;
# * sampling from every prior and from the VAE built on it has the right shapes;
# * the fast paths of the standard VAE (training step, evaluation log-weights) do not claim any
#   model with a new family or prior;
# * per-datapoint training of an IAF q updates both the rows (SparseAdam) and the MADEs (Adam).


F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def _randomize(module: torch.nn.Module, scale: float = 0.5, seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_mog_with_one_component_is_the_learned_normal():
    mog, learned = priors.MixtureOfGaussians(3, components=1).double(), \
        priors.LearnedNormal(3).double()
    with torch.no_grad():
        learned.learned_loc.copy_(torch.tensor([0.3, -1.0, 2.0]))
        learned.raw_scale.copy_(torch.tensor([-0.5, 0.2, 1.5]))
        mog.component_loc.copy_(learned.learned_loc[None])
        mog.raw_scale.copy_(learned.raw_scale[None])
        mog.logits.fill_(0.7)
    z = torch.randn(6, 2, 3, dtype=F64)
    torch.testing.assert_close(mog().log_prob(z), learned().log_prob(z), rtol=0, atol=1e-13)


def test_mog_density_matches_scipy():
    mog = priors.MixtureOfGaussians(2, components=3).double()
    _randomize(mog)
    z = torch.randn(5, 2, dtype=F64)
    pi = torch.softmax(mog.logits, 0).detach().numpy()
    loc = mog.component_loc.detach().numpy()
    scale = np.logaddexp(0, mog.raw_scale.detach().numpy())
    want = sum(pi[k] * stats.multivariate_normal(loc[k], np.diag(scale[k] ** 2)).pdf(z.numpy())
               for k in range(3))
    np.testing.assert_allclose(mog().log_prob(z).detach().numpy(), np.log(want), rtol=1e-12)


def _vamp(family: families.Family, K: int = 4, D: int = 6) -> priors.VampPrior:
    encoder = Encoder(nets.MLP(D, [8], family.param_size), family).double()
    _randomize(encoder)
    prior = priors.VampPrior(family.latent_dim, K, D, encoder).double()
    return prior


@pytest.mark.parametrize("name", sorted(families.FAMILIES))
def test_vamp_density_is_the_mean_of_the_encoders_q_at_the_pseudo_inputs(name):
    prior = _vamp(families.FAMILIES[name](2))
    encoder = prior._encoder[0]
    z = torch.randn(7, 3, 2, dtype=F64)
    each = torch.stack([encoder(prior.pseudo_inputs[k:k + 1]).log_prob(z[..., None, :])[..., 0]
                        for k in range(4)])                          # [K, 7, 3], one at a time
    want = each.logsumexp(0) - math.log(4)
    torch.testing.assert_close(prior().log_prob(z), want, rtol=1e-12, atol=1e-12)


def test_vamp_density_matches_scipy_for_a_diagonal_encoder():
    prior = _vamp(families.DiagonalNormal(2, min_scale=0.0))
    raw = prior._encoder[0].net(prior.pseudo_inputs).detach().numpy()
    loc, scale = raw[:, :2], np.logaddexp(0, raw[:, 2:])
    z = torch.randn(5, 2, dtype=F64)
    want = np.mean([stats.norm(loc[k], scale[k]).pdf(z.numpy()).prod(-1) for k in range(4)], 0)
    np.testing.assert_allclose(prior().log_prob(z).detach().numpy(), np.log(want), rtol=1e-12)


def test_vamp_gradients_reach_pseudo_inputs_and_the_encoder_and_errors_are_clear():
    prior = _vamp(families.DiagonalNormal(2))
    value = prior().log_prob(torch.randn(3, 2, dtype=F64)).sum()
    params = [prior.pseudo_inputs, *prior._encoder[0].parameters()]
    assert all(bool(g.abs().sum() > 0) for g in torch.autograd.grad(value, params))
    assert [n for n, _ in prior.named_parameters()] == ["pseudo_inputs"]   # encoder not owned
    with pytest.raises(ValueError, match="encoder: the VampPrior needs the encoder"):
        priors.VampPrior(2, 3, 4)()
    wrong = Encoder(nets.MLP(4, [8], 6), families.DiagonalNormal(3))
    with pytest.raises(ValueError, match=r"encoder: expected q with batch \[3\] and event \[2\]"):
        priors.VampPrior(2, 3, 4, wrong)()


def test_diagonal_mixture_density_and_gradients_equal_the_float64_broadcast():
    """The products form of the mixture log-density (float32 in, float64 inside) against
    torch's broadcast MixtureSameFamily in float64, at the VampPrior's K = 500 and with
    components ten times narrower than the codes' spread (where the expanded square's terms
    are far larger than their sum)."""
    from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

    g = torch.Generator().manual_seed(3)
    K, L = 500, 20
    loc = torch.randn(K, L, generator=g).requires_grad_()
    scale = (0.02 + 0.2 * torch.rand(K, L, generator=g)).requires_grad_()
    logits = torch.randn(K, generator=g).requires_grad_()
    z = (2 * torch.randn(3, 64, L, generator=g)).requires_grad_()

    def mixture(kind, *params):
        m, s, w = params
        return kind(Categorical(logits=w), Independent(Normal(m, s), 1))

    fast = mixture(priors.DiagonalMixture, loc, scale, logits)
    exact = mixture(MixtureSameFamily, loc.double(), scale.double(), logits.double())
    value, want = fast.log_prob(z), exact.log_prob(z.double())
    assert value.dtype == torch.float32 and value.shape == (3, 64)
    assert float(want.detach().abs().min()) > 100              # far codes, large densities
    torch.testing.assert_close(value.double(), want, rtol=2e-7, atol=1e-5)
    params = [loc, scale, logits, z]
    for a, b in zip(torch.autograd.grad(value.sum(), params),
                    torch.autograd.grad(want.sum(), params), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))
    # other components keep torch's own density
    student = MixtureSameFamily(Categorical(logits=logits), Independent(
        torch.distributions.StudentT(3.0, loc, scale), 1))
    other = priors.DiagonalMixture(student.mixture_distribution,
                                   student.component_distribution)
    torch.testing.assert_close(other.log_prob(z), student.log_prob(z), rtol=0, atol=0)


def test_vamp_prior_uses_the_products_form_for_a_diagonal_encoder():
    prior = _vamp(families.DiagonalNormal(2))
    assert type(prior()) is priors.DiagonalMixture


def test_vamp_data_init_copies_the_seeded_rows_and_uniform_keeps_its_draw():
    x = torch.rand(30, 6, dtype=F64)
    family = families.DiagonalNormal(2)
    encoder = Encoder(nets.MLP(6, [8], family.param_size), family).double()
    prior = priors.VampPrior(2, 4, 6, encoder, init="data").double()
    torch.manual_seed(11)
    rows = prior.initialise_from_data(x)
    torch.manual_seed(11)
    assert rows is not None and torch.equal(rows, torch.randperm(30)[:4])
    assert len(set(rows.tolist())) == 4
    assert torch.equal(prior.pseudo_inputs.detach(), x[rows])       # exactly those rows
    uniform = priors.VampPrior(2, 4, 6, encoder).double()
    before = uniform.pseudo_inputs.detach().clone()
    assert uniform.initialise_from_data(x) is None
    assert torch.equal(uniform.pseudo_inputs.detach(), before)
    assert uniform.config().get("init") is None and prior.config()["init"] == "data"
    with pytest.raises(ValueError, match=r"prior_init \(--prior-init\): 'data' copies 4"):
        prior.initialise_from_data(x[:3])
    with pytest.raises(ValueError, match="missing or non-finite"):
        prior.initialise_from_data(torch.full((5, 6), math.nan, dtype=F64))
    with pytest.raises(ValueError, match="prior_init"):
        priors.VampPrior(2, 4, 6, encoder, init="noise")


def test_flow_prior_is_the_change_of_variables_from_a_standard_normal():
    prior = priors.FlowPrior(3, steps=2).double()
    _randomize(prior, 0.4)
    p = prior()
    u = torch.randn(3, dtype=F64)

    def forward(v: torch.Tensor) -> torch.Tensor:
        for t in p.transforms:
            v = t._call(v)
        return v

    z = forward(u).detach()
    J = torch.autograd.functional.jacobian(forward, u)
    want = -0.5 * u.square().sum() - 1.5 * math.log(2 * math.pi) - torch.linalg.slogdet(J)[1]
    torch.testing.assert_close(p.log_prob(z), want, rtol=0, atol=1e-10)
    torch.manual_seed(9)
    draws = p.sample((4,))
    torch.manual_seed(9)
    base = torch.randn(4, 3, dtype=F64)
    torch.testing.assert_close(draws, forward(base).detach(), rtol=0, atol=1e-12)


def test_flow_prior_density_integrates_to_one():
    prior = priors.FlowPrior(2, steps=2, hidden=(8,)).double()
    _randomize(prior, 0.3)
    assert float((prior().sample((50_000,)).abs() > 10).any(-1).double().mean()) == 0
    grid = torch.linspace(-10, 10, 801, dtype=F64)
    zz = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        density = prior().log_prob(zz).exp().reshape(len(grid), len(grid)).numpy()
    step = float(grid[1] - grid[0])
    assert abs(np.trapezoid(np.trapezoid(density, dx=step), dx=step) - 1) < 1e-4


@pytest.mark.parametrize("prior", PRIOR_NAMES)
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_family_and_prior_builds_samples_and_skips_the_fast_paths(family, prior):
    config = ModelConfig(data_dim=6, latent_dim=2, hidden=(8,), family=family, prior=prior,
                         q_components=2, q_flow_steps=1, prior_components=3, prior_flow_steps=1)
    model = build_vae(config)
    assert model.sample(5).shape == (5, 6)
    assert model.prior().sample((4, 3)).shape == (4, 3, 2)
    x = (torch.rand(3, 6) < 0.5).float()
    q = model.encode(x)
    assert q.batch_shape == (3,) and q.event_shape == (2,)
    standard = family == "diagonal_normal" and prior == "standard_normal"
    inference = build_inference("amortized", model, 3)
    assert _GaussianBernoulliELBO.matches(model, inference) is standard
    assert _bernoulli_fast.applies(model, q, x) is standard


def test_kebab_case_names_are_accepted_and_bad_sizes_named():
    config = ModelConfig(family="full-covariance-normal", prior="learned-normal")
    assert (config.family, config.prior) == ("full_covariance_normal", "learned_normal")
    with pytest.raises(ValueError, match="q_components"):
        ModelConfig(q_components=0)
    with pytest.raises(ValueError, match="family: expected one of"):
        ModelConfig(family="planar")


def test_per_datapoint_iaf_updates_rows_and_the_shared_mades():
    torch.manual_seed(0)
    model = build_vae(ModelConfig(data_dim=6, latent_dim=2, hidden=(8,), family="iaf"))
    inference = build_inference("per-datapoint", model, 10)
    step = TrainStep(model, inference, lr=1e-2, phi_lr=5e-2, compile=False)
    assert isinstance(step.phi_opt, torch.optim.SparseAdam)
    mades = [p.detach().clone() for p in inference.family.parameters()]
    rows = inference.table.weight.detach().clone()
    x = (torch.rand(4, 6) < 0.5).float()
    index = torch.tensor([0, 3, 5, 9])
    step(x, index)
    step(x, index)
    changed = (inference.table.weight != rows).any(-1)
    assert changed.tolist() == [i in (0, 3, 5, 9) for i in range(10)]
    assert any(not torch.equal(a, b) for a, b in zip(mades, inference.family.parameters(),
                                                    strict=True))
