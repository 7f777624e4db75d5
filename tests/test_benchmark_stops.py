"""How a benchmark script stops (`benchmarks/_stops.py`): SIGTERM unwinds it as Ctrl-C does,
so that its temporary folders and child processes go with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, ctrl_c_as_in_a_terminal


def fake_tree(path: Path, train_py: str) -> Path:
    """A tree that `check_checkouts` takes for one of the project's, whose ``train.py`` is
    `train_py`."""
    (path / "ofrnn_tf").mkdir(parents=True)
    (path / "ofrnn_tf" / "__init__.py").write_text("")
    (path / "train.py").write_text(train_py)
    return path


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} never written; the script said:\n{proc.communicate()[1]}")
        time.sleep(0.1)
    time.sleep(0.2)  # written whole
    return path.read_text()


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_sigterm_stops_a_benchmark_its_child_and_removes_its_temporary_folder(tmp_path):
    child_pid = tmp_path / "child.pid"
    tree = fake_tree(tmp_path / "tree", "import os, time\n"
                     f"open({str(child_pid)!r}, 'w').write(str(os.getpid()))\n"
                     "time.sleep(600)\n")
    temp = tmp_path / "temp"
    temp.mkdir()
    env = dict(os.environ, TMPDIR=str(temp), TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=str(ROOT))
    bench = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "bench_training_memory.py"),
         f"--checkouts={tree}", "--runs=1", "--noappend", f"--cache_dir={tmp_path / 'cache'}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pid = int(wait_for(child_pid, bench))
    try:
        bench.send_signal(signal.SIGTERM)
        _, err = bench.communicate(timeout=60)
        assert bench.returncode == 143, err
        assert err.rstrip().endswith("bench_training_memory.py: terminated"), err
        assert "Traceback" not in err
        assert not running(pid)
        assert list(temp.iterdir()) == []  # the run's `bench_memory_*` folder
    finally:
        if running(pid):
            os.kill(pid, signal.SIGKILL)


# A train.py stand-in that, like the real one, takes a while to stop on its first Ctrl-C or
# SIGTERM (the end of its step, a checkpoint), then says what it saved.
_SLOW_TO_STOP = """\
import os, signal, sys, time
def stop(signum, frame):
    time.sleep(1.5)
    open({saved!r}, "w").write(str(signum))
    sys.exit(128 + signum)
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
open({ready!r}, "w").write(str(os.getpid()))
time.sleep(600)
"""

# A paper-table script: one run_child under `_stops.run`.
_TABLE_SCRIPT = """\
import sys
from benchmarks import _stops as stops, _table_runs as table_runs
stops.run(lambda argv: table_runs.run_child([sys.executable, {child!r}], cwd="."))
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl_c_to_the_group", "sigterm_to_the_script"])
def test_a_stopped_table_script_lets_its_train_py_stop_on_its_own(tmp_path, how):
    ready, saved = tmp_path / "ready", tmp_path / "saved"
    child = tmp_path / "train.py"
    child.write_text(_SLOW_TO_STOP.format(ready=str(ready), saved=str(saved)))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    script = subprocess.Popen(
        ctrl_c_as_in_a_terminal([sys.executable, "-c", _TABLE_SCRIPT.format(child=str(child))]),
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    pid = int(wait_for(ready, script))
    try:
        if how == "ctrl_c_to_the_group":  # as a terminal sends it
            os.killpg(script.pid, signal.SIGINT)
        else:
            script.send_signal(signal.SIGTERM)
        _, err = script.communicate(timeout=60)
        signum = signal.SIGINT if how == "ctrl_c_to_the_group" else signal.SIGTERM
        assert script.returncode == 128 + signum, err
        assert saved.read_text() == str(int(signum))  # its stop ran to its end
        assert not running(pid)
    finally:
        if running(pid):
            os.kill(pid, signal.SIGKILL)


def test_every_benchmark_script_runs_under_stops():
    # A script under a bare `app.run` ends at once on SIGTERM, leaving its temporary
    # folders, checkouts and children behind.
    bare = [path.name for path in sorted((ROOT / "benchmarks").glob("*.py"))
            if path.name != "_stops.py" and "app.run(" in path.read_text()]
    assert bare == [], f"use `_stops.run(main)` in {bare}"


def test_a_benchmarks_help_exits_with_0_and_a_mistyped_flag_with_1():
    """absl ends ``--help`` with 1, a refused command's status; a script asking a
    benchmark for its flags sees 0 (`ofrnn_tf.cli.help_exits_zero`)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    script = str(ROOT / "benchmarks" / "bench_decoding.py")
    for flag, status in (("--help", 0), ("--helpfull", 0), ("--no_such_flag", 1)):
        done = subprocess.run([sys.executable, script, flag], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == status, (flag, done.stderr[-1000:])
        assert ("--[no]append" in done.stdout) == (status == 0), done.stdout[-1000:]
