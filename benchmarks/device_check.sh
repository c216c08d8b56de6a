#!/usr/bin/env bash
# The device check: one table of train-step images/s and model FLOP utilisation (ViT-S/16, ViT-B/16), input-pipeline
# images/s and SavedModel serving latency, on whatever machine runs it (a GPU / TPU host, or a CPU with smaller sizes).
# Sized to finish within 8 minutes on one GPU; the limit below stops it at 9 (override: DEVICE_CHECK_LIMIT=SECONDS).
# Run from a set-up checkout (bash scripts/setup.sh), e.g. on a lent accelerator machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
exec timeout "${DEVICE_CHECK_LIMIT:-540}" "$PY" benchmarks/device_check.py "$@"
