"""vaelab.fit.optimizers: ``--optimizer adamax`` is torch's Adamax in every step class, its
updates equal Adamax's closed form, and its state is checkpointed for a bit-exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vaelab.config import ModelConfig, RunConfig, TrainConfig
from vaelab.fit import train as train_mod
from vaelab.fit.optimizers import make_optimizer
from vaelab.fit.step import JointStep, StandardVAEStep, TrainStep
from vaelab.infer.schemes import Amortized
from vaelab.model.vae import build_vae

pytestmark = pytest.mark.usefixtures("one_thread")

D, L, B = 7, 3, 5


def adamax_closed_form(theta0: np.ndarray, grads: list[np.ndarray], lr: float,
                       betas: tuple[float, float], eps: float = 1e-8) -> list[np.ndarray]:
    """θ after each step, float64: m_t = β₁m + (1−β₁)g, u_t = max(β₂u, |g| + ε),
    θ_t = θ_{t−1} − lr/(1 − β₁ᵗ) · m_t/u_t (Kingma & Ba 2015, algorithm 2)."""
    b1, b2 = betas
    theta, m, u, out = theta0.copy(), np.zeros_like(theta0), np.zeros_like(theta0), []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        u = np.maximum(b2 * u, np.abs(g) + eps)
        theta = theta - lr / (1 - b1**t) * m / u
        out.append(theta.copy())
    return out


def flat(params) -> np.ndarray:
    return np.concatenate([p.detach().double().reshape(-1).numpy() for p in params])


@pytest.mark.parametrize("prior, cls", [("standard_normal", StandardVAEStep),
                                        ("learned_normal", JointStep)])
def test_each_step_is_the_closed_form_adamax_update(prior, cls):
    torch.manual_seed(0)
    model = build_vae(ModelConfig(data_dim=D, latent_dim=L, hidden=(6,), prior=prior)).double()
    step = TrainStep(model, Amortized(model.encoder), lr=0.01, betas=(0.8, 0.95),
                     optimizer="adamax")
    assert type(step) is cls and type(step.theta_opt) is torch.optim.Adamax
    x = torch.bernoulli(torch.full((B, D), 0.4, dtype=torch.float64),
                        generator=torch.Generator().manual_seed(1))
    theta0, grads, seen = flat(step.params), [], []
    for _ in range(4):
        assert not step(x).skipped
        grads.append(flat(p.grad for p in step.params))   # the step leaves its gradient
        seen.append(flat(step.params))
    want = adamax_closed_form(theta0, grads, 0.01, (0.8, 0.95))
    for got, expected in zip(seen, want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
    # Adam's second step differs (its moment is an L2 average): the closed form tells them apart
    adam = theta0 - 0.01 * grads[0] / (np.abs(grads[0]) + 1e-8)
    assert np.allclose(seen[0], adam) and not np.allclose(seen[1], want[1] + 1e-3)


def test_make_optimizer_by_name_and_refusal():
    w = [torch.nn.Parameter(torch.zeros(3))]
    assert type(make_optimizer("adamax", w, 0.1, (0.9, 0.99))) is torch.optim.Adamax
    assert type(make_optimizer("adam", w, 0.1, (0.9, 0.99))) is torch.optim.Adam
    with pytest.raises(ValueError, match="optimizer: expected one of 'adam', 'adamax'"):
        make_optimizer("sgd", w, 0.1, (0.9, 0.99))
    assert TrainConfig.from_dict({}).optimizer == "adam"       # older runs: Adam, as before


class _Stop(Exception):
    pass


def test_an_adamax_run_checkpoints_its_state_and_resumes_bit_exactly(tmp_path):
    x = np.random.default_rng(0).uniform(size=(120, 12)).astype(np.float32)
    config = {"model": {"hidden": [8], "latent_dim": 2},
              "train": {"epochs": 2, "batch_size": 20, "val_fraction": 0.2,
                        "optimizer": "adamax", "lr": 3e-3}}
    straight = train_mod.train(config, tmp_path / "a", dataset=x, log=None, progress=False)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["train"]["optimizer"] \
        == "adamax"
    # the checkpoint holds Adamax's state: u_t ("exp_inf") beside m_t, one per tensor
    skeleton = (tmp_path / "a" / "checkpoint" / "state.json").read_text()
    tensors = load_file(str(tmp_path / "a" / "checkpoint" / "state.safetensors"))
    assert skeleton.count('"exp_inf"') == skeleton.count('"exp_avg"') == len(
        straight.model.state_dict()) and "exp_avg_sq" not in skeleton
    assert sum(k.startswith("optimizer.") for k in tensors) >= 2 * len(
        straight.model.state_dict())

    def stop(line: str) -> None:
        if line.startswith("epoch 1/"):
            raise _Stop

    with pytest.raises(_Stop):
        train_mod.train(config, tmp_path / "b", dataset=x, log=stop, progress=False)
    resumed = train_mod.train(config, tmp_path / "b", dataset=x, resume=True, log=None,
                              progress=False)
    for (k, a), b in zip(straight.model.state_dict().items(),
                         resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # and Adam from the same start ends elsewhere: the run really used Adamax
    adam = RunConfig.from_dict({**config, "train": {**config["train"], "optimizer": "adam"}})
    other = train_mod.train(adam, tmp_path / "c", dataset=x, log=None, progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(straight.model.state_dict().values(),
                                                     other.model.state_dict().values(),
                                                     strict=True))
