"""Small things a new user meets on the command line (``vaelab.cli``): a flag given twice,
a sample too large for memory, an unwritable imputation target, torchrun's extra ranks.
Every refusal is one line, before any work is done."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import run_cli

from vaelab import cli
from vaelab._files import atomic_write_bytes

TRAIN = ["--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--batch-size", "32",
         "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    np.save(folder / "d.npy", np.random.default_rng(0).random((80, 6)).astype(np.float32))
    assert cli.main(["train", "--data", str(folder / "d.npy"), "--out", str(folder / "r"),
                     *TRAIN]) == 0
    return folder / "r"


def _one_line(result, code: int) -> str:
    got, out, err = result
    assert got == code and out == "", (got, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vaelab: error: "), err
    return lines[0]


@pytest.mark.parametrize("argv, flag", [
    (["train", "--family", "iaf", "--family", "mixture"], "--family"),
    (["train", "--family=iaf", "--epochs", "2", "--family", "iaf"], "--family"),
    (["evaluate", "RUN", "--k", "5", "--k", "6"], "--k"),
    (["sample", "RUN", "-n", "4", "-n", "5"], "-n"),
    (["score", "RUN", "--score", "elbo", "--score", "regret"], "--score"),
])
def test_a_single_valued_flag_given_twice_is_refused(capsys, tmp_path, argv, flag):
    line = _one_line(run_cli(capsys, *[str(tmp_path) if a == "RUN" else a for a in argv]), 2)
    assert f"error: {flag}: given more than once; expected it once" in line
    assert not list(tmp_path.iterdir())


def test_a_switch_given_twice_is_harmless(capsys, run):
    code, _, err = run_cli(capsys, "evaluate", run, "--k", "2", "--limit", "5", "--quiet",
                           "--quiet", "--out", run.parent / "e.json")
    assert code == 0, err


def test_sample_too_large_for_memory_is_refused_before_allocating(capsys, run, monkeypatch):
    from vaelab.config import ModelConfig

    each = cli.evaluate._bytes_per_sample(ModelConfig(data_dim=6, latent_dim=2, hidden=(8,)))
    assert each == 2 * 4 * (2 + 2 * 8 + 8 * 6)                 # z, hidden ×2, 8 per value
    n = 100_000_000_000                                        # this machine's real memory
    line = _one_line(run_cli(capsys, "sample", run, "-n", n), 1)
    assert f"-n: {n} needs about {n * each / 2**30:.3g} GiB of memory" in line
    assert not (run / f"samples-{n}.png").exists()
    monkeypatch.setattr(cli.evaluate, "_available_memory", lambda: 2**20)      # 1 MiB available
    line = _one_line(run_cli(capsys, "sample", run, "-n", 2**20 // each + 1), 1)
    assert line.endswith(f"0.000977 GiB are available; expected -n <= {2**20 // each}, got "
                         f"{2**20 // each + 1}")
    code, _, err = run_cli(capsys, "sample", run, "-n", 2**20 // each, "--out",
                           run.parent / "fits.png")
    assert code == 0, err


def test_impute_checks_its_destination_before_the_work(capsys, tmp_path, monkeypatch):
    from vaelab.use import impute

    rows = np.random.default_rng(0).random((40, 4))
    rows[rows < 0.2] = math.nan
    np.save(tmp_path / "t.npy", rows)
    run = tmp_path / "masked"
    assert cli.main(["train", "--data", str(tmp_path / "t.npy"), "--out", str(run),
                     "--missing", "mask", "--likelihood", "gaussian", "--binarize", "none",
                     *TRAIN]) == 0
    monkeypatch.setattr(impute, "impute", lambda *a, **k: pytest.fail("worked first"))
    capsys.readouterr()
    line = _one_line(run_cli(capsys, "impute", run, "--data", tmp_path / "t.npy", "--out",
                             "/proc/vaelab-cannot-write-here.csv"), 1)
    assert "--out: expected a file in an existing, writable folder" in line
    assert "/proc/vaelab-cannot-write-here.csv" in line and ".tmp" not in line


def test_a_failed_atomic_write_names_the_target_not_its_temporary_file():
    with pytest.raises(OSError) as info:
        atomic_write_bytes("/proc/vaelab-cannot-write-here.bin", b"x")
    assert info.value.filename == "/proc/vaelab-cannot-write-here.bin"


def test_torchrun_ranks_other_than_0_say_nothing(capsys, run, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    assert "1 run" in run_cli(capsys, "runs", run.parent)[1]         # rank 0 speaks
    monkeypatch.setenv("RANK", "1")
    assert run_cli(capsys, "runs", run.parent) == (0, "", "")       # rank 0 prints the table
    assert run_cli(capsys, "train", "--epochs", "0") == (2, "", "")  # rank 0 says the error

    def boom(args):
        raise RuntimeError("CUDA out of memory on this rank")

    parser_default = cli.build_parser
    monkeypatch.setattr(cli.command, "build_parser", lambda: _with_runs(parser_default(), boom))
    code, out, err = run_cli(capsys, "runs", run.parent)
    assert code == 1 and out == ""
    assert err == ("vaelab: error: [rank 1] unexpected RuntimeError: CUDA out of memory on "
                   "this rank (set VAELAB_DEBUG=1 for the traceback)\n")


def _with_runs(parser, func):
    for action in parser._subparsers._group_actions:
        action.choices["runs"].set_defaults(func=func)
    return parser
