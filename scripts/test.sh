#!/usr/bin/env bash
# Lints the code and runs the whole test suite (set-up included). Extra arguments go to
# pytest.
#
# One pytest worker per CPU core (pytest-xdist), each taking whole test files, so that a
# file's shared fixtures (a tiny trained run, a served model) are built once per worker:
# most of the suite's time is single-threaded (Python start-up, TensorFlow's import and
# tracing, child processes), which a second worker overlaps. At most 4 workers (each
# holds TensorFlow, and those given the files of the tiny trained run train it): xdist
# counts the CPUs the process may use, not a container's CPU quota.
# OFRNN_TEST_WORKERS=N sets the number; `-n 0` runs it in one process (for a debugger).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# Lint first, in under a second: undefined names, unused imports and variables, syntax
# errors, invalid escapes, trailing whitespace, format strings that do not match their
# arguments (pyflakes', pycodestyle's and pylint's error checks, not line length or
# naming). A finding fails the run before the tests start.
.venv/bin/ruff check --quiet --no-cache --select F,E4,E9,W,PLE .
export TF_CPP_MIN_LOG_LEVEL=2
# -rs: each skipped test is listed with its reason (a tool the machine lacks).
exec .venv/bin/python -m pytest -q -rs -n "${OFRNN_TEST_WORKERS:-auto}" --maxprocesses=4 \
  --dist loadfile "$@"
