#!/usr/bin/env bash
# Sets up everything, then pre-trains a tiny ViT with MoCo v3 on Fashion-MNIST on the CPU (configs/demo.py).
# Extra arguments go to the training command, e.g. --config.max_steps=50. WORKDIR defaults to runs/demo;
# running the script again resumes (or reports the finished run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
exec .venv/bin/python -m tf_mocov3.train --config=configs/demo.py --workdir="${WORKDIR:-runs/demo}" "$@"
