"""The objectives inside training: TrainStep and train() with IWAE, DReG, β, schedules and free
bits. Oracles: the true ELBO recomputed by ``elbo_terms`` on the same draws (the reported
numbers never depend on β, free bits or the objective); two runs that differ only in β or free
bits end with different weights; resume bit-exact; the CLI's config.json and eval.json."""

from __future__ import annotations

import copy
import importlib
import json

import numpy as np
import pytest
import torch

from vaelab import cli, data
from vaelab.config import ModelConfig
from vaelab.fit import runs
from vaelab.fit.step import TrainStep
from vaelab.infer.objectives import elbo_terms
from vaelab.infer.schemes import Amortized
from vaelab.model.vae import build_vae

train_mod = importlib.import_module("vaelab.fit.train")
pytestmark = pytest.mark.usefixtures("one_thread")


def small_vae(prior: str = "standard_normal"):
    torch.manual_seed(0)
    return build_vae(ModelConfig(data_dim=12, latent_dim=3, hidden=(16,), prior=prior))


def batch(n: int = 20) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return (torch.rand(n, 12, generator=g) < 0.4).float()


def one_step(model, x, *, kl_weight=1.0, seed=5, **options):
    model = copy.deepcopy(model)
    step = TrainStep(model, Amortized(model.encoder), lr=1e-2, **options)
    torch.manual_seed(seed)
    result = step(x, None, kl_weight)
    return result, model


# learned_normal takes the autograd path; standard_normal the hand-derived fast path
@pytest.mark.parametrize("prior", ["standard_normal", "learned_normal"])
@pytest.mark.parametrize("options", [
    {"kl_weight": 0.2}, {"kl_weight": 1.0, "free_bits": 2.0},
    {"kl_weight": 1.0, "objective": "iwae", "num_samples": 4},
    {"kl_weight": 0.5, "objective": "iwae-dreg", "num_samples": 4}])
def test_beta_free_bits_and_objective_change_the_weights_but_not_the_reported_elbo(prior,
                                                                                    options):
    model, x = small_vae(prior), batch()
    options = dict(options)
    k = options.get("num_samples", 1)
    ref, ref_model = one_step(model, x, num_samples=k)
    got, got_model = one_step(model, x, **options)
    # the true ELBO of the weights before the step, on the same draws
    torch.manual_seed(5)
    terms = elbo_terms(model, model.encoder(x), x, k)
    for value, want in ((got.elbo, terms.elbo), (got.rate, terms.kl),
                        (got.distortion, -terms.expected_log_likelihood)):
        assert value == pytest.approx(float(want.mean().detach()), rel=1e-5, abs=1e-5)
    assert (got.elbo, got.rate, got.distortion) == pytest.approx(
        (ref.elbo, ref.rate, ref.distortion), rel=1e-5, abs=1e-5)
    changed = [not torch.equal(a, b) for a, b in zip(ref_model.state_dict().values(),
                                                      got_model.state_dict().values(),
                                                      strict=True)]
    assert any(changed)


def test_the_fast_path_is_kept_for_the_plain_elbo_only():
    model = small_vae()
    for options, fast in (({}, True), ({"objective": "iwae", "num_samples": 2}, False),
                          ({"free_bits": 0.1}, False)):
        step = TrainStep(model, Amortized(model.encoder), **options)
        assert (step._fast is not None) is fast


def test_train_step_rejects_bad_objective_options():
    model = small_vae()
    with pytest.raises(ValueError, match="objective"):
        TrainStep(model, Amortized(model.encoder), objective="vimco")
    with pytest.raises(ValueError, match="free_bits"):
        TrainStep(model, Amortized(model.encoder), objective="iwae", free_bits=1.0)


# --------------------------------------------------------------------------- train()

CONFIG = {"model": {"hidden": [32], "latent_dim": 3},
          "train": {"epochs": 3, "batch_size": 50, "limit": 300, "val_fraction": 0.1,
                    "objective": "iwae-dreg", "num_samples": 3, "beta": 0.5,
                    "kl_schedule": "cyclical", "kl_cycles": 2, "kl_ratio": 0.5}}


@pytest.fixture(scope="module")
def fashion() -> data.Dataset:
    return data.load_dataset("fashion-mnist", "train", limit=300)


class _Stop(Exception):
    pass


def test_an_iwae_dreg_cyclical_run_resumes_bit_exactly_and_reports_the_true_elbo(fashion,
                                                                                tmp_path):
    straight = train_mod.train(CONFIG, tmp_path / "a", dataset=fashion, log=None,
                               progress=False)

    def stop(line):
        if line.startswith("epoch 2/"):
            raise _Stop

    with pytest.raises(_Stop):
        train_mod.train(CONFIG, tmp_path / "b", dataset=fashion, log=stop, progress=False)
    resumed = train_mod.train(CONFIG, tmp_path / "b", dataset=fashion, resume=True, log=None,
                              progress=False)
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    untimed = [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")}
               for r in straight.metrics]
    assert untimed == [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")}
                       for r in resumed.metrics]
    stored = json.loads((tmp_path / "a" / "config.json").read_text())["train"]
    assert (stored["objective"], stored["num_samples"], stored["kl_schedule"]) == (
        "iwae-dreg", 3, "cyclical")
    # the weight of each epoch's last step t: β · min(1, τ / R), τ = (t · M mod T) / T
    n = straight.metrics[0]["step"]
    total = 3 * n
    assert [r["kl_weight"] for r in straight.metrics] == pytest.approx(
        [0.5 * min(1.0, ((e * n - 1) * 2 % total) / total / 0.5) for e in (1, 2, 3)])
    assert len({r["kl_weight"] for r in straight.metrics}) > 1
    # validation reports the true ELBO of the final weights (fixed seed, β = 1)
    val = runs.read_metrics(tmp_path / "a")[-1]["val_elbo"]
    x_val = data.train_val_split(fashion.subset(slice(0, 300)), 0.1, 0)[1]
    x_val = data.static_binarize(x_val, 1).x.float()
    model = straight.model.eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 + 7919)
        want = float(elbo_terms(model, model.encoder(x_val), x_val, 3).elbo.mean())
    assert val == pytest.approx(want, rel=1e-6)


@pytest.fixture(scope="module")
def npy_images(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "images.npy"
    np.save(path, (np.random.default_rng(0).uniform(size=(48, 4, 4)) < 0.5).astype(np.float32))
    return path


def test_cli_records_the_objective_in_config_and_eval_json(npy_images, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--data", str(npy_images), "--out", str(run), "--epochs", "1",
                     "--hidden", "8", "--latent-dim", "2", "--batch-size", "16", "--quiet",
                     "--objective", "iwae", "--num-samples", "4", "--beta", "0.5",
                     "--kl-warmup", "1"]) == 0
    train = json.loads((run / "config.json").read_text())["train"]
    assert (train["objective"], train["num_samples"], train["beta"], train["kl_schedule"]) == (
        "iwae", 4, 0.5, "linear")
    assert cli.main(["evaluate", str(run), "--k", "10", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "trained with: objective iwae (K = 4)" in out
    report = json.loads((run / "eval.json").read_text())
    assert report["trained_with"]["objective"] == "iwae"
    assert report["trained_with"]["beta"] == 0.5


# --------------------------------------------------------------------------- torchrun (gloo)

D_DIST, L_DIST, B_DIST, K_DIST, STEPS_DIST, WORLD = 6, 2, 8, 3, 3, 2


def _dist_model():
    torch.manual_seed(0)
    return build_vae(ModelConfig(data_dim=D_DIST, latent_dim=L_DIST, hidden=(5,),
                                 prior="learned_normal")).double()


def _dist_data():
    g = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((STEPS_DIST, B_DIST, D_DIST), 0.5, dtype=torch.float64),
                        generator=g)
    eps = torch.randn(STEPS_DIST, K_DIST, B_DIST, L_DIST, generator=g, dtype=torch.float64)
    return x, eps


def _dreg_steps(rows: slice, reduce=None) -> tuple[dict, float]:
    """Three IWAE-DReG steps on x[:, rows] with q's draws taken from a fixed ε table."""
    model = _dist_model()
    x, eps = _dist_data()
    counter = iter(range(STEPS_DIST))
    original = torch.distributions.Normal.rsample

    def rsample(self, sample_shape=()):
        return self.loc + self.scale * eps[next(counter), :, rows]

    torch.distributions.Normal.rsample = rsample
    try:
        step = TrainStep(model, Amortized(model.encoder), lr=1e-2, compile=False,
                         objective="iwae-dreg", num_samples=K_DIST, reduce_gradients=reduce)
        elbo = [step(x[t, rows], None, 0.7).elbo for t in range(STEPS_DIST)][-1]
    finally:
        torch.distributions.Normal.rsample = original
    return {k: v.clone() for k, v in model.state_dict().items()}, elbo


def _dreg_worker(rank: int, port: int, out_path: str) -> None:
    import os

    from vaelab.fit import distributed

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.init_from_env("cpu")
    half = B_DIST // WORLD
    state, elbo = _dreg_steps(slice(rank * half, (rank + 1) * half),
                              distributed.average_gradients)
    mean = distributed.all_reduce_mean({"elbo": elbo})
    if distributed.is_main_process():
        torch.save({"state": state, "elbo": mean["elbo"]}, out_path)
    distributed.cleanup()


def test_two_gloo_processes_train_iwae_dreg_like_one_process(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_dreg_worker, args=(port, str(tmp_path / "rank0.pt")), nprocs=WORLD, join=True)
    got = torch.load(tmp_path / "rank0.pt")
    state, elbo = _dreg_steps(slice(None))
    for key, value in state.items():
        torch.testing.assert_close(got["state"][key], value, rtol=1e-10, atol=1e-12, msg=key)
    assert got["elbo"] == pytest.approx(elbo, rel=1e-10)
    start = _dist_model().state_dict()
    assert all(not torch.equal(value, start[key]) for key, value in state.items()
               if value.is_floating_point())          # every parameter was trained
