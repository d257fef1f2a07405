"""How frames reach peers: one DEALER per connecting session, one ROUTER per listener.

An *owner* holds a socket and the sessions on it (one for a DEALER, one per peer
identity for a ROUTER) and receives from it; a :class:`_Link` is what a SessionCore
sends through.  All of it runs under the chan lock (see _hub).
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any, Callable

import zmq
import zmq.backend

from .errors import SessionLost

if TYPE_CHECKING:
    from ._hub import Hub

RECV_BATCH = 512  # frames taken from one socket before looking at the others
# Frames are received without a copy (a zmq.Frame's buffer: a stream's chunk is sliced
# out of it and copied once, when it is read).  They are sent with a copy up to this
# size: zero-copy sends make pyzmq track each buffer with a garbage-collector thread,
# which costs more than copying 64 KiB chunks.
COPY_BELOW = 1 << 20
# pyzmq's friendly layer costs microseconds a call on this path (enum flags, option
# wrapping: send_multipart is 2.1 us where two backend sends are 0.3 us), so the hot
# calls go to its Cython backend with plain int constants.
_EVENTS = int(zmq.EVENTS)
_RCVMORE = int(zmq.RCVMORE)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_get = zmq.backend.Socket.get
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv


def has_input(sock: zmq.Socket) -> bool:
    """Whether a frame waits (reading zmq.EVENTS also resets the notification fd)."""
    return bool(_get(sock, _EVENTS) & _POLLIN)


class _Link:
    """How one session's frames reach its peer: a DEALER, or a ROUTER plus identity."""

    __slots__ = ("hub", "sock", "ident", "owner")

    def __init__(self, hub: "Hub", sock: zmq.Socket, ident: bytes | None, owner: Any) -> None:
        self.hub, self.sock, self.ident, self.owner = hub, sock, ident, owner

    # called by the SessionCore, under the lock
    def flush_soon(self, core: Any) -> None:
        self.hub.flush_soon(self, core)

    def session_ended(self, core: Any) -> None:
        self.owner.session_ended(self, core)

    def send(self, frames: list) -> None:
        """Under the lock, from any thread."""
        sock, ident = self.sock, self.ident
        for frame in frames:
            if ident is not None:
                _send(sock, ident, _MORE, True, False)
            _send(sock, frame, _NOBLOCK, len(frame) < COPY_BELOW, False)


def _guarded(core: Any, fn: Callable, *args: Any) -> None:
    """Run one session's processing; a bug in it ends that session, not the I/O thread."""
    try:
        fn(*args)
    except Exception as exc:  # a chan bug: report it and contain it to this session
        traceback.print_exc()
        err = SessionLost(f"internal error in chan while processing this session: {exc!r}")
        err.__cause__ = exc
        core.proto.abort("InternalError", repr(exc))
        core.flush_soon()
        core.proto.close_now(err)
        core.fail(err)


class DealerOwner:
    """The connecting side: one DEALER socket, one session."""

    def __init__(self, hub: "Hub", sock: zmq.Socket) -> None:
        self.hub, self.sock = hub, sock
        self.core: Any = None

    def pump_in(self) -> bool:
        """Receive what is waiting; True if the batch limit stopped it early."""
        sock, core = self.sock, self.core
        for _ in range(RECV_BATCH):
            if not has_input(sock):  # (cheaper than pyzmq raising Again)
                return False
            frame = _recv(sock, _NOBLOCK, False, False)
            if frame.more:
                core.violation("multipart transport messages are not part of the protocol")
                while _get(sock, _RCVMORE):
                    _recv(sock, _NOBLOCK, True, False)
                continue
            if not core.closed:
                _guarded(core, core.feed, frame.buffer)
        return True

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

    def pump_in(self) -> bool:
        """Receive what is waiting; True if the batch limit stopped it early."""
        sock, sessions = self.sock, self.sessions
        for _ in range(RECV_BATCH):
            if not has_input(sock):  # (cheaper than pyzmq raising Again)
                return False
            ident = _recv(sock, _NOBLOCK, True, False)
            frame = _recv(sock, _NOBLOCK, False, False) if _get(sock, _RCVMORE) else None
            core = sessions.get(ident)
            if core is None:
                core = self.make_core(_Link(self.hub, sock, ident, self))
                sessions[ident] = core
            if frame is None or frame.more:
                while _get(sock, _RCVMORE):
                    _recv(sock, _NOBLOCK, True, False)
                core.violation("multipart transport messages are not part of the protocol")
            else:
                _guarded(core, core.feed, frame.buffer)
        return True

    def cores(self):
        return list(self.sessions.values())

    def session_ended(self, link: _Link, core: Any) -> None:
        if self.sessions.get(link.ident) is core:
            del self.sessions[link.ident]
