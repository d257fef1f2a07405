"""Notice monitors that die without recording their container's exit.

A monitor writes its container's exit record and ``die`` event itself; one that is
killed (SIGKILL, the OOM killer) cannot.  Its container dies with it (the parent-death
signal, see :mod:`engine.runtime`), and :meth:`Engine.status` records the exit the next
time anything looks.  The daemon runs a :class:`Supervisor` so that this happens at
once instead, and a bridge watching events learns of the death as of any other: one
thread holds a pidfd per running monitor and waits on all of them; another follows the
journal's ``start`` events to add new monitors.
"""

from __future__ import annotations

import errno
import os
import select
import sys
import threading
from typing import Any

from .errors import EngineError

__all__ = ["Supervisor"]


class Supervisor:
    """Watches the monitors of an engine's running containers (see the module)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._new: list[str] = []  # containers to look at, filled by the journal thread
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._stopped = False
        self._since = 0  # the journal seq the start-follower begins after
        self._threads = [
            threading.Thread(target=self._follow_starts, daemon=True,
                             name="chanbox-supervise-starts"),
            threading.Thread(target=self._watch, daemon=True, name="chanbox-supervise"),
        ]

    def start(self) -> Supervisor:
        """Look at every container now, then keep watching; returns self."""
        self._since = self.engine.journal.last_seq()  # before the scan: no start missed
        self._add([c.id for c in self.engine.containers.list()])
        for t in self._threads:
            t.start()
        return self

    def close(self) -> None:
        """Stop watching (the containers and their monitors are not touched)."""
        self._stopped = True
        os.eventfd_write(self._wake, 1)
        for t in self._threads:
            t.join(timeout=5)
        os.close(self._wake)

    def _add(self, ids: list[str]) -> None:
        with self._lock:
            self._new.extend(ids)
        os.eventfd_write(self._wake, 1)

    def _follow_starts(self) -> None:
        from .events import parse_filters

        starts = parse_filters(["type=container", "event=start"])
        for event in self.engine.journal.follow(self._since, starts,
                                                cancelled=lambda: self._stopped, poll=0.2):
            self._add([event["id"]])

    def _watch(self) -> None:
        poller = select.poll()
        poller.register(self._wake, select.POLLIN)
        watched: dict[int, str] = {}  # pidfd -> container id
        try:
            while not self._stopped:
                for fd, _ in poller.poll():
                    if fd == self._wake:
                        try:
                            os.eventfd_read(self._wake)
                        except BlockingIOError:
                            pass
                        continue
                    poller.unregister(fd)
                    os.close(fd)
                    self._guarded(self._settle, watched.pop(fd))
                with self._lock:
                    new, self._new = self._new, []
                for cid in new:
                    fd = self._guarded(self._pidfd, cid)
                    if fd is not None and fd not in watched:
                        watched[fd] = cid
                        poller.register(fd, select.POLLIN)
        finally:
            for fd in watched:
                os.close(fd)

    @staticmethod
    def _guarded(fn: Any, cid: str) -> Any:
        """``fn(cid)``; a failure is reported and costs that container its watch (its
        exit is then recorded lazily, by the next look), never the thread."""
        try:
            return fn(cid)
        except Exception as exc:  # noqa: BLE001 - the supervisor must outlive any one container
            print(f"chanbox daemon: cannot supervise container {cid[:12]}: {exc!r}",
                  file=sys.stderr, flush=True)
            return None

    def _pidfd(self, cid: str) -> int | None:
        """A pidfd of the container's monitor while it runs; None if there is nothing to
        watch (settled on the spot when the monitor is already gone)."""
        try:
            c = self.engine.containers.get(cid)
        except EngineError:
            return None  # removed meanwhile
        mon = (c.monitor or {}).get("monitor_pid")
        if not mon or c.exit is not None:
            return None
        try:
            fd = os.pidfd_open(mon)
        except ProcessLookupError:
            self._settle(cid)
            return None
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                raise OSError(exc.errno, "no file descriptor left for its monitor's "
                              "pidfd; raise the daemon's open-files limit") from None
            raise
        # the pid may have been reused since monitor.json was written: ask the monitor
        if self.engine.status(c) not in ("running", "paused"):
            os.close(fd)
            return None
        return fd

    def _settle(self, cid: str) -> None:
        """The monitor of ``cid`` exited: do what it left undone (record the exit,
        remove a ``--rm`` container)."""
        try:
            c = self.engine.containers.get(cid)
            if self.engine.status(c) == "exited" and c.config["HostConfig"]["AutoRemove"]:
                self.engine.rm(cid)
        except EngineError:
            pass  # removed meanwhile (by the monitor, or a client's rm): nothing to do
