"""What evaluate and gaps print: AIS named as chains with a tiny-ESS threshold
scaled to them, score-only runs worded as scores with aligned rows, and gaps with evaluate's
k = 1 / tiny-ESS / n = 1 warnings and the likelihood's meaning.

Tiny runs on Fashion-MNIST (300 images, one epoch) through ``cli.main`` in-process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import needs_fashion_mnist, run_cli

from vaelab import cli
from vaelab.measure import honest

pytestmark = needs_fashion_mnist

TINY = ["--limit", "300", "--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--quiet",
        "--compile", "off", "--device", "cpu"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("wording")
    paths = {"binary": folder / "binary", "score": folder / "score"}
    assert cli.main(["train", "--out", str(paths["binary"]), *TINY]) == 0
    assert cli.main(["train", "--binarize", "none", "--out", str(paths["score"]), *TINY]) == 0
    return paths


def test_tiny_ess_threshold_scales_with_the_draws_and_ais_names_chains():
    assert honest.tiny_ess_below(8) == 4 and honest.tiny_ess_below(1000) == 10
    stderr = torch.zeros(3)
    assert honest.reliability_warnings(torch.full((3,), 5.0), stderr, 8, ais=True) == []
    (line,) = honest.reliability_warnings(torch.tensor([2.0, 5, 6]), stderr, 8, ais=True)
    assert "C = 8 AIS chains" in line and "raise --chains" in line and "--k" not in line
    (line,) = honest.reliability_warnings(torch.ones(2), stderr, 1, quantity="unnormalised score")
    assert "unnormalised score is a single-sample bound" in line and "log p(x)" not in line


def test_evaluate_with_ais_names_chains(runs, capsys):
    code, out, err = run_cli(capsys, "evaluate", runs["binary"], "--estimator", "ais",
                             "--ais-steps", "2", "--chains", "8", "--limit", "3", "--quiet")
    assert code == 0, err
    assert "C = 8 AIS chains" in out and "importance samples" not in out
    assert "ESS < 10" not in out and "raise --k" not in out


def test_score_run_rows_are_aligned_and_worded_as_a_score(runs, capsys):
    code, out, err = run_cli(capsys, "evaluate", runs["score"], "--k", "1", "--limit", "3",
                             "--quiet")
    assert code == 0, err
    rows = {line.split("  ")[0]: line for line in out.splitlines()}
    for label in ("ELBO-score (nats)", "unnormalised score", "score − ELBO-score"):
        assert len(rows[label]) == len(rows["rate KL(q‖p) (nats)"]), label
    assert "log p(x) (nats)" not in out and "ELBO (nats)" not in out
    warning = next(line for line in out.splitlines() if line.startswith("warning: k = 1"))
    assert "unnormalised score is a single-sample bound" in warning
    assert "unnormalised score estimator:" in out and "log p(x) estimator" not in out


def test_gaps_warn_like_evaluate_and_say_what_log_p_means(runs, tmp_path, capsys):
    code, out, err = run_cli(capsys, "gaps", runs["binary"], "--limit", "1", "--k", "1",
                             "--steps", "3", "--out", tmp_path / "a")
    assert code == 0, err
    assert "warning: k = 1 importance sample" in out and "warning: 1 example" in out
    meaning = json.loads((tmp_path / "a" / "gaps.json").read_text())["likelihood_meaning"]
    assert meaning["meaning"] == "probability"
    code, out, err = run_cli(capsys, "gaps", runs["score"], "--limit", "3", "--k", "4",
                             "--steps", "3", "--out", tmp_path / "b")
    assert code == 0, err
    assert "unnormalised score" in out and "log p(x) " not in out.split("note:")[0]
    report = json.loads((tmp_path / "b" / "gaps.json").read_text())
    assert report["likelihood_meaning"]["meaning"] == "score"


def test_continuous_bernoulli_on_8_bit_data_recommends_a_discrete_likelihood():
    from vaelab.model.likelihoods import check_data_kind

    note = check_data_kind("continuous-bernoulli", "8-bit", 0.0, 1.0)
    assert note is not None and "unnormalised score" in note
    assert "--likelihood continuous-bernoulli" not in note.split("score:")[-1]
    assert "discrete" in note and "--likelihood discretized-logistic" in note
    assert "--binarize dynamic" in note
    assert check_data_kind("continuous-bernoulli", "unit-interval", 0.1, 0.9) is None


def test_a_run_on_in_memory_data_asks_for_data_instead_of_reading_another_set(
        tmp_path, capsys):
    """Rows handed to train() in memory are recorded as such, never as the config's default
    dataset (784 values per row would otherwise let Fashion-MNIST silently stand in)."""
    from vaelab.fit.train import train

    x = torch.rand(120, 784, generator=torch.Generator().manual_seed(0)).round()
    run = tmp_path / "mem"
    train({"model": {"hidden": [8], "latent_dim": 2}, "train": {"epochs": 1, "limit": 100}},
          run, dataset=x, progress=False, log=None)
    assert json.loads((run / "config.json").read_text())["train"]["data"] == "in-memory"
    capsys.readouterr()                              # what training said
    code, out, err = run_cli(capsys, "evaluate", run, "--k", "2", "--limit", "5")
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert "in memory" in err and "--data" in err
    np_file = tmp_path / "x.npy"
    import numpy as np

    np.save(np_file, x.numpy())
    code, out, err = run_cli(capsys, "evaluate", run, "--data", np_file, "--k", "2",
                             "--limit", "5")
    assert code == 0, err


def test_evaluate_says_an_unfinished_run_and_a_warm_up_cut_short(runs, tmp_path, capsys,
                                                                 monkeypatch):
    """A run stopped after 1 of 3 epochs, inside a 2-epoch warm-up: evaluate says both, with
    the command that continues it; a finished run says neither."""
    from vaelab.fit import train as train_mod

    save = train_mod._Trainer.save

    def save_then_stop(self, *args, **kwargs):
        save(self, *args, **kwargs)
        if self.state.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod._Trainer, "save", save_then_stop)
    run = tmp_path / "cut"
    flags = [f for f in TINY if f not in ("--epochs", "1")]
    code, _, _ = run_cli(capsys, "train", "--out", run, *flags, "--epochs", "3",
                         "--kl-warmup", "2")
    assert code == 130
    code, out, err = run_cli(capsys, "evaluate", run, "--k", "2", "--limit", "5", "--quiet")
    assert code == 0, err
    assert (f"note: unfinished run: 1 of 3 epochs trained; continue with `vaelab train "
            f"--resume {run}`") in out
    training = json.loads((run / "eval.json").read_text())["training"]
    weight = training["last_kl_weight"]       # the schedule's, at the epoch's last step
    assert 0 < weight < 1
    assert (f"inside the KL warm-up (KL weight {weight:.3g} of β = 1 at epoch 1, warm-up 2 "
            f"epochs)") in out
    assert training == {"epochs_done": 1, "epochs": 3, "stopped_early": False,
                        "finished": False, "last_kl_weight": weight,
                        "in_warmup": True}
    code, out, _ = run_cli(capsys, "evaluate", runs["binary"], "--k", "2", "--limit", "5",
                           "--quiet")
    assert code == 0 and "unfinished" not in out and "warm-up" not in out
    assert json.loads((runs["binary"] / "eval.json").read_text())["training"]["finished"]
