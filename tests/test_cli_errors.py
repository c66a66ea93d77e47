"""Bad input to the ``vaelab`` command: one clear line, a non-zero exit, nothing lost on disk.

Every case checks the message (it names what is wrong), the exit code (2 for command-line
usage, 1 for the rest), that stderr holds exactly one line and no traceback, and that the
files already on disk are byte for byte what they were (and no half-written file appeared).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from vaelab import cli, data
from vaelab.config import TrainConfig

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path → SHA-256), and every folder."""
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        files[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def assert_error(result: tuple[int, str, str], code: int, *needles: str) -> str:
    got_code, out, err = result
    assert got_code == code, (got_code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vaelab: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def npy_images(tmp_path_factory) -> Path:
    """48 grey 4×4 'images' in [0, 1] as N×H×W."""
    path = tmp_path_factory.mktemp("data") / "images.npy"
    rng = np.random.default_rng(0)
    np.save(path, rng.uniform(size=(48, 4, 4)).astype(np.float32))
    return path


TINY = ["--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--batch-size", "16", "--quiet"]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, npy_images) -> Path:
    run = tmp_path_factory.mktemp("runs") / "good"
    assert cli.main(["train", "--data", str(npy_images), "--out", str(run), *TINY]) == 0
    return run


@pytest.fixture
def run_copy(good_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    return run


# --------------------------------------------------------------------------- data


def test_missing_data_path_leaves_no_run_folder(tmp_path, capsys, monkeypatch):
    out = tmp_path / "new" / "run"
    result = run_cli(capsys, "train", "--data", tmp_path / "nope.npy", "--out", out, *TINY)
    assert_error(result, 1, "nope.npy", "does not exist")
    monkeypatch.chdir(tmp_path)                  # the default --out is runs/<timestamp>
    result = run_cli(capsys, "train", "--data", tmp_path / "nope.npy", *TINY)
    assert_error(result, 1, "nope.npy", "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_npy_file(tmp_path, capsys):
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    result = run_cli(capsys, "train", "--data", bad, "--out", tmp_path / "r", *TINY)
    assert_error(result, 1, "bad.npy", "readable .npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npy"]


@pytest.mark.skipif(ROOT, reason="root reads files whatever their permissions")
def test_unreadable_data_file(tmp_path, capsys, npy_images):
    path = tmp_path / "locked.npy"
    shutil.copy(npy_images, path)
    path.chmod(0)
    result = run_cli(capsys, "train", "--data", path, "--out", tmp_path / "r", *TINY)
    assert_error(result, 1, "locked.npy")


@pytest.mark.parametrize("array, needles", [
    (np.arange(10, dtype=np.float32), ("N×D", "1 dims")),
    (np.zeros((0, 5), np.float32), ("empty dataset",)),
    (np.array([[0.5, np.nan], [0.1, 0.2]], np.float32), ("non-finite",)),
], ids=["1-D", "empty", "NaN"])
def test_bad_arrays(tmp_path, capsys, array, needles):
    path = tmp_path / "x.npy"
    np.save(path, array)
    result = run_cli(capsys, "train", "--data", path, "--out", tmp_path / "r", *TINY)
    assert_error(result, 1, "x.npy", *needles)
    assert not (tmp_path / "r").exists()


def test_values_outside_the_bernoulli_support(tmp_path, capsys):
    path = tmp_path / "big.npy"
    np.save(path, np.full((20, 3), 2.0, np.float32))
    result = run_cli(capsys, "train", "--data", path, "--binarize", "none", "--out",
                     tmp_path / "r", *TINY)
    assert_error(result, 1, "bernoulli", "[0, 1]", "[2, 2]")
    result = run_cli(capsys, "train", "--data", path, "--out", tmp_path / "r", *TINY)
    assert_error(result, 1, "binarize", "[0, 1]")
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- flags and config


@pytest.mark.parametrize("argv, needles", [
    (["train", "--bogus"], ("unrecognized arguments: --bogus", "vaelab train --help")),
    (["train", "--epoch", "3"], ("unrecognized arguments: --epoch",)),
    (["train", "--epochs", "-1"], ("--epochs", "integer >= 1", "'-1'")),
    (["train", "--epochs", "two"], ("--epochs", "'two'")),
    (["train", "--batch-size", "0"], ("--batch-size", "integer >= 1", "'0'")),
    (["train", "--lr", "-0.1"], ("--lr", "number > 0", "'-0.1'")),
    (["train", "--lr", "nan"], ("--lr", "finite")),
    (["train", "--hidden", "512,0"], ("--hidden", "'512,0'")),
    (["train", "--likelihood", "zipf"], ("--likelihood", "'zipf'")),
    (["evaluate", "somewhere", "--k", "0"], ("--k", "integer >= 1")),
    (["sample", "somewhere", "-n", "-3"], ("-n", "integer >= 1")),
    (["train", "--resume", "a", "--overwrite"], ("--resume and --overwrite",)),
    ([], ("expected a command",)),
    (["frobnicate"], ("invalid choice", "'frobnicate'")),
    (["figures"], ("--out",)),
])
def test_usage_errors_exit_2(tmp_path, capsys, monkeypatch, argv, needles):
    monkeypatch.chdir(tmp_path)
    assert_error(run_cli(capsys, *argv), 2, *needles)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text, needles", [
    ("[train]\nepochz = 3\n", ("unknown keys", "epochz")),
    ("[model]\nlatent = 3\n", ("unknown keys", "latent")),
    ("bogus_key = 1\n", ("unknown key", "bogus_key")),
    ("[train]\nepochs = -1\n", ("epochs", "integer >= 1", "-1")),
    ("[train]\nbatch_size = 0\n", ("batch_size", "integer >= 1")),
    ("[train]\nlr = -0.5\n", ("lr", "> 0")),
    ("[train\nepochs = 1\n", ("not valid TOML",)),
])
def test_bad_config_files(tmp_path, capsys, text, needles):
    config = tmp_path / "c.toml"
    config.write_text(text)
    # no other flags (they would override the file); a missing --data keeps a mistake fast
    result = run_cli(capsys, "train", "--config", config, "--out", tmp_path / "r", "--data",
                     tmp_path / "missing.npy", "--quiet")
    assert_error(result, 1, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


def test_missing_config_file_and_wrong_suffix(tmp_path, capsys):
    assert_error(run_cli(capsys, "train", "--config", tmp_path / "none.toml"), 1, "none.toml")
    (tmp_path / "c.yaml").write_text("epochs: 1\n")
    assert_error(run_cli(capsys, "train", "--config", tmp_path / "c.yaml"), 1, ".toml or .json")


# --------------------------------------------------------------------------- output folders


def test_existing_run_is_refused_and_untouched(run_copy, capsys, npy_images):
    before = snapshot(run_copy)
    result = run_cli(capsys, "train", "--data", npy_images, "--out", run_copy, *TINY)
    assert_error(result, 1, "already holds a run", "--resume", "--overwrite")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("where", ["/proc/vaelab-test-run", "file/run"])
def test_unwritable_run_folder(tmp_path, capsys, npy_images, where):
    (tmp_path / "file").write_text("not a folder")
    out = where if where.startswith("/") else tmp_path / where
    result = run_cli(capsys, "train", "--data", npy_images, "--out", out, *TINY)
    assert_error(result, 1, "--out", "cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(ROOT, reason="root writes into read-only folders")
def test_read_only_folder(tmp_path, capsys, npy_images):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = run_cli(capsys, "train", "--data", npy_images, "--out", locked / "r", *TINY)
        assert_error(result, 1, "cannot write")
    finally:
        locked.chmod(0o700)


def test_evaluate_refuses_unwritable_out_before_computing(run_copy, capsys):
    before = snapshot(run_copy)
    result = run_cli(capsys, "evaluate", run_copy, "--out", "/proc/vaelab-eval.json")
    assert_error(result, 1, "--out", "cannot write")
    assert snapshot(run_copy) == before
    assert_error(run_cli(capsys, "evaluate", run_copy, "--out", run_copy / "e.txt"), 1,
                 ".json")
    assert_error(run_cli(capsys, "sample", run_copy, "--out", run_copy / "s.jpg"), 1, ".png")
    assert snapshot(run_copy) == before


def test_resume_without_a_run(tmp_path, capsys):
    assert_error(run_cli(capsys, "train", "--resume", tmp_path), 1, "--resume", "config.json")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- broken runs


def test_evaluate_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    assert_error(run_cli(capsys, "evaluate", tmp_path), 1, "not a vaelab run directory")
    assert_error(run_cli(capsys, "evaluate", tmp_path / "missing"), 1, "does not exist")
    assert_error(run_cli(capsys, "sample", tmp_path / "notes.txt"), 1, "is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def corrupt_weights(run: Path) -> None:
    blob = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(blob[: len(blob) // 2])


def corrupt_config(run: Path) -> None:
    (run / "config.json").write_text('{"format": "vaelab-run/1", "model": {')


def other_latent_dim(run: Path) -> None:
    config = json.loads((run / "config.json").read_text())
    config["model"]["latent_dim"] = 5
    (run / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("damage, needles", [
    (corrupt_weights, ("model.safetensors",)),
    (corrupt_config, ("config.json", "not valid JSON")),
    (other_latent_dim, ("model.safetensors", "expected shape")),
], ids=["truncated-weights", "garbage-config", "latent-dim-mismatch"])
@pytest.mark.parametrize("command", ["evaluate", "sample", "reconstruct", "gaps", "complete"])
def test_damaged_run(run_copy, capsys, damage, needles, command):
    damage(run_copy)
    before = snapshot(run_copy)
    assert_error(run_cli(capsys, command, run_copy), 1, *needles)
    assert snapshot(run_copy) == before


def test_resume_from_a_truncated_checkpoint(run_copy, capsys):
    state = run_copy / "checkpoint" / "state.safetensors"
    state.write_bytes(state.read_bytes()[:100])
    before = snapshot(run_copy)
    result = run_cli(capsys, "train", "--resume", run_copy, "--epochs", "2", "--quiet")
    assert_error(result, 1, "checkpoint", "truncated or corrupt")
    assert snapshot(run_copy) == before


def test_resume_with_an_incompatible_change(run_copy, capsys):
    before = snapshot(run_copy)
    result = run_cli(capsys, "train", "--resume", run_copy, "--latent-dim", "4")
    assert_error(result, 1, "resume", "latent_dim")
    assert snapshot(run_copy) == before


def test_cuda_without_cuda(run_copy, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert_error(run_cli(capsys, "sample", run_copy, "--device", "cuda"), 1, "--device", "cuda")


def test_evaluate_data_of_another_size(run_copy, tmp_path, capsys):
    np.save(tmp_path / "wide.npy", np.zeros((5, 20), np.float32))
    result = run_cli(capsys, "evaluate", run_copy, "--data", tmp_path / "wide.npy")
    assert_error(result, 1, "16 values per example", "20")
    assert not (run_copy / "eval.json").exists()


def test_per_datapoint_run_cannot_encode_new_data(tmp_path, capsys, npy_images):
    run = tmp_path / "pd"
    assert cli.main(["train", "--data", str(npy_images), "--out", str(run),
                     "--inference", "per-datapoint", *TINY]) == 0
    out = capsys.readouterr().out
    assert f"next: vaelab sample {run}" in out and "vaelab evaluate" not in out
    assert (run / "samples.png").is_file() and not (run / "reconstructions.png").exists()
    assert_error(run_cli(capsys, "evaluate", run), 1, "per-datapoint", "encoder")
    assert_error(run_cli(capsys, "reconstruct", run), 1, "per-datapoint")
    assert run_cli(capsys, "sample", run, "-n", "4")[0] == 0


# --------------------------------------------------------------------------- main itself


def test_interrupt_exits_130_with_one_line(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.show, "cmd_figures", interrupted)
    monkeypatch.setattr(cli.show, "add_figures", _figures_with(interrupted))
    code, _, err = run_cli(capsys, "figures", "--out", "x")
    assert code == 130 and err.strip() == "vaelab: interrupted"


def test_sigterm_exits_143_with_one_line_and_restores_the_handler(capsys, monkeypatch):
    """SIGTERM (kill, a scheduler's time limit) stops the command as Ctrl-C does, in words
    of its own and with the shell's code for it, 128 + 15."""
    import signal
    import time

    def terminated(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)                # the handler raises here, long before this ends
        return 0

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli.show, "add_figures", _figures_with(terminated))
    code, _, err = run_cli(capsys, "figures", "--out", "x")
    assert code == 143 and err.strip() == "vaelab: terminated"
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_during_training_says_how_to_resume(tmp_path, capsys, monkeypatch, npy_images):
    """Terminated after its first epoch was saved, a run keeps that epoch, releases its lock
    and says how to continue; resumed, it finishes."""
    import signal

    from vaelab.fit import train as train_mod

    save = train_mod._Trainer.save

    def save_then_terminate(self, *args, **kwargs):
        save(self, *args, **kwargs)
        if self.state.epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    run = tmp_path / "run"
    monkeypatch.setattr(train_mod._Trainer, "save", save_then_terminate)
    code, _, err = run_cli(capsys, "train", "--data", npy_images, "--out", run, *TINY[2:],
                           "--epochs", "3")
    assert code == 143
    assert err.strip() == (f"vaelab: terminated; every finished epoch is saved: continue "
                           f"with `vaelab train --resume {run}`")
    assert not (run / "run.lock").exists()
    assert [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text()
                                    .splitlines())] == [1]
    monkeypatch.setattr(train_mod._Trainer, "save", save)
    assert run_cli(capsys, "train", "--resume", run, "--quiet")[0] == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


def _figures_with(func):
    def add(commands):
        p = commands.add_parser("figures")
        p.add_argument("--out")
        p.set_defaults(func=func)
    return add


def test_unexpected_errors_are_one_line_unless_debugging(capsys, monkeypatch):
    def bug(args):
        raise KeyError("boom")

    monkeypatch.setattr(cli.show, "add_figures", _figures_with(bug))
    line = assert_error(run_cli(capsys, "figures", "--out", "x"), 1, "KeyError", "boom",
                        "VAELAB_DEBUG=1")
    assert "unexpected" in line
    monkeypatch.setenv("VAELAB_DEBUG", "1")
    with pytest.raises(KeyError, match="boom"):
        cli.main(["figures", "--out", "x"])


def test_help_and_version_exit_0(capsys):
    assert cli.main(["--help"]) == 0
    assert "evaluate" in capsys.readouterr().out
    assert cli.main(["evaluate", "--help"]) == 0
    assert "--k 5000 --limit 0" in capsys.readouterr().out
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("vaelab ")


def test_real_process_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vaelab", "train", "--data",
                           str(tmp_path / "missing.npy"), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("vaelab: error: --data:")
    assert list(tmp_path.iterdir()) == []


def test_precision_flag_reaches_the_run_config(tmp_path, capsys, npy_images):
    run = tmp_path / "bf16"
    assert cli.main(["train", "--data", str(npy_images), "--out", str(run),
                     "--precision", "bf16", *TINY]) == 0
    capsys.readouterr()
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["precision"] == "bf16"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics and math.isfinite(metrics[-1]["train_elbo"])
    code, _, err = run_cli(capsys, "train", "--data", npy_images, "--out", tmp_path / "x",
                           "--precision", "fp16", *TINY)
    assert code == 2 and "--precision" in err and "fp16" in err


def test_missing_command_lists_every_command(capsys):
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    for name in ("train", "evaluate", "gaps", "impute", "score", "encode", "cluster", "report",
                 "runs", "figures"):
        assert f" {name}," in err or f" {name} " in err, name


# ---------------------------------------------------------------------- what a new user tripped on
# The small things a new user tripped on.
#
# * ``--val-fraction`` exists (an error message pointed at ``val_fraction``), and the messages
#   about it name the flag;
# * offline MNIST: the message names a real mechanism (``VAELAB_DATA``), not "pass root", and
#   leaves no empty ``~/.cache/vaelab/mnist`` behind;
# * under torchrun the closing summary prints once (rank 0);
# * the quickstart ends with one line: what was trained, its test log-likelihood, where the
#   pictures are, how long it took.


REPO = Path(__file__).resolve().parents[1]


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
    cli.train._report_run(tmp_path)
    out = capsys.readouterr().out
    assert (f"run directory: {tmp_path}" in out) is printed
    assert bool(out) is printed


def _run_summary():
    spec = importlib.util.spec_from_file_location("run_summary", REPO / "scripts" /
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
    script = (REPO / "scripts" / "quickstart.sh").read_text().strip().splitlines()
    assert script[-1].startswith(".venv/bin/python scripts/run_summary.py \"$RUN\"")


def test_a_run_that_fails_before_its_first_epoch_leaves_nothing(tmp_path, capsys, monkeypatch,
                                                                npy_images):
    """A failure inside the first epoch (after config.json was written) removes what the
    command wrote, so the same command simply runs again; a folder that was there stays."""
    from vaelab.fit import train as train_mod

    def broken(self):
        raise RuntimeError("boom")

    run = tmp_path / "new" / "run"
    argv = ["train", "--data", npy_images, "--out", run, *TINY]
    monkeypatch.setattr(train_mod._Trainer, "run_epoch", broken)
    code, _, err = run_cli(capsys, *argv)
    assert code == 1 and "boom" in err
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    code, _, _ = run_cli(capsys, "train", "--data", npy_images, "--out", kept, *TINY)
    assert code == 1 and sorted(p.name for p in kept.iterdir()) == ["notes.txt"]
    monkeypatch.undo()
    assert run_cli(capsys, *argv)[0] == 0
