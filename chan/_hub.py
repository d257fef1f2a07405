"""The ZeroMQ transport: one I/O thread per process watches every socket.

ZeroMQ sockets are not thread-safe, so every call on a socket is made under the chan
lock, which serialises them (the memory barrier ZeroMQ asks for when a socket is used
from several threads).  The I/O thread ("chan-io") never blocks inside a socket: it
waits on the sockets' notification file descriptors (``zmq.FD``, edge-triggered, the way
event loops integrate ZeroMQ), then takes the lock, receives until EAGAIN and feeds the
frames to their :class:`SessionCore`.  It also ticks heartbeats and answers CurveZMQ
authentication (ZAP) requests.

Sending: records queue in their session's current frame.  A user thread sends them
itself, with no thread hop, when it blocks (``wait_sync`` calls :meth:`Hub.sleep_on`,
which first sends everything pending) or when a chan call returns (:meth:`Hub.settle`).
A session that sent less than ``DIRECT_GAP`` ago is busy: its records wait for more, and
the I/O thread sends them ``NAGLE`` later if nobody did.  So a reply and the END that
closes its channel leave as one frame, a busy channel batches dozens of messages per
frame, and a request has left before its sender sleeps.  A send can swallow the edge of
an incoming-message notification, so every send is followed by a look at zmq.EVENTS.

Receiving: a thread that waits polls the sockets itself (besides its own alarm), so the
frame it waits for is taken off the socket by the thread that wants it.  Meanwhile the
I/O thread keeps off the sockets ("bare"), until no thread has polled for
``BARE_LINGER``: two threads woken for one frame would fight over it and the GIL.
Together this keeps request/reply free of thread hops, as with raw ZeroMQ.

Transports only move bytes: they never look inside a frame.
"""

from __future__ import annotations

import atexit
import math
import os
import select
import threading
import time
import weakref
from collections import deque
from typing import Any, Callable

import zmq

from . import _sync
from ._sync import LOCK
from ._links import _guarded, _Link, has_input
from ._zap import ZapHandler
from .errors import ChannelError, SessionLost

TICK = 0.1  # seconds between heartbeat checks
DIRECT_GAP = 200e-6  # a session flushed more recently than this is busy: batch
# Longest a batched record waits before the I/O thread sends it.  (zmq_poll counts whole
# milliseconds: anything shorter would make the I/O thread spin.)
NAGLE = 1e-3
BARE_LINGER = 2e-3  # the I/O thread watches the sockets again after this without pollers
ACTIVE = 0.1  # a process that sent this recently counts as busy (see _run, settle)


class Hub:
    """The process's chan I/O thread and ZeroMQ context (started on first use)."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.owners: dict[zmq.Socket, Any] = {}
        self.by_fd: dict[int, Any] = {}
        self.generation = 0  # bumped whenever the set of sockets changes
        self._local = threading.local()  # per waiting thread: its poller
        # asyncio loops watching the sockets: loop -> (generation, fds it watches)
        self._loops: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.dirty: list[tuple[_Link, Any]] = []
        self.dirty_since = 0.0  # when a user thread first queued what is in self.dirty
        self.busy_until = 0.0  # until then, the last session that sent counts as busy
        self.last_activity = 0.0  # when a frame was last sent
        self.io_dirty = False  # the I/O thread queued records itself: flush this round
        self.recheck: set[Any] = set()  # owners that may have frames waiting
        self.pollers = 0  # user threads polling the sockets in sleep_on
        self.poller_left = 0.0  # when the last of them stopped
        self.io_bare = False  # the I/O thread sleeps without watching the sockets
        self.failed: list[tuple[Any, zmq.ZMQError]] = []
        self.closing: list[zmq.Socket] = []
        self.commands: deque = deque()
        self.signalled = False
        self.stopped = False
        self.zap: ZapHandler | None = None
        self.thread = threading.Thread(target=self._run, name="chan-io", daemon=True)
        self.thread.start()

    # ---------------------------------------------------------------- under the lock
    def _signal(self) -> None:
        if not self.signalled:
            self.signalled = True
            os.eventfd_write(self.efd, 1)

    def flush_soon(self, link: _Link, core: Any) -> None:
        """``core`` has records to send: they leave when this thread blocks or its chan
        call returns (see above)."""
        if core.proto.frames_ready() or core.proto.urgent:
            self._send(link, core)  # a full frame, or credit a sender may be stalled on
        if core.dirty:
            return
        core.dirty = True
        self.dirty.append((link, core))
        if threading.current_thread() is self.thread:
            self.io_dirty = True

    def settle(self) -> None:
        """_sync.SETTLE_HOOK, at the end of a chan call that did not block: take what a
        send of this thread may have hidden from the I/O thread, and send what is pending
        unless its session is busy (then the NAGLE timer takes it)."""
        if not self.recheck and (not self.dirty or self.dirty_since):
            return  # nothing to do, or a batch that the armed timer (NAGLE) covers
        with LOCK:
            if self.io_bare:
                # Threads are waiting on the sockets and the I/O thread wakes every
                # BARE_LINGER anyway: leave what is queued to the next thread that
                # blocks (it sends it together with its own) or to that wake-up.  This
                # is what lets a reply and its END, or an END_ACK and the next request,
                # share a frame.  (Credit never waits: see flush_soon.)
                while self.recheck:
                    self._pump(self.recheck.pop())
                if self.dirty and not self.dirty_since:
                    now = time.monotonic()
                    if now - self.last_activity >= ACTIVE:
                        self._arm_nagle()  # the I/O thread may be in a long sleep
                    self.dirty_since = now
                return
            self._catch_up(busy=DIRECT_GAP)
            self._arm_nagle()

    def _arm_nagle(self) -> None:
        """What is still queued leaves with the I/O thread within NAGLE."""
        if self.dirty and not self.dirty_since:
            self.dirty_since = time.monotonic()
            self._signal()

    def _catch_up(self, busy: float = 0.0) -> None:
        """Under the lock, any thread: receive what a send hid from the pollers, and send
        what is pending (except for sessions that sent less than ``busy`` ago), until
        neither produces more (an incoming END makes an END_ACK to send, a send may
        reveal an incoming frame)."""
        for _ in range(8):  # bounded: a peer streaming at us must not keep us here
            while self.recheck:
                self._pump(self.recheck.pop())
            if not self.dirty:
                return
            now = time.monotonic()
            dirty, self.dirty = self.dirty, []
            for link, core in dirty:
                if now - core.last_flush >= busy:
                    core.dirty = False
                    self._send(link, core)
                else:
                    self.dirty.append((link, core))
            if not self.recheck:
                return

    def _send(self, link: _Link, core: Any) -> None:
        frames = core.proto.data_to_send()
        if not frames:
            return
        core.last_flush = now = time.monotonic()
        self.busy_until = now + DIRECT_GAP
        self.last_activity = now
        try:
            link.send(frames)
        except zmq.ZMQError as exc:  # the peer is gone (ROUTER_MANDATORY) or worse
            self.failed.append((core, exc))
            self._signal()
            return
        # A send processes the socket's pending commands and may swallow the edge that
        # would have told the I/O thread about an incoming frame: look, and have it taken
        # (by this thread before its chan call returns or sleeps, see settle/sleep_on).
        if has_input(link.sock):
            self.recheck.add(link.owner)
            if threading.current_thread() is self.thread:
                self._signal()

    def _pump(self, owner: Any) -> None:
        """Under the lock, any thread: take what waits on the owner's socket."""
        if owner.sock in self.owners:
            # (pump_in's look at zmq.EVENTS also resets the notification fd's edge)
            if owner.pump_in():
                self.recheck.add(owner)  # batch limit: come back without sleeping
                self._signal()

    def sleep_on(self, alarm: Any, timeout: float | None) -> bool:
        """_sync.POLL_HOOK: a user thread waits for its alarm and meanwhile receives from
        the sockets itself, so what it waits for needs no thread hop.  While any thread
        does this, the I/O thread leaves the sockets alone (see _run)."""
        local = self._local
        poller = getattr(local, "poller", None)
        deadline = None if timeout is None else time.monotonic() + timeout
        with LOCK:
            self.pollers += 1
        try:
            while True:
                if self.dirty or self.recheck:
                    with LOCK:
                        self._catch_up()
                        self._arm_nagle()  # only if a streaming peer kept it busy
                    if alarm.rung:
                        return True
                if poller is None or local.generation != self.generation \
                        or local.fd != alarm.fd:
                    with LOCK:
                        # The sockets' notification fds and the alarm are plain fds:
                        # select.poll waits on them without pyzmq's per-call wrapping.
                        poller = select.poll()
                        poller.register(alarm.fd, select.POLLIN)
                        for sock_fd in self.by_fd:
                            poller.register(sock_fd, select.POLLIN)
                        local.poller, local.generation, local.fd = \
                            poller, self.generation, alarm.fd
                if deadline is None:
                    ready = poller.poll()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return alarm.rung
                    ready = poller.poll(math.ceil(remaining * 1000))
                with LOCK:
                    for fd, _ in ready:
                        if fd != alarm.fd:
                            owner = self.by_fd.get(fd)
                            if owner is not None:
                                self._pump(owner)
                if alarm.rung:
                    return True
        finally:
            with LOCK:
                self.pollers -= 1
                self.poller_left = time.monotonic()

    def loop_waits(self, loop: Any, delta: int) -> None:
        """An asyncio coroutine starts (+1) or stops (-1) waiting in ``loop``.

        The asyncio twin of sleep_on: while coroutines wait, the loop itself watches
        the sockets (``add_reader``, as zmq.asyncio does) and takes their frames on the
        loop's thread, so a reply reaches its coroutine without a thread hop.
        """
        with LOCK:
            self.pollers += delta
            if delta < 0:
                self.poller_left = time.monotonic()
                return
            watched = self._loops.get(loop)
            if watched is not None and watched[0] == self.generation:
                return
            for fd in (watched[1] if watched else ()):
                loop.remove_reader(fd)  # also for closed fds: asyncio forgets them
            fds = list(self.by_fd)
            for fd in fds:
                loop.add_reader(fd, self._loop_ready, fd)
            self._loops[loop] = (self.generation, fds)

    def _loop_ready(self, fd: int) -> None:
        with LOCK:
            owner = self.by_fd.get(fd)
            if owner is not None:
                self._pump(owner)
            self._catch_up()
            self._arm_nagle()

    def _make_poller(self, fd: int, sockets: bool) -> zmq.Poller:
        poller = zmq.Poller()
        poller.register(fd, zmq.POLLIN)
        if sockets:
            for sock_fd in self.by_fd:
                poller.register(sock_fd, zmq.POLLIN)
        if self.zap is not None and fd == self.efd:
            poller.register(self.zap.sock, zmq.POLLIN)
        return poller

    def close_after_flush(self, sock: zmq.Socket) -> None:
        self.closing.append(sock)
        self._signal()

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``fn`` on the I/O thread (under the lock) and return its result."""
        if threading.current_thread() is self.thread:
            return fn()
        done = threading.Event()
        box: list = []

        def run() -> None:
            try:
                box.append((True, fn()))
            except BaseException as exc:  # handed back to the calling thread
                box.append((False, exc))
            done.set()

        with LOCK:
            if self.stopped:
                raise ChannelError("chan's I/O thread has stopped (the process is exiting)")
            self.commands.append(run)
            self._signal()
        if not done.wait(timeout):
            raise ChannelError("chan's I/O thread did not answer (is it blocked?)")
        ok, value = box[0]
        if not ok:
            raise value
        return value

    # ---------------------------------------------------------------- I/O thread
    def new_socket(self, kind: int, owner_factory: Callable[[zmq.Socket], Any],
                   max_frame: int) -> tuple[zmq.Socket, Any]:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.SNDHWM, 0)  # chan's credits bound memory; zmq must never drop
        sock.setsockopt(zmq.RCVHWM, 0)
        # A hard cap far above what the protocol allows: a peer sending more is dropped
        # by zmq before the frame is buffered; smaller excess gets a ProtocolError.
        sock.setsockopt(zmq.MAXMSGSIZE, max(2 * max_frame, max_frame + (1 << 20)))
        if kind == zmq.ROUTER:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        owner = owner_factory(sock)
        fd = sock.getsockopt(zmq.FD)
        self.owners[sock] = owner
        self.by_fd[fd] = owner
        self.generation += 1
        self.recheck.add(owner)
        return sock, owner

    def drop_socket(self, sock: zmq.Socket, linger: int = 1000) -> None:
        owner = self.owners.pop(sock, None)
        if owner is not None:
            fd = sock.getsockopt(zmq.FD)
            self.by_fd.pop(fd, None)
            self.generation += 1
            self.recheck.discard(owner)
            sock.close(linger=linger)

    def enable_zap(self, allowed: set[bytes]) -> str:
        """Start the ZAP handler if needed; returns the domain that admits ``allowed``."""
        if self.zap is None:
            self.zap = ZapHandler(self.ctx)
        return self.zap.domain_for(allowed)

    def _run(self) -> None:
        next_tick = time.monotonic() + TICK
        polling: tuple = (None, None)  # (generation, with sockets) the pollers were made for
        full = bare = zmq.Poller()
        while not self.stopped:
            now = time.monotonic()
            if self.recheck:
                timeout = 0.0
            elif self.dirty_since:
                timeout = max(0.0, min(next_tick, self.dirty_since + NAGLE) - now)
            else:
                timeout = max(0.0, next_tick - now)
            if polling != (self.generation, self.zap is not None):
                with LOCK:
                    polling = (self.generation, self.zap is not None)
                    full = self._make_poller(self.efd, sockets=True)
                    bare = self._make_poller(self.efd, sockets=False)
            # While user threads poll the sockets, this thread keeps off them (see above).
            if self.pollers:
                self.io_bare = True
            elif self.io_bare and now - self.poller_left >= BARE_LINGER:
                with LOCK:  # back on watch: first look at what came in meanwhile
                    self.io_bare = False
                    self.recheck.update(self.owners.values())
                    timeout = 0.0
            if self.io_bare:
                # Look for pollers that left every BARE_LINGER while traffic flows; an
                # idle process (a thread parked in accept(), say) sleeps until the tick.
                active = now - self.last_activity < ACTIVE
                timeout = min(timeout, BARE_LINGER if active else TICK)
            try:
                ready = (bare if self.io_bare else full).poll(math.ceil(timeout * 1000))
            except zmq.ZMQError as exc:
                if exc.errno == zmq.ETERM:
                    return
                raise
            with LOCK:
                self._iteration(ready)
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + TICK
                    for owner in list(self.owners.values()):
                        for core in owner.cores():
                            _guarded(core, core.tick)
                    self.io_dirty = True  # and a safety net: nothing waits longer
                if self.io_dirty or (self.dirty_since and now >= self.dirty_since + NAGLE):
                    self._flush_now()

    def _iteration(self, ready: list) -> None:
        check = self.recheck
        self.recheck = set()
        for fd, _ in ready:
            if fd == self.efd:
                try:
                    os.eventfd_read(self.efd)
                except BlockingIOError:
                    pass
                self.signalled = False
            elif self.zap is not None and fd is self.zap.sock:
                self.zap.answer()
            elif not self.pollers:  # else a waiting user thread takes it (see above)
                owner = self.by_fd.get(fd)
                if owner is not None:
                    check.add(owner)
        while self.commands:
            self.commands.popleft()()
        for owner in check:
            self._pump(owner)
        failed, self.failed = self.failed, []
        for core, exc in failed:
            err = SessionLost(f"the peer is unreachable: {exc.strerror}")
            err.__cause__ = exc
            core.proto.close_now(err)
            core.fail(err)

    def _flush_now(self) -> None:
        """Send what every dirty session queued; close sockets whose session ended."""
        self.dirty_since = 0.0
        self.io_dirty = False
        while self.dirty:
            dirty, self.dirty = self.dirty, []
            for link, core in dirty:
                core.dirty = False
                self._send(link, core)
        if self.closing and threading.current_thread() is self.thread:
            closing, self.closing = self.closing, []
            for sock in closing:
                self.drop_socket(sock)

    def shutdown(self) -> None:
        """Tell every peer this process is going away, deliver that, and stop (at exit)."""
        def stop() -> None:
            for owner in list(self.owners.values()):
                for core in owner.cores():
                    core.proto.abort("Shutdown", "the peer process is exiting")
                    core.flush_soon()
            self._flush_now()
            for sock in list(self.owners):
                self.drop_socket(sock, linger=500)
            if self.zap is not None:
                self.zap.close()
            self.stopped = True
        try:
            self.call(stop, timeout=2.0)
        except ChannelError:
            return
        self.thread.join(1.0)
        self.ctx.term()  # waits (up to each socket's linger) for the last frames to leave


_hub: Hub | None = None


def get_hub() -> Hub:
    global _hub
    hub = _hub
    if hub is None:
        with LOCK:
            if _hub is None:
                _hub = Hub()
                _sync.POLL_HOOK = _hub.sleep_on
                _sync.FLUSH_HOOK = _hub._flush_now
                _sync.SETTLE_HOOK = _hub.settle
            hub = _hub
    return hub


def _forget_after_fork() -> None:
    # The parent's I/O thread does not exist in the child and its zmq context must not
    # be used there: start afresh on first use.
    global _hub
    _hub = None
    _sync.POLL_HOOK = _sync.FLUSH_HOOK = _sync.SETTLE_HOOK = None


def _at_exit() -> None:
    if _hub is not None:
        _hub.shutdown()


os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(_at_exit)
