"""``--resume RUN --epochs N`` never leaves a run that contradicts itself.

A run that finished 3 epochs, resumed with ``--epochs 1``, used to exit 0 and rewrite
config.json to 1 epoch while the weights and metrics.jsonl held 3. Now fewer epochs than
finished are refused before anything is written (every file byte-identical), and more epochs
extend the run to exactly what an uninterrupted run of that length gives (bit-identical
weights and metrics, since batches and noise are seeded per epoch). Extending a cosine
learning-rate schedule is refused (its finished epochs decayed towards the old end).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vaelab import cli, data
from vaelab.fit import runs

train_mod = importlib.import_module("vaelab.fit.train")
pytestmark = pytest.mark.usefixtures("one_thread")


def config(epochs: int, **train) -> dict:
    return {"model": {"hidden": [8], "latent_dim": 2},
            "train": {"epochs": epochs, "batch_size": 16, "val_fraction": 0.2, **train}}


@pytest.fixture(scope="module")
def blobs() -> data.Dataset:
    x = torch.rand(80, 12, generator=torch.Generator().manual_seed(3)).bernoulli()
    return data.Dataset(x, None, None, "blobs")


def train(cfg, out: Path, dataset, **kw):
    return train_mod.train(cfg, out, dataset=dataset, log=None, progress=False, **kw)


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file()}


def test_fewer_epochs_than_finished_is_refused_and_nothing_changes(blobs, tmp_path):
    run = tmp_path / "run"
    train(config(3), run, blobs)
    before = snapshot(run)
    with pytest.raises(runs.RunError,
                       match=r"already finished 3 epochs.*--epochs >= 3 to extend it, got 1"):
        train(config(1), run, blobs, resume=True)
    assert snapshot(run) == before
    assert runs.read_config(run).train.epochs == 3
    assert len(runs.read_metrics(run)) == 3


def test_more_epochs_extend_the_run_to_the_uninterrupted_result(blobs, tmp_path):
    extended, straight = tmp_path / "extended", tmp_path / "straight"
    train(config(2), extended, blobs)
    result = train(config(4), extended, blobs, resume=True)
    train(config(4), straight, blobs)
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
    train(config(2, lr_schedule="cosine"), run, blobs)
    before = snapshot(run)
    with pytest.raises(runs.RunError, match=r"cosine over 2 epochs"):
        train(config(3, lr_schedule="cosine"), run, blobs, resume=True)
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
