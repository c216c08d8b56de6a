#!/usr/bin/env bash
# Sets up everything, then runs the test suite (tiny models; a few minutes on 2 CPU cores).
# Extra arguments go to pytest, e.g. scripts/test.sh -k resume.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-torch
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
exec .venv/bin/python -m pytest tests -q -p no:cacheprovider "$@"
