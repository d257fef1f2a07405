"""cgroup limits hold against real containers (a busybox rootfs, as in test_runtime)."""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest

from engine import cgroups, runtime
from engine.errors import InvalidArgument
from engine.spec import Limits, ProcessSpec
from tests.engine import test_runtime as rt

# the busybox image and container fixtures are test_runtime's (no shared conftest)
layers = rt.layers
make = rt.make
in_monitor = rt.in_monitor
_start_and_wait = rt._start_and_wait

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups need root")

MiB = 1024 * 1024


@pytest.fixture
def cgroup():
    """A factory of container cgroups, all removed after the test."""
    made: list[list[str]] = []

    def factory(limits: Limits) -> list[str]:
        paths = cgroups.create(f"cbx-test-{uuid.uuid4().hex[:12]}", limits)
        made.append(paths)
        return paths

    yield factory
    for paths in made:
        cgroups.remove(paths)
        assert not any(os.path.exists(p) for p in paths)


def test_info_reports_the_hierarchy_in_use():
    i = cgroups.info()
    assert i["driver"] == "cgroupfs"
    assert i["version"] in ("1", "2")
    assert {"memory", "pids"} <= set(i["controllers"])


def test_create_applies_limits_and_remove_leaves_nothing(cgroup):
    paths = cgroup(Limits(memory=32 * MiB, cpus=0.5, pids=20))
    assert all(os.path.isdir(p) and "/cbx/cbx-test-" in p for p in paths)
    files = {}
    for p in paths:
        for name in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes",
                     "cpu.cfs_quota_us", "cpu.cfs_period_us", "pids.max", "memory.max",
                     "cpu.max"):
            if os.path.exists(os.path.join(p, name)):
                with open(os.path.join(p, name)) as f:
                    files[name] = f.read().strip()
    if "memory.limit_in_bytes" in files:
        assert files["memory.limit_in_bytes"] == str(32 * MiB)
        assert files["cpu.cfs_quota_us"] == "50000"
        assert files["cpu.cfs_period_us"] == "100000"
    else:
        assert files["memory.max"] == str(32 * MiB)
        assert files["cpu.max"] == "50000 100000"
    assert files["pids.max"] == "20"
    cgroups.remove(paths)
    assert not any(os.path.exists(p) for p in paths)
    cgroups.remove(paths)  # idempotent


@pytest.mark.parametrize("limits, words", [
    (Limits(memory=4 * MiB), "6MB"),
    (Limits(cpus=0), "above 0"),
    (Limits(cpus=(os.cpu_count() or 1) + 1), "at most"),
    (Limits(pids=0), "1 or more"),
])
def test_invalid_limits_raise(limits, words):
    with pytest.raises(InvalidArgument, match=words):
        cgroups.create(f"cbx-test-{uuid.uuid4().hex[:12]}", limits)


def test_memory_hog_is_oom_killed(make, cgroup):
    paths = cgroup(Limits(memory=16 * MiB))
    spec = make(["sh", "-c", 'x=$(head -c 64m /dev/zero | tr "\\0" a); echo survived'],
                cgroups=paths)
    res = in_monitor(lambda report: _start_and_wait(spec, report))
    assert "survived" not in res["out"]
    assert res["status"] != 0
    assert cgroups.oom_killed(paths)


def test_no_oom_without_pressure(make, cgroup):
    paths = cgroup(Limits(memory=64 * MiB))
    spec = make(["sh", "-c", "head -c 1m /dev/zero | wc -c"], cgroups=paths)
    res = in_monitor(lambda report: _start_and_wait(spec, report))
    assert res["status"] == 0 and res["out"].strip() == str(MiB)
    assert not cgroups.oom_killed(paths)


def test_pids_limit_caps_a_fork_loop(make, cgroup):
    paths = cgroup(Limits(pids=5))
    spec = make(["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 1 & done; "
                             "ps -o pid | wc -l"], cgroups=paths)
    res = in_monitor(lambda report: _start_and_wait(spec, report))
    assert "can't fork" in res["err"]


def _spin_for(spec, seconds: float, paths: list[str]):
    def go(report):
        null = os.open(os.devnull, os.O_RDWR)
        pid = runtime.start(spec, null, null, null)
        report(pid)
        time.sleep(seconds)
        stat = {}
        for p in paths:
            for name in ("cpu.stat", "cpuacct.usage"):
                if os.path.exists(os.path.join(p, name)):
                    with open(os.path.join(p, name)) as f:
                        stat[name] = f.read()
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return stat
    return in_monitor(go)


def test_half_a_cpu_is_throttled(make, cgroup):
    paths = cgroup(Limits(cpus=0.5))
    spec = make(["sh", "-c", "while :; do :; done"], cgroups=paths)
    stat = _spin_for(spec, 0.6, paths)
    fields = dict(ln.split() for ln in stat["cpu.stat"].splitlines())
    assert int(fields["nr_throttled"]) > 0
    if "cpuacct.usage" in stat:
        used = int(stat["cpuacct.usage"]) / 1e9
        assert 0.15 < used < 0.45, used


def _in_container_cgroups(proc_cgroup: str, container_id: str) -> int:
    """How many hierarchies of a /proc/PID/cgroup text put the process in the container's
    own cgroup."""
    return sum(line.endswith(f"/cbx/{container_id}")
               for line in proc_cgroup.splitlines())


def test_init_and_exec_run_inside_every_cgroup_of_the_container(make, cgroup):
    # v1: the child moves itself (cgroups.join_files); it must be in every hierarchy
    # before the command runs, and so must a process that `exec` starts.
    paths = cgroup(Limits(pids=50))
    cid = os.path.basename(paths[0])
    own, parent = cgroups.join_files(paths)
    assert len(own) + len(parent) == len(paths)
    if cgroups.info()["version"] == "1":
        assert len(own) == len(paths) and not parent
    spec = make(["sh", "-c", "cat /proc/self/cgroup; exec sleep 30"], cgroups=paths)
    exec_proc = ProcessSpec(args=["cat", "/proc/self/cgroup"])
    res = in_monitor(lambda report: _start_and_wait(spec, report, exec_proc))
    assert _in_container_cgroups(res["out"], cid) == len(paths), res["out"]
    assert _in_container_cgroups(res["exec_out"], cid) == len(paths), res["exec_out"]
    assert res["exec_status"] == 0


@pytest.fixture
def empty_cpuset():
    """A v1 cpuset cgroup with no CPUs: the kernel refuses every task moved into it."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f
                  if " - cgroup " in line and "cpuset" in line.rsplit(None, 1)[-1].split(",")]
    if not points:
        pytest.skip("no cgroup v1 cpuset hierarchy on this host (a v2 host cannot "
                    "refuse a move this way)")
    with open("/proc/self/cgroup") as f:
        own = next(line.split(":", 2)[2].strip() for line in f
                   if "cpuset" in line.split(":")[1].split(","))
    d = os.path.join(points[0], own.lstrip("/"), f"cbx-test-{uuid.uuid4().hex[:12]}")
    os.mkdir(d)
    with open(os.path.join(d, "cpuset.cpus")) as f:
        assert not f.read().strip(), "a new cpuset inherited CPUs (clone_children is set)"
    yield d
    os.rmdir(d)


def test_a_cgroup_the_kernel_refuses_fails_the_start_with_its_name(make, empty_cpuset):
    spec = make(["true"], cgroups=[empty_cpuset])
    res = in_monitor(lambda report: _start_and_wait(spec, report))
    assert res["error"] == "RuntimeFailure"
    assert f"join cgroup {empty_cpuset}/tasks" in res["message"]
    assert "No space left on device" in res["message"]


def test_freeze_thaw_and_remove_kills(make, cgroup):
    paths = cgroup(Limits())
    spec = make(["sh", "-c", "while :; do sleep 0.01; done"], cgroups=paths)

    def go(report):
        null = os.open(os.devnull, os.O_RDWR)
        pid = runtime.start(spec, null, null, null)
        report(pid)
        seen = {"procs": pid in cgroups.procs(paths)}
        cgroups.freeze(paths)
        seen["frozen"] = cgroups.is_frozen(paths)
        with open(f"/proc/{pid}/stat") as f:
            seen["state"] = f.read().rsplit(")", 1)[1].split()[0]
        cgroups.thaw(paths)
        seen["thawed"] = not cgroups.is_frozen(paths)
        cgroups.remove(paths)
        seen["status"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        seen["gone"] = not any(os.path.exists(p) for p in paths)
        return seen

    seen = in_monitor(go)
    assert seen["procs"] and seen["frozen"] and seen["thawed"] and seen["gone"]
    assert seen["state"] in ("S", "D", "R")  # v1 freezer shows frozen tasks as sleeping
    assert seen["status"] == -signal.SIGKILL


def test_create_replaces_a_leftover_of_the_same_container(cgroup):
    first = cgroup(Limits(pids=7))
    cid = os.path.basename(first[0])
    again = cgroups.create(cid, Limits(pids=9))
    assert again == first
    pids_dir = [p for p in again if os.path.exists(os.path.join(p, "pids.max"))][0]
    with open(os.path.join(pids_dir, "pids.max")) as f:
        assert f.read().strip() == "9"
