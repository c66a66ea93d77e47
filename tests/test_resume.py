"""Resuming a run reaches the same weights and metrics, bit for bit, as never stopping.

One run is killed with SIGKILL at an arbitrary moment after its first checkpoint (a real
separate process), others are interrupted in-process after a chosen epoch; both are resumed
and compared with an uninterrupted run (same seed, same thread count).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vaelab import cli, data
from vaelab.fit import runs
from vaelab.fit.train import train

# the module itself: vaelab/__init__ may re-export the function ``train`` as ``vaelab.fit.train``
train_mod = importlib.import_module("vaelab.fit.train")

CONFIG = {"model": {"hidden": [32], "latent_dim": 3},
          "train": {"epochs": 4, "batch_size": 50, "limit": 500, "val_fraction": 0.1,
                    "kl_warmup_epochs": 1.5, "lr_schedule": "cosine", "grad_clip": 50.0}}
TIMING = ("seconds", "samples_per_s")



def with_train(**options) -> dict:
    return {"model": dict(CONFIG["model"]), "train": {**CONFIG["train"], **options}}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fashion() -> data.Dataset:
    return data.load_dataset("fashion-mnist", "train", limit=500)


class _Stop(Exception):
    pass


def _stop_after(epoch: int):
    def log(line: str) -> None:
        if line.startswith(f"epoch {epoch}/"):
            raise _Stop
    return log


def _untimed(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in metrics]


def assert_same_run(a, b) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ia, ib = a.inference.state_dict(), b.inference.state_dict()
    assert all(torch.equal(ia[k], ib[k]) for k in ia)
    assert _untimed(a.metrics) == _untimed(b.metrics)
    assert _untimed(runs.read_metrics(b.run_dir)) == _untimed(b.metrics)


@pytest.mark.parametrize("options", [{}, {"inference": "per-datapoint"},
                                     {"early_stopping_patience": 1, "binarize": "static"}],
                         ids=["amortized", "per-datapoint", "early-stopping"])
def test_interrupted_and_resumed_equals_uninterrupted(fashion, tmp_path, options):
    if options.get("inference") == "per-datapoint":
        options = {**options, "kl_warmup_epochs": 0.0}
    config = with_train(**options)
    straight = train(config, tmp_path / "straight", dataset=fashion, log=None)
    with pytest.raises(_Stop):
        train(config, tmp_path / "resumed", dataset=fashion, log=_stop_after(2))
    assert len(runs.read_metrics(tmp_path / "resumed")) == 2
    resumed = train(config, tmp_path / "resumed", dataset=fashion, resume=True, log=None)
    assert_same_run(straight, resumed)
    assert resumed.stopped_early == straight.stopped_early


def test_resume_extends_a_finished_run(fashion, tmp_path):
    constant = with_train(lr_schedule="constant", kl_warmup_epochs=0.0)
    four = train(constant, tmp_path / "four", dataset=fashion, log=None)
    three = with_train(lr_schedule="constant", kl_warmup_epochs=0.0, epochs=3)
    train(three, tmp_path / "extended", dataset=fashion, log=None)
    extended = train(constant, tmp_path / "extended", dataset=fashion, resume=True, log=None)
    assert_same_run(four, extended)
    assert runs.read_config(tmp_path / "extended").train.epochs == 4


def test_resume_of_a_finished_run_changes_nothing(fashion, tmp_path):
    first = train(with_train(epochs=2), tmp_path / "run", dataset=fashion, log=None)
    weights = (tmp_path / "run" / "model.safetensors").read_bytes()
    metrics = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    again = train(None, tmp_path / "run", dataset=fashion, resume=True, log=None)
    assert_same_run(first, again)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == weights
    # a kill after the last checkpoint but before model.safetensors / metrics.jsonl
    (tmp_path / "run" / "model.safetensors").unlink()
    (tmp_path / "run" / "metrics.jsonl").write_bytes(metrics.splitlines(keepends=True)[0])
    train(None, tmp_path / "run", dataset=fashion, resume=True, log=None)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == weights
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == metrics


SCRIPT = """
import sys, torch
torch.set_num_threads(1)
import importlib
from vaelab import data
train_mod = importlib.import_module("vaelab.fit.train")
train_mod._write_figures = lambda *a, **k: None
config = {config!r}
ds = data.load_dataset("fashion-mnist", "train", limit=500)
print("started", flush=True)
train_mod.train(config, sys.argv[1], dataset=ds, log=None, progress=False)
"""


def _checkpoint_epoch(out) -> int:
    try:
        return json.loads((out / "checkpoint" / "state.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def test_sigkill_mid_training_then_resume(fashion, tmp_path):
    config = with_train(epochs=12, limit=None)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT.format(config=config), str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 45
        while _checkpoint_epoch(out) < 1 and time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"training process ended early: {proc.stderr.read().decode()}")
            time.sleep(0.01)
        assert _checkpoint_epoch(out) >= 1, "no checkpoint within 45 s"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _checkpoint_epoch(out)
    assert 1 <= killed_at < 12, "the process finished before it could be killed"
    resumed = train(config, out, dataset=fashion, resume=True, log=None)
    straight = train(config, tmp_path / "straight", dataset=fashion, log=None)
    assert_same_run(straight, resumed)


@pytest.mark.device
@pytest.mark.parametrize("model", [{}, {"net": "conv", "conv_channels": [4, 8]},
                                   {"latent_dim": [3, 2], "hierarchy": "top-down"}],
                         ids=["mlp", "conv", "hierarchy"])
def test_resume_on_the_device_is_bit_identical_and_draws_the_figures(fashion, tmp_path,
                                                                     device, model):
    """On the device under test (CUDA: its exact settings), an interrupted and resumed run
    equals the uninterrupted one bit for bit, for MLP, conv and hierarchical models; the
    end-of-training figures take the CPU data to the model's device."""
    from vaelab.show.plots import write_run_figures

    config = {"model": {**CONFIG["model"], **model},
              "train": {**CONFIG["train"], "epochs": 3, "device": device.type}}
    straight = train(config, tmp_path / "straight", dataset=fashion, log=None,
                     figures=write_run_figures)
    assert next(straight.model.parameters()).device.type == device.type
    assert {p.name for p in (tmp_path / "straight").glob("*.png")} >= {
        "samples.png", "reconstructions.png", "curves.png", "latent.png"}
    with pytest.raises(_Stop):
        train(config, tmp_path / "resumed", dataset=fashion, log=_stop_after(2))
    resumed = train(config, tmp_path / "resumed", dataset=fashion, resume=True, log=None)
    assert_same_run(straight, resumed)


def test_resuming_on_another_device_says_the_streams_change(fashion, tmp_path):
    """A checkpoint written on CUDA (its RNG state holds the GPU's) resumed on the CPU says
    that the run stops being bit-identical; resuming on the same kind of device says nothing."""
    config = with_train(epochs=2)
    with pytest.raises(_Stop):
        train(config, tmp_path / "run", dataset=fashion, log=_stop_after(1))
    shutil.copytree(tmp_path / "run", tmp_path / "same")
    lines: list[str] = []
    train(config, tmp_path / "same", dataset=fashion, resume=True, log=lines.append)
    assert not [line for line in lines if "checkpointed on" in line]
    state_file = runs.checkpoint_path(tmp_path / "run") / runs.STATE_JSON
    state = json.loads(state_file.read_text())
    assert "cuda" not in state["rng"]
    state["rng"]["cuda"] = state["rng"]["torch"]          # as if written on a GPU
    state_file.write_text(json.dumps(state))
    train(config, tmp_path / "run", dataset=fashion, resume=True, log=lines.append)
    notes = [line for line in lines if "checkpointed on cuda and continues on cpu" in line]
    assert len(notes) == 1 and "bit for bit" in notes[0]


# ---------------------------------------------------------------- resume with a different --epochs
# ``--resume RUN --epochs N`` never leaves a run that contradicts itself.
#
# A run that finished 3 epochs, resumed with ``--epochs 1``, used to exit 0 and rewrite
# config.json to 1 epoch while the weights and metrics.jsonl held 3. Now fewer epochs than
# finished are refused before anything is written (every file byte-identical), and more epochs
# extend the run to exactly what an uninterrupted run of that length gives (bit-identical
# weights and metrics, since batches and noise are seeded per epoch). Extending a cosine
# learning-rate schedule is refused (its finished epochs decayed towards the old end).


def config(epochs: int, **train) -> dict:
    return {"model": {"hidden": [8], "latent_dim": 2},
            "train": {"epochs": epochs, "batch_size": 16, "val_fraction": 0.2, **train}}


@pytest.fixture(scope="module")
def blobs() -> data.Dataset:
    x = torch.rand(80, 12, generator=torch.Generator().manual_seed(3)).bernoulli()
    return data.Dataset(x, None, None, "blobs")


def train_run(cfg, out: Path, dataset, **kw):
    return train_mod.train(cfg, out, dataset=dataset, log=None, progress=False, **kw)


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file()}


def test_fewer_epochs_than_finished_is_refused_and_nothing_changes(blobs, tmp_path):
    run = tmp_path / "run"
    train_run(config(3), run, blobs)
    before = snapshot(run)
    with pytest.raises(runs.RunError,
                       match=r"already finished 3 epochs.*--epochs >= 3 to extend it, got 1"):
        train_run(config(1), run, blobs, resume=True)
    assert snapshot(run) == before
    assert runs.read_config(run).train.epochs == 3
    assert len(runs.read_metrics(run)) == 3


def test_more_epochs_extend_the_run_to_the_uninterrupted_result(blobs, tmp_path):
    extended, straight = tmp_path / "extended", tmp_path / "straight"
    train_run(config(2), extended, blobs)
    result = train_run(config(4), extended, blobs, resume=True)
    train_run(config(4), straight, blobs)
    assert runs.read_config(extended).train.epochs == 4
    assert [row["epoch"] for row in result.metrics] == [1, 2, 3, 4]
    a, b = load_file(extended / "model.safetensors"), load_file(straight / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in row.items() if k not in ("seconds", "samples_per_s")}
             for row in runs.read_metrics(extended)]
    assert strip == [{k: v for k, v in row.items() if k not in ("seconds", "samples_per_s")}
                     for row in runs.read_metrics(straight)]


def test_extending_a_cosine_schedule_is_refused(blobs, tmp_path):
    run = tmp_path / "run"
    train_run(config(2, lr_schedule="cosine"), run, blobs)
    before = snapshot(run)
    with pytest.raises(runs.RunError, match=r"cosine over 2 epochs"):
        train_run(config(3, lr_schedule="cosine"), run, blobs, resume=True)
    assert snapshot(run) == before


def test_cli_resume_with_fewer_epochs_is_one_line(tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "x.npy", (np.random.default_rng(0).random((80, 12)) < 0.4)
            .astype(np.float32))
    run = tmp_path / "run"
    common = ["--data", str(tmp_path / "x.npy"), "--hidden", "8", "--latent-dim", "2",
              "--batch-size", "16", "--quiet"]
    assert cli.main(["train", "--out", str(run), "--epochs", "2", *common]) == 0
    before = snapshot(run)
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run), "--epochs", "1", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vaelab: error: epochs (--epochs):")
    assert snapshot(run) == before
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 2


def test_an_out_folder_continues_only_after_a_torchrun_restart(tmp_path, monkeypatch):
    """torchrun restarts workers with their first start's flags: `--out RUN` then continues
    the run in RUN; a first start, an empty folder, or --overwrite never resume implicitly."""
    from vaelab.fit.resume import continues_after_restart

    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert not continues_after_restart(run)                      # no run in it yet
    (run / runs.CONFIG_FILE).write_text("{}")
    assert continues_after_restart(run)
    assert not continues_after_restart(run, overwrite=True)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert not continues_after_restart(run)
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")
    assert not continues_after_restart(run)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "-1")
    with pytest.raises(ValueError, match="TORCHELASTIC_RESTART_COUNT"):
        continues_after_restart(run)
