#!/usr/bin/env bash
# The main job: set up, train the default VAE on real Fashion-MNIST, evaluate it, and say
# where the pictures are. Usage: bash scripts/quickstart.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
RUN=${1:-runs/quickstart}
START=$SECONDS
.venv/bin/vaelab train --out "$RUN" --overwrite
.venv/bin/vaelab evaluate "$RUN"
echo
echo "pictures:"
ls -1 "$RUN"/*.png
.venv/bin/vaelab report "$RUN"
echo
.venv/bin/python scripts/run_summary.py "$RUN" "$((SECONDS - START))"
