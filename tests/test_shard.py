"""Sharded evaluation (vaelab.measure.shard): two torchrun ranks (gloo, CPU) give exactly the
numbers of one process for the standard IS protocol and for AIS, and only rank 0 writes
(every process on one thread: a different thread count may change the last bits of a sum)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import needs_fashion_mnist

from vaelab import cli
from vaelab.measure import shard

pytestmark = needs_fashion_mnist

EVALS = {"is": ["--k", "20"],
         "ais": ["--estimator", "ais", "--ais-steps", "3", "--chains", "3", "--leapfrog", "2"]}
COMMON = ["--limit", "30", "--batch-size", "10", "--quiet", "--seed", "3"]

SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from vaelab import cli
run, out = sys.argv[1], sys.argv[2]
for name, flags in {evals!r}.items():
    code = cli.main(["evaluate", run, "--out", f"{{out}}-{{name}}.json", *flags, *{common!r}])
    assert code == 0, code
"""


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("shard") / "run"
    code = cli.main(["train", "--out", str(run), "--limit", "256", "--epochs", "1",
                     "--batch-size", "64", "--latent-dim", "2", "--hidden", "16", "--quiet"])
    assert code == 0
    return run


def _strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("seconds", "run")}


def test_two_torchrun_ranks_equal_one_process(small_run, tmp_path, capsys, one_thread):
    single = {}
    for name, flags in EVALS.items():
        out = tmp_path / f"single-{name}.json"
        assert cli.main(["evaluate", str(small_run), "--out", str(out), *flags, *COMMON]) == 0
        single[name] = json.loads(out.read_text())
    capsys.readouterr()
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(evals=EVALS, common=COMMON))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(script), str(small_run), str(tmp_path / "sharded")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in EVALS:
        sharded = json.loads((tmp_path / f"sharded-{name}.json").read_text())
        assert _strip(sharded) == _strip(single[name])
        assert sharded["num_examples"] == 30
    assert proc.stdout.count("written:") == len(EVALS)      # rank 0 only reports


def test_batch_seeds_depend_only_on_seed_and_row():
    assert shard.batch_seed(3, 20) == shard.batch_seed(3, 20)
    assert len({shard.batch_seed(s, r) for s in range(3) for r in range(0, 50, 10)}) == 15
    assert shard.process_group() == (0, 1) and shard.is_main_process()
    out = shard.measure_batches(lambda a, b: {"r": torch.arange(a, b), "u": torch.rand(b - a)},
                                25, 10, seed=1)
    assert out["r"].tolist() == list(range(25))
    again = shard.measure_batches(lambda a, b: {"u": torch.rand(b - a)}, 25, 10, seed=1)
    assert torch.equal(out["u"], again["u"])
