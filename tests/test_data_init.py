"""vaelab.fit.data_init in training runs: ``--prior-init data`` starts the VampPrior's
pseudo-inputs at seeded training rows that then move (also where they start at 0 or 1, the
flat ends of a hard-tanh), and ``--weight-norm`` sets g and b from the first training batch,
is recorded, reloads and resumes bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vaelab import data
from vaelab.fit import data_init
from vaelab.fit import train as train_mod
from vaelab.model import priors, weight_norm
from vaelab.use.trained import load

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Grey levels with many exact 0s and 1s (as a clothing image's background)."""
    x = np.random.default_rng(0).uniform(size=(100, 16)).astype(np.float32)
    x[x < 0.4], x[x > 0.9] = 0.0, 1.0
    return x


def config(**model) -> dict:
    return {"model": {"hidden": [12], "latent_dim": 2, **model},
            "train": {"epochs": 1, "batch_size": 20, "val_fraction": 0.0, "lr": 1e-2}}


_INITIALISE = priors.VampPrior.initialise_from_data


def _vamp_start(monkeypatch, images, run, seed: int):
    """(the rows handed over, the rows chosen, the pseudo-inputs right after the data init,
    the trained ones) of a 1-epoch run in ``run``."""
    starts = []

    def spy(self, x):
        rows = _INITIALISE(self, x)
        starts.append((x.clone(), rows, self.pseudo_inputs.detach().clone()))
        return rows

    monkeypatch.setattr(priors.VampPrior, "initialise_from_data", spy)
    cfg = config(prior="vamp", prior_options={"components": 6, "init": "data"})
    cfg["train"]["seed"] = seed
    result = train_mod.train(cfg, run, dataset=images, log=None, progress=False)
    (x, rows, start), = starts
    return x, rows, start, result.model.prior_module.pseudo_inputs.detach()


def test_vamp_pseudo_inputs_start_at_seeded_training_rows_and_move(monkeypatch, images,
                                                                   tmp_path):
    x, rows, start, trained = _vamp_start(monkeypatch, images, tmp_path / "a", seed=0)
    assert torch.equal(x, torch.from_numpy(images))                # the training rows
    assert len(set(rows.tolist())) == 6 and torch.equal(start, x[rows])
    again = _vamp_start(monkeypatch, images, tmp_path / "b", seed=0)
    other = _vamp_start(monkeypatch, images, tmp_path / "c", seed=1)
    assert torch.equal(again[2], start) and not torch.equal(other[2], start)   # the seed's
    moved = (trained - start).abs()
    assert bool((moved.amax(1) > 1e-3).all()), moved.amax(1)       # every pseudo-input moved
    at_ends = (start == 0) | (start == 1)                           # hard-tanh's flat ends
    assert int(at_ends.sum()) > 20 and float((moved[at_ends] > 0).float().mean()) > 0.9


def test_weight_norm_run_initialises_from_the_first_batch_records_reloads_and_resumes(
        monkeypatch, images, tmp_path):
    snapshots = []
    real = data_init.weight_norm_from_batch

    def spy(modules, forward, seed, world_size=1):
        done = real(modules, forward, seed, world_size)
        snapshots.append({k: v.clone() for k, v in modules[0].state_dict().items()})
        return done

    monkeypatch.setattr(data_init, "weight_norm_from_batch", spy)
    lines: list[str] = []
    cfg = config(weight_norm=True)
    cfg["train"]["epochs"] = 2
    straight = train_mod.train(cfg, tmp_path / "a", dataset=images, log=lines.append,
                               progress=False)
    assert "weight normalisation: g and b of 4 layers set from the first training batch" in lines
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["model"]["net_options"]["weight_norm"] is True
    # the first encoder layer, right after the init, on the run's first batch (float64)
    first_x = next(iter(data.Batches(torch.from_numpy(images), 20, seed=0,
                                     device=torch.device("cpu"), binarize="dynamic").epoch(0)))[0]
    state = snapshots[0]
    g, v = (state[f"encoder.net.0.parametrizations.weight.original{i}"].double().numpy()
            for i in (0, 1))
    b = state["encoder.net.0.bias"].double().numpy()
    a = first_x.double().numpy() @ (g * v / np.linalg.norm(v, axis=1, keepdims=True)).T + b
    np.testing.assert_allclose(a.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(a.std(0), 1.0, atol=1e-4)
    # reloaded from the run directory: the same weight-normalised model
    trained = load(tmp_path / "a")
    assert weight_norm.layers(trained.model)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, trained.model.state_dict()[key]), key

    class Stop(Exception):
        pass

    def stop(line: str) -> None:
        if line.startswith("epoch 1/"):
            raise Stop

    with pytest.raises(Stop):
        train_mod.train(cfg, tmp_path / "b", dataset=images, log=stop, progress=False)
    resumed = train_mod.train(cfg, tmp_path / "b", dataset=images, resume=True, log=None,
                              progress=False)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
