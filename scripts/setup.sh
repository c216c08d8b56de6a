#!/usr/bin/env bash
# Sets up everything tf_mocov3 needs on a Debian/Ubuntu machine with Python 3.11: the virtual environment .venv with
# requirements.txt, and the offline Fashion-MNIST files (Debian package dataset-fashion-mnist) for the demo and tests.
# --with-torch also installs requirements-convert.txt (CPU PyTorch, for tf_mocov3.convert_official and its tests).
# Idempotent: a second run only checks and returns in a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "error: tf_mocov3 needs Python 3.11 (found $("$PYTHON" --version 2>&1)); install python3.11 or set PYTHON=/path/to/python3.11." >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PYTHON" -m venv .venv
fi
install() {  # install a requirements file unless the same file was installed before
  local file=$1 stamp=.venv/.installed-$1.sha256 want
  want=$(sha256sum "$file" | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[setup] installing $file into .venv"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -r "$file"
    echo "$want" > "$stamp"
  fi
}
install requirements.txt
if [ "${1:-}" = "--with-torch" ]; then
  install requirements-convert.txt
fi

FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
  echo "[setup] installing the Debian package dataset-fashion-mnist (offline Fashion-MNIST)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
