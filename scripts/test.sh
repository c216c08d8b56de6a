#!/usr/bin/env bash
# Sets up everything, then runs the test suite (tiny models; about 14 minutes on 2 CPU cores).
# Extra arguments go to pytest in one process, e.g. scripts/test.sh -k resume.
#
# Without arguments the test files run as two pytest processes side by side, split by their measured cost
# (scripts/split_tests.py): most tests are tiny TensorFlow graphs whose time goes to tracing and Python, one core
# each, so two processes use both cores. Each process has its own tmp dirs and its own 2 logical CPU devices.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-torch
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest tests -q -p no:cacheprovider "$@"
fi
logs=$(mktemp -d)
read -r -a first <<< "$(.venv/bin/python scripts/split_tests.py 0)"
read -r -a second <<< "$(.venv/bin/python scripts/split_tests.py 1)"
start=$(date +%s)
.venv/bin/python -m pytest "${first[@]}" -q -p no:cacheprovider > "$logs/first.log" 2>&1 & a=$!
.venv/bin/python -m pytest "${second[@]}" -q -p no:cacheprovider > "$logs/second.log" 2>&1 & b=$!
status=0
wait "$a" || status=1
wait "$b" || status=1
for part in first second; do
  echo "=== tests, part $part ==="
  cat "$logs/$part.log"
done
echo "=== both parts: $(( $(date +%s) - start )) s, $([ "$status" = 0 ] && echo passed || echo FAILED) ==="
exit "$status"
