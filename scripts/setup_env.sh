#!/usr/bin/env bash
# Creates .venv with ofrnn_tf and its test tools, and (as root) installs the Debian
# package that holds Fashion-MNIST, the source of the embedded benchmark.
# Idempotent: a second run only checks that everything is in place, and installs again
# where setup.cfg or pyproject.toml changed since.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[setup] installing Debian package dataset-fashion-mnist" >&2
  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }) \
    || echo "[setup] dataset-fashion-mnist not installable; falling back to keras.datasets at run time" >&2
fi

if [ -L .venv/bin/python ] && [ ! -x .venv/bin/python ] && [ ! -O .venv/pyvenv.cfg ]; then
  # Another user's .venv whose link leads nowhere this user may go (made from a Python
  # under that user's home, a pyenv shim under /root): "python3 -m venv" cannot redo it.
  made_from=$(sed -n 's/^home *= *//p' .venv/pyvenv.cfg 2>/dev/null || true)
  echo "[setup] .venv exists but its interpreter (from ${made_from:-another Python}) cannot" \
    "be run by this user ($(id -un)): its owner can make it again from a Python every user" \
    "can run (rm -rf .venv && PYTHON=/usr/bin/python3 bash scripts/setup_env.sh), or use a" \
    "clone of your own" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv" >&2
  "$PY" -m venv .venv
fi
# The stamp holds the checksums of the files .venv was installed from: a changed file
# is installed whatever its date, which a copy may keep (rsync -a, tar x, cp -p) or a
# clock set wrong may have written.
stamp=.venv/.ofrnn_tf-installed
sources=$(cksum setup.cfg pyproject.toml)  # POSIX: on macOS too, which has no sha256sum
if [ "$sources" != "$(cat "$stamp" 2>/dev/null)" ]; then
  echo "[setup] installing ofrnn_tf[dev] into .venv" >&2
  # uv installs the same packages as pip several times faster (parallel downloads, a
  # shared cache: about 25 s instead of a minute here); pip is the fallback wherever uv
  # cannot be installed or fails. --compile-bytecode writes the .pyc files at install,
  # as pip does: where PYTHONDONTWRITEBYTECODE is set, every process would otherwise
  # compile TensorFlow's sources again on import (12 s instead of 5 here).
  # What the tools say goes to stderr: stdout is the caller's (bash scripts/main.sh >
  # results.txt).
  if .venv/bin/python -m pip install -q uv >/dev/null 2>&1 \
      && .venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python \
        -e ".[dev]" >&2; then
    :
  else
    echo "[setup] uv unavailable; installing with pip (a few minutes)" >&2
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e ".[dev]" >&2
  fi
  .venv/bin/python -m pip check >&2
  printf '%s\n' "$sources" > "$stamp"
fi
