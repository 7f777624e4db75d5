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

from conftest import ROOT


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
