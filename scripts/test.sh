#!/usr/bin/env bash
# Sets up everything, then runs the linter (ruff check .) and the test suite (tiny models; 9 min 24 s on 2 CPU cores
# with AVX-512; the smaller suite before the pod and packaging work took 14 minutes on 2 cores without AVX-512).
# Extra arguments go to pytest in one process, e.g. scripts/test.sh -k resume.
#
# Without arguments the test files run as two pytest processes side by side, split by their measured cost
# (scripts/split_tests.py): most tests are tiny TensorFlow graphs whose time goes to tracing and Python, one core
# each, so two processes use both cores. Each process has its own tmp dirs and its own 2 logical CPU devices.
# The tests marked `roundoff` (equalities within a round-off tolerance, thresholds on short runs) run a second time
# in the lighter half with other kernels, so that a tolerance fitted to one machine's round-off fails here rather than
# on the next contributor's CPU (tests/roundoff.py; BUILD_NOTES.md, "Round-off across CPUs"):
# TF_ENABLE_ONEDNN_OPTS=0 turns off oneDNN's ops (on by default only where the CPU has AVX-512 VNNI / BF16 or AMX),
# and ONEDNN_MAX_CPU_ISA=AVX caps the oneDNN matrix kernels that TensorFlow's own ops still call, which changes the
# round-off on an AVX2-only CPU too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-torch
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
# The linter first (ruff, pinned in requirements.txt, rules in pyproject.toml): a lint error fails the run, after the
# tests have run too, so one run shows everything that is wrong.
lint=0
echo "=== ruff check . ==="
.venv/bin/ruff check . || lint=1
if [ "$#" -gt 0 ]; then
  .venv/bin/python -m pytest tests -q -p no:cacheprovider "$@" || exit 1
  exit "$lint"
fi
logs=$(mktemp -d)
read -r -a first <<< "$(.venv/bin/python scripts/split_tests.py 0)"
read -r -a second <<< "$(.venv/bin/python scripts/split_tests.py 1)"
with_pass=$(.venv/bin/python scripts/split_tests.py roundoff)
half() {  # half INDEX FILES...: one half of the files, then the round-off pass if this half carries it
  local index=$1; shift
  local status=0
  .venv/bin/python -m pytest "$@" -q -p no:cacheprovider || status=1
  if [ "$index" = "$with_pass" ]; then
    echo "=== tests marked roundoff, again with TF_ENABLE_ONEDNN_OPTS=0 ONEDNN_MAX_CPU_ISA=AVX ==="
    TF_ENABLE_ONEDNN_OPTS=0 ONEDNN_MAX_CPU_ISA=AVX .venv/bin/python -m pytest tests -m roundoff -q \
      -p no:cacheprovider || status=1
  fi
  return "$status"
}
start=$(date +%s)
half 0 "${first[@]}" > "$logs/first.log" 2>&1 & a=$!
half 1 "${second[@]}" > "$logs/second.log" 2>&1 & b=$!
status=0
wait "$a" || status=1
wait "$b" || status=1
for part in first second; do
  echo "=== tests, part $part ==="
  cat "$logs/$part.log"
done
[ "$lint" = 0 ] || status=1
echo "=== both parts: $(( $(date +%s) - start )) s, $([ "$status" = 0 ] && echo passed || echo FAILED)$([ "$lint" = 0 ] || echo ' (ruff check failed, above)') ==="
exit "$status"
