"""Leaks: many run/rm cycles leave no mounts, cgroups or processes behind."""

from __future__ import annotations

import os
import time

import psutil

from engine.engine import Engine

from .conftest import needs_root

pytestmark = needs_root


def mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if path in line]


def cbx_cgroups() -> set[str]:
    found = set()
    for top in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        for dirpath, dirnames, _ in os.walk(top):
            if os.path.basename(dirpath) == "cbx":
                found.update(os.path.join(dirpath, d) for d in dirnames)
                dirnames[:] = []
    return found


def test_200_run_rm_cycles_leave_nothing_behind(engine: Engine) -> None:
    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    groups_before = cbx_cgroups()
    for i in range(200):
        cid = engine.create("busybox", ["true"] if i % 2 else ["sh", "-c", "echo $$ > /x"])
        engine.start(cid)
        assert engine.wait(cid) == 0
        engine.rm(cid)
    assert mounts_under(engine.root) == []
    assert cbx_cgroups() - groups_before == set()
    # the monitors have exited, and their parent (the fork server) reaped them
    deadline = time.monotonic() + 5
    while True:
        left = {p.pid for p in me.children(recursive=True)} - children_before
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert left == set()
    assert set(os.listdir(os.path.join(engine.root, "containers"))) == {
        c.id for c in engine.containers.list()}
