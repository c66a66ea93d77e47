"""Missing pixels: the REINFORCE estimator against enumeration, completions on real data.

Oracles: the exact gradient of E_q[f(h)] by enumerating all 2^H states of a small mean-field
Bernoulli q; on binarized Fashion-MNIST with a small trained VAE, completions of the hidden top
half beat the best guess that ignores the visible half (the marginal pixel means), and match
their own image better than another image.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.distributions import Bernoulli, Independent

from vaelab import data
from vaelab.config import ModelConfig
from vaelab.fit.step import TrainStep
from vaelab.infer.schemes import Amortized
from vaelab.model import vae as models
from vaelab.use import complete as missing

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fashion() -> tuple[torch.Tensor, torch.Tensor]:
    """(train [3000, 784], test [16, 784]) Fashion-MNIST, binarized at ½ (clean shapes)."""
    train = data.load_dataset("fashion-mnist", "train", limit=3000).x
    test = data.load_dataset("fashion-mnist", "test", limit=16).x
    return (train > 0.5).float(), (test > 0.5).float()


@pytest.fixture(scope="module")
def trained_vae(fashion) -> models.VAE:
    """784-256-16 Bernoulli VAE, 8 epochs on 3000 images (a few seconds on 2 cores)."""
    train, _ = fashion
    torch.manual_seed(0)
    model = models.build_vae(ModelConfig(data_dim=784, latent_dim=16, hidden=(256,)))
    step = TrainStep(model, Amortized(model.encoder), lr=2e-3)
    for _ in range(8):
        order = torch.randperm(len(train))
        for i in range(0, len(train), 100):
            step(train[order[i:i + 100]])
    model.eval()
    return model


def test_top_half_mask_and_fill():
    mask = missing.top_half_mask((1, 28, 28))
    assert mask.sum() == 14 * 28 and mask[: 14 * 28].all() and not mask[14 * 28:].any()
    x = torch.zeros(2, 784)
    h = torch.ones(3, 2, 392)
    filled = missing.fill(x, mask, h)
    assert filled.shape == (3, 2, 784)
    assert filled[..., mask].eq(1).all() and filled[..., ~mask].eq(0).all()
    assert x.eq(0).all()                                       # x itself is untouched


def test_loo_reinforce_is_unbiased_for_the_exact_gradient():
    """The mean of the leave-one-out estimator over many independent batches of S draws
    equals ∇_φ E_q[f(h)], computed exactly by enumerating the 2^3 states."""
    g = torch.Generator().manual_seed(0)
    table = 20 + 3 * torch.randn(8, generator=g, dtype=torch.float64)  # f(h) per state; an
    # offset, as ELBO scores have, is what a baseline removes
    weights = torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)

    def f(h: torch.Tensor) -> torch.Tensor:
        return table[(h * weights).sum(-1).long()]

    logits = torch.tensor([0.3, -1.0, 1.5], dtype=torch.float64, requires_grad=True)
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)
    q = Independent(Bernoulli(logits=logits), 1)
    (exact,) = torch.autograd.grad((q.log_prob(states).exp() * f(states)).sum(), logits)
    reps, samples = 20000, 4
    q_rep = Independent(Bernoulli(logits=logits.expand(reps, 3)), 1)
    torch.manual_seed(1)
    h = q_rep.sample((samples,))                                      # [S, reps, 3]
    (estimate,) = torch.autograd.grad(missing.loo_surrogate(q_rep, h, f(h)).sum(), logits)
    estimate = estimate / reps
    assert torch.allclose(estimate, exact, atol=0.03)
    # and the baseline matters: its variance is lower than plain REINFORCE's
    per_rep = (f(h) - (f(h).sum(0) - f(h)) / (samples - 1)) * (h - torch.sigmoid(logits))[..., 0]
    plain = f(h) * (h - torch.sigmoid(logits))[..., 0]
    assert per_rep.mean(0).var() < plain.mean(0).var()


def test_completions_beat_the_marginal_baseline_and_depend_on_the_visible_half(
        fashion, trained_vae, tmp_path):
    _, test = fashion
    metrics = missing.complete_top_half(trained_vae, test, tmp_path / "missing.png",
                                        steps=200, samples=16, seed=0, init="marginal")
    assert metrics["initial_accuracy"] == metrics["baseline_accuracy"]   # starts blind
    assert metrics["accuracy"] > metrics["baseline_accuracy"] + 0.03
    assert metrics["accuracy"] > metrics["mismatched_accuracy"] + 0.05
    assert metrics["num_images"] == 16 and metrics["steps"] == 200
    png = (tmp_path / "missing.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert [p.name for p in tmp_path.iterdir()] == ["missing.png"]


def test_reconstruction_start_already_uses_the_visible_half(fashion, trained_vae, tmp_path):
    """The default start, the model's reconstruction of the image with the hidden half at the
    marginal means, is itself image-dependent (an amortized guess that fitting refines)."""
    _, test = fashion
    metrics = missing.complete_top_half(trained_vae, test, tmp_path / "r.png", steps=2,
                                        samples=4, seed=0)
    assert metrics["initial_accuracy"] > metrics["baseline_accuracy"] + 0.03
    with pytest.raises(ValueError, match="init: expected one of 'reconstruction', 'marginal'"):
        missing.complete_top_half(trained_vae, test[:2], tmp_path / "r.png", steps=1,
                                  init="zeros")


def test_fitting_raises_the_variational_objective(fashion, trained_vae):
    """F(φ) = E_q[ELBO(x_v ∪ h)] + H(q) ≤ log p(x_v) climbs from the marginal start."""
    _, test = fashion
    x = test[:4]
    hidden = missing.top_half_mask((1, 28, 28))
    torch.manual_seed(0)
    init = missing.marginal_pixel_mean(trained_vae, 500)[hidden].clamp(1e-3, 1 - 1e-3)
    _, history = missing.fit_hidden(trained_vae, x, hidden, init.logit().expand(4, -1),
                                    steps=80, samples=8)
    assert sum(history[-10:]) / 10 > sum(history[:10]) / 10 + 3.0


def test_complete_top_half_rejects_bad_input_by_name(trained_vae, tmp_path):
    with pytest.raises(ValueError, match="x: expected binary images"):
        missing.complete_top_half(trained_vae, torch.full((2, 784), 0.5), tmp_path / "a.png",
                                  steps=1)
    with pytest.raises(ValueError, match="samples: expected at least 2"):
        missing.complete_top_half(trained_vae, torch.zeros(2, 784), tmp_path / "a.png",
                                  steps=1, samples=1)
    with pytest.raises(TypeError, match="model: expected a vaelab VAE with an encoder"):
        missing.complete_top_half(object(), torch.zeros(2, 784), tmp_path / "a.png")


def test_fitting_reads_no_value_back_per_step(host_syncs):
    """The objective's history stays on the device until the end: the number of host
    reads does not grow with the steps (it grew by one per step)."""
    torch.manual_seed(0)
    model = models.build_vae(ModelConfig(data_dim=16, latent_dim=2, hidden=(8,)))
    x = (torch.rand(3, 16) > 0.5).float()
    hidden = missing.top_half_mask((1, 4, 4))
    reads = []
    for steps in (2, 6):
        before = host_syncs[0]
        _, history = missing.fit_hidden(model, x, hidden, torch.zeros(3, 8), steps=steps,
                                        samples=2)
        reads.append(host_syncs[0] - before)
        assert len(history) == steps and all(isinstance(v, float) for v in history)
    assert reads[0] == reads[1]


def test_completion_hands_x_to_the_models_device(monkeypatch, tmp_path):
    """CPU images reach a GPU model on its device ('meta' stands for cuda here)."""
    from conftest import ArrivedOn, arrival

    monkeypatch.setattr(missing, "device_of", lambda _model: torch.device("meta"))
    class AnyPixels:            # the marginal's hidden pixels, whatever the mask's device
        def __getitem__(self, _mask):
            return torch.zeros(8)

    monkeypatch.setattr(missing, "marginal_pixel_mean", lambda *_a, **_k: AnyPixels())
    monkeypatch.setattr(missing, "initial_logits", lambda _model, x, *_a: arrival(x))
    model = models.build_vae(ModelConfig(data_dim=16, latent_dim=2, hidden=(8,)))
    with pytest.raises(ArrivedOn) as seen:
        missing.complete_top_half(model, (torch.rand(3, 16) > 0.5).float(), tmp_path / "c.png",
                                  image_shape=(1, 4, 4))
    assert seen.value.device == torch.device("meta")
