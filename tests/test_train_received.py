"""What the training step actually receives, not what the log recomputes.

The loop computes the KL weight and the learning rate once for the step and again for the
metrics row; the per-layer validation rates are computed by their own pass. A spy on the step
(and on the per-layer pass) records the values used, over several steps and epochs, and the
tests compare them with closed forms written here and with what ``metrics.jsonl`` says.
"""

from __future__ import annotations

import copy
import importlib
import json
import math

import pytest
import torch

from vaelab import data
from vaelab.config import TrainConfig
from vaelab.fit import step as step_mod
from vaelab.fit import validation
from vaelab.model import hierarchical

train_mod = importlib.import_module("vaelab.fit.train")
pytestmark = pytest.mark.usefixtures("one_thread")
STEPS_PER_EPOCH, EPOCHS = 4, 3          # 40 rows, 8 for validation, batches of 8


def _dataset() -> data.Dataset:
    x = torch.rand(40, 12, generator=torch.Generator().manual_seed(0)).bernoulli()
    return data.Dataset(x, None, None, "b")


def _train_with_spy(tmp_path, monkeypatch, train: dict, model: dict | None = None
                    ) -> tuple[list[dict], list[dict]]:
    """Train 3 epochs of 4 steps; → (per step: the KL weight passed and θ's and φ's learning
    rates in the optimizers when the step ran, the metrics rows)."""
    seen: list[dict] = []
    original = step_mod.TrainStep.__call__

    def spy(self, x, index=None, kl_weight=1.0):
        lrs = {("phi" if opt is self.phi_opt else "theta"): opt.param_groups[0]["lr"]
               for opt in self._optimizers()}
        seen.append({"kl_weight": kl_weight, **lrs})
        return original(self, x, index, kl_weight)

    monkeypatch.setattr(step_mod.TrainStep, "__call__", spy)
    config = {"model": {"hidden": [8], "latent_dim": 3, **(model or {})},
              "train": {"epochs": EPOCHS, "batch_size": 8, "val_fraction": 0.2, **train}}
    train_mod.train(config, tmp_path / "run", dataset=_dataset(), log=None, progress=False)
    rows = [json.loads(line) for line in
            (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(seen) == STEPS_PER_EPOCH * EPOCHS and len(rows) == EPOCHS
    return seen, rows


def _last_of_each_epoch(seen: list[dict], key: str) -> list[float]:
    return [seen[(e + 1) * STEPS_PER_EPOCH - 1][key] for e in range(EPOCHS)]


@pytest.mark.parametrize("options, expected", [
    ({"kl_schedule": "linear", "kl_warmup_epochs": 1.5},
     lambda t: 0.8 * min(1.0, t / (1.5 * STEPS_PER_EPOCH))),
    ({"kl_schedule": "cyclical", "kl_cycles": 2, "kl_ratio": 0.25},
     lambda t: 0.8 * min(1.0, ((t * 2) % 12 / 12) / 0.25)),
], ids=["linear", "cyclical"])
def test_the_step_receives_the_scheduled_kl_weight_and_the_log_says_so(
        tmp_path, monkeypatch, options, expected):
    seen, rows = _train_with_spy(tmp_path, monkeypatch, {"beta": 0.8, **options})
    got = [s["kl_weight"] for s in seen]
    assert got == pytest.approx([expected(t) for t in range(12)], abs=1e-12)
    assert len(set(got)) >= 3                                   # it really changes
    assert [r["kl_weight"] for r in rows] == pytest.approx(_last_of_each_epoch(seen,
                                                                               "kl_weight"))


def test_the_step_runs_at_the_scheduled_learning_rate_and_the_log_says_so(tmp_path,
                                                                          monkeypatch):
    """Cosine from 1e-2 to 0 over the 12 steps, times a warm-up over the first epoch:
    lr_t = 1e-2 · ½(1 + cos(π t / 12)) · min(1, (t + 1) / 4); φ's own rate keeps the ratio
    phi_lr / lr = 3 (alternating steps: φ has its own optimizer)."""
    seen, rows = _train_with_spy(tmp_path, monkeypatch, {
        "lr": 1e-2, "lr_schedule": "cosine", "lr_warmup_epochs": 1.0, "phi_lr": 3e-2,
        "schedule": "alternating", "phi_steps": 1})
    want = [1e-2 * 0.5 * (1 + math.cos(math.pi * t / 12)) * min(1.0, (t + 1) / 4)
            for t in range(12)]
    assert [s["theta"] for s in seen] == pytest.approx(want, rel=1e-12)
    assert [s["phi"] for s in seen] == pytest.approx([3 * w for w in want], rel=1e-12)
    assert [r["lr"] for r in rows] == pytest.approx(_last_of_each_epoch(seen, "theta"))


def test_exponential_learning_rate_decays_once_per_epoch_at_the_step(tmp_path, monkeypatch):
    seen, rows = _train_with_spy(tmp_path, monkeypatch, {
        "lr": 1e-2, "lr_schedule": "exponential", "lr_decay": 0.5})
    assert [s["theta"] for s in seen] == pytest.approx(
        [1e-2 * 0.5 ** (t // STEPS_PER_EPOCH) for t in range(12)], rel=1e-12)
    assert [r["lr"] for r in rows] == pytest.approx([1e-2, 5e-3, 2.5e-3], rel=1e-12)


def test_per_layer_validation_rates_are_the_replayed_draws(tmp_path, monkeypatch):
    """The per-layer pass is spied on (copies of the model, its inference and the validation
    rows when it runs, and the RNG state its draws start from); replaying those draws through
    the per-layer rate gives what metrics.jsonl holds, to 1e-6, every epoch."""
    calls, states = [], []
    trainer_pass, rates_pass = train_mod._Trainer._layer_metrics, validation.layer_metrics

    def spy_trainer(self):
        calls.append(copy.deepcopy((self.model, self.inference, self.val_x)))
        return trainer_pass(self)

    def spy_rates(model, qs, num_samples, all_reduce_sum=None):
        states.append((torch.get_rng_state(), num_samples))
        return rates_pass(model, qs, num_samples, all_reduce_sum)

    monkeypatch.setattr(train_mod._Trainer, "_layer_metrics", spy_trainer)
    monkeypatch.setattr(validation, "layer_metrics", spy_rates)  # looked up there
    _, rows = _train_with_spy(tmp_path, monkeypatch, {}, {"latent_dim": [4, 2]})
    assert len(calls) == len(states) == EPOCHS
    for (model, inference, val_x), (state, k), row in zip(calls, states, rows, strict=True):
        torch.set_rng_state(state)
        with torch.no_grad():
            rates = torch.cat([hierarchical.layer_rates(inference(x, None), model.prior(), k)
                               for x in val_x.split(train_mod.VAL_BATCH_SIZE)])
        want = rates.double().mean(0).tolist()                          # [layers]
        assert row["val_rate_per_layer"] == pytest.approx(want, rel=1e-6, abs=1e-9)
        assert min(want) > 1e-4                                          # both layers used


@pytest.mark.parametrize("train", [
    {"objective": "iwae", "num_samples": 3, "grad_clip": 5.0, "betas": [0.8, 0.99]},
    {"objective": "elbo", "num_samples": 2, "free_bits": 0.25, "lr": 3e-3},
], ids=["iwae", "free-bits"])
def test_the_step_is_built_with_the_settings_the_run_records(tmp_path, monkeypatch, train):
    """The objective, K, free bits, clipping and Adam settings the step is constructed with
    are the config's — the values config.json records and evaluate's "trained with" line
    reads back."""
    built = []
    original = step_mod.TrainStep.__init__

    def spy(self, model, inference, **kwargs):
        built.append(kwargs)
        original(self, model, inference, **kwargs)

    monkeypatch.setattr(step_mod.TrainStep, "__init__", spy)
    _train_with_spy(tmp_path, monkeypatch, train)
    assert len(built) == 1
    got = {key: built[0][key] for key in train}
    assert got == {key: tuple(v) if isinstance(v, list) else v for key, v in train.items()}
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    recorded = TrainConfig.from_dict(saved)   # free bits are saved among the ELBO's options
    assert {key: getattr(recorded, key) for key in train} == got


def test_a_masked_run_s_step_receives_the_scheduled_kl_weight_and_learning_rate(tmp_path,
                                                                               monkeypatch):
    """Incomplete data train through their own step (vaelab.fit.masked): it too receives the
    linear KL warm-up and the cosine learning rate of every step, and the metrics say what
    it received last in each epoch."""
    from vaelab.fit import masked

    seen: list[dict] = []
    original = masked.MaskedTrainStep.__call__

    def spy(self, x, index=None, kl_weight=1.0):
        seen.append({"kl_weight": kl_weight, "lr": self.inner.theta_opt.param_groups[0]["lr"]})
        return original(self, x, index, kl_weight)

    monkeypatch.setattr(masked.MaskedTrainStep, "__call__", spy)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g) @ torch.randn(5, 5, generator=g)
    x[torch.rand(40, 5, generator=g) < 0.2] = math.nan
    config = {"model": {"hidden": [8], "latent_dim": 2, "missing": "mask",
                        "likelihood": "gaussian"},
              "train": {"epochs": EPOCHS, "batch_size": 8, "val_fraction": 0.2,
                        "binarize": "none", "kl_schedule": "linear", "kl_warmup_epochs": 2.0,
                        "lr": 1e-2, "lr_schedule": "cosine"}}
    train_mod.train(config, tmp_path / "run", dataset=data.Dataset(x, None, None, "t"),
                    log=None, progress=False)
    rows = [json.loads(line) for line in
            (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(seen) == 12
    assert [s["kl_weight"] for s in seen] == pytest.approx([min(1.0, t / 8) for t in range(12)])
    assert [s["lr"] for s in seen] == pytest.approx(
        [1e-2 * 0.5 * (1 + math.cos(math.pi * t / 12)) for t in range(12)], rel=1e-12)
    assert [r["kl_weight"] for r in rows] == pytest.approx(_last_of_each_epoch(seen,
                                                                               "kl_weight"))
    assert [r["lr"] for r in rows] == pytest.approx(_last_of_each_epoch(seen, "lr"))


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_the_masked_step_s_loss_uses_the_kl_weight_it_receives(objective):
    """The weight reaches the masked loss itself: with the same draws the ELBO gradient at
    w = 0.3 is 0.7·g(0) + 0.3·g(1) (linear in w; float64), and the IWAE one differs from
    both ends (there w tempers the weights inside the log-mean-exp)."""
    from vaelab.config import ModelConfig
    from vaelab.fit.masked import MaskedTrainStep
    from vaelab.fit.step import TrainStep
    from vaelab.infer.schemes import Amortized
    from vaelab.model.masked import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(data_dim=5, latent_dim=2, hidden=(8,), missing="mask",
                                    likelihood="gaussian")).double()
    step = MaskedTrainStep(TrainStep(model, Amortized(model.encoder), lr=1e-2, compile=False,
                                     num_samples=3), objective=objective)
    for opt in step.inner._optimizers():
        opt.step = lambda *a, **k: None                        # keep the weights: read grads
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    x[torch.rand(6, 5, generator=g) < 0.3] = math.nan
    grads = {}
    for w in (0.0, 1.0, 0.3):
        torch.manual_seed(7)
        step(x, None, kl_weight=w)
        grads[w] = torch.cat([p.grad.flatten() for p in model.parameters()
                              if p.grad is not None])
    assert not torch.allclose(grads[0.0], grads[1.0])
    mix = 0.7 * grads[0.0] + 0.3 * grads[1.0]
    if objective == "elbo":
        torch.testing.assert_close(grads[0.3], mix, rtol=1e-10, atol=1e-12)
    else:
        assert not torch.allclose(grads[0.3], grads[0.0]) and not torch.allclose(grads[0.3],
                                                                                grads[1.0])
