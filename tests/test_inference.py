"""Inference schemes and the per-example optimizer, against closed forms where they exist.

Oracles: ``LinearGaussian.posterior`` (exact p(z | x)) and ``elbo_closed_form`` (exact ELBO of
a Gaussian q), finite differences (``gradcheck``) for the gradient through SA-VAE's refinement,
and a gradient computed independently with the same noise for the stop-gradient variant.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import linear_encoder  # noqa: E402
from torch import nn

from vaelab.config import ModelConfig
from vaelab.fit.step import TrainStep
from vaelab.infer import objectives
from vaelab.infer.schemes import (
    Amortized,
    PerDatapoint,
    SemiAmortized,
    build_inference,
    optimize_q,
    refine,
)
from vaelab.model import families
from vaelab.model import vae as models

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")



def small_vae(data_dim: int = 32, latent_dim: int = 2, seed: int = 0) -> models.VAE:
    """A Bernoulli VAE with a sharp, nonlinear (tanh, weights × 4) decoder, θ frozen."""
    torch.manual_seed(seed)
    model = models.build_vae(ModelConfig(data_dim=data_dim, latent_dim=latent_dim,
                                         hidden=(32,), activation="tanh"))
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(4)
    return model


# ----------------------------------------------------------------------------- PerDatapoint


def test_per_datapoint_starts_at_initial_params_and_returns_rows():
    family = families.DiagonalNormal(3)
    infer = PerDatapoint(family, 10)
    assert torch.equal(infer.table.weight.detach(), family.initial_params(10))
    with torch.no_grad():
        infer.table.weight[4] = torch.arange(6.0)
    q = infer(torch.zeros(2, 5), torch.tensor([4, 0]))
    assert q.batch_shape == (2,) and q.event_shape == (3,)
    assert torch.allclose(q.mean[0], torch.arange(3.0))
    assert torch.allclose(q.mean[1], torch.zeros(3))
    assert torch.allclose(q.stddev[1], torch.ones(3))


@pytest.mark.parametrize("index, error, match", [
    (None, ValueError, "index: PerDatapoint needs"),
    (torch.tensor([0.0, 1.0]), TypeError, "index: expected an integer tensor"),
    ([0, 1], TypeError, "index: expected an integer tensor"),
    (torch.tensor([0, 1, 2]), ValueError, r"index: expected shape \[2\]"),
    (torch.tensor([0, 10]), ValueError, r"index: expected values in \[0, 10\), got .*10\]"),
    (torch.tensor([-1, 3]), ValueError, r"index: expected values in \[0, 10\)"),
])
def test_per_datapoint_rejects_bad_index_by_name(index, error, match):
    infer = PerDatapoint(families.DiagonalNormal(2), 10)
    with pytest.raises(error, match=match):
        infer(torch.zeros(2, 4), index)


def test_per_datapoint_sparse_step_touches_only_the_batch_rows():
    model = small_vae()
    x = model.sample(20)
    infer = build_inference("per-datapoint", model, 20)
    assert infer.sparse
    before = infer.table.weight.detach().clone()
    step = TrainStep(model, infer, lr=0.1)
    assert isinstance(step.phi_opt, torch.optim.SparseAdam)
    batch = torch.tensor([3, 7, 11])
    step(x[batch], batch)
    assert infer.table.weight.grad.is_sparse
    changed = (infer.table.weight.detach() != before).any(-1)
    assert changed.nonzero().flatten().tolist() == [3, 7, 11]


def _fit(model, infer, opt, x, steps: int) -> None:
    index = torch.arange(x.shape[0])
    for _ in range(steps):
        opt.zero_grad()
        (-objectives.elbo(model, infer(x, index), x, 4).mean()).backward()
        opt.step()


def test_per_datapoint_beats_an_amortized_encoder_with_the_decoder_fixed():
    """With θ held fixed, free per-example q (the family's best for every x) reaches a higher
    training ELBO than a linear amortized encoder trained on the same data and budget: the
    amortization gap is ≥ 0 and here clearly positive (a paired comparison, same noise)."""
    model = small_vae()
    for p in model.parameters():
        p.requires_grad_(False)
    x = model.sample(64, generator=torch.Generator().manual_seed(1))
    family = families.DiagonalNormal(2)
    amortized = Amortized(models.Encoder(nn.Linear(32, family.param_size), family))
    _fit(model, amortized, torch.optim.Adam(amortized.parameters(), lr=1e-2), x, 300)
    free = PerDatapoint(family, 64)
    _fit(model, free, torch.optim.SparseAdam(list(free.parameters()), lr=5e-2), x, 300)
    index = torch.arange(64)
    with torch.no_grad():
        torch.manual_seed(5)
        amortized_elbo = objectives.elbo(model, amortized(x, index), x, 2000)
        torch.manual_seed(5)
        free_elbo = objectives.elbo(model, free(x, index), x, 2000)
    diff = free_elbo - amortized_elbo
    se = diff.std() / math.sqrt(diff.numel())
    assert diff.mean() > 5 * se and diff.mean() > 0.05


# ----------------------------------------------------------------------------- optimize_q


def test_optimize_q_reaches_the_exact_posterior_of_a_linear_gaussian(make_lg):
    """q* = argmax ELBO over full-covariance Gaussians is p(z | x) itself (zero gap)."""
    model = make_lg(5, 2)
    x = model.sample(8, generator=torch.Generator().manual_seed(3))
    family = families.FullCovarianceNormal(2)
    init = family.initial_params(8, dtype=F64)
    raw, history = optimize_q(model, x, init, family, steps=3000, lr=2e-2, num_samples=16,
                              patience=100)
    q, post = family(raw), model.posterior(x)
    assert torch.allclose(q.mean, post.mean, atol=0.03)
    assert torch.allclose(q.covariance_matrix, post.covariance_matrix, atol=0.03)
    gap = model.log_marginal(x) - model.elbo_closed_form(x, q)
    assert gap.max() < 5e-3
    assert history[-1] > history[0] and len(history) < 3000
    assert all(p.grad is None for p in model.parameters())


def test_optimize_q_rows_are_independent_of_each_other(make_lg):
    """Summing over the batch gives every row its own gradient and Adam steps element-wise:
    changing row 0 (its data and its start) leaves row 1's trajectory exactly as it was."""
    model = make_lg(5, 2)
    x = model.sample(2, generator=torch.Generator().manual_seed(3))
    family = families.DiagonalNormal(2)
    init = family.initial_params(2, dtype=F64)
    torch.manual_seed(9)
    first, _ = optimize_q(model, x, init, family, steps=60, num_samples=2, patience=1000)
    x2, init2 = x.clone(), init.clone()
    x2[0] += 3.0
    init2[0] -= 1.0
    torch.manual_seed(9)
    second, _ = optimize_q(model, x2, init2, family, steps=60, num_samples=2, patience=1000)
    assert torch.equal(first[1], second[1])
    assert not torch.allclose(first[0], second[0])


def test_optimize_q_rejects_bad_init_by_name(make_lg):
    model = make_lg(5, 2)
    family = families.DiagonalNormal(2)
    with pytest.raises(ValueError, match=r"init_raw: expected shape \[3, 4\], got \[3, 5\]"):
        optimize_q(model, torch.zeros(3, 5, dtype=F64), torch.zeros(3, 5, dtype=F64), family)
    with pytest.raises(ValueError, match="patience: expected an integer >= 1"):
        optimize_q(model, torch.zeros(3, 5, dtype=F64), torch.zeros(3, 4, dtype=F64), family,
                   patience=0)


# ----------------------------------------------------------------------------- SemiAmortized


def test_semi_amortized_never_lowers_an_examples_elbo(make_lg):
    """K small SGD steps (step below 1 / largest curvature, 256 samples per gradient) raise
    every example's exact ELBO above the encoder's own."""
    model = make_lg(5, 2)
    x = model.sample(32, generator=torch.Generator().manual_seed(3))
    family = families.DiagonalNormal(2)
    encoder = linear_encoder(5, family, scale=0.3)
    precision = torch.linalg.inv(model.posterior(x[:1]).covariance_matrix[0])
    lr = 0.3 / torch.linalg.eigvalsh(precision).max().item()
    infer = SemiAmortized(encoder, model, steps=20, lr=lr, num_samples=256)
    with torch.no_grad():
        before = model.elbo_closed_form(x, encoder(x))
        after = model.elbo_closed_form(x, infer(x))
    assert (after >= before).all()
    assert (after - before).mean() > 0.5
    assert after.mean() < model.log_marginal(x).mean()


def test_semi_amortized_improves_a_vae_encoders_elbo():
    model = small_vae()
    x = model.sample(64, generator=torch.Generator().manual_seed(1))
    infer = build_inference("semi-amortized", model, 64, steps=20, lr=5e-3, num_samples=16)
    with torch.no_grad():
        torch.manual_seed(3)
        before = objectives.elbo(model, model.encoder(x), x, 1000)
        torch.manual_seed(3)
        after = objectives.elbo(model, infer(x), x, 1000)
    assert (after - before).mean() > 0.1
    assert (after - before).min() > -0.05


def test_semi_amortized_with_zero_steps_is_the_encoder(make_lg):
    model = make_lg(5, 2)
    x = model.sample(4, generator=torch.Generator().manual_seed(3))
    encoder = linear_encoder(5, families.DiagonalNormal(2))
    for backprop in (False, True):
        q = SemiAmortized(encoder, model, steps=0, lr=0.1, backprop=backprop)(x)
        assert torch.allclose(q.mean, encoder(x).mean)
        assert torch.allclose(q.stddev, encoder(x).stddev)


def test_stop_gradient_variant_trains_the_encoder_on_its_own_elbo(make_lg):
    """backprop=False: θ gets its gradient only from the caller's ELBO at λ_K; the encoder
    gets ∂[−mean ELBO(λ_0)]/∂φ, the same gradient as an Amortized step with the same noise."""
    model = make_lg(5, 2)
    x = model.sample(6, generator=torch.Generator().manual_seed(3))
    encoder = linear_encoder(5, families.DiagonalNormal(2))
    infer = SemiAmortized(encoder, model, steps=0, lr=0.1, backprop=False, num_samples=3)
    torch.manual_seed(4)
    q = infer(x)
    (q.mean.sum() * 0).backward()          # the caller's loss does not depend on q at all
    injected = encoder.net.weight.grad.clone()
    assert all(p.grad is None for p in model.parameters())
    encoder.zero_grad()
    torch.manual_seed(4)
    (-objectives.elbo(model, encoder(x), x, 3).mean()).backward()
    assert torch.allclose(injected, encoder.net.weight.grad, atol=1e-12)


def test_backprop_through_refinement_matches_finite_differences(make_lg):
    """backprop=True: d ELBO(λ_K(φ)) / dφ by autograd through the K steps (second-order terms
    included) agrees with finite differences, with the noise fixed by a seed."""
    model = make_lg(4, 2)
    x = model.sample(3, generator=torch.Generator().manual_seed(3))
    encoder = linear_encoder(4, families.DiagonalNormal(2), scale=0.3)
    infer = SemiAmortized(encoder, model, steps=3, lr=0.05, backprop=True, num_samples=2)

    def objective(weight: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(11)
        raw = x @ weight.T + encoder.net.bias
        lam = refine(model, encoder.family, raw, x, steps=3, lr=0.05, num_samples=2,
                     create_graph=True)
        return objectives.elbo(model, encoder.family(lam), x, 2).sum()

    weight = encoder.net.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(objective, (weight,), eps=1e-6, atol=1e-5)
    torch.manual_seed(11)
    q = infer(x)                                  # the module takes the same path
    torch.manual_seed(11)
    assert torch.allclose(q.mean, encoder.family(refine(
        model, encoder.family, encoder.net(x), x, steps=3, lr=0.05, num_samples=2)).mean)


def test_semi_amortized_trains_with_train_step_and_holds_no_model_weights():
    model = small_vae()
    x = model.sample(16)
    for backprop in (False, True):
        infer = build_inference("semi-amortized", model, 16, steps=2, lr=1e-3,
                                backprop=backprop)
        assert {id(p) for p in infer.parameters()} == {id(p) for p in
                                                      model.encoder.parameters()}
        before = [p.detach().clone() for p in model.encoder.parameters()]
        result = TrainStep(model, infer, lr=1e-2)(x)
        assert not result.skipped and math.isfinite(result.elbo)
        assert any(not torch.equal(b, p) for b, p in zip(before, model.encoder.parameters(),
                                                         strict=True))


# ----------------------------------------------------------------------------- build_inference


def test_build_inference_by_name():
    model = small_vae()
    assert isinstance(build_inference("amortized", model, 5), Amortized)
    free = build_inference("per-datapoint", model, 5)
    assert isinstance(free, PerDatapoint) and free.table.num_embeddings == 5
    semi = build_inference("semi-amortized", model, 5, steps=3, lr=0.5, backprop=True)
    assert (semi.steps, semi.lr, semi.backprop, semi.model) == (3, 0.5, True, model)


@pytest.mark.parametrize("name, options, error, match", [
    ("svi", {}, ValueError, "name: expected one of 'amortized', 'per-datapoint', "
                            "'semi-amortized', got 'svi'"),
    ("amortized", {"steps": 3}, ValueError, r"options: 'amortized' accepts no options, "
                                            r"got unknown \['steps'\]"),
    ("semi-amortized", {"step": 3}, ValueError, r"got unknown \['step'\]"),
    ("semi-amortized", {"lr": -1.0}, ValueError, "lr: expected a finite number > 0"),
    ("semi-amortized", {"backprop": 1}, TypeError, "backprop: expected a bool"),
    ("per-datapoint", {}, ValueError, "num_data: expected an integer >= 1, got 0"),
])
def test_build_inference_rejects_bad_arguments_by_name(name, options, error, match):
    num_data = 0 if name == "per-datapoint" else 5
    with pytest.raises(error, match=match):
        build_inference(name, small_vae(), num_data, **options)


def test_build_inference_needs_an_encoder_for_amortized_schemes(make_lg):
    with pytest.raises(ValueError, match="model: 'amortized' inference needs a model with an "
                                         "encoder"):
        build_inference("amortized", make_lg(5, 2), 5)
    family = families.DiagonalNormal(2)
    assert build_inference("per-datapoint", make_lg(5, 2), 5, family=family).family is family


def test_per_datapoint_checks_the_index_with_one_host_sync(host_syncs):
    """The range check runs on every training step: both ends come back in one read."""
    infer = PerDatapoint(families.DiagonalNormal(2), 10)
    q = infer(torch.zeros(3, 4), torch.tensor([9, 0, 4]))
    assert host_syncs[0] == 1 and q.batch_shape == (3,)
    with pytest.raises(ValueError, match=r"got values in \[-2, 4\]"):
        infer(torch.zeros(2, 4), torch.tensor([4, -2]))
