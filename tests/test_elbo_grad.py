"""The hand-derived ELBO gradient of the standard VAE (``vaelab.fit._elbo_grad``) against autograd
and finite differences, and the direct fused Adam step against ``torch.optim.Adam``."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from vaelab.config import ModelConfig
from vaelab.fit import step as step_mod
from vaelab.fit._elbo_grad import GaussianBernoulliELBOGrad, _softplus_total
from vaelab.fit.adam import DirectFusedAdam
from vaelab.fit.step import TrainStep
from vaelab.infer.schemes import Amortized
from vaelab.model.vae import build_vae

D, L, B = 9, 3, 6


def make(hidden=(8,), activation="relu", seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    config = ModelConfig(data_dim=D, latent_dim=L, hidden=hidden, activation=activation)
    return build_vae(config).to(dtype)


def autograd_loss(model, x, eps, kl_weight):
    """mean_b(w·KL_b − mean_s log p(x_b|z_bs)) through autograd and F.binary_cross_entropy."""
    loc, raw = model.encoder.net(x).chunk(2, dim=-1)
    scale = F.softplus(raw) + model.encoder.family.min_scale
    logits = model.decoder.net(loc + scale * eps)
    log_lik = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits),
                                                  reduction="none").sum(-1)
    if log_lik.dim() > 1:
        log_lik = log_lik.mean(0)
    kl = 0.5 * (loc.square() + scale.square() - 1).sum(-1) - scale.log().sum(-1)
    return (kl_weight * kl - log_lik).mean()


def hand(model) -> GaussianBernoulliELBOGrad:
    return GaussianBernoulliELBOGrad(model.encoder.net, model.decoder.net,
                                     model.encoder.family.min_scale, L)


@pytest.mark.parametrize("hidden", [(8,), (8, 5)])
@pytest.mark.parametrize("activation", ["relu", "tanh", "leaky_relu"])
@pytest.mark.parametrize("samples", [1, 3])
def test_gradient_equals_autograd(hidden, activation, samples):
    model = make(hidden, activation)
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(B, D, dtype=torch.float64, generator=g)     # grey levels: BCE's general x
    x[:2] = torch.bernoulli(x[:2], generator=g)
    eps = torch.randn((samples, B, L) if samples > 1 else (B, L), dtype=torch.float64,
                      generator=g)
    loss, log_lik, kl = hand(model)(x, eps, 0.3)
    expected = autograd_loss(twin, x, eps, 0.3)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-13)
    assert (0.3 * kl - log_lik).item() == pytest.approx(expected.item(), rel=1e-12)
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-11, atol=1e-14, msg=name)


def test_gradient_matches_central_finite_differences():
    """An oracle independent of autograd: d loss(θ + t v)/dt at 0 by central differences."""
    model = make((8, 5), "tanh")
    g = torch.Generator().manual_seed(2)
    x = torch.bernoulli(torch.full((B, D), 0.3, dtype=torch.float64), generator=g)
    eps = torch.randn(B, L, dtype=torch.float64, generator=g)
    fn = hand(model)
    fn(x, eps, 0.7)
    params = fn.parameters
    v = [torch.randn(p.shape, dtype=p.dtype, generator=g) for p in params]
    analytic = sum((p.grad * d).sum() for p, d in zip(params, v, strict=True)).item()
    h = 1e-6
    losses = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, d in zip(params, v, strict=True):
                p.add_(sign * h * d)
        losses.append(fn(x, eps, 0.7)[0].item())
        with torch.no_grad():
            for p, d in zip(params, v, strict=True):
                p.sub_(sign * h * d)
    numeric = (losses[0] - losses[1]) / (2 * h)
    assert analytic == pytest.approx(numeric, rel=1e-7)


@pytest.mark.parametrize("dtype, rel", [(torch.float32, 1e-6), (torch.float64, 1e-13)])
def test_softplus_total_from_the_sigmoid_equals_softplus_in_float64(dtype, rel):
    """The loss value's Σ softplus(l), taken from σ(l), against log1p(exp(·)) in float64 over
    logits from 0 to ±90: saturated σ (|l| > 17 in float32), the cut-off F.softplus uses (20)
    and the side where the BCE form −log(1 − σ) loses its digits."""
    g = torch.Generator().manual_seed(5)
    logits = torch.cat([torch.randn(64, 784, generator=g, dtype=torch.float64) * s
                        for s in (1.0, 8.0, 40.0)]).to(dtype)
    logits[0, :6] = torch.tensor([0.0, 17.0, 20.5, -20.5, 88.0, -88.0])
    l64 = logits.double()
    exact = (l64.clamp_min(0) + torch.log1p(torch.exp(-l64.abs()))).sum().item()
    got = _softplus_total(logits, torch.sigmoid(logits))
    assert got.dtype == dtype and got.dim() == 0
    assert got.item() == pytest.approx(exact, rel=rel)
    # the same on the positive logits alone, where relu(l) carries the sum and the logs are
    # the small correction: a wrong log term shows here
    pos = logits[logits > 0][:1000]
    exact_pos = (pos.double() + torch.log1p(torch.exp(-pos.double()))).sum().item()
    log_part = exact_pos - pos.double().sum().item()
    got_pos = _softplus_total(pos, torch.sigmoid(pos)).item() - pos.double().sum().item()
    assert got_pos == pytest.approx(log_part, rel=1e-3 if dtype == torch.float32 else 1e-10)


def test_supports_only_the_mlps_it_can_differentiate():
    assert GaussianBernoulliELBOGrad.supports(make().encoder.net, make().decoder.net)
    for activation in ("gelu", "silu", "elu", "softplus"):
        m = make(activation=activation)
        assert not GaussianBernoulliELBOGrad.supports(m.encoder.net, m.decoder.net)
    m = make()
    m.decoder.net[0].weight.requires_grad_(False)
    assert not GaussianBernoulliELBOGrad.supports(m.encoder.net, m.decoder.net)
    seq = torch.nn.Sequential(*m.encoder.net)
    assert not GaussianBernoulliELBOGrad.supports(seq, make().decoder.net)
    with pytest.raises(ValueError, match="encoder_net, decoder_net: expected "
                                         "vaelab.model.nets.MLP"):
        GaussianBernoulliELBOGrad(seq, m.decoder.net, 1e-5, L)


def _twin_steps(grad_clip=None, kl=(1.0, 0.5, 0.25, 1.0), samples=1):
    model = make((8, 5))
    twin = copy.deepcopy(model)
    fast = TrainStep(model, Amortized(model.encoder), lr=1e-2, grad_clip=grad_clip,
                     num_samples=samples)
    slow = TrainStep(twin, Amortized(twin.encoder), lr=1e-2, grad_clip=grad_clip,
                     num_samples=samples)
    assert fast._grad is not None
    slow._grad = None                                   # the autograd plain-tensor path
    g = torch.Generator().manual_seed(3)
    for i, w in enumerate(kl):
        x = torch.bernoulli(torch.full((B, D), 0.4, dtype=torch.float64), generator=g)
        torch.manual_seed(10 + i)
        a = fast(x, None, kl_weight=w)
        torch.manual_seed(10 + i)
        b = slow(x, None, kl_weight=w)
        assert a.elbo == pytest.approx(b.elbo, rel=1e-12)
        assert a.rate == pytest.approx(b.rate, rel=1e-12)
        assert not a.skipped and not b.skipped
    return model, twin, fast, slow


@pytest.mark.parametrize("grad_clip", [None, 0.05])
@pytest.mark.parametrize("samples", [1, 2])
def test_train_steps_equal_the_autograd_path(grad_clip, samples):
    model, twin, fast, _ = _twin_steps(grad_clip, samples=samples)
    assert fast._adam._lists is not None                # the direct fused Adam ran
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-13, msg=name)


def test_hooks_send_the_step_back_to_autograd(monkeypatch):
    model = make()
    step = TrainStep(model, Amortized(model.encoder))
    calls = []
    model.decoder.net[0].register_forward_hook(lambda *a: calls.append(1))
    monkeypatch.setattr(step_mod.GaussianBernoulliELBOGrad, "__call__",
                        lambda *a: pytest.fail("hand gradient ran despite a forward hook"))
    step(torch.bernoulli(torch.full((B, D), 0.5, dtype=torch.float64)), None)
    assert calls == [1]


def test_direct_fused_adam_equals_optimizer_step_through_lr_changes_and_reload():
    g = torch.Generator().manual_seed(4)
    params = [torch.randn(5, 3, generator=g), torch.randn(3, generator=g)]
    mine = [p.clone().requires_grad_() for p in params]
    ref = [p.clone().requires_grad_() for p in params]
    opt_mine = torch.optim.Adam(mine, lr=1e-2, fused=True)
    opt_ref = torch.optim.Adam(ref, lr=1e-2, fused=True)
    direct = DirectFusedAdam(opt_mine)
    assert direct.eligible
    grads = [[torch.randn(p.shape, generator=g) for p in params] for _ in range(8)]
    for i, gs in enumerate(grads):
        if i == 3:
            for opt in (opt_mine, opt_ref):
                opt.param_groups[0]["lr"] = 3e-3
        if i == 5:                                # resume: state replaced from a checkpoint
            state = copy.deepcopy(opt_ref.state_dict())
            opt_mine.load_state_dict(state)
            direct.forget()
        for p, q, grad in zip(mine, ref, gs, strict=True):
            p.grad = grad.clone() if p.grad is None else p.grad.copy_(grad)
            q.grad = grad.clone()
        direct.step()
        opt_ref.step()
        for p, q in zip(mine, ref, strict=True):
            assert torch.equal(p, q)
    assert direct._lists is not None
    assert not DirectFusedAdam(torch.optim.Adam(ref, amsgrad=True, fused=True)).eligible
    assert not DirectFusedAdam(torch.optim.Adam(ref, weight_decay=0.1, fused=True)).eligible
