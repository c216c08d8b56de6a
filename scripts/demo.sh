#!/usr/bin/env bash
# Sets up everything, then pre-trains a tiny ViT with MoCo v3 on Fashion-MNIST on the CPU (configs/demo.py).
# Extra arguments go to the training command, e.g. --config.max_steps=50. WORKDIR defaults to runs/demo;
# running the script again resumes (or reports the finished run). Ends with the total wall time, setup included.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
.venv/bin/python -m tf_mocov3.train --config=configs/demo.py --workdir="${WORKDIR:-runs/demo}" "$@"
elapsed=$((SECONDS - start))
echo "Demo finished in $((elapsed / 60))m$(printf '%02d' $((elapsed % 60)))s."
