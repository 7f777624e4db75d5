"""What of the machine this process may use: its memory limit and its CPUs, read from its
cgroup (v2 and v1, as Docker and Kubernetes set them) where one limits it. Imports no
TensorFlow, so that a command can read them before TensorFlow starts.

TensorFlow sizes its thread pools from the cores it may run on (the CPU affinity), not
from a CPU quota (``docker --cpus``, Kubernetes ``limits.cpu``): `usable_cpus` counts
both."""

import math
import os
from typing import Optional

# A cgroup limit this high is none (cgroup v1 writes "no limit" as 2^63 rounded to a page).
_NO_LIMIT = 2 ** 60


def _cgroup_folders(controller: str, cgroup_root: str, proc_cgroup: str
                    ) -> list[tuple[str, int]]:
    """``(folder, cgroup version)`` of each cgroup of this process that may hold a limit of
    `controller` (``memory``, ``cpu``), and of every cgroup above it: under cgroup v2 in
    `cgroup_root` or its ``unified`` folder, under v1 in the controller's hierarchy
    (``memory/…``, ``cpu/…`` or the hierarchy it shares, ``cpu,cpuacct/…``)."""
    folders = []
    with open(proc_cgroup) as lines:
        for line in lines:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if not controllers:
                roots = [(cgroup_root, 2), (os.path.join(cgroup_root, "unified"), 2)]
            elif controller in controllers.split(","):
                roots = [(os.path.join(cgroup_root, name), 1)
                         for name in dict.fromkeys([controller, controllers])]
            else:
                continue
            parts = [part for part in path.split("/") if part]
            # Walking up also finds a container's own limit, mounted as the root of its
            # hierarchy while /proc names the path the host gave it.
            folders += [(os.path.join(root, *parts[:depth]), version) for root, version in roots
                        for depth in range(len(parts), -1, -1)]
    return folders


def _folders_of(controller: str, cgroup_root: str, proc: str) -> list[tuple[str, int]]:
    """`_cgroup_folders` of this process; none where they cannot be read (macOS)."""
    try:
        return _cgroup_folders(controller, cgroup_root, os.path.join(proc, "self", "cgroup"))
    except (OSError, ValueError):
        return []


def _read(path: str) -> Optional[str]:
    """The stripped text of the file at `path`, or None where it cannot be read."""
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return None


def memory_limit_mib(cgroup_root: str = "/sys/fs/cgroup", proc: str = "/proc"
                     ) -> Optional[tuple[float, str]]:
    """``(MiB, what they are)``: the memory this process may use. The lowest memory limit
    of its cgroup and those above it where one is set, else the system's ``MemAvailable``;
    None where neither can be read (macOS)."""
    limits = []
    for folder, version in _folders_of("memory", cgroup_root, proc):
        path = os.path.join(folder, "memory.max" if version == 2 else "memory.limit_in_bytes")
        text = _read(path)
        if text is not None and text.isdigit() and int(text) < _NO_LIMIT:
            limits.append((int(text) / 2 ** 20, f"the limit of its cgroup, {path}"))
    if limits:
        return min(limits)
    try:
        with open(os.path.join(proc, "meminfo")) as lines:
            for line in lines:
                name, _, value = line.partition(":")
                if name == "MemAvailable":
                    return int(value.split()[0]) / 2 ** 10, "MemAvailable in /proc/meminfo"
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cpu_quota_of(folder: str, version: int) -> Optional[float]:
    """The CPU quota one cgroup folder sets, in CPUs (0.5: half a CPU's time), or None:
    v2 ``cpu.max`` (``QUOTA PERIOD``, ``max`` for none), v1 ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us`` (-1 for none)."""
    if version == 2:
        text = _read(os.path.join(folder, "cpu.max"))
        quota, _, period = (text or "").partition(" ")
    else:
        quota = _read(os.path.join(folder, "cpu.cfs_quota_us")) or ""
        period = _read(os.path.join(folder, "cpu.cfs_period_us")) or ""
    if not (quota.isdigit() and period.isdigit()) or int(quota) == 0 or int(period) == 0:
        return None
    return int(quota) / int(period)


def cpu_quota(cgroup_root: str = "/sys/fs/cgroup", proc: str = "/proc") -> Optional[float]:
    """The CPU time this process may use, in CPUs: the lowest CPU quota of its cgroup and
    those above it (``docker --cpus=0.5`` is 0.5), or None where none is set or it cannot
    be read."""
    quotas = [quota for folder, version in _folders_of("cpu", cgroup_root, proc)
              if (quota := _cpu_quota_of(folder, version)) is not None]
    return min(quotas, default=None)


def visible_cpus() -> int:
    """The cores this process may run on: its CPU affinity (``taskset``, ``docker
    --cpuset-cpus``), or the machine's count where there is none to read (macOS)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def usable_cpus(cgroup_root: str = "/sys/fs/cgroup", proc: str = "/proc") -> int:
    """How many cores' worth of work this process may run at once: its `visible_cpus`,
    fewer under a CPU quota (`cpu_quota`, rounded up: 0.5 CPU is 1, 2.5 is 3); at least 1."""
    quota = cpu_quota(cgroup_root, proc)
    visible = visible_cpus()
    return max(1, visible if quota is None else min(visible, math.ceil(quota)))
