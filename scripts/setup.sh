#!/usr/bin/env bash
# Set up a fresh machine for vaelab: a virtual environment in .venv with the CPU build of
# PyTorch, vaelab (editable) with its test tools, and the real Fashion-MNIST data from
# Debian's dataset-fashion-mnist package where apt is available. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
# constraints-cpu.txt pins torch to the CPU build; without it pip would pull a CUDA build.
.venv/bin/python -m pip install -q --disable-pip-version-check \
    -c constraints-cpu.txt -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, vaelab; print(f'setup: torch {torch.__version__}, vaelab {vaelab.__version__}')"

# Debian packages: the real Fashion-MNIST files, and Chromium for the report's browser tests
# (`vaelab report` itself needs no browser; the tests open its pages in headless Chromium).
FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PACKAGES=""
if [ ! -f "$FMNIST" ] && [ -z "${VAELAB_DATA:-}" ]; then
    PACKAGES="dataset-fashion-mnist"
fi
if ! command -v chromium >/dev/null 2>&1 && [ -z "${VAELAB_NO_BROWSER:-}" ]; then
    PACKAGES="$PACKAGES chromium"
fi
if [ -n "$PACKAGES" ]; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        [ "$(id -u)" = 0 ] || SUDO="sudo"
        echo "setup: installing Debian's$PACKAGES"
        # shellcheck disable=SC2086
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq $PACKAGES >/dev/null
    else
        echo "setup: no apt-get; vaelab will download Fashion-MNIST on first use (or set" \
             "VAELAB_DATA), and the browser tests are skipped without Chromium"
    fi
fi
