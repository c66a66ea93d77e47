"""vaelab.fit.train on small subsets of real Fashion-MNIST: run directory, schedules, early
stopping, non-finite steps, inference schemes, refusals."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vaelab
from vaelab import data
from vaelab.config import RunConfig, TrainConfig
from vaelab.fit import runs
from vaelab.fit.train import TrainingError, kl_weight, learning_rate, train
from vaelab.infer.objectives import elbo

# the module itself: vaelab/__init__ may re-export the function ``train`` as ``vaelab.fit.train``
train_mod = importlib.import_module("vaelab.fit.train")

TINY = {"model": {"hidden": [32], "latent_dim": 2},
        "train": {"epochs": 2, "batch_size": 100, "limit": 600, "val_fraction": 0.1}}



def tiny(**train_options) -> dict:
    return {"model": dict(TINY["model"]), "train": {**TINY["train"], **train_options}}


@pytest.fixture(scope="module")
def fashion() -> data.Dataset:
    return data.load_dataset("fashion-mnist", "train", limit=1000)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finished(fashion, tmp_path_factory):
    """A finished 2-epoch run (trained once for the whole module)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run") / "run"
    lines = []
    result = train(tiny(kl_warmup_epochs=1.5), out, dataset=fashion, log=lines.append,
                   progress=False)
    return result, out, lines


def test_run_directory_contents(finished):
    result, out, lines = finished
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors",
                                               "metrics.jsonl", "checkpoint"}
    assert {p.name for p in (out / "checkpoint").iterdir()} == {"state.json",
                                                                 "state.safetensors"}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows == result.metrics
    for row in rows:
        assert set(row) == {*train_mod.METRIC_KEYS, "val_active_units"}   # one latent layer
        assert all(math.isfinite(row[k]) for k in ("train_elbo", "val_elbo", "val_rate",
                                                   "samples_per_s", "lr", "seconds"))
        assert math.isclose(row["train_elbo"], -row["train_rate"] - row["train_distortion"],
                            rel_tol=1e-6)
    assert len(lines) == 3 and lines[0].startswith("epoch 1/2")
    assert lines[2].startswith("training done after epoch 2: val ELBO ")    # the saved one's
    assert lines[2].endswith(" at epoch 2 (saved; the last epoch)")
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "vaelab-run/1" and config["torch_version"] == torch.__version__
    assert config["dataset"] == {"name": "fashion-mnist", "num_train": 540, "num_val": 60}
    assert RunConfig.from_dict(config) == result.config
    assert result.config.model.data_dim == 784
    assert result.config.model.image_shape == (1, 28, 28)
    weights = load_file(out / "model.safetensors")
    state = result.model.state_dict()
    assert weights.keys() == state.keys()
    assert all(torch.equal(weights[k], state[k]) for k in state)


def test_load_gives_the_same_elbo(finished, fashion):
    result, out, _ = finished
    trained = vaelab.load(out)
    x = fashion.x[:32]
    torch.manual_seed(5)
    ours = trained.elbo(x, num_samples=3)
    torch.manual_seed(5)
    with torch.no_grad():
        theirs = elbo(result.model, result.model.encoder(x), x, 3)
    assert torch.equal(ours, theirs)
    assert trained.config == result.config and trained.metrics == result.metrics


def test_facade_methods(finished, fashion):
    trained = vaelab.load(finished[1])
    x = fashion.x[:4]
    images = x.reshape(4, 1, 28, 28)
    assert trained.sample(3).shape == (3, 784)
    assert trained.reconstruct(images).shape == (4, 784)
    assert trained.encode(x).batch_shape == (4,)
    estimate = trained.log_likelihood(x, num_samples=20)
    assert estimate.log_likelihood.shape == (4,)
    torch.manual_seed(0)
    assert bool((estimate.log_likelihood >= trained.elbo(x) - 5).all())
    with pytest.raises(ValueError, match="x"):
        trained.elbo(x * 2)


def test_schedules():
    config = TrainConfig(kl_warmup_epochs=2, lr=0.1, lr_schedule="cosine", epochs=4)
    assert [kl_weight(config, s, 10) for s in (0, 10, 15, 20, 35)] == [0, 0.5, 0.75, 1, 1]
    assert kl_weight(TrainConfig(), 0, 10) == 1.0
    assert learning_rate(config, 0, 10) == 0.1
    assert math.isclose(learning_rate(config, 20, 10), 0.05)
    exponential = replace(config, lr_schedule="exponential", lr_decay=0.5)
    assert [learning_rate(exponential, s, 10) for s in (0, 9, 10, 25)] == [0.1, 0.1, 0.05, 0.025]
    assert learning_rate(TrainConfig(lr=0.3), 1000, 10) == 0.3


def test_warmup_and_lr_reach_the_metrics(finished):
    rows = finished[0].metrics
    steps = rows[0]["step"]  # 540 rows / 100 per batch = 6 steps per epoch
    assert steps == 6 and rows[1]["step"] == 12
    assert rows[0]["kl_weight"] == pytest.approx(5 / 9)  # step 5 of 9 warm-up steps
    assert rows[1]["kl_weight"] == 1.0
    assert rows[0]["lr"] == 1e-3


def test_early_stopping_keeps_the_best_weights(fashion, tmp_path, monkeypatch):
    scores = iter([-100.0, -90.0, -95.0, -96.0, -97.0, -98.0])
    snapshots = []

    def scripted_validate(self):
        snapshots.append({k: v.clone() for k, v in self.model.state_dict().items()})
        return next(scores), 1.0, 2.0

    monkeypatch.setattr(train_mod._Trainer, "validate", scripted_validate)
    result = train(tiny(epochs=6, early_stopping_patience=2), tmp_path / "run",
                   dataset=fashion, log=None)
    assert result.stopped_early and result.best_epoch == 2 and len(result.metrics) == 4
    assert runs.saved_epoch(result.metrics, 2).epoch == 2      # what runs and report read
    best = snapshots[1]
    assert all(torch.equal(result.model.state_dict()[k], best[k]) for k in best)
    on_disk = load_file(tmp_path / "run" / "model.safetensors")
    assert all(torch.equal(on_disk[k], best[k]) for k in best)


def _nan_batches(monkeypatch, bad):
    """Make Batches.epoch yield NaN rows for the (epoch, i) pairs where bad(epoch, i)."""
    original = data.Batches.epoch

    def epoch(self, e):
        for i, (x, index) in enumerate(original(self, e)):
            yield (torch.full_like(x, math.nan) if bad(e, i) else x), index

    monkeypatch.setattr(data.Batches, "epoch", epoch)


def test_nonfinite_steps_are_skipped_and_counted(fashion, tmp_path, monkeypatch):
    _nan_batches(monkeypatch, lambda e, i: i % 2 == 1)
    result = train(tiny(max_nonfinite_steps=2), tmp_path / "run", dataset=fashion, log=None)
    assert [row["skipped_steps"] for row in result.metrics] == [3, 3]
    assert all(math.isfinite(row["train_elbo"]) for row in result.metrics)


def test_divergence_stops_with_a_clear_error_and_finite_files(fashion, tmp_path, monkeypatch):
    _nan_batches(monkeypatch, lambda e, i: e >= 1)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="3 consecutive steps.*non-finite.*epoch 1"):
        train(tiny(epochs=3, max_nonfinite_steps=3), out, dataset=fashion, log=None)
    assert len(runs.read_metrics(out)) == 1
    weights = load_file(out / "model.safetensors")
    assert all(bool(torch.isfinite(v).all()) for v in weights.values())
    tensors, state = runs.read_checkpoint(out)
    assert state["epoch"] == 1
    assert all(bool(torch.isfinite(v).all()) for v in tensors.values() if v.is_floating_point())


def test_bad_data_is_refused_before_training(tmp_path):
    x = torch.rand(50, 6)
    x[3, 2] = math.nan
    with pytest.raises(ValueError, match="finite"):
        train(tiny(), tmp_path / "a", dataset=data.Dataset(x, None, None, "nan"), log=None)
    wide = data.Dataset(torch.randn(50, 6) * 3, None, None, "wide")
    with pytest.raises(ValueError, match="bernoulli.*\\[0, 1\\]"):
        train(tiny(binarize="none"), tmp_path / "b", dataset=wide, log=None)
    with pytest.raises(ValueError, match="binarize"):
        train(tiny(), tmp_path / "c", dataset=wide, log=None)


def test_gaussian_on_non_image_data(tmp_path):
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(0))
    config = tiny(binarize="none", limit=None)
    config["model"]["likelihood"] = "gaussian"
    result = train(config, tmp_path / "run", dataset=data.Dataset(x, None, None, "blobs"),
                   log=None)
    assert result.config.model.data_dim == 6 and result.config.model.image_shape is None
    assert math.isfinite(result.metrics[-1]["val_elbo"])
    assert vaelab.load(tmp_path / "run").sample(2).shape == (2, 6)


def test_existing_run_is_refused_unless_resume_or_overwrite(finished, fashion, tmp_path):
    out = finished[1]
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(runs.RunError, match="already holds a run.*resume.*overwrite"):
        train(tiny(), out, dataset=fashion, log=None)
    with pytest.raises(ValueError, match="resume, overwrite"):
        train(tiny(), out, dataset=fashion, resume=True, overwrite=True, log=None)
    with pytest.raises(runs.RunError, match=r"train\.lr"):
        train(tiny(lr=0.5), out, dataset=fashion, resume=True, log=None)
    assert (out / "model.safetensors").read_bytes() == before


def test_overwrite_replaces_the_old_run(fashion, tmp_path):
    out = tmp_path / "run"
    train(tiny(epochs=2), out, dataset=fashion, log=None)
    (out / "samples.png").write_bytes(b"old figure")
    (out / "notes.txt").write_text("mine")
    for name in ("eval.json", "gaps.json", "report.html"):  # results of the old model
        (out / name).write_text("{}")
    (out / "tensorboard").mkdir()
    result = train(tiny(epochs=1), out, dataset=fashion, overwrite=True, log=None)
    assert len(runs.read_metrics(out)) == 1 and runs.read_config(out) == result.config
    assert not (out / "samples.png").exists() and (out / "notes.txt").read_text() == "mine"
    stale = [n for n in ("eval.json", "gaps.json", "report.html", "tensorboard")
             if (out / n).exists()]
    assert stale == []  # nothing that described the old model survives


def test_unwritable_or_missing_paths(fashion, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: calls.append(1))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(runs.RunError, match="cannot write"):
        train(tiny(), blocker / "run", log=None)
    with pytest.raises(runs.RunError, match="expected a folder"):
        train(tiny(), blocker, log=None)
    with pytest.raises(runs.RunError, match="no run to resume"):
        train(tiny(), tmp_path / "nothing", resume=True, log=None)
    assert calls == []  # refused before loading any data


def test_per_datapoint_inference(fashion, tmp_path, monkeypatch):
    from vaelab.show.plots import write_run_figures

    out, lines = tmp_path / "run", []
    result = train(tiny(inference="per-datapoint", epochs=1), out, dataset=fashion,
                   log=lines.append, figures=write_run_figures)
    assert any("no validation ELBO" in line for line in lines)
    assert (out / "samples.png").exists() and (out / "curves.png").exists()
    assert not (out / "reconstructions.png").exists()  # the encoder was never trained
    row = result.metrics[0]
    assert row["val_elbo"] is None and math.isfinite(row["train_elbo"])
    weights = load_file(out / "model.safetensors")
    assert weights["inference.table.weight"].shape == (540, 4)
    trained = vaelab.load(out)
    assert trained.sample(2).shape == (2, 784)
    with pytest.raises(ValueError, match="per-datapoint"):
        trained.encode(fashion.x[:2])


def test_semi_amortized_and_alternating(fashion, tmp_path):
    semi = train(tiny(inference="semi-amortized", refine_steps=2, epochs=1),
                 tmp_path / "semi", dataset=fashion, log=None)
    alternating = train(tiny(schedule="alternating", phi_steps=2, epochs=1),
                        tmp_path / "alt", dataset=fashion, log=None)
    for result in (semi, alternating):
        assert math.isfinite(result.metrics[0]["val_elbo"])
    trained, x = vaelab.load(tmp_path / "semi"), fashion.x[:8]
    with torch.no_grad():
        plain = trained.model.encoder(x).mean
    refined = trained.encode(x).mean  # q refined by refine_steps SGD steps, as in training
    assert refined.shape == plain.shape and not torch.equal(refined, plain)


def test_static_binarization_and_no_validation(fashion, tmp_path):
    result = train(tiny(binarize="static", val_fraction=0, epochs=1), tmp_path / "run",
                   dataset=fashion, log=None)
    assert result.metrics[0]["val_elbo"] is None and result.best_epoch is None
    assert json.loads((tmp_path / "run" / "config.json").read_text())["dataset"][
        "num_train"] == 600


def test_figures_writer_is_called_once_at_the_end(fashion, tmp_path):
    seen = []
    train(tiny(epochs=1), tmp_path / "run", dataset=fashion, log=None,
          figures=lambda run_dir, model, dataset, metrics, **kw: seen.append(
              (run_dir, len(dataset), len(metrics))))
    assert seen == [(tmp_path / "run", 60, 1)]



DISTRIBUTED_SCRIPT = """
import os, sys, torch
torch.set_num_threads(1)
import importlib
train_mod = importlib.import_module("vaelab.fit.train")
train_mod._write_figures = lambda *a, **k: None
config = {"model": {"hidden": [16], "latent_dim": 2},
          "train": {"data": sys.argv[2], "epochs": 2, "batch_size": 50, "val_fraction": 0.1}}
result = train_mod.train(config, sys.argv[1], log=None, progress=False)
weights = torch.cat([v.flatten() for v in result.model.state_dict().values()])
values = [weights.double().sum().item(), result.metrics[-1]["train_elbo"],
          result.metrics[-1]["val_elbo"]]
with open(f"{sys.argv[1]}.rank{os.environ['RANK']}", "w") as f:
    f.write(" ".join(map(repr, values)))
"""


def test_torchrun_two_processes(fashion, tmp_path):
    """Two CPU ranks (gloo): identical weights on both, one run directory, global metrics."""
    script, out, images = tmp_path / "script.py", tmp_path / "run", tmp_path / "x.npy"
    script.write_text(DISTRIBUTED_SCRIPT)
    np.save(images, (fashion.x[:400] * 255).round().to(torch.uint8).reshape(400, 28, 28).numpy())
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(script), str(out), str(images)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = [(tmp_path / f"run.rank{r}").read_text().split() for r in (0, 1)]
    assert results[0] == results[1]  # same weights and metrics on both ranks
    rows = runs.read_metrics(out)
    assert [row["step"] for row in rows] == [4, 8]  # 360 rows / (50 x 2 ranks) per epoch
    trained = vaelab.load(out)
    weights = torch.cat([v.flatten() for v in trained.model.state_dict().values()])
    assert weights.double().sum().item() == float(results[0][0])


# --------------------------------------------------------------------------- craft options


def test_warmup_and_plateau_learning_rates_at_given_steps():
    cfg = TrainConfig(lr=1e-3, lr_warmup_epochs=2, epochs=10)
    assert learning_rate(cfg, 0, 50) == pytest.approx(1e-3 / 100)     # (0+1) / (2·50)
    assert learning_rate(cfg, 49, 50) == pytest.approx(1e-3 / 2)
    assert learning_rate(cfg, 99, 50) == pytest.approx(1e-3)
    assert learning_rate(cfg, 500, 50) == pytest.approx(1e-3)
    plateau = TrainConfig(lr=1e-3, lr_schedule="plateau")
    assert learning_rate(plateau, 123, 50, plateau_scale=0.25) == pytest.approx(2.5e-4)
    cosine = TrainConfig(lr=1e-3, lr_schedule="cosine", lr_warmup_epochs=1, epochs=4)
    step = 9    # in the warm-up: the cosine value times (step + 1) / 20
    expected = 1e-3 * 0.5 * (1 + math.cos(math.pi * step / 80)) * (step + 1) / 20
    assert learning_rate(cosine, step, 20) == pytest.approx(expected)


def test_plateau_halves_the_rate_the_step_receives(fashion, tmp_path, monkeypatch):
    """A spy on the step: after lr_patience epochs without a better validation ELBO the rate
    it is given halves (here the validation ELBO is forced to stall)."""
    seen: list[float] = []
    real = train_mod.TrainStep.set_lr
    monkeypatch.setattr(train_mod.TrainStep, "set_lr",
                        lambda self, lr: (seen.append(lr), real(self, lr))[1])
    stalled = iter([-100.0, -101.0, -102.0, -99.0, -103.0])
    monkeypatch.setattr(train_mod._Trainer, "validate",
                        lambda self: (next(stalled), 1.0, 99.0))
    cfg = tiny(epochs=5, lr_schedule="plateau", lr_patience=1, lr=1e-3)
    result = train(cfg, tmp_path / "run", dataset=fashion, progress=False, log=None)
    per_epoch = len(seen) // 5
    firsts = [seen[e * per_epoch] for e in range(5)]
    # epoch 1 best; 2 stalls → halve; 3 stalls → halve; 4 best; 5 stalls → halve
    assert firsts == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4, 2.5e-4])
    assert [row["lr"] for row in result.metrics] == pytest.approx(firsts)


def test_ema_run_saves_and_validates_with_the_average(fashion, tmp_path):
    cfg = tiny(epochs=2, ema_decay=0.9)
    run = tmp_path / "ema"
    result = train(cfg, run, dataset=fashion, progress=False, log=None)
    saved = load_file(str(run / "model.safetensors"))
    ckpt = load_file(str(run / "checkpoint" / "state.safetensors"))
    live = result.model.state_dict()
    for key, value in saved.items():
        # the model handed back and the saved file hold the moving average ...
        torch.testing.assert_close(value, live[key], rtol=0, atol=0)
        torch.testing.assert_close(value, ckpt[f"ema.model.{key}"], rtol=0, atol=0)
    # ... which differs from the live weights the checkpoint keeps for the optimizer
    assert any(not torch.equal(ckpt[f"ema.model.{k}"], ckpt[f"model.{k}"]) for k in saved)
    # and the validation ELBO of the last epoch is the average's
    torch.manual_seed(0)
    val = data.train_val_split(fashion.subset(slice(0, 600)), 0.1, 0)[1]
    val = data.static_binarize(val, 1).floats()
    torch.manual_seed(0 + 7919)
    with torch.no_grad():
        terms = elbo(result.model, result.model.encode(val.x), val.x)
    assert float(terms.mean()) == pytest.approx(result.metrics[-1]["val_elbo"], abs=1e-3)


def test_vamp_pseudo_inputs_move_during_training(fashion, tmp_path):
    """The VampPrior's pseudo-inputs are learned: after one epoch they differ from the seeded
    initial ones in every row (a squashing that started flat would leave them still)."""
    cfg = tiny(epochs=1)
    cfg["model"].update(prior="vamp", prior_components=5)
    result = train(cfg, tmp_path / "vamp", dataset=fashion, progress=False, log=None)
    torch.manual_seed(result.config.train.seed)       # the trainer's seed before building
    start = vaelab.build_vae(result.config.model).prior_module.pseudo_inputs.detach()
    moved = (result.model.prior_module.pseudo_inputs.detach() - start).abs().amax(dim=1)
    assert moved.shape == (5,) and bool((moved > 1e-3).all()), moved


def test_a_run_killed_after_its_last_checkpoint_resumes_to_a_fresh_runs_files(tmp_path):
    """Killed between the last epoch's checkpoint and the figures (as a tune trial can be),
    the resume has no epoch left to train and still ends as a fresh run does: the same files
    (curves.png among them) and the same final weights (the best epoch's)."""
    from vaelab.show.plots import write_run_figures

    rows = tmp_path / "x.npy"
    np.save(rows, (np.random.default_rng(0).random((300, 10)) < 0.4).astype(np.float32))
    config = {"model": {"hidden": [8], "latent_dim": 2},
              "train": {"data": str(rows), "epochs": 3, "batch_size": 50, "lr": 0.01,
                        "early_stopping_patience": 3, "compile": False}}
    options = {"log": None, "progress": False, "figures": write_run_figures}
    fresh = train(config, tmp_path / "fresh", **options)

    def killed(row: dict) -> None:
        if row["epoch"] == 3:                  # saved: checkpoint, metrics, model
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "killed", on_epoch=killed, **options)
    assert not (tmp_path / "killed" / "curves.png").exists()
    resumed = train(None, tmp_path / "killed", resume=True, **options)
    assert resumed.nothing_to_do is not None
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == sorted(
        p.name for p in (tmp_path / "fresh").iterdir())
    assert fresh.best_epoch == resumed.best_epoch
    for name, value in fresh.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    again = train(None, tmp_path / "killed", resume=True, log=None, progress=False,
                  figures=lambda *a, **k: pytest.fail("figures drawn again"))
    assert again.nothing_to_do is not None


def test_the_collapse_warning_reads_the_saved_epochs_row():
    """Early stopping saved epoch 2: a warning about the saved model reads epoch 2's row, not
    the last epoch's (whose units may have collapsed after the best epoch)."""
    from vaelab.fit import runs
    from vaelab.fit.train import saved_row

    metrics = [{"epoch": 1, "val_elbo": -10.0}, {"epoch": 2, "val_elbo": -5.0},
               {"epoch": 3, "val_elbo": -7.0}]
    assert saved_row(metrics, runs.saved_epoch(metrics, 5)) is metrics[1]
    assert saved_row(metrics, runs.saved_epoch(metrics, None)) is metrics[2]
    assert saved_row(metrics, None) is metrics[2]
