"""Crash safety: the engine killed with SIGKILL between two steps, then a consistent state.

Each case runs one CLI command with ``CHANBOX_FAILPOINT`` naming the step after which
the process dies (``engine.failpoints``), then checks with a fresh engine what a user
would: no half-made container is listed, what is listed works and can be removed, and
nothing is left behind (staging dirs, cgroups, processes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from engine import cgroups
from engine.engine import Engine

from .conftest import CHANBOX, FORKER, needs_root

pytestmark = needs_root


def crash(root: str, point: str, *args: str) -> None:
    env = dict(os.environ, CHANBOX_FAILPOINT=point)
    p = subprocess.run([CHANBOX, "--root", root, *args], env=env, capture_output=True,
                       timeout=60)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr)


def staging(root: str) -> list[str]:
    try:
        return os.listdir(os.path.join(root, "tmp"))
    except FileNotFoundError:
        return []


def test_killed_while_creating_leaves_no_container(image_root: str) -> None:
    eng = Engine(image_root, forker=FORKER)
    before = {c.id for c in eng.containers.list()}
    crash(image_root, "create:staged", "create", "--name", "cbx-half", "busybox", "true")
    assert staging(image_root)  # the half-made directory is there...
    eng = Engine(image_root, forker=FORKER)  # ...and the next engine clears it
    assert staging(image_root) == []
    assert {c.id for c in eng.containers.list()} == before
    # the name was never taken
    cid = eng.create("busybox", ["true"], name="cbx-half")
    eng.rm(cid)


@pytest.mark.parametrize("point", ["start:cgroups", "start:spawned"])
def test_killed_while_starting_leaves_a_removable_container(image_root: str, point: str) -> None:
    eng = Engine(image_root, forker=FORKER)
    cid = eng.create("busybox", ["sleep", "30"], name=f"cbx-crash-{point.split(':')[1]}")
    crash(image_root, point, "start", cid)
    eng = Engine(image_root, forker=FORKER)
    c = eng.containers.get(cid)
    status = eng.status(c)
    paths = c.cgroups
    assert paths and all(os.path.isdir(p) for p in paths)
    if point == "start:spawned":
        assert status == "running"  # the monitor took over: the container runs on
        pid = eng.inspect(cid)["State"]["Pid"]
        assert os.path.exists(f"/proc/{pid}")
    else:
        assert status == "created"
        eng.start(cid)  # it can be started after all
        assert eng.status(eng.containers.get(cid)) == "running"
    eng.rm(cid, force=True)
    assert not any(os.path.exists(p) for p in paths)
    assert staging(image_root) == []


def test_killed_while_removing_finishes_on_the_next_command(image_root: str) -> None:
    for point in ("rm:cgroups", "rm:unlinked"):
        eng = Engine(image_root, forker=FORKER)
        cid = eng.create("busybox", ["sleep", "30"])
        eng.start(cid)
        paths = eng.containers.get(cid).cgroups
        pid = eng.inspect(cid)["State"]["Pid"]
        crash(image_root, point, "rm", "-f", cid)
        eng = Engine(image_root, forker=FORKER)
        assert not any(os.path.exists(p) for p in paths)
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{pid}")
        if point == "rm:cgroups":
            eng.rm(cid)  # the record is still there and goes now
        assert cid not in {c.id for c in eng.containers.list()}
        assert staging(image_root) == []


def test_a_killed_monitor_takes_its_container_down_and_it_is_recorded_once(
        engine: Engine, image_root: str) -> None:
    # As with a containerd shim: the container must not run on without its monitor
    # (no stdio, no log, its address lease free for others), and users see it exit.
    cid = engine.create("busybox", ["sleep", "30"])
    since = engine.journal.last_seq()
    engine.start(cid)
    c = engine.containers.get(cid)
    pid = engine.inspect(cid)["State"]["Pid"]
    os.kill(c.monitor["monitor_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline, "the container outlived its monitor"
        time.sleep(0.02)
    # two engines look at once (the daemon and a CLI): one records the exit
    other = Engine(image_root, forker=FORKER)
    deadline = time.monotonic() + 5
    while engine.status(engine.containers.get(cid)) != "exited":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert other.status(other.containers.get(cid)) == "exited"
    state = engine.inspect(cid)["State"]
    assert state["ExitCode"] == 137 and not state["Dead"] and not state["Running"]
    assert "monitor was killed" in state["Error"]
    dies = [e for e in engine.journal.read(since) if e["action"] == "die" and e["id"] == cid]
    assert [e["attributes"]["exitCode"] for e in dies] == ["137"]
    assert cgroups.procs(c.cgroups) == []
    engine.rm(cid)  # no force needed: it is not running
    assert not any(os.path.exists(p) for p in c.cgroups)
