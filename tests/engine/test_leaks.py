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


def veths() -> set[str]:
    return {n for n in os.listdir("/sys/class/net") if n.startswith("cbxv")}


def test_200_run_rm_cycles_leave_nothing_behind(engine: Engine) -> None:
    from engine.network import ipam, networks

    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    groups_before = cbx_cgroups()
    veths_before = veths()
    made = set()
    for i in range(200):  # on the default bridge network: a veth and an address each
        cid = engine.create("busybox", ["true"] if i % 2 else ["sh", "-c", "echo $$ > /x"])
        made.add(cid)
        engine.start(cid)
        assert engine.wait(cid) == 0
        engine.rm(cid)
    assert mounts_under(engine.root) == []
    leases = ipam.holders(networks.default_network()["Bridge"])
    assert not made & {h["id"] for h in leases.values()}  # every address went back
    # the kernel dismantles dead network namespaces asynchronously, one batch at a time:
    # after 200 in a row its queue takes seconds to drain
    deadline = time.monotonic() + 30
    while veths() - veths_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert veths() - veths_before == set()
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
