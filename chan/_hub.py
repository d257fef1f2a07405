"""The ZeroMQ transport: one I/O thread per process that owns every socket.

ZeroMQ sockets are not thread-safe, so one thread ("chan-io") polls all of them, feeds
received frames to their :class:`SessionCore`, sends what the cores queued, ticks
heartbeats and answers CurveZMQ authentication (ZAP) requests.  User threads only touch
protocol state (under the lock) and wake the I/O thread through an eventfd when a
session has something to send; while the I/O thread is busy, further records pile up
in the session's current frame, which is how busy channels get batched.

Transports only move bytes: they never look inside a frame.
"""

from __future__ import annotations

import atexit
import itertools
import os
import threading
import time
from collections import deque
from typing import Any, Callable

import zmq

from ._sync import LOCK
from .errors import ChannelError, SessionLost

TICK = 0.1  # seconds between heartbeat checks
RECV_BATCH = 512  # frames taken from one socket before looking at the others
ZAP_ENDPOINT = "inproc://zeromq.zap.01"


class _Link:
    """How one session's frames reach its peer: a DEALER, or a ROUTER plus identity."""

    __slots__ = ("hub", "sock", "ident", "owner")

    def __init__(self, hub: "Hub", sock: zmq.Socket, ident: bytes | None, owner: Any) -> None:
        self.hub, self.sock, self.ident, self.owner = hub, sock, ident, owner

    # called by the SessionCore, under the lock
    def flush_soon(self, core: Any) -> None:
        self.hub.mark_dirty(self, core)

    def session_ended(self, core: Any) -> None:
        self.owner.session_ended(self, core)

    # called by the I/O thread, outside the lock
    def send(self, frames: list) -> None:
        if self.ident is None:
            for frame in frames:
                self.sock.send(frame, zmq.NOBLOCK, copy=False)
        else:
            for frame in frames:
                self.sock.send_multipart((self.ident, frame), zmq.NOBLOCK, copy=False)


class DealerOwner:
    """The connecting side: one DEALER socket, one session."""

    def __init__(self, hub: "Hub", sock: zmq.Socket) -> None:
        self.hub, self.sock = hub, sock
        self.core: Any = None

    def on_readable(self) -> None:
        sock, core = self.sock, self.core
        for _ in range(RECV_BATCH):
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if sock.rcvmore:
                core.violation("multipart transport messages are not part of the protocol")
                return
            core.feed(frame)

    def cores(self):
        return (self.core,) if self.core is not None and not self.core.closed else ()

    def session_ended(self, link: _Link, core: Any) -> None:
        self.hub.close_after_flush(self.sock)


class RouterOwner:
    """The listening side: one ROUTER socket, a session per peer identity."""

    def __init__(self, hub: "Hub", sock: zmq.Socket, make_core: Callable[[_Link], Any]) -> None:
        self.hub, self.sock = hub, sock
        self.make_core = make_core
        self.sessions: dict[bytes, Any] = {}

    def on_readable(self) -> None:
        sock, sessions = self.sock, self.sessions
        for _ in range(RECV_BATCH):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            ident = parts[0]
            core = sessions.get(ident)
            if core is None:
                core = self.make_core(_Link(self.hub, sock, ident, self))
                sessions[ident] = core
            if len(parts) != 2:
                core.violation("multipart transport messages are not part of the protocol")
            else:
                core.feed(parts[1])

    def cores(self):
        return list(self.sessions.values())

    def session_ended(self, link: _Link, core: Any) -> None:
        if self.sessions.get(link.ident) is core:
            del self.sessions[link.ident]


class Hub:
    """The process's chan I/O thread and ZeroMQ context (started on first use)."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.poller = zmq.Poller()
        self.poller.register(self.efd, zmq.POLLIN)
        self.owners: dict[zmq.Socket, Any] = {}
        self.dirty: list[tuple[_Link, Any]] = []
        self.closing: list[zmq.Socket] = []
        self.commands: deque = deque()
        self.signalled = False
        self.stopped = False
        self.zap: zmq.Socket | None = None
        self.zap_domains: dict[str, set[bytes]] = {}
        self._domain_ids = itertools.count(1)
        self.thread = threading.Thread(target=self._run, name="chan-io", daemon=True)
        self.thread.start()

    # ---------------------------------------------------------------- any thread
    def _signal(self) -> None:
        if not self.signalled:
            self.signalled = True
            os.eventfd_write(self.efd, 1)

    def mark_dirty(self, link: _Link, core: Any) -> None:
        self.dirty.append((link, core))
        if threading.current_thread() is not self.thread:
            self._signal()

    def close_after_flush(self, sock: zmq.Socket) -> None:
        self.closing.append(sock)
        if threading.current_thread() is not self.thread:
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
        self.owners[sock] = owner
        self.poller.register(sock, zmq.POLLIN)
        return sock, owner

    def drop_socket(self, sock: zmq.Socket, linger: int = 1000) -> None:
        if sock in self.owners:
            del self.owners[sock]
            self.poller.unregister(sock)
            sock.close(linger=linger)

    def enable_zap(self, allowed: set[bytes]) -> str:
        """Start the ZAP handler if needed; returns the domain that admits ``allowed``."""
        if self.zap is None:
            self.zap = self.ctx.socket(zmq.REP)
            self.zap.linger = 0
            self.zap.bind(ZAP_ENDPOINT)
            self.poller.register(self.zap, zmq.POLLIN)
        domain = f"chan-{next(self._domain_ids)}"
        self.zap_domains[domain] = allowed
        return domain

    def _answer_zap(self) -> None:
        while True:
            try:
                req = self.zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            version, request_id, domain, _address, _identity, mechanism = req[:6]
            allowed = self.zap_domains.get(domain.decode(errors="replace"), set())
            key = req[6] if len(req) > 6 else b""
            if mechanism == b"CURVE" and key in allowed:
                reply = [version, request_id, b"200", b"OK", b"", b""]
            else:
                reply = [version, request_id, b"400", b"client key not allowed", b"", b""]
            self.zap.send_multipart(reply)

    def _run(self) -> None:
        poll = self.poller.poll
        next_tick = time.monotonic() + TICK
        while not self.stopped:
            timeout = max(0.0, next_tick - time.monotonic())
            try:
                ready = poll(timeout * 1000)
            except zmq.ZMQError as exc:
                if exc.errno == zmq.ETERM:
                    return
                raise
            with LOCK:
                for sock, _ in ready:
                    if sock == self.efd:
                        try:
                            os.eventfd_read(self.efd)
                        except BlockingIOError:
                            pass
                        self.signalled = False
                    elif sock is self.zap:
                        self._answer_zap()
                    else:
                        owner = self.owners.get(sock)
                        if owner is not None:
                            owner.on_readable()
                while self.commands:
                    self.commands.popleft()()
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + TICK
                    for owner in list(self.owners.values()):
                        for core in owner.cores():
                            core.tick()
                dirty, self.dirty = self.dirty, []
                out = []
                for link, core in dirty:
                    core.dirty = False
                    frames = core.proto.data_to_send()
                    if frames:
                        out.append((link, core, frames))
            failed = []
            for link, core, frames in out:
                try:
                    link.send(frames)
                except zmq.ZMQError as exc:
                    failed.append((core, exc))
            with LOCK:
                for core, exc in failed:
                    err = SessionLost(f"the peer is unreachable: {exc.strerror}")
                    err.__cause__ = exc
                    core.proto.close_now(err)
                    core.fail(err)
                if self.closing and not self.dirty:
                    closing, self.closing = self.closing, []
                    for sock in closing:
                        self.drop_socket(sock)

    def _flush_now(self) -> None:
        dirty, self.dirty = self.dirty, []
        for link, core in dirty:
            core.dirty = False
            try:
                link.send(core.proto.data_to_send())
            except zmq.ZMQError:
                pass  # exiting anyway

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
                self.poller.unregister(self.zap)
                self.zap.close(linger=0)
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
            hub = _hub
    return hub


def _forget_after_fork() -> None:
    # The parent's I/O thread does not exist in the child and its zmq context must not
    # be used there: start afresh on first use.
    global _hub
    _hub = None


def _at_exit() -> None:
    if _hub is not None:
        _hub.shutdown()


os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(_at_exit)
