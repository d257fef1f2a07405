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
import select
import threading
import time
from typing import Any, Callable

from .errors import ChannelError, RemoteError, Timeout, error_tuple

LOCK = threading.RLock()


def _reinit_after_fork() -> None:
    # A fork while another thread held the lock would leave it locked forever; and the
    # parent's alarms (eventfds) must not be shared with the child.
    global _local
    LOCK._at_fork_reinit()  # type: ignore[attr-defined]
    _local = threading.local()


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


class QueueBase(Waitable):
    """What message and byte queues share: the end states seen by both sides.

    ``upstream`` (a session's inbound channel, or None) is told when items are taken (to
    grant credit) and when the consumer goes away (to STOP the peer); ``pump`` is the
    relay consuming the queue when its consuming end was sent into a session.
    """

    __slots__ = ("capacity", "eof", "error", "closed", "broken", "upstream", "pump")

    #: (code, message) the producers' sends fail with once the consumer closed.
    CONSUMER_GONE: tuple[str, str]

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.eof = False  # the producer ended cleanly
        self.error: BaseException | None = None  # raised to the consumer once drained
        self.closed = False  # the consumer closed its end
        self.broken: BaseException | None = None  # raised to producers
        self.upstream: Any = None
        self.pump: Any = None

    def backlog(self) -> bool:
        raise NotImplementedError

    def discard(self) -> None:
        raise NotImplementedError

    def gone(self) -> bool:
        """Whether nothing put in here can reach a consumer any more (the consumer
        closed, or the session its consuming end was sent into failed)."""
        if self.broken is not None:
            return True
        pump = self.pump
        return pump is not None and not pump._done and pump.dst.gone()

    def close_consumer(self) -> None:
        """The consumer is gone: drop what is queued; producers' sends now fail."""
        if self.closed:
            return
        self.closed = True
        self.discard()
        if self.broken is None:
            self.broken = RemoteError(*self.CONSUMER_GONE)
        if self.upstream is not None:
            self.upstream.abandon(self.CONSUMER_GONE)
        self._wake()

    def fail(self, error: BaseException) -> None:
        """The producer side is gone: the consumer gets ``error`` after what is queued."""
        if self.error is None and not self.eof:
            self.error = error
        self._wake()

    def end(self, error: tuple[str, str] | None) -> None:
        """The producer is done (``error``: None or (code, message))."""
        if self.eof or self.error is not None:
            return
        if error is None:
            self.eof = True
        else:
            self.error = RemoteError(*error)
        self._wake()

    def attempt_ended(self) -> Any:
        # Delivered once the local consumer has it; when pumped, once the peer does.
        return None if self.pump is None else self.pump.attempt_ended()


def fresh(exc: BaseException) -> BaseException:
    """A new instance of a stored error, so each raise gets its own traceback."""
    new = copy.copy(exc)
    new.__cause__ = exc.__cause__
    new.__traceback__ = None
    return new


class _Alarm:
    """How a blocked thread is woken: an eventfd that :meth:`ring` makes readable.

    A file descriptor (not a threading.Event) so that a waiting thread can sleep in
    ``poll`` on its alarm and on the transport's sockets at once (see ``POLL_HOOK``).
    """

    __slots__ = ("fd", "rung", "owner", "written")

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.rung = False
        self.owner = threading.get_ident()
        self.written = False  # the eventfd may be readable (both run under the lock)

    def ring(self) -> None:
        self.rung = True
        if threading.get_ident() != self.owner:  # the owner itself is not asleep
            self.written = True
            os.eventfd_write(self.fd, 1)

    def clear(self) -> None:
        self.rung = False
        if self.written:  # most waits were rung by their own thread: no syscall then
            self.written = False
            try:
                os.eventfd_read(self.fd)
            except BlockingIOError:
                pass

    def __del__(self) -> None:
        os.close(self.fd)


_local = threading.local()


def _alarm() -> _Alarm:
    alarm = getattr(_local, "alarm", None)
    if alarm is None:
        alarm = _local.alarm = _Alarm()
    return alarm


def _sleep_on(alarm: _Alarm, timeout: float | None) -> bool:
    """Block until the alarm rings; False on timeout."""
    return alarm.rung or bool(select.select([alarm.fd], [], [], timeout)[0])


# Set by the ZeroMQ transport once it runs: ``hook(alarm, timeout) -> bool`` sleeps like
# _sleep_on but also receives on the transport's sockets meanwhile, so a thread waiting
# for a reply takes it off the socket itself instead of being woken by the I/O thread
# (one thread hop less per message: the latency of request/reply).
POLL_HOOK: Callable[[_Alarm, float | None], bool] | None = None
# Set with POLL_HOOK: sends what sessions queued; called (under the lock) by front ends
# that sleep without POLL_HOOK (asyncio) right before they sleep.
FLUSH_HOOK: Callable[[], None] | None = None
# Set with POLL_HOOK: called (without the lock) when a chan call returns without
# having slept, so that what it queued leaves now (see _hub.Hub.settle).
SETTLE_HOOK: Callable[[], None] | None = None


def settle() -> None:
    """Let what this call queued for sessions leave (a no-op without the transport)."""
    hook = SETTLE_HOOK
    if hook is not None:
        hook()


def wait_sync(attempt: Callable[[], Any], timeout: float | None, what: str) -> Any:
    """Run ``attempt()`` under the lock until it returns something other than a Waitable.

    ``attempt`` returns the result, raises, or returns the Waitable to sleep on.
    Raises :class:`chan.Timeout` after ``timeout`` seconds.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    alarm = _alarm()
    try:
        while True:
            with LOCK:
                result = attempt()
                if not isinstance(result, Waitable):
                    return result
                alarm.clear()
                result._waiters.append(alarm.ring)
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if (POLL_HOOK or _sleep_on)(alarm, remaining) or deadline is None:
                continue
            with LOCK:
                result._unwait(alarm.ring)
                # One last try: the state may have changed just as the timer ran out.
                final = attempt()
            if not isinstance(final, Waitable):
                return final
            raise Timeout(f"{what} timed out after {timeout} s")
    finally:
        settle()  # what the call queued leaves now (or is batched), not at the next call


class Pump:
    """Moves what one queue holds into a sink as both allow: a relay inside this process.

    Used when an end goes into a message that crosses a session: a Receiver's queue is
    pumped into the session, or a Sender received from one session and sent on into
    another gets a queue of its own pumped into the first session.  Subclasses say how
    one item moves (:meth:`_move`).  ``run`` is called from wake-ups under the lock and
    may be re-entered by them; re-entry only asks the running loop for another step.

    The source queue's ``attempt_ended`` asks the pump, so closing the local end returns
    only once the peer acknowledged everything (or raises).
    """

    __slots__ = ("src", "dst", "_running", "_again", "_done")

    def __init__(self, src: Any, dst: Any) -> None:
        self.src, self.dst = src, dst
        self._running = self._again = self._done = False
        src.pump = self
        feeders = getattr(getattr(dst, "core", None), "feeders", None)
        if feeders is not None:
            feeders.add(self)  # a session closes only once its feeders are drained
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

    def _move(self, src: Any, dst: Any) -> "Waitable | None":
        """Move the head of ``src`` into ``dst``; the Waitable to wait on if it is full."""
        raise NotImplementedError

    def _step(self) -> None:
        src, dst = self.src, self.dst
        while src.backlog():
            try:
                blocked = self._move(src, dst)
            except (ChannelError, TypeError, ValueError, OverflowError) as exc:
                self._fail(exc)
                return
            if blocked is not None:
                blocked._waiters.append(self.run)
                return
        if src.error is not None or src.eof:
            self._finish(None if src.error is None else error_tuple(src.error))
        else:
            src._waiters.append(self.run)

    def _finish(self, error: tuple[str, str] | None) -> None:
        self._done = True
        feeders = getattr(getattr(self.dst, "core", None), "feeders", None)
        if feeders is not None:
            feeders.discard(self)
        self.dst.end(error)

    def _fail(self, exc: BaseException) -> None:
        """The sink refused an item: the producers and the far end both learn why."""
        src = self.src
        src.broken = exc
        if src.upstream is not None:
            src.upstream.abandon(error_tuple(exc))
        src.discard()
        self._finish(error_tuple(exc))  # a no-op when the sink itself is gone
        src._wake()

    def backlog(self) -> "Waitable | None":
        """While items wait for the sink: the queue to wait on (see SessionCore.drained)."""
        return None if self._done or not self.src.backlog() else self.src

    def attempt_ended(self) -> Any:
        """For the source queue's attempt_ended: drained, ended and acknowledged?"""
        broken = self.src.broken
        if broken is not None:
            if isinstance(broken, RemoteError):
                return None  # the receiver went away on purpose: nothing left to deliver
            raise fresh(broken)
        if not self._done:
            return self.src
        return self.dst.attempt_ended()
