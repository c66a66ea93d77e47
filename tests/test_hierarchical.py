"""The neural hierarchy (vaelab.model.hierarchical): densities against scipy, the ladder merge,
per-layer rates and free bits, the fast-path exclusions, config/CLI wiring, resume and load.

Densities are recomputed from the networks' raw outputs with scipy.stats.norm in float64, so the
layered q / prior and the model's log p(x, z) are checked against an independent formula.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm

from vaelab.config import ModelConfig, RunConfig
from vaelab.fit.step import TrainStep
from vaelab.infer.objectives import elbo_terms, free_bits_kl, iwae_bound
from vaelab.infer.schemes import Amortized
from vaelab.model import _bernoulli_fast
from vaelab.model import hierarchical as H
from vaelab.model.vae import build_vae

F64 = torch.float64


def make(hierarchy: str, sizes=(6, 4, 3), data_dim: int = 12, prior: str = "standard_normal"):
    torch.manual_seed(1)
    cfg = ModelConfig(data_dim=data_dim, latent_dim=sizes, hidden=(16, 8),
                      hierarchy=hierarchy, prior=prior)
    return build_vae(cfg).double()


def binary(n: int = 5, d: int = 12, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g) > 0.5).to(F64)


def raw_normal(raw: torch.Tensor, min_scale: float = H.MIN_SCALE):
    loc, r = raw.chunk(2, -1)
    return loc.detach().numpy(), (F.softplus(r) + min_scale).detach().numpy()


def logpdf(z: torch.Tensor, loc, scale) -> np.ndarray:
    return norm.logpdf(z.detach().numpy(), loc, scale).sum(-1)


def test_bottom_up_q_density_matches_scipy():
    m = make("bottom-up")
    x = binary()
    q = m.encode(x)
    z = q.rsample((3,))
    z1, z2, z3 = m.split(z)
    expected = logpdf(z1, *raw_normal(m.encoder.first.net(x)))
    expected += logpdf(z2, *raw_normal(m.encoder.upper[0].net(z1)))
    expected += logpdf(z3, *raw_normal(m.encoder.upper[1].net(z2)))
    np.testing.assert_allclose(q.log_prob(z).detach().numpy(), expected, rtol=0, atol=1e-10)
    assert tuple(q.batch_shape) == (5,) and tuple(q.event_shape) == (13,)


def _merged(ev_raw, p_raw):
    (la, sa), (lb, sb) = raw_normal(ev_raw), raw_normal(p_raw)
    prec = sa**-2 + sb**-2
    return (la * sa**-2 + lb * sb**-2) / prec, prec**-0.5


def test_ladder_q_density_is_the_precision_weighted_merge():
    m = make("ladder")
    x = binary()
    q = m.encode(x)
    z = q.rsample((3,))
    z1, z2, z3 = m.split(z)
    enc = m.encoder
    h1 = enc.trunks[0](x)
    h2 = enc.trunks[1](h1)
    h3 = enc.trunks[2](h2)
    expected = logpdf(z3, *raw_normal(enc.heads[2](h3)))
    expected += logpdf(z2, *_merged(enc.heads[1](h2), m.conditionals[1].net(z3)))
    expected += logpdf(z1, *_merged(enc.heads[0](h1), m.conditionals[0].net(z2)))
    np.testing.assert_allclose(q.log_prob(z).detach().numpy(), expected, rtol=0, atol=1e-10)


def test_merge_is_the_normalised_product_of_two_gaussians():
    a = torch.distributions.Normal(torch.tensor(0.3, dtype=F64), torch.tensor(0.7, dtype=F64))
    b = torch.distributions.Normal(torch.tensor(-1.1, dtype=F64), torch.tensor(1.9, dtype=F64))
    c = H.merge_gaussians(a, b)
    z = torch.linspace(-4, 4, 9, dtype=F64)
    gap = c.log_prob(z) - a.log_prob(z) - b.log_prob(z)
    const = -norm.logpdf(0.3, -1.1, math.hypot(0.7, 1.9))      # 1 / ∫ N(z; a) N(z; b) dz
    np.testing.assert_allclose(gap.numpy(), const, rtol=0, atol=1e-12)


@pytest.mark.parametrize("hierarchy", ["bottom-up", "ladder"])
def test_log_joint_matches_scipy_and_bernoulli(hierarchy):
    m = make(hierarchy)
    x = binary()
    z = torch.randn(4, 5, 13, dtype=F64)
    z1, z2, z3 = m.split(z)
    expected = norm.logpdf(z3.numpy()).sum(-1)
    expected += logpdf(z2, *raw_normal(m.conditionals[1].net(z3)))
    expected += logpdf(z1, *raw_normal(m.conditionals[0].net(z2)))
    logits = m.decoder.net(z1).detach().numpy()
    xn = x.numpy()
    expected += (xn * logits - np.logaddexp(0, logits)).sum(-1)
    np.testing.assert_allclose(m.log_joint(x, z).detach().numpy(), expected, rtol=0, atol=1e-9)


def test_mean_is_the_plug_in_path():
    m = make("bottom-up")
    x = binary()
    mean = m.encode(x).mean
    loc1 = m.encoder.first.net(x).chunk(2, -1)[0]
    loc2 = m.encoder.upper[0].net(loc1).chunk(2, -1)[0]
    loc3 = m.encoder.upper[1].net(loc2).chunk(2, -1)[0]
    torch.testing.assert_close(mean, torch.cat([loc1, loc2, loc3], -1))


def test_layer_rates_sum_to_the_monte_carlo_kl_of_the_same_draws():
    m = make("ladder")
    x = binary()
    q = m.encode(x)
    torch.manual_seed(7)
    rates = m.layer_rates(q, 4)
    torch.manual_seed(7)
    kl = elbo_terms(m, q, x, 4, kl="mc").kl
    assert rates.shape == (5, 3)
    torch.testing.assert_close(rates.sum(-1), kl, rtol=0, atol=1e-10)


def test_free_bits_are_applied_per_layer():
    m = make("bottom-up")
    x = binary(64)
    q, prior = m.encode(x), m.prior()
    kl = elbo_terms(m, q, x, 1, kl="mc").kl
    assert torch.equal(free_bits_kl(q, prior, kl, 0.0), kl)
    torch.manual_seed(3)
    rates = H.layer_rates(q, prior, 1).detach()              # the groups free_bits_kl draws
    lam = 0.5 * float(rates.mean(0)[0]) / 6                  # layer 1 stays above λ · 6
    torch.manual_seed(3)
    out = free_bits_kl(q, prior, kl, lam)
    thresholds = lam * torch.tensor([6.0, 4.0, 3.0], dtype=F64)
    below = rates.mean(0) < thresholds
    assert not below[0]
    expected = torch.where(below, thresholds.expand_as(rates), rates).sum(-1)
    torch.testing.assert_close(out.detach(), expected, rtol=0, atol=1e-12)
    big = free_bits_kl(q, prior, kl, 100.0)                  # every layer clamped: a constant
    torch.testing.assert_close(big.detach(), torch.full_like(big, 100.0 * 13))
    grads = torch.autograd.grad(big.sum(), list(m.encoder.parameters()), allow_unused=True,
                                materialize_grads=True)
    assert all(float(g.abs().sum()) == 0 for g in grads)


def test_fast_paths_do_not_apply_and_a_step_trains_every_parameter():
    m = make("ladder").float()
    x = binary().float()
    inference = Amortized(m.encoder)
    assert not _bernoulli_fast.applies(m, m.encode(x), x)
    step = TrainStep(m, inference, compile=False)
    assert step._fast is None and step._grad is None
    before = {k: v.clone() for k, v in m.state_dict().items()}
    result = step(x)
    assert not result.skipped and math.isfinite(result.elbo)
    unchanged = [k for k, v in m.state_dict().items() if torch.equal(v, before[k])]
    assert unchanged == []


def test_iwae_bound_rises_with_k_on_average():
    m = make("bottom-up")
    x = binary(20).repeat(100, 1)                            # 100 replicates of 20 examples
    torch.manual_seed(0)
    with torch.no_grad():
        q = m.encode(x)
        l1, l20 = iwae_bound(m, q, x, 1), iwae_bound(m, q, x, 20)
    diff = l20 - l1
    assert float(diff.mean()) > 4 * float(diff.std()) / math.sqrt(diff.numel())


def test_sample_is_ancestral_from_the_top():
    m = make("bottom-up")
    g = torch.Generator().manual_seed(4)
    a = m.sample(3, generator=g)
    g = torch.Generator().manual_seed(4)
    b = m.sample(3, generator=g)
    assert a.shape == (3, 12) and torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("prior", ["mog", "vamp", "flow"])
def test_top_prior_can_be_a_richer_prior_and_samples(prior):
    m = make("ladder", prior=prior)
    x = binary()
    assert torch.isfinite(elbo_terms(m, m.encode(x), x, 2).elbo).all()
    g = torch.Generator().manual_seed(3)
    drawn = m.sample(4, generator=g)                  # ancestral, through the richer top
    assert drawn.shape == (4, 12) and set(drawn.unique().tolist()) <= {0.0, 1.0}
    assert m.prior().sample((6,)).shape == (6, 13)


def test_vamp_prior_at_the_top_of_a_ladder_is_the_mixture_of_top_evidence():
    """p(z_n) = (1/K) Σ_k N(z_n; μ̂_n(u_k), σ̂_n(u_k)²) with (μ̂_n, σ̂_n) the ladder's top-layer
    evidence at the pseudo-inputs u_k, recomputed from the networks with scipy; the
    pseudo-inputs are saved as the prior's own parameters and a training step moves them."""
    from scipy.special import logsumexp

    m = make("ladder", prior="vamp")
    u = m.top_prior.pseudo_inputs
    assert u.shape == (m.config.prior_components, 12)
    h = u
    for trunk in m.encoder.trunks:
        h = trunk(h)
    loc, scale = raw_normal(m.encoder.heads[-1](h))           # [K, L_n] each
    z = torch.randn(5, 3, dtype=F64)
    per = norm.logpdf(z.numpy()[:, None, :], loc[None], scale[None]).sum(-1)   # [5, K]
    expected = logsumexp(per, axis=1) - math.log(len(loc))
    got = m.top_prior().log_prob(z).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    assert "top_prior.pseudo_inputs" in m.state_dict()
    assert not any(k.startswith("top_prior._encoder") for k in m.state_dict())
    x = binary()
    lp = m.prior().log_prob(m.encode(x).rsample())
    (grad,) = torch.autograd.grad(lp.sum(), [u])
    assert float(grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="--hierarchy ladder or top-down with --prior vamp"):
        make("bottom-up", prior="vamp")


def test_config_latent_sizes_round_trip_and_errors():
    c = ModelConfig(latent_dim=[64, 32], hierarchy="ladder")
    assert c.latent_dim == (64, 32)
    assert ModelConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert ModelConfig(latent_dim=[7]).latent_dim == 7
    with pytest.raises(ValueError, match="latent_dim"):
        ModelConfig(latent_dim=[])
    with pytest.raises(ValueError, match="latent_dim"):
        ModelConfig(latent_dim=(4, 0))
    with pytest.raises(ValueError, match="hierarchy"):
        ModelConfig(latent_dim=(4, 2), hierarchy="sideways")
    with pytest.raises(ValueError, match="--inference"):
        RunConfig.from_dict({"latent_dim": [4, 2], "inference": "per-datapoint"})
    with pytest.raises(ValueError, match="--family"):
        build_vae(ModelConfig(data_dim=5, latent_dim=(4, 2), family="full_covariance_normal"))


def test_layer_diagnostics_and_collapse_warning():
    rates = torch.tensor([[1.0, 0.1], [3.0, 0.1]])
    means = torch.tensor([[0.0, 1.0, 5.0], [1.0, -1.0, 5.0]])   # layer 2 (1 unit) constant
    d = H.layer_diagnostics((2, 1), rates, means)
    assert d["active_units_per_layer"] == [2, 0] and d["collapsed_layers"] == [2]
    assert d["rate_per_layer"][0] == {"mean": 2.0, "se": pytest.approx(1.0)}
    assert "layer 2 (1 units) collapsed" in H.collapse_warning([2], (2, 1))
    assert H.collapse_warning([], (2, 1)) is None
    assert d["zero_rate_layers"] == []
    # a middle layer whose q is its prior conditional: active (it follows z_3), zero rate
    quiet = H.layer_diagnostics((2, 1, 1), torch.tensor([[1.0, 0.01, 2.0], [3.0, 0.0, 2.0]]),
                                torch.tensor([[0.0, 1.0, 5.0, 1.0], [1.0, -1.0, 4.0, 2.0]]))
    assert quiet["collapsed_layers"] == [] and quiet["zero_rate_layers"] == [2]
    line = H.collapse_warning([], (2, 1, 1), [2.0, 0.005, 2.0])
    assert "layer 2 (rate 0.005 nats) adds no information" in line and "\n" not in line
    both = H.collapse_warning([3], (2, 1, 1), [2.0, 0.005, 0.0])
    assert "layer 3 (1 units) collapsed" in both and "layer 2 (rate" in both
    assert "layer 3 (rate" not in both
    top = H.collapse_warning([], (16, 8), [1.0, 0.01])
    assert "top latent layer 2 (rate 0.010 nats)" in top and "layers above" not in top


# --------------------------------------------------------------------------- CLI, resume, load

TRAIN = ["--limit", "256", "--batch-size", "64", "--latent-dim", "8,4", "--hierarchy",
         "ladder", "--hidden", "32", "--quiet"]


def _cli(capsys, *argv) -> tuple[int, str, str]:
    from vaelab import cli

    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _fashion_mnist() -> bool:
    from vaelab import data

    return any((d / "t10k-images-idx3-ubyte.gz").is_file()
               for d in data.search_dirs("fashion-mnist"))


@pytest.mark.skipif(not _fashion_mnist(), reason="Fashion-MNIST is not installed")
def test_cli_train_resume_evaluate_load(tmp_path, capsys):
    from safetensors.torch import load_file

    import vaelab

    whole, part = tmp_path / "whole", tmp_path / "part"
    assert _cli(capsys, "train", "--out", whole, "--epochs", "2", *TRAIN)[0] == 0
    assert _cli(capsys, "train", "--out", part, "--epochs", "1", *TRAIN)[0] == 0
    assert _cli(capsys, "train", "--resume", part, "--epochs", "2", "--quiet")[0] == 0
    a, b = load_file(whole / "model.safetensors"), load_file(part / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [len(r["val_rate_per_layer"]) for r in rows] == [2, 2]
    assert all(len(r["val_active_units_per_layer"]) == 2 for r in rows)
    assert math.isclose(sum(rows[-1]["val_rate_per_layer"]), rows[-1]["val_rate"], rel_tol=0.5)
    code, out, _ = _cli(capsys, "evaluate", whole, "--k", "5", "--limit", "20", "--quiet")
    assert code == 0 and "layer 2 rate" in out
    report = json.loads((whole / "eval.json").read_text())
    assert len(report["rate_per_layer"]) == 2 and report["units_per_layer"] == [8, 4]
    trained = vaelab.load(whole)
    assert isinstance(trained.model, H.HierarchicalVAE) and trained.model.sizes == (8, 4)
    assert trained.encode(torch.zeros(3, 784)).mean.shape == (3, 12)
    assert trained.sample(2).shape == (2, 784)
    code, out, _ = _cli(capsys, "gaps", whole, "--limit", "4", "--k", "50", "--steps", "30")
    assert code == 0 and "L[q*]" in out
    summary = json.loads((whole / "gaps.json").read_text())["summary"]
    assert summary["amortization_gap"]["mean"] > -1.0           # q* starts at q_phi
    assert (whole / "gaps.png").stat().st_size > 0


@pytest.mark.parametrize("objective", ["elbo", "iwae", "iwae-dreg"])
def test_training_objectives_reach_every_parameter(objective):
    from vaelab.infer.objectives import training_terms

    m = make("ladder")
    x = binary(8)
    q = m.encode(x)
    out = training_terms(m, q, x, objective=objective, num_samples=3,
                         free_bits=0.05 if objective == "elbo" else 0.0)
    assert torch.isfinite(out.surrogate).all() and torch.isfinite(out.terms.elbo).all()
    grads = torch.autograd.grad(out.surrogate.sum(), list(m.parameters()), allow_unused=True)
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)


@pytest.mark.parametrize("seed", [None, 0])
def test_evaluate_layer_rates_sum_to_the_reported_rate(seed):
    """The per-layer rates in eval.json come from the same draws as the ELBO's Monte Carlo KL
    (the RNG replayed), so they add up to the printed rate; log p̂ is unaffected by them."""
    from vaelab.measure.evaluate import evaluate_model

    m = make("ladder").float()
    x = binary(30).float()
    torch.manual_seed(3)
    r = evaluate_model(m, x, num_samples=20, elbo_samples=3, seed=seed)
    layers = sum(layer["mean"] for layer in r["rate_per_layer"])
    assert layers == pytest.approx(r["rate"]["mean"], rel=1e-6)
    expected = H.collapse_warning(r["collapsed_layers"], m.sizes,
                                  [layer["mean"] for layer in r["rate_per_layer"]])
    assert expected is None or expected in r["warnings"]        # saved, not only printed
    torch.manual_seed(3)
    again = evaluate_model(m, x, num_samples=20, elbo_samples=3, seed=seed)
    assert again["log_likelihood"] == r["log_likelihood"]


def test_evaluate_saves_the_collapse_warning_in_its_report():
    """A ladder whose top evidence is N(0, I) for every x (top q = p(z_3)): the top layer has
    rate 0 and no active unit; evaluate's report carries the warning, not only the screen."""
    from vaelab.measure.evaluate import evaluate_model

    m = make("ladder").float()
    head = m.encoder.heads[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[3:] = math.log(math.expm1(1.0 - H.MIN_SCALE))     # softplus + floor = 1
    r = evaluate_model(m, binary(30).float(), num_samples=10, elbo_samples=2, seed=0)
    assert 3 in r["collapsed_layers"] and r["rate_per_layer"][2]["mean"] == pytest.approx(0)
    assert any("layer 3 (3 units)" in w and "collapsed" in w for w in r["warnings"])


# ---- the structured (full-covariance, linear-Gaussian) q: log q at its own draws


def _ill_conditioned_structured(sizes: tuple[int, ...], batch: int, seed: int, diag: float
                                ) -> tuple[H.LinearGaussianBottomUp, torch.Tensor]:
    """Raw parameters [batch, P] (float64) of the kind a diverging fit gives: each layer's
    Cholesky diagonal ~ ``diag`` (near ``min_scale``) beside off-diagonal entries ~ 5, means
    ~ 20 and couplings C_i ~ 3."""
    family = H.LinearGaussianBottomUp(sizes)
    g = torch.Generator().manual_seed(seed)
    chunks = []
    for i, size in enumerate(sizes):
        rows, cols = torch.tril_indices(size, size)
        tri = 5.0 * torch.randn(batch, rows.numel(), generator=g, dtype=F64)
        wanted = diag * (0.5 + 1.5 * torch.rand(batch, size, generator=g, dtype=F64))
        tri[:, rows == cols] = torch.log(torch.expm1(wanted))      # softplus(raw) = wanted
        chunks += [3.0 * torch.randn(batch, size * (sizes[i - 1] if i else 0), generator=g,
                                     dtype=F64),
                   20.0 * torch.randn(batch, size, generator=g, dtype=F64), tri]
    return family, torch.cat(chunks, -1)


def _structured_draw(family, raw64: torch.Tensor, samples: int, seed: int):
    """A float32 draw z of q and, in float64, the closed form of log q at it from the ε the
    draw used (ancestral: ε_i of each layer in turn, as torch draws them) and z64 = the
    draw without rounding: Σ_i log N(ε_i; 0, I) − Σ log T_i,jj."""
    torch.manual_seed(seed)
    eps = [torch.empty(samples, raw64.shape[0], s).normal_().double() for s in family.sizes]
    torch.manual_seed(seed)
    q = family(raw64.float())
    z = q.rsample((samples,))
    parts = raw64.split(family.parts, -1)
    want, z64, below = 0.0, [], None
    for i, size in enumerate(family.sizes):
        weight, bias, tri = parts[3 * i:3 * i + 3]
        tril = family._tril(tri, size)
        loc = bias if below is None else (
            weight.unflatten(-1, (size, family.sizes[i - 1])) @ below.unsqueeze(-1)
        ).squeeze(-1) + bias
        below = loc + (tril @ eps[i].unsqueeze(-1)).squeeze(-1)
        z64.append(below)
        want = want + (-0.5 * eps[i].square().sum(-1) - 0.5 * size * math.log(2 * math.pi)
                       - tril.diagonal(dim1=-2, dim2=-1).log().sum(-1))
    return q, z, want, torch.cat(z64, -1)


def test_structured_q_log_q_of_its_own_draws_is_exact_for_ill_conditioned_layers():
    """As the one-layer full-covariance q: float32 z_i = loc_i + T_i ε_i loses T_i,jj ε when
    T_i,jj ~ 1e-4 beside entries ~ 5, and solving ε back from it puts log q off by far more
    than 1e3 (it was 1e31 here); at its own draw the layered q gives the closed form, computed
    in float64 from the drawn ε."""
    family, raw64 = _ill_conditioned_structured((5, 3), 8, seed=0, diag=1e-4)
    q, z, want, z64 = _structured_draw(family, raw64, 64, seed=1)
    torch.testing.assert_close(z.double(), z64, rtol=1e-5, atol=1e-3)   # the same ε
    layers = z.split(family.sizes, -1)
    plain = sum(torch.distributions.MultivariateNormal(d.loc, scale_tril=d.scale_tril)
                .log_prob(layers[i]) for i, d in enumerate(
                    q.step(i, dict(enumerate(layers))) for i in range(2))).double()
    assert float((plain - want).abs().max()) > 1e3         # the setting is that extreme
    torch.testing.assert_close(q.log_prob(z).double(), want, rtol=1e-5, atol=1e-3)
    with torch.no_grad():                                  # the draw's detached view, too
        torch.testing.assert_close(q.log_prob(z.detach()).double(), want, rtol=1e-5,
                                   atol=1e-3)
    other = z + 0.0                                        # not the draw: the plain density
    assert float((q.log_prob(other).double() - want).abs().max()) > 1e3


def test_structured_q_score_gradient_at_its_own_draw_matches_float64():
    """The gradient of log q at the draw held fixed (DReG's score term), in the raw
    parameters, against the float64 density at the unrounded draw, on a milder factor."""
    family, raw64 = _ill_conditioned_structured((4, 2), 6, seed=3, diag=1e-1)
    _, _, _, z64 = _structured_draw(family, raw64, 2, seed=4)      # the draw, unrounded
    torch.manual_seed(4)
    raw = raw64.float().requires_grad_(True)
    q = family(raw)
    z = q.rsample((2,))
    fixed = z.detach().requires_grad_(True)
    score, dz = torch.autograd.grad(q.log_prob(fixed).sum(), (raw, fixed))
    r64 = raw64.clone().requires_grad_(True)
    z64.requires_grad_(True)
    plain = family.double()(r64).log_prob(z64)     # not its draw: the solve, in float64
    family.float()
    want_score, want_dz = torch.autograd.grad(plain.sum(), (r64, z64))
    for got, want in ((score, want_score), (dz, want_dz)):
        assert float((got.double() - want).abs().max() / want.abs().max()) < 1e-4
