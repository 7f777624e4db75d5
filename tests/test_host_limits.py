"""The memory and CPUs a process may use, read from cgroup files made up in a folder."""

import os

from ofrnn_tf import host_limits
from ofrnn_tf.host_limits import cpu_quota, usable_cpus


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_cpu_quota_is_read_from_cgroup_v2_where_max_is_no_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(host_limits, "visible_cpus", lambda: 64)
    cgroups, proc = tmp_path / "cgroup", tmp_path / "proc"
    write(proc / "self" / "cgroup", "0::/kubepods/pod1/abc\n")
    write(cgroups / "kubepods" / "pod1" / "abc" / "cpu.max", "max 100000\n")
    assert cpu_quota(str(cgroups), str(proc)) is None
    assert usable_cpus(str(cgroups), str(proc)) == 64
    # Kubernetes' limits.cpu: 2 on the pod, above the container's cgroup.
    write(cgroups / "kubepods" / "pod1" / "cpu.max", "200000 100000\n")
    assert cpu_quota(str(cgroups), str(proc)) == 2
    assert usable_cpus(str(cgroups), str(proc)) == 2
    # The lowest quota on the way up counts, rounded up to whole cores.
    write(cgroups / "kubepods" / "pod1" / "abc" / "cpu.max", "250000 100000\n")
    write(cgroups / "kubepods" / "cpu.max", "150000 100000\n")
    assert cpu_quota(str(cgroups), str(proc)) == 1.5
    assert usable_cpus(str(cgroups), str(proc)) == 2
    # A container sees its own cgroup as the root of the hierarchy.
    write(proc / "self" / "cgroup", "0::/\n")
    write(cgroups / "cpu.max", "50000 100000\n")
    assert cpu_quota(str(cgroups), str(proc)) == 0.5
    assert usable_cpus(str(cgroups), str(proc)) == 1


def test_the_cpu_quota_is_read_from_cgroup_v1_where_minus_one_is_no_limit(
        tmp_path, monkeypatch):
    monkeypatch.setattr(host_limits, "visible_cpus", lambda: 2)
    cgroups, proc = tmp_path / "cgroup", tmp_path / "proc"
    write(proc / "self" / "cgroup", "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    job = cgroups / "cpu,cpuacct" / "docker" / "abc"
    write(job / "cpu.cfs_quota_us", "-1\n")
    write(job / "cpu.cfs_period_us", "100000\n")
    assert cpu_quota(str(cgroups), str(proc)) is None
    assert usable_cpus(str(cgroups), str(proc)) == 2
    # docker --cpus=0.5, in the hierarchy mounted under the controller's own name.
    write(cgroups / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us", "50000\n")
    write(cgroups / "cpu" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    assert cpu_quota(str(cgroups), str(proc)) == 0.5
    assert usable_cpus(str(cgroups), str(proc)) == 1
    # A quota above the cores seen leaves them all.
    write(job / "cpu.cfs_quota_us", "800000\n")
    write(cgroups / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us", "-1\n")
    assert cpu_quota(str(cgroups), str(proc)) == 8
    assert usable_cpus(str(cgroups), str(proc)) == 2


def test_without_cgroups_the_usable_cpus_are_those_the_process_may_run_on(tmp_path):
    none = str(tmp_path / "none")
    assert cpu_quota(none, none) is None
    if hasattr(os, "sched_getaffinity"):  # Linux
        assert usable_cpus(none, none) == len(os.sched_getaffinity(0))


def test_without_an_affinity_to_read_the_usable_cpus_are_the_machine_s(tmp_path, monkeypatch):
    # macOS: no sched_getaffinity, no cgroups, no /proc.
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    none = str(tmp_path / "none")
    assert usable_cpus(none, none) == os.cpu_count()
    assert host_limits.memory_limit_mib(none, none) is None
