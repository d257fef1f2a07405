"""Sessions over ZeroMQ: :func:`listen`, :func:`connect`, :class:`Listener`, :class:`Session`.

Endpoints are ZeroMQ's: ``tcp://HOST:PORT`` (port 0 picks a free one), ``ipc://PATH``,
``inproc://NAME`` (same process).  One ZeroMQ connection carries one session and all of
its channels and streams.  TCP endpoints can require CurveZMQ (:class:`CurveKeys`).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any, Iterable

import zmq

from . import protocol
from types import SimpleNamespace

from ._hub import get_hub
from ._links import DealerOwner, RouterOwner, _Link
from ._session import SessionCore
from ._sync import LOCK, Waitable, fresh, wait_sync
from .channel import MsgQueue, Receiver, Sender
from .errors import ChannelError, ClosedChannelError, SessionLost, Timeout
from .stream import ByteStream

__all__ = ["CurveKeys", "Listener", "Session", "Settings", "connect", "listen"]

Settings = protocol.Settings

_SCHEMES = ("tcp://", "ipc://", "inproc://")

# The classes the blocking front end gives to ends that arrive in messages.
BLOCKING = SimpleNamespace(Sender=Sender, Receiver=Receiver, ByteStream=ByteStream)


@dataclass(frozen=True)
class CurveKeys:
    """A CurveZMQ key pair, Z85-encoded (40 ASCII bytes each)."""

    public: bytes
    secret: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> "CurveKeys":
        """A new random key pair."""
        public, secret = zmq.curve_keypair()
        return cls(public, secret)


def _check_endpoint(endpoint: str) -> str:
    if not isinstance(endpoint, str) or not endpoint.startswith(_SCHEMES):
        raise ValueError(f"endpoint {endpoint!r} must start with tcp://, ipc:// or inproc://")
    # ZeroMQ spells "any port" as '*'; accept the socket-API spelling too.
    return re.sub(r"^(tcp://.*):0$", r"\1:*", endpoint)


class ListenerBase:
    """A bound ROUTER socket and its sessions; the front ends add how to wait."""

    _flavor = BLOCKING

    def __init__(self, endpoint: str, settings: Settings | None = None,
                 curve: CurveKeys | None = None, allow: Iterable[bytes] | None = None) -> None:
        endpoint = _check_endpoint(endpoint)
        self.settings = settings or Settings()
        self._accepts = MsgQueue(capacity=1 << 62)
        self._closed = False
        hub = self._hub = get_hub()
        settings_ = self.settings

        def make_core(link: Any) -> SessionCore:
            return SessionCore(protocol.Session(client=False, settings=settings_), link,
                               self._flavor, accepts=self._accepts)

        def setup() -> tuple[zmq.Socket, RouterOwner, str]:
            sock, owner = hub.new_socket(
                zmq.ROUTER, lambda s: RouterOwner(hub, s, make_core),
                settings_.max_message + protocol.FRAME_OVERHEAD)
            try:
                if curve is not None:
                    from zmq.utils import z85
                    sock.curve_server = True
                    sock.curve_secretkey = curve.secret
                    domain = hub.enable_zap({z85.decode(k) for k in (allow or ())})
                    sock.zap_domain = domain.encode()
                sock.bind(endpoint)
            except zmq.ZMQError as exc:
                hub.drop_socket(sock, linger=0)
                raise ChannelError(f"cannot listen on {endpoint}: {exc.strerror}") from exc
            except BaseException:
                hub.drop_socket(sock, linger=0)
                raise
            return sock, owner, sock.getsockopt_string(zmq.LAST_ENDPOINT)

        self._sock, self._owner, self.endpoint = hub.call(setup)

    def _attempt_accept(self) -> Any:
        if self._closed:
            raise ClosedChannelError("accept on a Listener that you closed")
        while True:
            rx = self._accepts.attempt_get()
            if isinstance(rx, Waitable):
                return rx
            q = rx._q
            # A channel whose session failed before anything arrived on it carries
            # nothing: skip it (a flood of OPENs from a bad peer must not starve others).
            if q is None or q.items or q.error is None:
                return rx

    def _close(self) -> None:
        with LOCK:
            if self._closed:
                return
            self._closed = True
            self._accepts.close_consumer()

        def teardown() -> None:
            for core in self._owner.cores():
                core.proto.abort(protocol.SHUTDOWN, "the listener was closed")
                core.flush_soon()
                core.fail(SessionLost("the listener was closed"))
            self._hub._flush_now()
            self._hub.drop_socket(self._sock, linger=200)
        self._hub.call(teardown)
        if self.endpoint.startswith("ipc://"):
            # libzmq 4.3 leaves the socket file behind; it is ours (we bound it).
            path = self.endpoint[len("ipc://"):]
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.Listener {self.endpoint}{' closed' if self._closed else ''}>"


class Listener(ListenerBase):
    """Accepts the channels that peers open.  Use :func:`listen` to make one."""

    def accept(self, timeout: float | None = None) -> Receiver:
        """The Receiver of the next channel a peer opened (blocks until there is one)."""
        return wait_sync(self._attempt_accept, timeout, "accept")

    def close(self) -> None:
        """Stop listening; every session of this listener ends (peers see SessionLost)."""
        self._close()

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class SessionBase:
    """A DEALER socket and its one session; the front ends add how to wait."""

    _flavor = BLOCKING

    def __init__(self, endpoint: str, settings: Settings | None = None,
                 curve: CurveKeys | None = None, server_key: bytes | None = None) -> None:
        endpoint = _check_endpoint(endpoint)
        self.endpoint = endpoint
        self.settings = settings or Settings()
        self._curve = curve is not None
        hub = self._hub = get_hub()
        settings_ = self.settings
        if curve is not None and server_key is None:
            raise ValueError("CurveZMQ needs the server's public key (server_key=)")

        def setup() -> tuple[zmq.Socket, SessionCore]:
            sock, owner = hub.new_socket(zmq.DEALER, lambda s: DealerOwner(hub, s),
                                         settings_.max_message + protocol.FRAME_OVERHEAD)
            core = SessionCore(protocol.Session(client=True, settings=settings_),
                               _Link(hub, sock, None, owner), self._flavor)
            owner.core = core
            try:
                if curve is not None:
                    sock.curve_serverkey = server_key
                    sock.curve_publickey = curve.public
                    sock.curve_secretkey = curve.secret
                sock.connect(endpoint)
            except zmq.ZMQError as exc:
                hub.drop_socket(sock, linger=0)
                raise ChannelError(f"cannot connect to {endpoint}: {exc.strerror}") from exc
            core.flush_soon()  # the HELLO
            return sock, core

        self._sock, self._core = hub.call(setup)

    def _attempt_handshake(self) -> Any:
        core = self._core
        if core.closed:
            raise fresh(core.error)
        if core.proto.state == protocol.OPEN_STATE:
            return True
        return core.state

    def _abandon(self, message: str, exc: BaseException) -> SessionLost:
        """Give the session up (its socket is closed); the error to raise."""
        def drop() -> None:
            self._core.proto.close_now(SessionLost("connection abandoned"))
            self._core.fail(ClosedChannelError("its session was closed"))
        self._hub.call(drop)
        err = SessionLost(message)
        err.__cause__ = exc
        return err

    def _no_answer(self, timeout: float, exc: BaseException) -> SessionLost:
        hint = " (with CurveZMQ: is our public key allowed there?)" if self._curve else ""
        return self._abandon(f"no answer from {self.endpoint} within {timeout} s: is a "
                             f"listener running there{hint}?", exc)

    def _unconfirmed(self, timeout: float, exc: BaseException) -> SessionLost:
        return self._abandon(f"{self.endpoint} did not confirm the end of the session "
                             f"within {timeout} s: what was sent may not have arrived", exc)

    def _attempt_bye(self) -> Any:
        """Once relays into the session are drained, send BYE (True); False when the
        session is already over and there is nothing to wait for."""
        core = self._core
        if core.closed:
            if core.clean_end:
                return False
            raise fresh(core.error)
        waiting = core.attempt_drained()
        if waiting is not None:
            return waiting
        if core.proto.state == protocol.OPEN_STATE:
            core.proto.send_bye()
            core.flush_soon()
        return True

    def _attempt_closed(self) -> Any:
        core = self._core
        if not core.closed:
            return core.state
        if core.clean_end:
            return None
        raise fresh(core.error)

    def _close_timeout(self, timeout: float | None) -> float:
        return timeout if timeout is not None else 2 * self.settings.timeout_ms / 1000

    def open(self) -> Any:
        """A new channel to the peer: its Receiver comes out of the peer's ``accept()``."""
        with LOCK:
            return self._core.open()

    @property
    def closed(self) -> bool:
        return self._core.closed

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.Session {self.endpoint}{' closed' if self.closed else ''}>"


class Session(SessionBase):
    """The connecting side of one session.  Use :func:`connect` to make one."""

    def open(self) -> Sender:
        """A new channel to the peer: its Receiver comes out of the peer's ``accept()``."""
        return super().open()

    def close(self, timeout: float | None = None) -> None:
        """End the session once the peer has received everything sent on it.

        Raises :class:`SessionLost` if the session failed (peer died, protocol error) or
        the peer could not confirm delivery; a session the peer ended on purpose closes
        quietly.  Channels still open on it fail with ClosedChannelError.
        """
        timeout = self._close_timeout(timeout)
        try:
            if wait_sync(self._attempt_bye, timeout, "close"):
                wait_sync(self._attempt_closed, timeout, "close")
        except Timeout as exc:
            raise self._unconfirmed(timeout, exc) from exc

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        try:
            self.close()
        except (SessionLost, Timeout):
            if exc_type is None:
                raise


def listen(endpoint: str, *, settings: Settings | None = None, curve: CurveKeys | None = None,
           allow: Iterable[bytes] | None = None) -> Listener:
    """Listen on ``endpoint``; ``listener.endpoint`` is the bound address.

    With ``curve`` (the server's key pair; tcp:// only) only clients whose public key is
    in ``allow`` get in; every other client gets nothing.
    """
    return Listener(endpoint, settings=settings, curve=curve, allow=allow)


def connect(endpoint: str, *, settings: Settings | None = None, curve: CurveKeys | None = None,
            server_key: bytes | None = None, timeout: float | None = None) -> Session:
    """Open a session to a listener; returns once the peer answered the handshake.

    Raises :class:`SessionLost` when nothing answers within ``timeout`` seconds
    (default: the settings' ``timeout_ms``).
    """
    session = Session(endpoint, settings=settings, curve=curve, server_key=server_key)
    timeout = session.settings.timeout_ms / 1000 if timeout is None else timeout
    try:
        wait_sync(session._attempt_handshake, timeout, "connect")
    except Timeout as exc:
        raise session._no_answer(timeout, exc) from exc
    return session
