"""One writer per run directory: two real ``vaelab train`` processes on one --out.

The first process is stopped (SIGSTOP) once it holds the lock, so the second always meets
it however fast the machine is; a SIGKILLed holder must leave no stale lock behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vaelab import cli
from vaelab.fit import lock

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fcntl locks are POSIX")

TRAIN = ["--epochs", "2", "--hidden", "16", "--latent-dim", "2", "--batch-size", "32",
         "--quiet"]


@pytest.fixture()
def table(tmp_path: Path) -> Path:
    path = tmp_path / "d.npy"
    np.save(path, np.random.default_rng(0).random((300, 8)).astype(np.float32))
    return path


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(cli.__file__).parents[2])}


def _train(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vaelab", "train", "--data", str(data),
                             "--out", str(out), *TRAIN, *extra], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_lock(proc: subprocess.Popen, out: Path, timeout: float = 120.0) -> None:
    """Until ``out/run.lock`` names ``proc`` (it holds the lock)."""
    path = out / lock.LOCK_FILE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if path.read_text().strip() == str(proc.pid):
                return
        except OSError:
            pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("the first writer never took the lock")


def test_a_second_writer_is_refused_with_one_line_naming_the_holder(table, tmp_path):
    out = tmp_path / "k2"
    first = _train(table, out, "--seed", "1")
    _wait_for_lock(first, out)
    os.kill(first.pid, signal.SIGSTOP)         # holds the lock for as long as we need
    try:
        second = _train(table, out, "--seed", "2")
        stdout, stderr = second.communicate(timeout=300)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 1
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert str(out) in lines[0] and f"PID {first.pid}" in lines[0]
    assert "in use by another vaelab process" in lines[0]
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    config = (out / "config.json").read_text()
    assert '"seed": 1' in config                # the first run's results are intact
    assert not (out / lock.LOCK_FILE).exists()  # released and removed at exit


def test_a_killed_holder_leaves_no_stale_lock(table, tmp_path):
    out = tmp_path / "k3"
    first = _train(table, out, "--seed", "1")
    _wait_for_lock(first, out)
    first.kill()                                # SIGKILL: no atexit, no cleanup
    first.communicate(timeout=60)
    assert (out / lock.LOCK_FILE).read_text().strip() == str(first.pid)   # the file stays
    second = _train(table, out, "--seed", "2", "--overwrite")
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    assert (out / "model.safetensors").is_file()


def test_evaluate_is_refused_while_another_process_writes_the_run(table, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--data", str(table), "--out", str(run), *TRAIN]) == 0
    assert not (run / lock.LOCK_FILE).exists()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from vaelab.fit import lock; "
         f"lock.lock_run({str(run)!r}); print('held', flush=True); time.sleep(600)"],
        env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        code = cli.main(["evaluate", str(run), "--k", "2", "--limit", "10", "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
    finally:
        holder.kill()
        holder.wait()
    assert code == 1
    assert len(err) == 1 and f"PID {holder.pid}" in err[0] and str(run) in err[0]
    assert not (run / "eval.json").exists()
    # the holder is gone: the lock went with it
    assert cli.main(["evaluate", str(run), "--k", "2", "--limit", "10", "--quiet"]) == 0
    assert (run / "eval.json").is_file()


def test_lock_is_reentrant_in_one_process_and_released(tmp_path):
    folder = tmp_path / "r"
    assert lock.lock_run(folder) == folder / lock.LOCK_FILE
    assert lock.lock_run(folder) == folder / lock.LOCK_FILE      # the same holder again
    assert (folder / lock.LOCK_FILE).read_text().strip() == str(os.getpid())
    lock.unlock_run(folder)
    assert not (folder / lock.LOCK_FILE).exists()


def test_torchrun_ranks_above_zero_take_no_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert lock.lock_run(tmp_path / "r") is None
    assert not (tmp_path / "r").exists()


def test_torchrun_rank_0_is_refused_and_no_rank_waits(table, tmp_path):
    """Rank 0 holds the job's lock; refused, it says so once and torchrun stops rank 1
    (which never waits on the lock, nor forever on rank 0)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip("torchrun is not installed beside this python")
    out = tmp_path / "job"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from vaelab.fit import lock; "
         f"lock.lock_run({str(out)!r}); print('held', flush=True); time.sleep(600)"],
        env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        job = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "vaelab", "train",
                              "--data", str(table), "--out", str(out), *TRAIN], env=_env(),
                             capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert job.returncode != 0 and job.stdout == ""
    ours = [line for line in job.stderr.splitlines() if line.startswith("vaelab: ")]
    assert ours == [f"vaelab: error: --out: {str(out)!r} is in use by another vaelab process "
                    f"(PID {holder.pid}); wait for it to finish, or use another folder"]
    assert not (out / "config.json").exists()
