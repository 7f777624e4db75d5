"""What a command costs besides its work: `train.py` of a toy run, `export.py` of it and
`ofrnn-client` of one image, timed as child processes, in the working tree and in another
revision.

Most of a small run's time is fixed cost (importing TensorFlow, building the backbone,
tracing graph functions), which every training process, every export and every process
of the test suite pays. For each repeat, the working tree and ``--base`` (a git
revision, checked out with ``git worktree`` into a temporary folder) in alternating
order, this times

- ``train.py`` of the test suite's toy run (`tests/toy_run.py`: 64/32/16 canvases of
  the embedded benchmark, one epoch of each stage, a label context), over one data cache that an untimed run of each tree
  has filled first;
- ``export.py`` of the run just trained;
- ``ofrnn-client`` labelling one of the run's example images through a local server
  (``ofrnn-serve``, started once on the working tree's first export): a command a script
  may run per image, whose start-up is nearly all its time.

Medians over repeats in seconds, and the ratio base / working tree (above 1: the
working tree is faster). Prints a markdown table and appends it to
benchmarks/RESULTS.md.

    python benchmarks/bench_startup.py --base=7fa4c3c
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from benchmarks._results import publish  # noqa: E402
from benchmarks import _stops as stops  # noqa: E402
from ofrnn_tf.serving.server_process import (  # noqa: E402
    DEFAULT_MODEL_NAME, spawn, stop, wait_until_listening)
from toy_run import TINY_TRAIN_FLAGS  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("base", "HEAD", "The git revision to compare the working tree with (HEAD: "
                    "the working tree's uncommitted changes).")
flags.DEFINE_integer("repeats", 3, "Timed runs of each command per tree.", lower_bound=1)
flags.DEFINE_bool("append", True, "Append the numbers to benchmarks/RESULTS.md.")

# What is timed, and how the table names it.
COMMANDS = {"train.py": "`train.py`, toy run", "export.py": "`export.py`",
            "ofrnn-client": "`ofrnn-client`, one image"}



def run_seconds(tree: Path, args: list[str]) -> float:
    """Wall seconds of `python args` run from `tree` with that tree's package first on the
    path; raises with the output's tail if it fails."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(tree))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} in {tree} exited with {done.returncode}:\n"
                           f"{done.stderr[-3000:]}")
    return seconds


def train_and_export(tree: Path, out: Path, cache: Path) -> tuple[float, float, Path]:
    """Seconds of a toy `train.py` into a fresh folder under `out`, then of its `export.py`;
    and the folder."""
    workdir = Path(tempfile.mkdtemp(dir=out, prefix="run-"))
    train = run_seconds(tree, ["train.py", f"--workdir={workdir}",
                               f"--runtime.cache_dir={cache}", *TINY_TRAIN_FLAGS])
    export = run_seconds(tree, ["export.py", f"--workdir={workdir}",
                                f"--export_dir={workdir / 'export'}"])
    return train, export, workdir


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    same = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", FLAGS.base, "--",
                           "ofrnn_tf", "train.py", "export.py", "tests/toy_run.py"],
                          capture_output=True, text=True)
    if same.returncode > 1:  # 1: they differ
        raise app.UsageError(f"--base={FLAGS.base}: {same.stderr.strip()}")
    if same.returncode == 0:
        raise app.UsageError(f"the working tree's code is that of --base={FLAGS.base}: "
                             f"nothing to compare (give --base another revision)")
    with tempfile.TemporaryDirectory(prefix="bench_startup-") as tmp:
        tmp = Path(tmp)
        base = tmp / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base),
                        FLAGS.base], check=True, capture_output=True)
        try:
            trees = {"working tree": ROOT, f"base {FLAGS.base}": base}
            cache = tmp / "cache"
            served = None
            for name, tree in trees.items():
                print(f"{name}: untimed run (fills the data cache)", file=sys.stderr)
                served = served or train_and_export(tree, tmp, cache)[2]
            image = str(sorted((served / "examples").glob("*.jpg"))[0])
            server = spawn(str(served / "export"), DEFAULT_MODEL_NAME)
            try:
                target = wait_until_listening(server, 600)
                times = {name: {command: [] for command in COMMANDS} for name in trees}
                order = list(trees)
                for repeat in range(FLAGS.repeats):
                    for name in (order if repeat % 2 == 0 else order[::-1]):
                        train, export, _ = train_and_export(trees[name], tmp, cache)
                        client = run_seconds(trees[name], ["-m", "ofrnn_tf.cli.client",
                                                           f"--server={target}", image])
                        for command, seconds in zip(COMMANDS, (train, export, client)):
                            times[name][command].append(seconds)
                        print(f"repeat {repeat + 1}, {name}: train.py {train:.1f} s, "
                              f"export.py {export:.1f} s, ofrnn-client {client:.1f} s",
                              file=sys.stderr)
            finally:
                stop(server)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(base)], capture_output=True)
    work, other = order
    lines = [f"| command | {work}, s | {other}, s | {other} / {work} |", "|---|---:|---:|---:|"]
    for command, what in COMMANDS.items():
        a = statistics.median(times[work][command])
        b = statistics.median(times[other][command])
        lines.append(f"| {what} | {a:.1f} | {b:.1f} | {b / a:.2f} |")
    lines.append("")
    for name in order:
        runs = ", ".join(" / ".join(f"{t:.1f}" for t in repeat)
                         for repeat in zip(*times[name].values()))
        lines.append(f"- {name}, each repeat ({' / '.join(COMMANDS)}, s): {runs}")
    publish("Fixed cost of a training, an export and a client process", "\n".join(lines),
            FLAGS.append)


if __name__ == "__main__":
    stops.run(main)
