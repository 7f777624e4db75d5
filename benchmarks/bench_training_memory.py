"""Memory of a training run: the resident set (RSS) of ``train.py`` in each phase.

Runs ``train.py`` of each of ``--checkouts`` (this repository, or another commit's
tree, e.g. from ``git worktree add``) on features extracted already (``--cache_dir``),
with a fresh ``--workdir`` each time, as a child process whose VmRSS is read every
``--interval`` seconds. Each reading belongs to the phase the child's log has reached:
stage 1 (from the start to its last epoch), M_map's outputs (stage 2's pass that
computes them once) and stage 2 (its epochs, then evaluation). Prints per run the
largest RSS of stage 1 and of the whole run and stage 2's median, and the medians of
those over each checkout's runs; the checkouts' runs alternate, so all see about the
same load. The runs' test metrics are printed beside them: a change of memory layout
must leave them as they were.

    python benchmarks/bench_training_memory.py --checkouts=.,../before --runs=2
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import _table_runs as table_runs  # noqa: E402
from benchmarks import _stops as stops  # noqa: E402
from benchmarks._results import check_checkouts, checkout_label, publish  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("checkouts", ["."], "Repository trees whose train.py is measured.")
flags.DEFINE_integer("runs", 2, "Runs per checkout.", lower_bound=1)
flags.DEFINE_string("train_flags", "--stage1.epochs=1 --stage2.epochs=2",
                    "Flags given to every train.py run besides --workdir and the cache.")
flags.DEFINE_float("interval", 0.25, "Seconds between RSS readings.", lower_bound=0.01)
flags.DEFINE_bool("append", True, "Append the numbers to benchmarks/RESULTS.md.")
table_runs.define_cache_dir()
flags.adopt_module_key_flags(table_runs)
check_checkouts(needs=("ofrnn_tf/__init__.py", "train.py"))

# The phase a log line starts, by its beginning (progress bars write one line each off
# a terminal).
PHASES = (("stage 1 epoch", "stage 1"), ("M_map outputs", "M_map outputs"),
          ("stage 2 epoch", "stage 2"))


def _rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def measure(checkout: str, cache_dir: str) -> dict:
    """One training run of `checkout`'s train.py: RSS readings by phase, its test metrics."""
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as workdir:
        env = dict(os.environ, PYTHONPATH=checkout, TF_CPP_MIN_LOG_LEVEL="2")
        command = [sys.executable, os.path.join(checkout, "train.py"), f"--workdir={workdir}",
                   f"--runtime.cache_dir={cache_dir}", *shlex.split(FLAGS.train_flags)]
        phase = ["start"]
        readings: dict[str, list[float]] = {}
        with subprocess.Popen(command, cwd=checkout, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) as child:
            tail: list[str] = []

            def follow_log():
                for line in child.stderr:
                    tail[:] = (tail + [line])[-20:]
                    for start, name in PHASES:
                        if line.startswith(start):
                            phase[0] = name

            reader = threading.Thread(target=follow_log, daemon=True)
            reader.start()
            try:
                while child.poll() is None:
                    rss = _rss_mib(child.pid)
                    if rss is not None:
                        readings.setdefault(phase[0], []).append(rss)
                    time.sleep(FLAGS.interval)
            except BaseException:
                # Stopped (Ctrl-C, SIGTERM): the run is thrown away with its folder, and
                # `Popen`'s exit would leave the child training on under PID 1.
                child.kill()
                raise
            reader.join()
        if child.returncode != 0:
            raise RuntimeError(f"{shlex.join(command)} failed:\n{''.join(tail)}")
        metrics = json.loads(Path(workdir, "metrics_test.json").read_text())
    stage1 = readings.get("start", []) + readings.get("stage 1", [])
    return {"stage 1 max": max(stage1), "peak": max(max(v) for v in readings.values()),
            "stage 2 median": statistics.median(readings["stage 2"]),
            "metrics": metrics}


def _metrics_text(metrics: dict) -> str:
    return " / ".join(f"{metrics[key]:.1f}" for key in ("C-F1", "O-F1", "mAP"))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if "stage2.epochs" in table_runs.train_config(shlex.split(FLAGS.train_flags)).unread_settings():
        raise app.UsageError(f"--train_flags={FLAGS.train_flags}: a model of M_map alone, "
                             f"without the stage 2 this benchmark measures")
    checkouts = list(FLAGS.checkouts)  # as given: the labels of the table
    cache_dir = os.path.abspath(FLAGS.cache_dir)
    results: dict[str, list[dict]] = {path: [] for path in checkouts}
    for run in range(FLAGS.runs):
        order = checkouts if run % 2 == 0 else checkouts[::-1]
        for path in order:
            result = measure(os.path.abspath(path), cache_dir)
            results[path].append(result)
            print(f"{checkout_label(path)} run {run + 1}: stage 1 max "
                  f"{result['stage 1 max']:.0f} MiB, peak {result['peak']:.0f}, stage 2 "
                  f"median {result['stage 2 median']:.0f}; test C-F1 / O-F1 / mAP "
                  f"{_metrics_text(result['metrics'])}",
                  file=sys.stderr, flush=True)
    lines = [f"`train.py {FLAGS.train_flags}` on the features in `{FLAGS.cache_dir}`, "
             f"RSS read every {FLAGS.interval} s; MiB, each run, then the median of the runs.",
             "", "| checkout | run | stage 1 max | peak | stage 2 median | test C-F1 / O-F1 / mAP |",
             "|---|---|---:|---:|---:|---|"]
    for path in checkouts:
        for run, result in enumerate(results[path], 1):
            lines.append(f"| {checkout_label(path)} | {run} | {result['stage 1 max']:.0f} | "
                         f"{result['peak']:.0f} | {result['stage 2 median']:.0f} | "
                         f"{_metrics_text(result['metrics'])} |")
        lines.append(f"| {checkout_label(path)} | median | "
                     + " | ".join(f"{statistics.median(r[key] for r in results[path]):.0f}"
                                  for key in ("stage 1 max", "peak", "stage 2 median"))
                     + " | |")
    publish("Training memory by phase", "\n".join(lines), FLAGS.append)


if __name__ == "__main__":
    stops.run(main)
