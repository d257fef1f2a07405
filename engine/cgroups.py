"""Containers' cgroups (the "cgroupfs" driver): create, limit, freeze, kill, remove.

A container's cgroups are ``<own>/cbx/<container id>`` in each hierarchy, where
``<own>`` is this process's cgroup there, so the engine never writes outside what it
was given.  Hybrid hosts (v1 controllers plus a controller-less cgroup2 mount, like
these machines) use v1; a host whose cgroup2 has the controllers uses v2.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from typing import Any

from engine.errors import InvalidArgument, RuntimeFailure
from engine.spec import Limits

__all__ = ["create", "freeze", "info", "is_frozen", "join_files", "oom_killed", "procs",
           "remove", "thaw"]

#: v1 controllers a container gets a directory in (when the host mounts them)
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer")
V2_CONTROLLERS = ("memory", "cpu", "pids")
MIN_MEMORY = 6 * 1024 * 1024
CFS_PERIOD_US = 100_000
_GROUP = "cbx"


def _mounts() -> tuple[dict[str, tuple[str, str]], tuple[str, str] | None]:
    """v1 controller -> (mount point, mount root), and the cgroup2 (mount point, root)."""
    v1: dict[str, tuple[str, str]] = {}
    v2 = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, opts = fields[sep + 1], fields[sep + 3].split(",")
            root, point = fields[3], fields[4].replace("\\040", " ")
            if fstype == "cgroup":
                for o in opts:
                    if o in V1_CONTROLLERS and o not in v1:
                        v1[o] = (point, root)
            elif fstype == "cgroup2" and v2 is None:
                v2 = (point, root)
    return v1, v2


def _own() -> dict[str, str]:
    """This process's cgroup path per v1 controller, and ``""`` for the v2 one."""
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in ctrls.split(",") if ctrls else [""]:
                own[c] = path
    return own


def join_files(paths: list[str]) -> tuple[list[bytes], list[bytes]]:
    """How a new process enters the cgroups ``paths``: the files it writes ``0`` to
    itself, and the ``cgroup.procs`` files its parent writes its PID to.

    Moving a whole process (``cgroup.procs``) takes the kernel's
    cgroup_threadgroup_rwsem, whose first writer after a quiet spell waits for an RCU
    grace period (5-11 ms measured here).  A single-threaded child that moves its only
    thread through v1's ``tasks`` skips that lock (Linux 6.1, "cgroup: Optimize single
    thread migration"): 0.2-0.4 ms.  v2 has no per-thread file outside threaded
    cgroups, so there the parent moves the child while it builds the container.
    """
    own: list[bytes] = []
    parent: list[bytes] = []
    for d in paths:
        tasks = os.path.join(d, "tasks")
        if os.path.exists(tasks):
            own.append(os.fsencode(tasks))
        else:
            parent.append(os.fsencode(os.path.join(d, "cgroup.procs")))
    return own, parent


def prime() -> None:
    """Start a cgroup v2 migration's slow part now, in the background, to overlap it.

    Re-writing this process's own PID into the cgroup it is already in (a no-op for the
    host) starts the RCU wait described in :func:`join_files` at once, so the
    container's migration a few milliseconds later finds the lock warm.  Not needed on
    v1, where the child moves itself; v2 hosts with ``favordynmods`` do not need it
    either (it costs them one cheap write).
    """
    global _own_v2_procs
    if _own_v2_procs is None:
        v1, v2 = _mounts()
        _own_v2_procs = os.path.join(_join(v2, _own().get("", "/")), "cgroup.procs") \
            if v2 is not None and _use_v2(v1, v2) else ""
    if _own_v2_procs:
        import threading

        threading.Thread(target=_rewrite_own, args=(_own_v2_procs,), daemon=True,
                         name="cbx-cgroup-prime").start()


_own_v2_procs: str | None = None  # what prime() rewrites ("" on v1), found on first use


def _rewrite_own(procs_file: str) -> None:
    try:
        with open(procs_file, "w") as f:
            f.write(str(os.getpid()))
    except OSError:
        pass  # only an optimisation


def _join(mount: tuple[str, str], path: str) -> str:
    point, root = mount
    rel = path[len(root):] if root != "/" and path.startswith(root) else path
    return os.path.join(point, rel.lstrip("/"))


def _v2_controllers(v2: tuple[str, str] | None) -> list[str]:
    if v2 is None:
        return []
    try:
        with open(os.path.join(v2[0], "cgroup.controllers")) as f:
            return f.read().split()
    except OSError:
        return []


def _use_v2(v1: dict, v2: tuple[str, str] | None) -> bool:
    return not v1 and bool(_v2_controllers(v2))


def info() -> dict[str, Any]:
    """The cgroup setup the engine uses: ``{"version", "controllers", "driver"}``."""
    v1, v2 = _mounts()
    if _use_v2(v1, v2):
        return {"version": "2", "controllers": _v2_controllers(v2), "driver": "cgroupfs"}
    return {"version": "1", "controllers": sorted(v1), "driver": "cgroupfs"}


def validate(limits: Limits) -> None:
    """Raise InvalidArgument for limits the kernel would reject or that make no sense."""
    if limits.memory is not None and limits.memory < MIN_MEMORY:
        raise InvalidArgument(f"memory limit {limits.memory} bytes is too small: the minimum "
                              "allowed is 6MB; pass -m 6m or more")
    ncpu = os.cpu_count() or 1
    if limits.cpus is not None and not 0 < limits.cpus <= ncpu:
        raise InvalidArgument(f"--cpus {limits.cpus} is out of range: use a number above 0 "
                              f"and at most {ncpu} (the host's CPUs)")
    if limits.pids is not None and limits.pids < 1:
        raise InvalidArgument(f"pids limit {limits.pids} is out of range: use 1 or more "
                              "(or no limit)")


def create(container_id: str, limits: Limits) -> list[str]:
    """Make the container's cgroups under this process's own and apply ``limits``;
    return their absolute directories (one per hierarchy)."""
    if not container_id or "/" in container_id or container_id in (".", ".."):
        raise InvalidArgument(f"container id {container_id!r} cannot name a cgroup")
    validate(limits)
    v1, v2 = _mounts()
    own = _own()
    paths: list[str] = []
    try:
        if _use_v2(v1, v2):
            assert v2 is not None
            paths.append(_create_v2(_join(v2, own.get("", "/")), container_id, limits))
        elif v1:
            seen = set()
            for ctrl in V1_CONTROLLERS:
                if ctrl not in v1 or v1[ctrl][0] in seen:
                    continue
                seen.add(v1[ctrl][0])
                d = os.path.join(_join(v1[ctrl], own.get(ctrl, "/")), _GROUP, container_id)
                _mkdir(d)
                paths.append(d)
                _apply_limits(d, limits)
        else:
            raise RuntimeFailure("no cgroup controllers are mounted: mount cgroup v1 "
                                 "controllers or a cgroup2 with controllers")
    except BaseException:
        remove(paths)
        raise
    return paths


def _mkdir(d: str) -> None:
    if os.path.isdir(d):
        # left by an engine killed between create() and recording the paths: the same
        # container's, so kill what it holds and start afresh
        remove([d])
    try:
        try:
            os.makedirs(d, exist_ok=False)
        except FileNotFoundError:
            # another container's remove() took the shared parent away meanwhile
            os.makedirs(d, exist_ok=False)
    except OSError as exc:
        raise RuntimeFailure(f"create cgroup {d}: {exc.strerror}; check that the cgroup "
                             "filesystem is mounted read-write") from exc


def _put(d: str, name: str, value: str) -> None:
    try:
        with open(os.path.join(d, name), "w") as f:
            f.write(value)
    except OSError as exc:
        raise RuntimeFailure(f"set {name}={value} in {d}: {exc.strerror}") from exc


def set_limits(paths: list[str], limits: Limits) -> None:
    """Change the limits of the container's live cgroups (``docker update``; the caller
    validated them); a limit left None stays as it is.  The kernel refuses a memory
    limit below what the container uses now (EBUSY): the error says so."""
    for d in paths:
        _apply_limits(d, limits)


def _apply_limits(d: str, limits: Limits) -> None:
    """Write ``limits`` into the cgroup ``d`` (one v1 controller's or the v2 group),
    each into the file this directory has for it; a limit left None is not touched."""
    def has(name: str) -> bool:
        return os.path.exists(os.path.join(d, name))

    if limits.memory is not None:
        if has("memory.limit_in_bytes"):
            names = ["memory.limit_in_bytes"]
            if has("memory.memsw.limit_in_bytes"):
                # memory+swap may never be below memory: the order depends on the move
                up = limits.memory > int(_read(d, "memory.limit_in_bytes"))
                names.insert(0 if up else 1, "memory.memsw.limit_in_bytes")
            for name in names:
                _put_memory(d, name, limits.memory)
        elif has("memory.max"):
            _put_memory(d, "memory.max", limits.memory)
            if has("memory.swap.max"):
                _put(d, "memory.swap.max", "0")
    if limits.cpus is not None:
        quota = int(limits.cpus * CFS_PERIOD_US)
        if has("cpu.cfs_quota_us"):
            _put(d, "cpu.cfs_period_us", str(CFS_PERIOD_US))
            _put(d, "cpu.cfs_quota_us", str(quota))
        elif has("cpu.max"):
            _put(d, "cpu.max", f"{quota} {CFS_PERIOD_US}")
    if limits.pids is not None and has("pids.max"):
        _put(d, "pids.max", str(limits.pids))


def _put_memory(d: str, name: str, limit: int) -> None:
    try:
        with open(os.path.join(d, name), "w") as f:
            f.write(str(limit))
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise RuntimeFailure(f"the container uses more than {limit} bytes of memory now and "
                                 "the kernel could not reclaim it: choose a higher limit or free "
                                 "some memory first") from None
        raise RuntimeFailure(f"set {name}={limit} in {d}: {exc.strerror}") from exc


def _create_v2(own: str, container_id: str, limits: Limits) -> str:
    wanted = [c for c in V2_CONTROLLERS if c in _v2_controllers((own, "/"))] or list(
        V2_CONTROLLERS)
    parent = os.path.join(own, _GROUP)
    os.makedirs(parent, exist_ok=True)
    enable = " ".join(f"+{c}" for c in wanted)
    for d in (own, parent):
        try:
            with open(os.path.join(d, "cgroup.subtree_control"), "w") as f:
                f.write(enable)
        except OSError as exc:
            hint = (" (a cgroup2 group with processes cannot delegate controllers: run the "
                    "engine in a leaf of its own, e.g. a systemd scope)"
                    if exc.errno == errno.EBUSY else "")
            raise RuntimeFailure(f"enable {enable} in {d}: {exc.strerror}{hint}") from exc
    d = os.path.join(parent, container_id)
    _mkdir(d)
    _apply_limits(d, limits)
    return d


def _read(d: str, name: str) -> str:
    with open(os.path.join(d, name)) as f:
        return f.read()


def procs(paths: list[str]) -> list[int]:
    """The PIDs (in the host's pid namespace) in the container's cgroups."""
    found: set[int] = set()
    for d in paths:
        try:
            found.update(int(x) for x in _read(d, "cgroup.procs").split())
        except FileNotFoundError:
            continue
    return sorted(found)


def _freezer(paths: list[str]) -> tuple[str, str] | None:
    """(directory, kind) of the freezer: ``v1`` (freezer.state) or ``v2`` (cgroup.freeze)."""
    for d in paths:
        if os.path.exists(os.path.join(d, "freezer.state")):
            return d, "v1"
        if os.path.exists(os.path.join(d, "cgroup.freeze")):
            return d, "v2"
    return None


def _set_frozen(paths: list[str], frozen: bool, timeout: float = 5.0) -> None:
    fz = _freezer(paths)
    if fz is None:
        raise RuntimeFailure(f"no freezer among the container's cgroups {paths}: mount the "
                             "v1 freezer controller or use cgroup v2")
    d, kind = fz
    deadline = time.monotonic() + timeout
    while True:
        if kind == "v1":
            _put(d, "freezer.state", "FROZEN" if frozen else "THAWED")
        else:
            _put(d, "cgroup.freeze", "1" if frozen else "0")
        if _is_frozen(d, kind) == frozen:
            return
        if time.monotonic() > deadline:
            raise RuntimeFailure(f"cgroup {d} did not {'freeze' if frozen else 'thaw'} in "
                                 f"{timeout:.0f}s; retry or kill the container")
        time.sleep(0.001)


def _is_frozen(d: str, kind: str) -> bool:
    if kind == "v1":
        return _read(d, "freezer.state").strip() == "FROZEN"
    return "frozen 1" in _read(d, "cgroup.events")


def freeze(paths: list[str]) -> None:
    """Freeze every process of the container; returns once they all are (``pause``)."""
    _set_frozen(paths, True)


def thaw(paths: list[str]) -> None:
    """Resume a frozen container (``unpause``)."""
    _set_frozen(paths, False)


def is_frozen(paths: list[str]) -> bool:
    """Whether the container's cgroups are frozen."""
    fz = _freezer(paths)
    return fz is not None and _is_frozen(*fz)


def usage(paths: list[str]) -> dict[str, int | None]:
    """What the container's cgroups count now: ``cpu_ns`` (CPU time used),
    ``memory`` and ``memory_limit`` (bytes; None: no limit set), ``inactive_file`` (page
    cache the kernel can drop, which ``docker stats`` leaves out), ``pids``.  A count no
    hierarchy offers is None."""
    out: dict[str, int | None] = {"cpu_ns": None, "memory": None, "memory_limit": None,
                                  "inactive_file": None, "pids": None}

    def first(d: str, *names: str) -> str | None:
        for name in names:
            try:
                return _read(d, name)
            except (FileNotFoundError, PermissionError):
                continue
        return None

    for d in paths:
        if (text := first(d, "cpuacct.usage")) is not None:
            out["cpu_ns"] = int(text)
        elif (text := first(d, "cpu.stat")) is not None:
            for line in text.splitlines():
                if line.startswith("usage_usec "):
                    out["cpu_ns"] = int(line.split()[1]) * 1000
        if (text := first(d, "memory.usage_in_bytes", "memory.current")) is not None:
            out["memory"] = int(text)
            limit = (first(d, "memory.limit_in_bytes", "memory.max") or "max").strip()
            # v1 says "no limit" with the largest page-aligned number
            out["memory_limit"] = None if limit == "max" or int(limit) >= 1 << 62 else int(limit)
            for line in (first(d, "memory.stat") or "").splitlines():
                key, _, value = line.partition(" ")
                if key in ("total_inactive_file", "inactive_file"):
                    out["inactive_file"] = int(value)
                    break
        if (text := first(d, "pids.current")) is not None:
            out["pids"] = int(text)
    return out


def oom_killed(paths: list[str]) -> bool:
    """Whether the kernel's OOM killer killed a process of the container."""
    for d in paths:
        for name in ("memory.oom_control", "memory.events"):
            try:
                text = _read(d, name)
            except FileNotFoundError:
                continue
            for line in text.splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
    return False


def remove(paths: list[str], timeout: float = 5.0) -> None:
    """Kill whatever is left in the container's cgroups (frozen first, so nothing forks
    away), and delete them.  Removing what is already gone is fine."""
    live = [d for d in paths if os.path.isdir(d)]
    if not live:
        return
    fz = _freezer(live)
    if procs(live):
        if fz is not None:
            try:
                _set_frozen(live, True, timeout)
            except RuntimeFailure:
                pass  # kill anyway; SIGKILL reaches frozen tasks once thawed
        for pid in procs(live):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if fz is not None:
        try:
            _set_frozen(live, False, timeout)
        except (RuntimeFailure, FileNotFoundError):
            pass
    deadline = time.monotonic() + timeout
    for d in live:
        while True:
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise RuntimeFailure(f"remove cgroup {d}: {exc.strerror}; processes "
                                         f"{procs([d])} are still in it") from exc
                time.sleep(0.002)
        try:
            os.rmdir(os.path.dirname(d))  # the shared "cbx" parent, once empty
        except OSError:
            pass
