#!/usr/bin/env bash
# The GPU check: one prepared command for a short lease on one GPU (at most 8 minutes), with
# every stage time-boxed so one hang cannot eat the budget. Stages, in order:
#   tests     VAELAB_TEST_DEVICE=cuda pytest -m device  (the device-sensitive tests on cuda)
#   speed     benchmarks/gpu_speed.py: training samples/s of vaelab vs the hand-written loop
#             (eager, torch.compile, CUDA graph), the matrix-product floor, pythae and Pyro;
#             batch 128 and 4096; fp32, TF32, bf16
#   recipes   benchmarks/gpu_runs.py --part recipes: seconds per epoch of every recipe in
#             recipes/fashion-mnist (vaelab train --config ... --epochs 1 --device cuda)
#   protocol  benchmarks/gpu_runs.py --part protocol: wall time of vaelab evaluate --k 5000
#             --limit 0 (all 10,000 test images) on the default and a hierarchical model
# Results: OUT/gpu-<card>.json (every stage, its exit code and seconds, the card's name),
# OUT/gpu-<card>.md (a short summary naming the card) and OUT/gpu-<card>.log (all output).
#
#   bash benchmarks/gpu.sh --stage          # here, once: Fashion-MNIST + peer wheels into .gpu/
#   bash benchmarks/gpu.sh --out "$OUT"     # there (carry .gpu): ~8 min on one GPU
#   bash benchmarks/gpu.sh --smoke          # CPU smoke test, tiny sizes (make test runs it)
#
# The GPU machine has a CUDA build of torch but no network: vaelab runs from the source tree
# (PYTHONPATH=src); Fashion-MNIST and the peers (pythae, Pyro and their dependencies) travel
# in .gpu/ (git-ignored), staged here by --stage. Stage limits: GPU_TESTS_S, GPU_SPEED_S,
# GPU_RECIPES_S, GPU_PROTOCOL_S (seconds) override the defaults below.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=gpu
OUT_DIR=""
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) MODE=smoke ;;
        --stage) MODE=stage ;;
        --out) OUT_DIR="$2"; shift ;;
        *) echo "gpu.sh: unknown argument $1 (expected --smoke, --stage or --out DIR)" >&2
           exit 2 ;;
    esac
    shift
done
PY="${PYTHON:-python3}"

if [ "$MODE" = stage ]; then      # run where the network is; everything lands in .gpu/
    mkdir -p "$ROOT/.gpu/data" "$ROOT/.gpu/whl"
    grep -qx '/.gpu/' "$ROOT/.git/info/exclude" 2>/dev/null || echo '/.gpu/' >> "$ROOT/.git/info/exclude"
    for f in /usr/share/datasets/fashion-mnist/*-ubyte.gz; do cp -n "$f" "$ROOT/.gpu/data/"; done
    # pythae and Pyro for the GPU's Python 3.12 and what its image lacks of their needs
    # (device/KINDS.md lists the image: torch, numpy, scipy, scikit-learn, pytest, safetensors,
    # matplotlib, cloudpickle, imageio, opt-einsum are there; pydantic is not)
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d "$ROOT/.gpu/whl" \
        pythae==0.1.2 pyro-ppl==1.9.2 pyro-api pydantic pydantic-core annotated-types \
        typing-inspection typing-extensions || echo "gpu.sh: some peer wheels did not download; those peers" \
        "will be reported 'missing'"
    du -sh "$ROOT/.gpu"
    exit 0
fi

if [ "$MODE" = smoke ]; then
    DEVICE=cpu
    OUT_DIR="${OUT_DIR:-$(mktemp -d)}"
    LIMITS=(120 120 120 120)     # generous: a loaded CI machine must not time out
    CARD="no GPU: smoke test on $(uname -m) CPU"
else
    DEVICE=cuda
    OUT_DIR="${OUT_DIR:-$ROOT/benchmarks/results}"
    LIMITS=("${GPU_TESTS_S:-120}" "${GPU_SPEED_S:-170}" "${GPU_RECIPES_S:-60}" "${GPU_PROTOCOL_S:-100}")
    CARD="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1)"
    CARD="${CARD:-no GPU found by nvidia-smi}"
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d "$ROOT/.gpu/data" ]; then export VAELAB_DATA="$ROOT/.gpu/data"; fi
if [ "$MODE" = gpu ] && ls "$ROOT"/.gpu/whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/vaelab-gpu-site \
        "$ROOT"/.gpu/whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/vaelab-gpu-site"
fi

WORK="$(mktemp -d)"
SLUG="$(echo "$CARD" | cut -d, -f1 | tr -c 'A-Za-z0-9\n' '-' | tr 'A-Z' 'a-z' | sed 's/--*/-/g; s/-$//')"
STEM="$OUT_DIR/gpu-${SLUG:-unknown}"
[ "$MODE" = smoke ] && STEM="$OUT_DIR/gpu-smoke"
mkdir -p "$OUT_DIR"
LOG="$STEM.log"
: > "$LOG"
echo "card: $CARD" | tee -a "$LOG"
"$PY" - "$WORK/meta.json" "$MODE" <<'EOF'
import json, sys, time, platform
import torch
json.dump({"mode": sys.argv[2], "torch": torch.__version__, "cuda": torch.version.cuda,
           "python": platform.python_version(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "command": "bash benchmarks/gpu.sh" + (" --smoke" if sys.argv[2] == "smoke" else "")},
          open(sys.argv[1], "w"))
EOF

stage() {   # stage NAME LIMIT_S COMMAND...: run it time-boxed, log it, record exit code + seconds
    local name="$1" limit="$2"; shift 2
    local start end rc
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    start=$(date +%s.%N)
    timeout -k 10 "$limit" "$@" >> "$LOG" 2>&1
    rc=$?
    end=$(date +%s.%N)
    echo "{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $(awk "BEGIN {print $end - $start}"), \"limit_s\": $limit}" \
        >> "$WORK/stages.jsonl"
    echo "=== $name: exit $rc" | tee -a "$LOG"
}

cd "$ROOT"
if [ "$MODE" = smoke ]; then   # a handful of device tests: the whole set runs in the suite
    TESTS=(tests/test_contracts.py -k "device and family")
else      # only the files that hold device tests: the others may need what the image lacks
    mapfile -t TESTS < <(grep -l "pytest.mark.device" tests/test_*.py)
fi
stage tests "${LIMITS[0]}" env VAELAB_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -p no:cacheprovider \
    -m device --junitxml="$WORK/tests.xml" "${TESTS[@]}"
SMOKE_FLAG=()
[ "$MODE" = smoke ] && SMOKE_FLAG=(--smoke)
stage speed "${LIMITS[1]}" "$PY" benchmarks/gpu_speed.py --device "$DEVICE" --card "$CARD" \
    --out "$WORK/speed.json" "${SMOKE_FLAG[@]}"
stage recipes "${LIMITS[2]}" "$PY" benchmarks/gpu_runs.py --part recipes --device "$DEVICE" \
    --card "$CARD" --runs "$WORK/runs" --out "$WORK/recipes.json" "${SMOKE_FLAG[@]}"
stage protocol "${LIMITS[3]}" "$PY" benchmarks/gpu_runs.py --part protocol --device "$DEVICE" \
    --card "$CARD" --runs "$WORK/runs" --out "$WORK/protocol.json" "${SMOKE_FLAG[@]}"

"$PY" benchmarks/gpu_report.py "$WORK" "$STEM" "$CARD"
echo "wrote $STEM.json $STEM.md $STEM.log"
rm -rf "$WORK"
