#!/usr/bin/env bash
# Creates the benchmark environment (.bench/venv, git-ignored) with vaelab and its peers.
#
# torch==2.13.0 (CPU build) goes in first and every later install is constrained to it, so no
# CUDA build is ever pulled. A peer that fails to install is reported and skipped: the
# benchmark then lists it as missing instead of failing.
#
# Usage: bash benchmarks/setup.sh            (idempotent; re-running only fills what is missing)
#        PYTHON=python3.11 bash benchmarks/setup.sh
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BENCH_VENV:-$ROOT/.bench/venv}"
PYTHON="${PYTHON:-python3}"
CONSTRAINTS="$ROOT/benchmarks/constraints-bench.txt"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PYTHON" -m venv "$VENV" || { echo "[setup] cannot create venv" >&2; exit 1; }
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q -c "$CONSTRAINTS")

echo "[setup] torch (CPU build) first"
"${PIP[@]}" "torch==2.13.0" || { echo "[setup] torch==2.13.0 failed" >&2; exit 1; }

echo "[setup] vaelab (editable) and its dependencies"
"${PIP[@]}" numpy safetensors tqdm matplotlib pillow || exit 1
"${PIP[@]}" --no-deps -e "$ROOT" || exit 1

# pythae 0.1.2 (the latest) installs with pydantic 2 as is; no older pins are needed.
for peer in pythae pyro-ppl; do
    echo "[setup] peer: $peer"
    if ! "${PIP[@]}" "$peer"; then
        echo "[setup] WARNING: $peer could not be installed; the benchmark will report it missing" >&2
    fi
done

"$VENV/bin/python" - <<'PY'
import importlib
for name in ("torch", "vaelab", "pythae", "pyro"):
    try:
        mod = importlib.import_module(name)
        print(f"[setup] {name:8s} {getattr(mod, '__version__', '?')}")
    except Exception as exc:  # report, never fail: missing peers are skipped by the benchmark
        print(f"[setup] {name:8s} MISSING ({type(exc).__name__}: {exc})")
PY
