#!/usr/bin/env bash
# The full standard protocol: `vaelab evaluate` with the encoder's q, k = 5000, on
# all 10,000 Fashion-MNIST test images, timed end to end (wall clock, including start-up) on
# one process with one thread, on one process with two threads, and on two torchrun ranks with
# one thread each; then checks that the ranks' per-example log p(x) equal one process's.
#
# Usage: bash benchmarks/protocol_full.sh RUN OUT.txt
#   RUN: a trained run directory (e.g. the estimators benchmark's default model)
# Run it on an otherwise idle machine: every other job's threads show up in these times.
set -euo pipefail
RUN="$1"
OUT="$2"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
LIMIT="${LIMIT:-10000}"      # fewer images only to try the script out
ARGS=(evaluate "$RUN" --k 5000 --limit "$LIMIT" --batch-size 10 --quiet)

timed() {   # name, command...: wall seconds into $WORK/<name>.s
    local name="$1"; shift
    local start end
    start=$(date +%s.%N)
    "$@" > "$WORK/$name.log" 2>&1
    end=$(date +%s.%N)
    echo "$end - $start" | bc > "$WORK/$name.s"
}

load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
OMP_NUM_THREADS=1 timed one_1t "$PY" -m vaelab "${ARGS[@]}" --out "$WORK/one_1t.json"
OMP_NUM_THREADS=1 timed ranks_2x1t "$PY" -m torch.distributed.run --standalone \
    --nproc_per_node 2 -m vaelab "${ARGS[@]}" --out "$WORK/ranks.json"
OMP_NUM_THREADS=2 timed one_2t "$PY" -m vaelab "${ARGS[@]}" --out "$WORK/one_2t.json"
load_end="$(cut -d' ' -f1-3 /proc/loadavg)"

"$PY" - "$WORK" "$RUN" "$load_start" "$load_end" > "$OUT" <<'PY'
import json, sys
from pathlib import Path
work, run, load_start, load_end = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
rows = {"one_1t": "one process, 1 thread", "ranks_2x1t": "two torchrun ranks, 1 thread each",
        "one_2t": "one process, 2 threads"}
files = {"one_1t": "one_1t.json", "ranks_2x1t": "ranks.json", "one_2t": "one_2t.json"}
print("Full standard protocol: vaelab evaluate, encoder q, k = 5000, the first")
print(f"{len(json.loads((work / 'one_1t.json').read_text())['per_example']['elbo'])} Fashion-MNIST test images, batch 10 images. Run: {run}")
print(f"load average (1, 5, 15 min) before {load_start}, after {load_end}")
print("command: bash benchmarks/protocol_full.sh RUN OUT (see the script for each line)\n")
print(f"{'setting':<36}{'wall s':>9}{'wall min':>10}{'compute s':>11}{'log p(x) mean':>15}"
      f"{'± SE':>8}")
reports = {}
for key, label in rows.items():
    wall = float((work / f"{key}.s").read_text())
    report = json.loads((work / files[key]).read_text())
    reports[key] = report
    ll = report["log_likelihood"]
    print(f"{label:<36}{wall:>9.1f}{wall / 60:>10.1f}{report['seconds']:>11.1f}"
          f"{ll['mean']:>15.3f}{ll['se']:>8.3f}")
one, ranks = (reports[k]["per_example"]["log_likelihood"] for k in ("one_1t", "ranks_2x1t"))
print(f"\nper-example log p(x) of the two ranks == one process (1 thread), all "
      f"{len(one)} images: {one == ranks}")
PY
cat "$OUT"
