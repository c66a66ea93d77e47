"""benchmarks/gpu.sh, the one prepared command for a GPU lease, runs end to end on the CPU at
tiny sizes (its --smoke mode), so it never rots between leases: every stage exits 0 inside
its time limit, and every results file names the machine it ran on."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_on_the_cpu_and_records_every_stage(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("VAELAB_TEST_DEVICE", None)
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--smoke", "--out",
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu-smoke.json").read_text())
    card = "no GPU: smoke test on"
    assert report["card"].startswith(card)
    assert card in (tmp_path / "gpu-smoke.md").read_text().splitlines()[0]
    assert card in (tmp_path / "gpu-smoke.log").read_text()
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == ["tests", "speed", "recipes", "protocol"]
    assert all(s["rc"] == 0 and s["seconds"] > 0 for s in stages.values())   # none timed out
    tests = report["tests"]
    assert tests["tests"] > 0 and tests["failures"] == tests["errors"] == 0
    rows = report["speed"]["rows"]
    assert {r["contender"] for r in rows} >= {"floor", "hand-eager", "vaelab-eager"}
    assert all(math.isfinite(r["samples_per_s"]) and r["samples_per_s"] > 0 for r in rows)
    assert all(r["samples_per_s"] == r["steps"] * r["batch"] / r["seconds"] for r in rows)
    recipes = report["recipes"]["recipes"]
    assert [r["recipe"] for r in recipes] == ["vae", "hvae"]      # the protocol's runs first
    assert all("error" not in r and r["exit_code"] == 0 and r["epochs"] == 1 for r in recipes)
    protocol = report["protocol"]["protocol"]
    assert [p["run"] for p in protocol] == ["vae", "hvae"]
    assert all(p["exit_code"] == 0 and p["num_examples"] == p["limit"] for p in protocol)
