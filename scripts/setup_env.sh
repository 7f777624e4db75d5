#!/usr/bin/env bash
# Creates .venv with ofrnn_tf and its test tools, and (as root) installs the Debian
# package that holds Fashion-MNIST, the source of the embedded benchmark.
# Idempotent: a second run only checks that everything is in place, and installs again
# where setup.cfg or pyproject.toml changed since (offline, it goes on with the .venv it
# has, and tries again next time).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

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
# A Python the install would refuse (a version TensorFlow has no wheel for, as macOS's own
# python3 is; an Intel Mac's) is refused first, in one line: a .venv made from it would
# stay, and a rerun with PYTHON= would go on using it. An existing .venv is kept: a PYTHON=
# of another version is refused (python_check.py --venv) rather than passed over.
if [ ! -x .venv/bin/python ]; then
  "$PY" scripts/python_check.py >&2 || exit 1
  echo "[setup] creating .venv" >&2
  "$PY" -m venv .venv
elif ! .venv/bin/python scripts/python_check.py --venv >&2; then
  exit 1
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
  install_package() {
    if .venv/bin/python -m pip install -q uv >/dev/null 2>&1; then
      .venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python \
        -e ".[dev]" >&2 && return 0
      echo "[setup] uv failed; installing with pip (a few minutes)" >&2
    else
      echo "[setup] uv unavailable; installing with pip (a few minutes)" >&2
    fi
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null \
      && .venv/bin/python -m pip install -q -e ".[dev]" >&2
  }
  if install_package; then
    .venv/bin/python -m pip check >&2
    printf '%s\n' "$sources" > "$stamp"
  elif [ -e "$stamp" ]; then
    # An install finished before (the stamp is written after one only): offline after an
    # update, the .venv it made still runs. The stamp is kept, so the next run tries again.
    echo "[setup] could not install ofrnn_tf[dev] (see above): using the .venv installed" \
      "from an earlier setup.cfg; run this again where the package index can be reached" >&2
  else
    echo "[setup] could not install ofrnn_tf[dev] into .venv" >&2
    exit 1
  fi
fi

# The Debian package that holds Fashion-MNIST (as root, where apt-get is): not where the
# benchmark's loader already finds the four files (the package's folder, or a copy in
# keras's cache folders), nor again after apt-get failed (no network, no such package):
# a marker in .venv says so, and removing it tries again.
apt_failed=.venv/.fashion-mnist-apt-failed
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    && ! .venv/bin/python -c 'import sys
from ofrnn_tf.data.fashion_mnist import find_fashion_mnist
sys.exit(find_fashion_mnist() is None)' >/dev/null 2>&1; then
  if [ -e "$apt_failed" ]; then
    echo "[setup] dataset-fashion-mnist: not tried again, apt-get failed before (rm" \
      "$apt_failed to try again); the benchmark downloads Fashion-MNIST" >&2
  else
    echo "[setup] installing Debian package dataset-fashion-mnist (this needs the network)" >&2
    apt=(apt-get -q -o Acquire::Retries=0 -o Acquire::http::Timeout=10
         -o Acquire::https::Timeout=10)
    if ! { "${apt[@]}" install -y dataset-fashion-mnist >/dev/null 2>&1 \
        || { "${apt[@]}" update >/dev/null 2>&1 \
          && "${apt[@]}" install -y dataset-fashion-mnist >/dev/null 2>&1; }; }; then
      echo "apt-get could not install dataset-fashion-mnist on $(date -u +%FT%TZ);" \
        "rm $apt_failed to try again" > "$apt_failed"
      echo "[setup] dataset-fashion-mnist not installable (not tried again until $apt_failed" \
        "is removed); the benchmark downloads Fashion-MNIST at run time, or reads the four" \
        "*-ubyte.gz files copied to ~/.keras/datasets/fashion-mnist/" >&2
    fi
  fi
fi
