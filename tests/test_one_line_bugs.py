"""Tests against one-line bugs: each test here fails on a one-line bug that
the suite used to let pass, with the right value as its expectation.

* gradient clipping above every gradient norm changes nothing (a clip that also scales small
  gradients up would) — on the hand-gradient path and on the autograd path;
* the reparameterization noise differs between epochs, while validation draws are identical
  (the resume tests repeat a "same noise every epoch" mistake on both sides, so cannot see it);
* a failure inside the checkpoint write (any of its renames raising) leaves a readable
  checkpoint of the previous or the new epoch;
* a ``.npy`` object array whose pickle payload would create a file is refused unexecuted;
* a KL weight strictly between 0 and 1 on the autograd path: the gradient is exactly the
  weighted sum of the reconstruction and KL gradients (float64, to rounding).
(The standard errors against hand-computed values are in ``test_honest_numbers.py``.)
"""

from __future__ import annotations

import copy
import importlib
import os
import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab import cli, data
from vaelab.config import ModelConfig
from vaelab.fit import runs
from vaelab.fit import step as step_mod
from vaelab.fit.step import TrainStep
from vaelab.infer.schemes import Amortized
from vaelab.model.vae import build_vae

train_mod = importlib.import_module("vaelab.fit.train")
F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def batch(seed: int, n: int = 16, d: int = 12, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype).bernoulli()


# --------------------------------------------------------------------------- clipping


@pytest.mark.parametrize("prior", ["standard_normal", "learned_normal"])   # hand / autograd
def test_clipping_above_every_gradient_norm_changes_nothing(prior):
    torch.manual_seed(0)
    model = build_vae(ModelConfig(data_dim=12, latent_dim=3, hidden=(8,), prior=prior))
    twin = copy.deepcopy(model)
    clipped = TrainStep(model, Amortized(model.encoder), lr=1e-2, grad_clip=1e6, compile=False)
    plain = TrainStep(twin, Amortized(twin.encoder), lr=1e-2, compile=False)
    assert (clipped._grad is not None) == (prior == "standard_normal")
    norms = []
    for i in range(5):
        torch.manual_seed(100 + i)
        a = clipped(batch(i))
        torch.manual_seed(100 + i)
        b = plain(batch(i))
        assert a == b
        grads = [p.grad for p in twin.parameters() if p.grad is not None]
        if grads:
            norms.append(float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))))
    assert all(n < 1e6 for n in norms)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_clipping_below_the_norm_does_change_the_step():     # the oracle above can fail
    torch.manual_seed(0)
    model = build_vae(ModelConfig(data_dim=12, latent_dim=3, hidden=(8,)))
    twin = copy.deepcopy(model)
    clipped = TrainStep(model, Amortized(model.encoder), lr=1e-2, grad_clip=1e-3, compile=False)
    plain = TrainStep(twin, Amortized(twin.encoder), lr=1e-2, compile=False)
    for i in range(3):
        torch.manual_seed(100 + i)
        clipped(batch(i))
        torch.manual_seed(100 + i)
        plain(batch(i))
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters(),
                                                      strict=True))


# --------------------------------------------------------------------------- noise per epoch


def test_training_noise_differs_between_epochs_and_validation_draws_do_not(tmp_path,
                                                                          monkeypatch):
    noise: list[torch.Tensor] = []
    original = step_mod._standard_normal

    def record(shape, like):
        eps = original(shape, like)
        noise.append(eps.clone())
        return eps

    val_states: list[torch.Tensor] = []
    elbo_terms = train_mod.elbo_terms

    def record_val(*args, **kwargs):          # only validate() calls it in the loop
        val_states.append(torch.get_rng_state())
        return elbo_terms(*args, **kwargs)

    monkeypatch.setattr(step_mod, "_standard_normal", record)
    monkeypatch.setattr(train_mod, "elbo_terms", record_val)
    x = batch(0, n=40)
    config = {"model": {"hidden": [8], "latent_dim": 3},
              "train": {"epochs": 3, "batch_size": 32, "val_fraction": 0.2}}
    train_mod.train(config, tmp_path / "run", dataset=data.Dataset(x, None, None, "b"),
                    log=None, progress=False)
    assert len(noise) == 3 and len(val_states) == 3            # one batch of 32 per epoch
    assert all(n.shape == (32, 3) for n in noise)
    assert not torch.equal(noise[0], noise[1]) and not torch.equal(noise[1], noise[2])
    assert not torch.equal(noise[0], noise[2])
    assert torch.equal(val_states[0], val_states[1]) and torch.equal(val_states[1],
                                                                     val_states[2])


# --------------------------------------------------------------------------- checkpoint swap


def _state(epoch: int) -> tuple[dict[str, torch.Tensor], dict]:
    return {"w": torch.full((3,), float(epoch))}, {"epoch": epoch}


@pytest.mark.parametrize("failing_call", [1, 2, 3, 4])
def test_a_failing_rename_inside_the_checkpoint_write_leaves_a_readable_checkpoint(
        tmp_path, monkeypatch, failing_call):
    """A write renames four times: the tensors' and the JSON's temp files (os.replace), then
    the folder swap checkpoint -> checkpoint.old, checkpoint.new -> checkpoint (os.rename).
    Whichever raises, a complete checkpoint of epoch 1 or 2 remains and the next write works."""
    runs.write_checkpoint(tmp_path, *_state(1))
    calls = []
    real = {"rename": os.rename, "replace": os.replace}

    def flaky(name):
        def call(src, dst, *args, **kwargs):
            calls.append(name)
            if len(calls) == failing_call:
                raise OSError(28, "No space left on device", str(dst))
            return real[name](src, dst, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "rename", flaky("rename"))
    monkeypatch.setattr(os, "replace", flaky("replace"))
    with pytest.raises(OSError, match="No space left"):
        runs.write_checkpoint(tmp_path, *_state(2))
    monkeypatch.undo()
    assert calls[-1] == ("replace" if failing_call <= 2 else "rename")
    tensors, state = runs.read_checkpoint(tmp_path)
    assert state["epoch"] in (1, 2)
    assert torch.equal(tensors["w"], torch.full((3,), float(state["epoch"])))
    runs.write_checkpoint(tmp_path, *_state(3))            # and the next write recovers
    assert runs.read_checkpoint(tmp_path)[1]["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


# --------------------------------------------------------------------------- pickles


class _Payload:
    """Unpickling this calls Path(target).touch(): proof that the pickle ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.target),))


def test_npy_object_array_with_a_pickle_payload_is_refused_unexecuted(tmp_path, capsys):
    target = tmp_path / "pwned"
    array = np.empty(2, dtype=object)
    array[0], array[1] = _Payload(target), _Payload(target)
    path = tmp_path / "evil.npy"
    np.save(path, array, allow_pickle=True)
    assert not target.exists()
    np.load(path, allow_pickle=True)                  # the payload is live: it runs here
    assert target.exists()
    target.unlink()
    with pytest.raises((ValueError, TypeError)):
        data.load_dataset(str(path))
    assert not target.exists()
    capsys.readouterr()
    assert cli.main(["train", "--data", str(path), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vaelab: error: ") and err.count("\n") == 1
    assert not target.exists() and not (tmp_path / "run").exists()
    np.savez(tmp_path / "evil.npz", x=array, allow_pickle=True)
    with pytest.raises((ValueError, TypeError)):
        data.load_dataset(str(tmp_path / "evil.npz"))
    assert not target.exists()


# --------------------------------------------------------------------------- KL weight


def test_kl_weight_between_zero_and_one_on_the_autograd_path_is_linear_in_the_weight():
    """The loss is mean(w·KL − E log p): its gradient at w = 0.3 must be 0.7·g(0) + 0.3·g(1)
    with the same noise and weights (float64, to rounding), and the reported ELBO the true
    one (w plays no part in it)."""
    torch.manual_seed(0)
    model = build_vae(ModelConfig(data_dim=12, latent_dim=3, hidden=(8,),
                                  prior="learned_normal")).to(F64)
    step = TrainStep(model, Amortized(model.encoder), lr=1e-2, compile=False)
    assert step._fast is None and step._grad is None             # the autograd path
    step.theta_opt.step = lambda *a, **k: None                    # keep the weights: read grads
    x = batch(3, dtype=F64)
    grads, results = {}, {}
    for w in (0.0, 1.0, 0.3):
        torch.manual_seed(7)
        results[w] = step(x, None, kl_weight=w)
        grads[w] = [p.grad.clone() for p in model.parameters()]
    for g0, g1, gw in zip(grads[0.0], grads[1.0], grads[0.3], strict=True):
        torch.testing.assert_close(gw, 0.7 * g0 + 0.3 * g1, rtol=1e-12, atol=1e-14)
    assert any(not torch.allclose(g0, g1) for g0, g1 in zip(grads[0.0], grads[1.0],
                                                            strict=True))
    assert results[0.3] == results[1.0] == results[0.0]          # the true ELBO, rate, dist.
