"""The small things a new user tripped on.

* ``--val-fraction`` exists (an error message pointed at ``val_fraction``), and the messages
  about it name the flag;
* offline MNIST: the message names a real mechanism (``VAELAB_DATA``), not "pass root", and
  leaves no empty ``~/.cache/vaelab/mnist`` behind;
* under torchrun the closing summary prints once (rank 0);
* the quickstart ends with one line: what was trained, its test log-likelihood, where the
  pictures are, how long it took.
"""

from __future__ import annotations

import importlib.util
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab import cli, data
from vaelab.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def npy(tmp_path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, (np.random.default_rng(0).random((60, 12)) < 0.4).astype(np.float32))
    return path


SMALL = ["--hidden", "8", "--latent-dim", "2", "--batch-size", "16", "--epochs", "1", "--quiet"]


def test_val_fraction_flag_sets_the_split(npy, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--data", str(npy), "--out", str(run), "--val-fraction", "0",
                     *SMALL]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["val_fraction"] == 0
    assert config["dataset"]["num_val"] == 0 and config["dataset"]["num_train"] == 60
    run2 = tmp_path / "run2"
    assert cli.main(["train", "--data", str(npy), "--out", str(run2), "--val-fraction", "0.25",
                     *SMALL]) == 0
    assert json.loads((run2 / "config.json").read_text())["dataset"]["num_val"] == 15
    capsys.readouterr()
    assert cli.main(["train", "--data", str(npy), "--val-fraction", "1", *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--val-fraction" in err and "[0, 1)" in err


def test_messages_about_the_validation_split_name_the_flag():
    with pytest.raises(ValueError, match=r"--val-fraction"):
        TrainConfig(early_stopping_patience=2, val_fraction=0)
    tiny = data.Dataset(torch.zeros(3, 2), None, None, "tiny")
    with pytest.raises(ValueError, match=r"val_fraction: .*\(set --val-fraction; 0 turns"):
        data.train_val_split(tiny, 0.01, 0)


def test_offline_mnist_names_a_real_mechanism_and_leaves_no_cache_folder(tmp_path, monkeypatch,
                                                                         capsys):
    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("VAELAB_DATA", raising=False)
    monkeypatch.setattr(data.named, "SYSTEM_DATA_DIR", tmp_path / "none")
    with pytest.raises(FileNotFoundError) as caught:
        data.load_dataset("mnist", "train")
    message = str(caught.value)
    assert "pass root" not in message and "VAELAB_DATA" in message
    assert "vaelab train --data mnist" in message
    assert not (tmp_path / "cache").exists()
    (tmp_path / "cache").mkdir()                         # an existing cache root is kept
    with pytest.raises(FileNotFoundError):
        data.load_dataset("mnist", "test")
    assert list((tmp_path / "cache").iterdir()) == []
    capsys.readouterr()
    assert cli.main(["train", "--data", "mnist", "--out", str(tmp_path / "run"),
                     "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vaelab: error: ") and "VAELAB_DATA" in err
    assert not (tmp_path / "run").exists() and list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("rank, printed", [("0", True), ("1", False), (None, True)])
def test_closing_summary_prints_on_rank_zero_only(tmp_path, monkeypatch, capsys, rank, printed):
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    cli._report_run(tmp_path)
    out = capsys.readouterr().out
    assert (f"run directory: {tmp_path}" in out) is printed
    assert bool(out) is printed


def _run_summary():
    spec = importlib.util.spec_from_file_location("run_summary", ROOT / "scripts" /
                                                  "run_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_ends_with_one_line_result(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(
        {"model": {"data_dim": 784, "hidden": [512, 256], "latent_dim": 20,
                   "likelihood": "bernoulli"}, "train": {"data": "fashion-mnist", "epochs": 15}}))
    (tmp_path / "eval.json").write_text(json.dumps(
        {"num_samples": 1000, "num_examples": 1000,
         "log_likelihood": {"mean": -236.504, "se": 2.262}}))
    summary = _run_summary()
    assert summary.main([str(tmp_path), "140"]) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1
    assert line.strip() == (f"quickstart: a 784-512-256-20 bernoulli VAE trained on fashion-mnist "
                            f"for 15 epochs; test log p(x) -236.50 ± 2.26 nats (k = 1000, "
                            f"1000 images); pictures: {tmp_path}/*.png; took 2 min 20 s")
    (tmp_path / "eval.json").write_text(json.dumps(
        {"num_samples": 1, "num_examples": 1, "log_likelihood_normalised": False,
         "log_likelihood": {"mean": -5.0, "se": None, "undefined": {"se": "k = 1"}}}))
    assert summary.main([str(tmp_path), "5"]) == 0
    line = capsys.readouterr().out
    assert "test score -5.00 ± k = 1 nats" in line
    assert summary.main([str(tmp_path / "missing"), "5"]) == 1
    script = (ROOT / "scripts" / "quickstart.sh").read_text().strip().splitlines()
    assert script[-1].startswith(".venv/bin/python scripts/run_summary.py \"$RUN\"")
