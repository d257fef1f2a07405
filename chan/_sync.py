"""The one lock, waitable objects, and the blocking way to wait on them.

All chan state in a process (queues, sessions' protocol objects, pumps) is guarded by
one re-entrant lock.  Python's GIL serialises the work anyway; one lock keeps every
cross-object step (a message moving from a session into a queue into a pump into
another session) atomic and free of lock-ordering bugs.

An operation that cannot proceed returns the :class:`Waitable` it is waiting for; the
front end registers a one-shot callback on it and sleeps (a thread on an Event, a
coroutine on a future).  Every state change of a waitable calls all its callbacks once.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from typing import Any, Callable

from .errors import Timeout

LOCK = threading.RLock()


def _reinit_after_fork() -> None:
    # A fork while another thread held the lock would leave it locked forever.
    LOCK._at_fork_reinit()  # type: ignore[attr-defined]


os.register_at_fork(after_in_child=_reinit_after_fork)


class Waitable:
    """Something a front end can wait on; subclasses call :meth:`_wake` on change."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: list[Callable[[], Any]] = []

    def _wake(self) -> None:
        waiters = self._waiters
        if waiters:
            self._waiters = []
            for callback in waiters:
                callback()

    def _unwait(self, callback: Callable[[], Any]) -> None:
        try:
            self._waiters.remove(callback)
        except ValueError:
            pass


def fresh(exc: BaseException) -> BaseException:
    """A new instance of a stored error, so each raise gets its own traceback."""
    new = copy.copy(exc)
    new.__cause__ = exc.__cause__
    new.__traceback__ = None
    return new


def wait_sync(attempt: Callable[[], Any], timeout: float | None, what: str) -> Any:
    """Run ``attempt()`` under the lock until it returns something other than a Waitable.

    ``attempt`` returns the result, raises, or returns the Waitable to sleep on.
    Raises :class:`chan.Timeout` after ``timeout`` seconds.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    event = None
    while True:
        with LOCK:
            result = attempt()
            if not isinstance(result, Waitable):
                return result
            if event is None:
                event = threading.Event()
            else:
                event.clear()
            result._waiters.append(event.set)
        if deadline is None:
            event.wait()
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not event.wait(remaining):
            with LOCK:
                result._unwait(event.set)
            # One last try: the state may have changed just as the timer ran out.
            with LOCK:
                final = attempt()
            if not isinstance(final, Waitable):
                return final
            raise Timeout(f"{what} timed out after {timeout} s")


class Pump:
    """Moves what one queue holds into a sink as both allow: a relay inside this process.

    Subclasses implement :meth:`_step`, which moves what it can and then registers
    :meth:`run` on whatever it is waiting for (or marks itself done).  ``run`` is called
    from wake-ups under the lock and may be re-entered by them; re-entry only asks the
    running loop for another step.
    """

    __slots__ = ("src", "dst", "_running", "_again", "_done")

    def __init__(self, src: Any, dst: Any) -> None:
        self.src, self.dst = src, dst
        self._running = self._again = self._done = False
        self.run()

    def run(self) -> None:
        if self._done:
            return
        if self._running:
            self._again = True
            return
        self._running = True
        try:
            self._again = True
            while self._again and not self._done:
                self._again = False
                self._step()
        finally:
            self._running = False

    def _step(self) -> None:
        raise NotImplementedError
