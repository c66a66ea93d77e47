#!/usr/bin/env bash
# One command for the whole benchmark: set up .bench/venv (vaelab + pythae + Pyro, CPU torch)
# if it is not there yet, then run benchmarks/bench.py in it. Extra arguments go to bench.py,
# e.g. `bash benchmarks/run.sh --steps 50 --rounds 3` or `--only reference vaelab`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BENCH_VENV:-$ROOT/.bench/venv}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, vaelab" 2>/dev/null; then
    bash "$ROOT/benchmarks/setup.sh"
fi
exec "$VENV/bin/python" "$ROOT/benchmarks/bench.py" "$@"
