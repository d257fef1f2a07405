"""engine.supervisor: one container it cannot watch does not stop it watching the others.

(That a killed monitor's exit is recorded at once, and a ``--rm`` container removed,
is tested through the daemon that runs the supervisor: tests/engine/test_daemon.py.)"""

from __future__ import annotations

import os
import signal
import time

from engine.engine import Engine
from engine.supervisor import Supervisor

from .conftest import needs_root

pytestmark = needs_root


def _die_events(engine: Engine, since: int, cid: str) -> list[dict]:
    # the journal only: reading it records nothing (Engine.status would)
    return [e for e in engine.journal.read(since) if e["action"] == "die" and e["id"] == cid]


def test_a_container_it_cannot_watch_costs_only_that_watch(engine: Engine, capfd) -> None:
    bad = engine.create("busybox", ["sleep", "30"])
    good = engine.create("busybox", ["sleep", "30"])
    engine.start(bad)
    engine.start(good)
    sup = Supervisor(engine)
    real = sup._pidfd

    def pidfd(cid: str) -> int | None:
        if cid == bad:
            raise RuntimeError("cbx test: no pidfd for this one")
        return real(cid)

    sup._pidfd = pidfd  # type: ignore[method-assign]
    since = engine.journal.last_seq()
    sup.start()
    try:
        deadline = time.monotonic() + 5
        while "cannot supervise container " + bad[:12] not in capfd.readouterr().err:
            assert time.monotonic() < deadline, "the failure was not reported"
            time.sleep(0.05)
        os.kill(engine.containers.get(good).monitor["monitor_pid"], signal.SIGKILL)
        deadline = time.monotonic() + 5
        while not _die_events(engine, since, good):
            assert time.monotonic() < deadline, "the supervisor stopped watching"
            time.sleep(0.05)
        assert all(t.is_alive() for t in sup._threads)
        assert [e["attributes"]["exitCode"] for e in _die_events(engine, since, good)] == ["137"]
        assert engine.inspect(bad)["State"]["Running"]  # only its watch was lost
    finally:
        sup.close()
        for cid in (bad, good):
            engine.rm(cid, force=True)
    assert not any(t.is_alive() for t in sup._threads)

