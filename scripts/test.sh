#!/usr/bin/env bash
# Lints the code and runs the whole test suite (set-up included). Extra arguments go to
# pytest.
#
# One pytest worker per CPU core (pytest-xdist), each taking whole test files, so that a
# file's shared fixtures (a tiny trained run, a served model) are built once per worker:
# most of the suite's time is single-threaded (Python start-up, TensorFlow's import and
# tracing, child processes), which a second worker overlaps. At most 4 workers (each
# holds TensorFlow, and those given the files of the tiny trained run train it), and no
# more than the cores the process may use, fewer under a container's CPU quota
# (tests/conftest.py counts them for `-n auto`, as ofrnn_tf.host_limits.usable_cpus).
# OFRNN_TEST_WORKERS=N sets the number; `-n 0` runs it in one process, as `--pdb` does.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# Lint first, in under a second: undefined names, unused imports and variables, syntax
# errors, invalid escapes, trailing whitespace, format strings that do not match their
# arguments (pyflakes', pycodestyle's and pylint's error checks, not line length or
# naming). A finding fails the run before the tests start.
.venv/bin/ruff check --quiet --no-cache --select F,E4,E9,W,PLE .
# Two tests need a Latin-1 locale (a command that restarts itself in UTF-8 mode under
# one): as root, one is made where the machine has none (under a second); else they skip.
if [ "$(id -u)" = 0 ] && command -v localedef >/dev/null \
    && ! locale -a 2>/dev/null | grep -qiE '8859-?1$'; then
  localedef -i en_US -f ISO-8859-1 en_US.ISO-8859-1 >/dev/null 2>&1 || true
fi
export TF_CPP_MIN_LOG_LEVEL=2
# -rs: each skipped test is listed with its reason (a tool the machine lacks).
exec .venv/bin/python -m pytest -q -rs -n "${OFRNN_TEST_WORKERS:-auto}" --maxprocesses=4 \
  --dist loadfile "$@"
