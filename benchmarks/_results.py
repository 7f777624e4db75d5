"""Appends a benchmark's numbers to benchmarks/RESULTS.md with the machine they ran on."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from absl import flags

from ofrnn_tf.host_limits import cpu_quota, usable_cpus, visible_cpus

RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"
_HEADER = ("# Benchmark results\n\nEach section is appended by a script under "
           "`benchmarks/`, with the command that produced it and the machine it ran on.\n")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_times() -> tuple[int, int] | None:
    """`(steal, total)` clock ticks of the whole machine since boot (Linux), else None.

    Steal is the time the hypervisor gave this virtual machine's CPUs to others; on a
    shared host it slows every phase alike, so benchmarks report its share.
    """
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (ticks[7] if len(ticks) > 7 else 0), sum(ticks[:8])


def steal_share(start: tuple[int, int] | None, end: tuple[int, int] | None) -> float | None:
    """Share of the machine's CPU time stolen between two `cpu_times()` readings."""
    if start is None or end is None or end[1] <= start[1]:
        return None
    return (end[0] - start[0]) / (end[1] - start[1])


# Read when a benchmark imports this module, i.e. as it starts.
_STARTED = cpu_times()


def cores(count: int) -> str:
    """``1 core``, ``2 cores``."""
    return f"{count} core{'' if count == 1 else 's'}"


def usable_cores() -> str:
    """The cores the benchmark could use (`usable_cpus`): those it may run on, fewer under
    a CPU quota, which is shown where one is set (``2 cores usable of 64 visible, CPU
    quota 1.5``)."""
    usable, visible, quota = usable_cpus(), visible_cpus(), cpu_quota()
    text = cores(usable) + (f" usable of {visible} visible" if usable < visible else "")
    return text + ("" if quota is None else f", CPU quota {quota:g}")


def host_load(before: float, after: float) -> str:
    """The 1-minute load average before and after a run: it counts every process of the
    host, so it is said over the host's cores (``os.cpu_count()``), whatever this process
    may use of them."""
    return (f"load average (1 min, the whole host's) {before:.1f} before, {after:.1f} after, "
            f"over its {cores(os.cpu_count() or 1)}")


def machine_info() -> str:
    """One line: CPU model, usable cores (`usable_cores`), GPUs, TensorFlow version."""
    import tensorflow as tf

    parts = [f"CPU {cpu_model()}, {usable_cores()}"]
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(g).get("device_name", "GPU")
                 for g in gpus]
        parts.append("GPU " + ", ".join(names))
    parts.append(f"TensorFlow {tf.__version__}, Python {platform.python_version()}")
    return "; ".join(parts)


def append_result(title: str, command: str, lines_or_markdown: Sequence[str] | str,
                  path: str | os.PathLike | None = None) -> Path:
    """Appends a section ``## title``, dated in UTC, to RESULTS.md and returns the file
    path.

    Args:
        title: section title.
        command: the command line that produced the numbers.
        lines_or_markdown: markdown text, or lines of it.
        path: another results file (default benchmarks/RESULTS.md).
    """
    target = Path(path) if path is not None else RESULTS_PATH
    body = lines_or_markdown if isinstance(lines_or_markdown, str) else "\n".join(
        lines_or_markdown)
    # In UTC whatever the machine's zone: a section is cited by its stamp, and a zone's
    # abbreviation (IST, CST) can name several zones.
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    steal = steal_share(_STARTED, cpu_times())
    stolen = "" if steal is None else (
        f"; the hypervisor took {100 * steal:.0f} % of the CPU time while the script ran")
    section = (f"\n## {title}\n\n{stamp} — {machine_info()}{stolen}\n\n"
               f"```\n{command}\n```\n\n{body.rstrip()}\n")
    new = not target.exists() or target.stat().st_size == 0
    with open(target, "a") as f:
        if new:
            f.write(_HEADER)
        f.write(section)
    return target


if "results_file" not in flags.FLAGS:  # every script imports this module: one flag for all
    flags.DEFINE_string("results_file", None, "Append the numbers to this file instead of "
                        "benchmarks/RESULTS.md (a trial run that leaves the results alone).")
    # Refused before the work, not after it, where the numbers could not be written.
    flags.register_validator(
        "results_file",
        lambda path: path is None or (bool(path.strip()) and not path.endswith(os.sep)
                                      and not os.path.isdir(path)
                                      and os.path.isdir(os.path.dirname(os.path.abspath(path)))),
        message="--results_file: give a file (not a folder) in a folder that exists")
    # Listed in the script's --help beside its own flags.
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS["results_file"])


def publish(title: str, text: str, append: bool = True) -> None:
    """Prints a benchmark's markdown and, with `append`, adds it to RESULTS.md (or the file
    `--results_file` names) under `title` with the command line that ran it."""
    print(text, flush=True)
    if append:
        script = os.path.relpath(sys.argv[0], Path(__file__).resolve().parents[1])
        path = append_result(title, "python " + shlex.join([script] + sys.argv[1:]), text,
                             flags.FLAGS["results_file"].value)
        print(f"appended to {path}", file=sys.stderr)


def check_int_list(name: str, lower_bound: int = 1, length: int | None = None) -> None:
    """Refuses, as absl refuses a flag, a value of the list flag `name` that is not whole
    numbers of at least `lower_bound` (`length` of them, when given)."""
    def valid(values) -> bool:
        try:
            return (length is None or len(values) == length) and all(
                int(value) >= lower_bound for value in values)
        except (TypeError, ValueError):
            return False

    count = f"{length} " if length else ""
    flags.register_validator(name, valid, message=(
        f"--{name} takes {count}comma-separated whole numbers of at least {lower_bound}"))


def check_choices(name: str, choices: Sequence[str]) -> None:
    """Refuses a value of the list flag `name` holding anything but `choices`."""
    flags.register_validator(name, lambda values: set(values or ()) <= set(choices),
                             message=f"--{name} takes some of {', '.join(choices)}")


def mean_std(values: Sequence[Optional[float]]) -> str:
    """`mean ± std` of per-seed values with one decimal (one value alone, "not run" for
    none); a None (a metric a seed's split leaves undefined, as AP-small without a small
    object) is left out, "n/a" where every value is one."""
    if not values:
        return "not run"
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def difference(a: Optional[float], b: Optional[float]) -> Optional[float]:
    """`a - b`, or None where either is not defined."""
    return None if a is None or b is None else a - b


def one_decimal(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def measured_alternately(checkouts: Sequence[str], turn: int,
                         measure: Callable[[str], dict]) -> dict[str, dict]:
    """``{checkout: measure(its absolute path)}`` for every checkout, measured in the given
    order on even turns and in reverse on odd ones, so that none is always measured first
    on a host whose load drifts."""
    order = checkouts if turn % 2 == 0 else checkouts[::-1]
    return {path: measure(os.path.abspath(path)) for path in order}


def checkout_label(checkout: str) -> str:
    """A repository tree as a table names it: its path, commit, and whether tracked files
    changed since (a benchmark comparing checkouts measures what is in the tree)."""
    commit = subprocess.run(["git", "-C", checkout, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    changed = subprocess.run(["git", "-C", checkout, "status", "--porcelain",
                              "--untracked-files=no"], capture_output=True, text=True).stdout
    return f"{checkout} ({commit or 'no git'}{' + changes' if changed.strip() else ''})"


def child_result(script: str, args: Sequence[str], checkout: str, what: str,
                 env: Optional[dict] = None) -> dict:
    """Runs `script` (Python source) with `args` in a child process whose working folder
    is `checkout`, so that it imports that tree's package, and returns the JSON object its
    last line of stdout holds; a failed child raises, naming `what` it measured."""
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=checkout, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{checkout}, {what}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_checkouts(name: str = "checkouts", needs: Sequence[str] = ("ofrnn_tf/__init__.py",)
                    ) -> None:
    """Refuses, as absl refuses a flag, a value of the list flag `name` naming a folder
    that is not a tree of this project (without `needs`): a child run there would import
    this repository's package, installed in the environment, and measure it under the
    other tree's name."""
    def trees(values) -> bool:
        for checkout in values or ():
            for need in needs:
                if not os.path.isfile(os.path.join(checkout, need)):
                    raise flags.ValidationError(
                        f"{checkout} holds no {need}: not a tree of this project")
        return True

    flags.register_validator(name, trees)
