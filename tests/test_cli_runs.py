"""Run directories as a new user meets them: usable from any folder, refused when the data
moved (one line naming the stored path and --data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

TRAIN = ["--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--batch-size", "32",
         "--quiet"]
EVAL = ["--k", "4", "--limit", "20", "--quiet"]


@pytest.fixture()
def trained(tmp_path, monkeypatch, capsys) -> tuple[Path, Path]:
    """A run trained from folder A on data given by a relative path."""
    home = tmp_path / "A"
    home.mkdir()
    np.save(home / "d.npy", np.random.default_rng(0).random((120, 6)).astype(np.float32))
    monkeypatch.chdir(home)
    code, _, err = run_cli(capsys, "train", "--data", "d.npy", "--out", "runs/r", *TRAIN)
    assert code == 0, err
    return home, home / "runs" / "r"


def test_a_run_records_its_data_as_an_absolute_path(trained):
    home, run = trained
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["data"] == str((home / "d.npy").resolve())


def test_a_run_is_evaluated_from_another_folder(trained, tmp_path, monkeypatch, capsys):
    _, run = trained
    elsewhere = tmp_path / "B"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = run_cli(capsys, "evaluate", run, *EVAL)
    assert code == 0, err
    assert (run / "eval.json").is_file()


def test_moved_data_are_named_with_how_to_pass_data(trained, tmp_path, monkeypatch, capsys):
    home, run = trained
    stored = str((home / "d.npy").resolve())
    (home / "d.npy").rename(tmp_path / "moved.npy")
    code, out, err = run_cli(capsys, "evaluate", run, *EVAL)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert f"its training data {stored!r} no longer exist" in err and "--data PATH" in err
    code, _, err = run_cli(capsys, "evaluate", run, *EVAL, "--data", tmp_path / "moved.npy")
    assert code == 0, err


def test_an_older_run_with_a_relative_path_still_loads(trained, tmp_path, monkeypatch, capsys):
    home, run = trained
    for path, key in ((run / "config.json", None), (run / "checkpoint" / "state.json",
                                                    "config")):
        saved = json.loads(path.read_text())
        (saved[key] if key else saved)["train"]["data"] = "d.npy"   # what older runs stored
        path.write_text(json.dumps(saved))
    assert run_cli(capsys, "evaluate", run, *EVAL)[0] == 0        # from its own folder
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "evaluate", run, *EVAL)
    assert code == 1 and err.count("\n") == 1
    assert "'d.npy', a path relative to the folder the run was trained in" in err
    assert "--data PATH" in err
    code, _, err = run_cli(capsys, "evaluate", run, *EVAL, "--data", home / "d.npy")
    assert code == 0, err
    # and it resumes from its own folder, keeping what it recorded
    monkeypatch.chdir(home)
    code, _, err = run_cli(capsys, "train", "--resume", run, "--epochs", "2", "--quiet")
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["train"]["data"] == "d.npy"


def test_runs_names_a_missing_or_broken_model_and_missing_metrics(trained, capsys):
    """Each broken copy of a run gets its own problem text; none stops the listing."""
    import shutil

    _, run = trained
    broken = {name: run.parent / name for name in ("nomodel", "half", "garbage", "nometrics")}
    for copy in broken.values():
        shutil.copytree(run, copy)
    (broken["nomodel"] / "model.safetensors").unlink()
    weights = (run / "model.safetensors").read_bytes()
    (broken["half"] / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    (broken["garbage"] / "model.safetensors").write_bytes(b"weights")
    (broken["nometrics"] / "metrics.jsonl").unlink()
    code, out, err = run_cli(capsys, "runs", run.parent)
    assert code == 0 and err == "" and out.rstrip().endswith("5 runs"), out + err
    rows = {line.split()[0]: line.rstrip() for line in out.splitlines()[2:-1]}
    assert rows["nomodel"].endswith("  no model.safetensors")
    assert rows["half"].endswith("  model.safetensors unreadable: incomplete metadata, file "
                                 "not fully covered")
    assert rows["garbage"].endswith("  model.safetensors unreadable: header too small")
    assert rows["nometrics"].endswith("  no metrics.jsonl")
    assert "unreadable" not in rows["r"] and " no " not in rows["r"]
    code, _, err = run_cli(capsys, "report", broken["half"])       # the page says so too
    assert code == 0, err
    assert "model.safetensors is unreadable (incomplete metadata" in (
        broken["half"] / "report.html").read_text()
