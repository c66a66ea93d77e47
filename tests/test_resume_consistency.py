"""A run directory whose files do not describe one run is refused, in one line, by every
command that loads or resumes it (``vaelab.fit.resume.check_consistent``).

Each case damages a copy of one small finished run the way copying files between runs does.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import run_cli

from vaelab.fit import runs
from vaelab.fit.resume import check_consistent
from vaelab.use.trained import load

TRAIN = ["--epochs", "3", "--hidden", "8", "--latent-dim", "2", "--batch-size", "32",
         "--quiet"]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    from vaelab import cli

    folder = tmp_path_factory.mktemp("consistency")
    np.save(folder / "d.npy", np.random.default_rng(0).random((90, 6)).astype(np.float32))
    for seed in ("0", "1"):
        assert cli.main(["train", "--data", str(folder / "d.npy"), "--out",
                         str(folder / f"seed{seed}"), "--seed", seed, *TRAIN]) == 0
    return folder


@pytest.fixture()
def run(template, tmp_path):
    shutil.copytree(template / "seed0", tmp_path / "run")
    return tmp_path / "run"


def _refused_everywhere(capsys, run, *needles: str) -> None:
    with pytest.raises(runs.RunError) as info:
        load(run)
    for needle in needles:
        assert needle in str(info.value)
    for argv in (["evaluate", run, "--k", "2", "--limit", "5"],
                 ["train", "--resume", run, "--epochs", "4"]):
        code, out, err = run_cli(capsys, *argv)
        assert code == 1 and err.count("\n") == 1, (argv, out, err)
        assert all(needle in err for needle in needles), err


def test_a_consistent_run_loads_and_so_does_one_killed_before_its_metrics(run):
    check_consistent(run)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(lines[:-1]))   # the checkpoint is one ahead
    check_consistent(run)
    assert load(run).metrics == [json.loads(line) for line in lines[:-1]]


def test_an_edited_config_is_refused(run, capsys):
    config = json.loads((run / "config.json").read_text())
    config["train"]["lr"] = 0.5                      # does not change any weight's shape
    (run / "config.json").write_text(json.dumps(config))
    _refused_everywhere(capsys, run, "mixes two runs", "config.json and checkpoint/state.json "
                        "differ in ['train.lr']")


def test_another_runs_checkpoint_is_refused(run, template, capsys):
    shutil.rmtree(run / "checkpoint")
    shutil.copytree(template / "seed1" / "checkpoint", run / "checkpoint")
    _refused_everywhere(capsys, run, "differ in ['train.seed']")


def test_another_runs_metrics_are_refused(run, template, capsys):
    shutil.copy(template / "seed1" / "metrics.jsonl", run / "metrics.jsonl")
    _refused_everywhere(capsys, run, "metrics.jsonl differs from the checkpoint's record")


def test_metrics_with_a_missing_epoch_are_refused(run, capsys):
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text(lines[0] + lines[2])
    _refused_everywhere(capsys, run, "should hold epochs 1 to 2 in order, got [1, 3]")


def test_metrics_short_by_two_epochs_are_refused(run, capsys):
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text(lines[0])
    _refused_everywhere(capsys, run, "metrics.jsonl holds 1 epochs, the checkpoint 3")
