#!/usr/bin/env bash
# Sets up everything tf_mocov3 needs on a Debian/Ubuntu machine with Python 3.11: the virtual environment .venv with
# requirements.txt and the package itself installed editable (pyproject.toml: `import tf_mocov3` and `import export`
# reach this checkout from any folder), and the offline Fashion-MNIST files (Debian package dataset-fashion-mnist)
# for the demo and tests.
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
# The package, editable, without its dependencies (installed pinned above) and built by .venv's own setuptools
# (--no-build-isolation: nothing to download). Done again when pyproject.toml changes or when .venv's tf_mocov3 is
# not this checkout's (a copied or moved .venv). A .venv that is a link to another checkout's environment (a git
# worktree sharing one) is left pointing where it points: `python -m pytest` from this root imports this checkout.
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
found=$(.venv/bin/python -I -c 'import os, tf_mocov3; print(os.path.realpath(os.path.dirname(tf_mocov3.__file__)))' \
  2>/dev/null || true)
if [ -L .venv ]; then
  [ -n "$found" ] || echo "[setup] note: .venv links to an environment without tf_mocov3; run its own setup.sh" >&2
elif [ "$found" != "$(pwd -P)/tf_mocov3" ] || [ "$(cat .venv/.installed-package.sha256 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing tf_mocov3 (editable) into .venv"
  .venv/bin/python -m pip install --quiet "setuptools>=70.1"
  # setuptools warns at every editable build that folders named like the package may shadow it: shown on failure only
  if ! log=$(.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation --editable . 2>&1); then
    echo "$log" >&2
    exit 1
  fi
  echo "$want" > .venv/.installed-package.sha256
fi

FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
  echo "[setup] installing the Debian package dataset-fashion-mnist (offline Fashion-MNIST)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
