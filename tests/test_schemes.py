"""One builder of the inference scheme (vaelab.infer.schemes.scheme_for) for training,
``vaelab.load(run)`` and every command: outside training a semi-amortized run's q is refined
exactly as in training (same steps, step size and draws per step), without backprop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vaelab.config import ModelConfig, RunConfig, TrainConfig
from vaelab.infer.schemes import Amortized, PerDatapoint, SemiAmortized, scheme_for
from vaelab.model.vae import build_vae
from vaelab.use.trained import TrainedModel


def _run(**train) -> tuple[torch.nn.Module, RunConfig]:
    torch.manual_seed(0)
    config = RunConfig(ModelConfig(data_dim=6, latent_dim=2, hidden=(8,)),
                       TrainConfig(**train))
    return build_vae(config.model), config


def test_semi_amortized_outside_training_repeats_training_refinement():
    model, config = _run(inference="semi-amortized", num_samples=3, refine_steps=4,
                         refine_lr=0.05, refine_backprop=True)
    trained = scheme_for(config.train, model, 10, training=True)
    later = scheme_for(config.train, model)
    for scheme in (trained, later):
        assert isinstance(scheme, SemiAmortized)
        assert (scheme.steps, scheme.lr, scheme.num_samples) == (4, 0.05, 3)
    assert trained.backprop and not later.backprop
    # load(run).encode is that scheme: the same q as refining by hand with K = 3 draws a step
    x = torch.rand(5, 6).round()
    torch.manual_seed(7)
    got = TrainedModel(model, config, Path("."), []).encode(x)
    torch.manual_seed(7)
    by_hand = SemiAmortized(model.encoder, model, 4, 0.05, num_samples=3)(x)
    torch.testing.assert_close(got.mean, by_hand.mean, rtol=0, atol=0)
    torch.manual_seed(7)
    one_draw = SemiAmortized(model.encoder, model, 4, 0.05, num_samples=1)(x)
    assert not torch.equal(got.mean, one_draw.mean)     # the budget is not 1 draw a step


def test_amortized_and_per_datapoint():
    model, config = _run()
    assert isinstance(scheme_for(config.train, model), Amortized)
    model, config = _run(inference="per-datapoint")
    table = scheme_for(config.train, model, 12, training=True)
    assert isinstance(table, PerDatapoint)
    with pytest.raises(ValueError, match="inference: this run used 'per-datapoint', which "
                                         "trains no encoder"):
        scheme_for(config.train, model)
