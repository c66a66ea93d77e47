"""Oracles for the mixture and IAF variational families (vaelab.model.families).

* the mixture with K = 1 is the diagonal family exactly; its density equals the explicit
  mixture computed with scipy; its raw layout is the documented one;
* the IAF q's density is the change of variables computed by hand with an autograd Jacobian,
  for draws (cached) and for arbitrary points (sequential inverse); its context matters;
* the full-covariance q's log density at its own draws is the closed form log N(ε) − Σ log L_ii
  (float64) for an ill-conditioned Cholesky factor, where solving ε back from the float32 draw
  is off by 1e30; its gradients match MultivariateNormal in float64;
* on the linear-Gaussian model (exact log p(x), Gaussian posterior), a per-example q optimized
  in each family reaches log p(x): the mixture on a model whose posterior is diagonal, the IAF
  on one whose posterior is correlated, where the best diagonal q provably cannot (its gap,
  ½(Σ log Λ_ii − log det Λ) for the posterior precision Λ, is computed in closed form).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import MultivariateNormal, Normal

from vaelab import config as config_
from vaelab.infer.objectives import elbo
from vaelab.infer.schemes import PerDatapoint, optimize_q
from vaelab.model import exact, families
from vaelab.model.vae import build_vae

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def _perturbed(family: families.Family, scale: float = 0.4, seed: int = 3) -> families.Family:
    family = family.double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in family.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=F64))
    return family


# ----------------------------------------------------------------------------- mixture


def test_mixture_with_one_component_is_the_diagonal_family_exactly():
    mixture, diagonal = families.MixtureNormal(4, components=1), families.DiagonalNormal(4)
    raw = torch.randn(6, mixture.param_size, dtype=F64)
    q, d = mixture(raw), diagonal(raw[:, 1:])
    z = torch.randn(5, 6, 4, dtype=F64)
    assert torch.equal(q.log_prob(z), d.log_prob(z))
    assert torch.equal(q.mean, d.mean)
    torch.testing.assert_close(q.variance, d.variance, rtol=1e-15, atol=0)
    x = (torch.rand(6, 7) < 0.5).to(F64)
    model = build_vae(config_.ModelConfig(data_dim=7, latent_dim=4, hidden=(8,))).double()
    torch.manual_seed(0)
    stratified = elbo(model, q, x, 3)
    torch.manual_seed(0)
    plain = elbo(model, d, x, 3, kl="mc")            # the same draws, the same estimator
    torch.testing.assert_close(stratified, plain, rtol=1e-12, atol=1e-12)


def test_mixture_density_matches_scipy_and_the_raw_layout():
    K, L = 3, 2
    family = families.MixtureNormal(L, components=K, min_scale=0.01)
    raw = torch.randn(2, family.param_size, dtype=F64)
    q = family(raw)
    z = torch.randn(4, 2, L, dtype=F64)
    r = raw.numpy()
    want = np.zeros((4, 2))
    for b in range(2):
        logits = r[b, :K]
        pi = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        comp = r[b, K:].reshape(K, 2 * L)
        for k in range(K):
            loc, scale = comp[k, :L], np.logaddexp(0, comp[k, L:]) + 0.01
            want[:, b] += pi[k] * stats.norm(loc, scale).pdf(z[:, b].numpy()).prod(-1)
    np.testing.assert_allclose(q.log_prob(z).numpy(), np.log(want), rtol=1e-12, atol=1e-12)
    assert q.component_distribution.batch_shape == (2, K)
    torch.testing.assert_close(q.mixture_distribution.probs.sum(-1), torch.ones(2, dtype=F64))


def test_mixture_draws_follow_the_mixture():
    family = families.MixtureNormal(1, components=2, min_scale=0.0)
    raw = torch.tensor([[math.log(0.25), math.log(0.75), -3.0, -1.0, 2.0, 0.0]], dtype=F64)
    q = family(raw)          # 0.25 N(-3, softplus(-1)²) + 0.75 N(2, softplus(0)²)
    z = q.sample((40_000,))[:, 0, 0].numpy()
    s1, s2 = math.log1p(math.exp(-1.0)), math.log(2.0)
    cdf = lambda v: 0.25 * stats.norm(-3, s1).cdf(v) + 0.75 * stats.norm(2, s2).cdf(v)  # noqa: E731
    assert stats.kstest(z, cdf).pvalue > 1e-3


# --------------------------------------------------------------------------------- IAF


def _iaf_by_hand(family: families.IAFNormal, raw: torch.Tensor, z0: torch.Tensor):
    """z_T and log q(z_T) for one row: the steps applied by hand, log|det| from autograd."""
    L = family.latent_dim
    loc, scale = raw[:L], torch.nn.functional.softplus(raw[L:2 * L]) + family.min_scale
    h = raw[2 * L:]

    def flow(e: torch.Tensor) -> torch.Tensor:
        v = loc + scale * e
        for made in family.mades:
            mu, s = made(v, h)
            if family.update == "gated":            # Kingma et al.'s σ v + (1 − σ) m
                sigma = torch.sigmoid(s + 2.0)
                v = sigma * v + (1 - sigma) * mu
            else:
                s = 5.0 * torch.tanh(s / 5.0)
                v = mu + s.exp() * v
        return v

    eps = (z0 - loc) / scale
    J = torch.autograd.functional.jacobian(flow, eps)          # d z_T / d ε
    log_q = Normal(0.0, 1.0).log_prob(eps).sum() - torch.linalg.slogdet(J)[1]
    return flow(eps), log_q


@pytest.mark.parametrize("update", ["affine", "gated"])
def test_iaf_density_is_the_change_of_variables_for_draws_and_for_any_point(update):
    family = _perturbed(families.IAFNormal(3, steps=3, update=update))
    raw = torch.randn(4, family.param_size, dtype=F64)
    q = family(raw)
    assert q.batch_shape == (4,) and q.event_shape == (3,) and q.has_rsample
    z0 = torch.randn(4, 3, dtype=F64)
    for b in range(4):
        zT, log_q = _iaf_by_hand(family, raw[b], z0[b])
        torch.testing.assert_close(q.log_prob(zT.detach().clone()[None].expand(4, 3))[b], log_q,
                                   rtol=0, atol=1e-9)
    draws = q.rsample((5,))
    fresh = draws.detach().clone()
    torch.testing.assert_close(q.log_prob(draws), q.log_prob(fresh), rtol=1e-10, atol=1e-9)


def test_iaf_context_changes_q_and_gets_gradients():
    family = _perturbed(families.IAFNormal(2, steps=2))
    raw = torch.randn(1, family.param_size, dtype=F64)
    other = raw.clone()
    other[:, 4:] += 1.0                                              # context only
    z = torch.randn(3, 1, 2, dtype=F64)
    assert not torch.allclose(family(raw).log_prob(z), family(other).log_prob(z))


def test_iaf_mean_is_a_deterministic_monte_carlo_mean_within_its_error():
    family = _perturbed(families.IAFNormal(2, steps=2))
    q = family(torch.randn(3, family.param_size, dtype=F64))
    state = torch.get_rng_state()
    mean = q.mean
    assert torch.equal(torch.get_rng_state(), state) and torch.equal(q.mean, mean)
    draws = q.sample((40_000,))
    se = draws.std(0) / math.sqrt(families.MEAN_SAMPLES)
    assert bool(((mean - draws.mean(0)).abs() < 4 * se).all())


def test_iaf_per_datapoint_rows_carry_their_own_context():
    family = families.IAFNormal(3, steps=1)
    scheme = PerDatapoint(family, 10)
    assert scheme.table.weight.shape == (10, 2 * 3 + family.context_dim)


# ------------------------------------------------------------- exact model: reach log p(x)


def _diagonal_posterior_model() -> exact.LinearGaussian:
    """W with orthogonal columns and one noise scale: the posterior covariance is diagonal."""
    g = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(5, 3, generator=g, dtype=F64))
    weight = q * torch.tensor([2.0, 1.0, 0.5], dtype=F64)
    return exact.LinearGaussian(weight, torch.randn(5, generator=g, dtype=F64), 0.7)


def test_optimized_mixture_reaches_log_px_when_the_posterior_is_diagonal():
    model = _diagonal_posterior_model()
    x = model.marginal().sample((3,))
    family = families.MixtureNormal(3, components=3)
    init = family.initial_params(3, dtype=F64) + 0.3 * torch.randn(3, family.param_size,
                                                                   dtype=F64)
    raw, _ = optimize_q(model, x, init, family, steps=1500, lr=2e-2, num_samples=8)
    with torch.no_grad():
        bound = elbo(model, family(raw), x, 5000)
    gap = model.log_marginal(x) - bound
    assert bool((gap > -0.005).all()) and bool((gap < 0.01).all()), gap


def test_optimized_iaf_reaches_log_px_where_the_diagonal_family_cannot(make_lg):
    model = make_lg(5, 3, seed=1)
    x = model.marginal().sample((3,))
    precision = torch.linalg.inv(model.posterior(x).covariance_matrix[0])
    mean_field_gap = 0.5 * (precision.diagonal().log().sum() - torch.logdet(precision))
    assert mean_field_gap > 0.2                       # the diagonal q stays this far away
    family = families.IAFNormal(3, steps=2).double()
    raw = family.initial_params(3, dtype=F64).requires_grad_(True)
    opt = torch.optim.Adam([raw, *family.parameters()], lr=2e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 700)
    for _ in range(700):
        opt.zero_grad()
        (-elbo(model, family(raw), x, 8, validate=False).sum()).backward()
        opt.step()
        schedule.step()
    with torch.no_grad():
        bound = elbo(model, family(raw), x, 20_000)
    gap = model.log_marginal(x) - bound
    assert bool((gap > -0.005).all()) and bool((gap < 0.02).all()), gap


def test_iaf_log_prob_gradient_at_a_fixed_point_matches_finite_differences():
    """d/dφ log q_φ(z) at fixed z (what DReG's score term subtracts) goes through the
    sequential inverse; unrolled D sweeps give the exact derivative."""
    family = _perturbed(families.IAFNormal(3, steps=2), scale=0.1)
    raw = (0.3 * torch.randn(2, family.param_size, dtype=F64)).requires_grad_(True)
    z = torch.randn(2, 3, dtype=F64)

    def value(r: torch.Tensor) -> torch.Tensor:
        return family(r).log_prob(z).sum()

    (grad,) = torch.autograd.grad(value(raw), raw)
    numeric = torch.zeros_like(raw).view(-1)
    with torch.no_grad():
        for i in range(raw.numel()):
            step = torch.zeros_like(raw).view(-1)
            step[i] = 1e-6
            step = step.view_as(raw)
            numeric[i] = (value(raw + step) - value(raw - step)) / 2e-6
    torch.testing.assert_close(grad, numeric.view_as(raw), rtol=1e-6, atol=1e-7)


# ---- full-covariance Normal: log q at its own draws


def _ill_conditioned_raw(family: families.FullCovarianceNormal, batch: int, seed: int,
                         diag: float, off: float, loc: float) -> torch.Tensor:
    """Raw parameters of the kind a diverging encoder gave on wine (a Cholesky diagonal near
    ``min_scale``, off-diagonal entries ~ ``off``, means ~ ``loc``): float64, [batch, P]."""
    g = torch.Generator().manual_seed(seed)
    n = family.latent_dim
    raw = torch.empty(batch, family.param_size, dtype=F64)
    raw[:, :n] = loc * torch.randn(batch, n, generator=g, dtype=F64)
    on_diag = (family._rows == family._cols)
    tri = off * torch.randn(batch, on_diag.numel(), generator=g, dtype=F64)
    # softplus(raw) = diag · U(0.5, 2): the diagonal's size, never below min_scale
    wanted = diag * (0.5 + 1.5 * torch.rand(batch, int(on_diag.sum()), generator=g, dtype=F64))
    tri[:, on_diag] = torch.log(torch.expm1(wanted))
    raw[:, n:] = tri
    return raw


def _eps_of_next_draw(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """ε of the next rsample (torch draws it as empty().normal_()): seeds, draws, re-seeds."""
    torch.manual_seed(seed)
    eps = torch.empty(shape).normal_().double()
    torch.manual_seed(seed)
    return eps


def _closed_form_log_q(raw64: torch.Tensor, family: families.FullCovarianceNormal,
                       eps: torch.Tensor) -> torch.Tensor:
    """log q(loc + L ε) = log N(ε; 0, I) − Σ log L_ii, in float64 (no z − loc anywhere)."""
    tril = family.double()(raw64).scale_tril
    n = family.latent_dim
    return (-0.5 * eps.square().sum(-1) - 0.5 * n * math.log(2 * math.pi)
            - tril.diagonal(dim1=-2, dim2=-1).log().sum(-1))


def test_full_covariance_log_q_of_its_own_draws_is_exact_for_an_ill_conditioned_factor():
    """float32 z = loc + L ε loses L_ii ε_i when L_ii ~ 1e-5 beside entries ~ 5 and means ~ 20;
    the triangular solve of MultivariateNormal.log_prob then multiplies that rounding down the
    rows (log q of q's own draw came out −2.5e10 on wine). At its own draw q must give the
    closed form log N(ε) − Σ log L_ii, computed here in float64."""
    family = families.FullCovarianceNormal(5)
    raw64 = _ill_conditioned_raw(family, 8, seed=0, diag=1e-4, off=5.0, loc=20.0)
    eps = _eps_of_next_draw((64, 8, 5), seed=1)
    q = family(raw64.float())
    z = q.rsample((64,))
    want = _closed_form_log_q(raw64, family, eps)
    loc64, tril64 = family.double()(raw64).loc, family.double()(raw64).scale_tril
    # the draw is loc + L ε rounded to float32 (ε is the one the oracle uses)
    z64 = loc64 + (tril64 @ eps.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(z.double(), z64, rtol=1e-6, atol=1e-5)
    # the setting is extreme: the plain solve at the same float32 z is off by far more than 1e3
    plain = MultivariateNormal(q.loc, scale_tril=q.scale_tril).log_prob(z).double()
    assert float((plain - want).abs().max()) > 1e3
    got = q.log_prob(z).double()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)
    # sample() (no gradient) is a draw too; so is the draw's detached view (DReG's score term)
    with torch.no_grad():
        torch.testing.assert_close(q.log_prob(z.detach()).double(), want, rtol=1e-5, atol=1e-3)
        eps2 = _eps_of_next_draw((3, 8, 5), seed=2)
        z2 = q.sample((3,))
        torch.testing.assert_close(q.log_prob(z2).double(),
                                   _closed_form_log_q(raw64, family, eps2), rtol=1e-5, atol=1e-3)
    # evaluation runs under inference mode (inference tensors have no version counter)
    with torch.inference_mode():
        q = family(raw64.float())
        eps3 = _eps_of_next_draw((3, 8, 5), seed=5)
        z3 = q.rsample((3,))
        torch.testing.assert_close(q.log_prob(z3).double(),
                                   _closed_form_log_q(raw64, family, eps3), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("diag", [1e-1, 1e-2])
def test_full_covariance_log_q_gradients_at_its_own_draw_match_float64(diag):
    """The gradients the objectives take of log q at the draw, against MultivariateNormal in
    float64 at z64 = loc + L ε: at the draw held fixed (DReG's score term, in the raw
    parameters) and in z (the path term), each to float32's relative precision; along the draw
    (the ELBO's total derivative, where only −Σ log L_ii moves) it is the sum of the two, whose
    sizes (|∂/∂z| ~ 1e6 at diag 0.1, 1e10 at 0.01) cancel to ~2, so a float32 check of it is
    only meaningful at the milder factor."""
    family = families.FullCovarianceNormal(4)
    raw64 = _ill_conditioned_raw(family, 6, seed=3, diag=diag, off=3.0, loc=20.0)
    eps = _eps_of_next_draw((2, 6, 4), seed=4)

    raw = raw64.float().requires_grad_(True)
    q = family(raw)
    z = q.rsample((2,))
    (along,) = torch.autograd.grad(q.log_prob(z).sum(), raw, retain_graph=True)
    fixed = z.detach().requires_grad_(True)      # the draw's memory: still the draw
    score, dz = torch.autograd.grad(q.log_prob(fixed).sum(), (raw, fixed))

    r64 = raw64.clone().requires_grad_(True)
    (want_along,) = torch.autograd.grad(_closed_form_log_q(r64, family, eps).sum(), r64)
    q64 = family.double()(r64)
    family.float()
    z64 = (q64.loc + (q64.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)).detach()
    z64.requires_grad_(True)
    want_score, want_dz = torch.autograd.grad(
        MultivariateNormal(q64.loc, scale_tril=q64.scale_tril).log_prob(z64).sum(), (r64, z64))
    for got, want in ((score, want_score), (dz, want_dz)):
        assert float((got.double() - want).abs().max() / want.abs().max()) < 1e-5
    if diag >= 0.1:
        torch.testing.assert_close(along.double(), want_along, rtol=0, atol=1e-2)


def test_full_covariance_draws_and_other_points_are_multivariate_normals():
    """Same random stream and values as MultivariateNormal where float32 is enough; a point
    that is not the last draw, or a draw changed in place, takes the ordinary log_prob."""
    family = families.FullCovarianceNormal(3)
    raw = torch.randn(4, family.param_size, generator=torch.Generator().manual_seed(5))
    q = family(raw)
    mvn = MultivariateNormal(q.loc, scale_tril=q.scale_tril)
    torch.manual_seed(6)
    z = q.rsample((5,))
    torch.manual_seed(6)
    torch.testing.assert_close(z, mvn.rsample((5,)), rtol=0, atol=0)
    torch.testing.assert_close(q.log_prob(z), mvn.log_prob(z), rtol=1e-5, atol=1e-5)
    other = z + 0.3
    torch.testing.assert_close(q.log_prob(other), mvn.log_prob(other), rtol=0, atol=0)
    z.add_(0.3)
    torch.testing.assert_close(q.log_prob(z), mvn.log_prob(z), rtol=0, atol=0)
    with torch.inference_mode():
        q = family(raw)
        z = q.sample((5,))
        z.add_(0.3)
        torch.testing.assert_close(q.log_prob(z), mvn.log_prob(z), rtol=0, atol=0)


# ---- log-variance bounds of the diagonal Normal


def test_logvar_bounds_hold_at_extreme_encoder_outputs():
    family = families.DiagonalNormal(3, min_logvar=-6.0, max_logvar=2.0)
    raw = torch.tensor([[0.0, 0.0, 0.0, -1e4, 0.3, 1e4],
                        [0.0, 0.0, 0.0, -torch.inf, 50.0, torch.inf]], dtype=F64)
    q = family(raw)
    log_var = (2 * q.base_dist.scale.log()).numpy()
    np.testing.assert_allclose(log_var[:, 0], -6.0, rtol=0, atol=1e-12)     # floor held
    np.testing.assert_allclose(log_var[:, 2], 2.0, rtol=0, atol=1e-12)      # ceiling held
    # inside the bounds σ is the unbounded family's exactly
    unbounded = families.DiagonalNormal(3)(raw).base_dist.scale
    assert float(q.base_dist.scale[0, 1]) == float(unbounded[0, 1])
    assert bool(torch.isfinite(q.log_prob(torch.zeros(2, 3, dtype=F64))).all())
    # without the bounds the same outputs give a σ at the floor 1e-5 and an infinite one
    assert float(2 * unbounded[1, 0].log()) < -20 and not math.isfinite(float(unbounded[1, 2]))


def test_logvar_bounds_leave_the_gradient_inside_them_unchanged():
    torch.manual_seed(0)
    raw = torch.randn(5, 8, dtype=F64)            # log σ² of softplus(N(0,1)) lies in (-6, 2)
    z = torch.randn(5, 4, dtype=F64)
    grads = []
    for family in (families.DiagonalNormal(4), families.DiagonalNormal(4, min_logvar=-6.0,
                                                                          max_logvar=2.0)):
        r = raw.clone().requires_grad_()
        q = family(r)
        assert bool(((2 * q.base_dist.scale.log()).abs() < 6).all())
        (q.log_prob(z).sum() + q.entropy().sum()).backward()
        grads.append(r.grad)
    assert torch.equal(grads[0], grads[1])
    # outside a bound the clamp is flat: no gradient reaches that raw scale
    r = torch.tensor([[0.0, 30.0]], dtype=F64, requires_grad=True)
    families.DiagonalNormal(1, max_logvar=0.0)(r).entropy().sum().backward()
    assert float(r.grad[0, 1]) == 0.0


def test_logvar_bounds_reach_the_model_and_keep_it_off_the_fast_path():
    from vaelab.fit.step import JointStep, StandardVAEStep, step_class
    from vaelab.infer.schemes import Amortized

    def model(**options):
        return build_vae(config_.ModelConfig(data_dim=6, latent_dim=2, hidden=(5,),
                                             family_options=options))

    bounded = model(min_logvar=-4.0, max_logvar=1.0)
    assert (bounded.encoder.family.min_logvar, bounded.encoder.family.max_logvar) == (-4, 1)
    with torch.no_grad():                         # an encoder whose scales run off to ±∞
        bounded.encoder.net[-1].bias[2:] = torch.tensor([-1e6, 1e6])
    log_var = 2 * bounded.encode(torch.rand(3, 6)).base_dist.scale.log()
    torch.testing.assert_close(log_var, torch.tensor([[-4.0, 1.0]]).expand(3, 2))
    # the fast path computes σ by hand (no bounds): a bounded q must take autograd's step
    assert step_class(bounded, Amortized(bounded.encoder)) is JointStep
    plain = model()
    assert step_class(plain, Amortized(plain.encoder)) is StandardVAEStep
    with pytest.raises(ValueError, match=r"family_options.min_logvar \(--q-min-logvar\): "
                                         r"expected a number below"):
        model(min_logvar=1.0, max_logvar=1.0)
    with pytest.raises(ValueError, match=r"q_min_logvar \(--q-min-logvar\).*below"):
        families.DiagonalNormal(2, min_logvar=1.0, max_logvar=0.5)


def test_the_iaf_update_is_an_option_that_a_saved_run_keeps():
    """--q-flow-update reaches the family through the catalogue, its config rebuilds it, and
    a config saved before the option existed rebuilds the affine family."""
    from vaelab import catalogue

    entry = catalogue.get("family", "iaf", "family")
    family = entry.resolve().from_options(4, **entry.validate({"flow_update": "gated"}, "x"))
    assert family.update == "gated"
    rebuilt = families.from_config(family.config())
    assert isinstance(rebuilt, families.IAFNormal) and rebuilt.update == "gated"
    old = {k: v for k, v in family.config().items() if k != "update"}
    assert families.from_config(old).update == "affine"
    with pytest.raises(ValueError, match="flow_update"):
        entry.validate({"flow_update": "sigmoid"}, "family_options")
