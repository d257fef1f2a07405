"""chan for asyncio: the same names as :mod:`chan`, awaited.

::

    tx, rx = chan.aio.pipe()
    await tx.send({"verb": "ls", "ret": ret_tx})
    msg = await rx.recv()
    async for msg in rx: ...
    session = await chan.aio.connect(endpoint)

This module only binds the shared core to asyncio (as pyzmq's ``zmq.asyncio`` binds
``zmq._future``): every operation is the same attempt as in the blocking front end;
when it would block, the coroutine awaits a future that the core's wake-up resolves.
Ends that arrive in messages over an asyncio session or pipe are asyncio ends.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any, AsyncIterator, Callable, Iterable

from . import _hub, _sync
from ._sync import LOCK, Waitable
from .channel import DEFAULT_CAPACITY, MsgQueue, ReceiverBase, SenderBase
from .errors import (ChannelError, ClosedChannelError, EndOfChannel, MessageTooLarge,
                     ProtocolError, RemoteError, SessionLost, Timeout)
from .net import CurveKeys, ListenerBase, SessionBase, Settings
from .stream import DEFAULT_BUFFER, ByteQueue, ByteStreamBase

__all__ = [
    "ByteStream", "ChannelError", "ClosedChannelError", "CurveKeys", "EndOfChannel",
    "Listener", "MessageTooLarge", "ProtocolError", "Receiver", "RemoteError", "Sender",
    "Session", "SessionLost", "Settings", "Timeout", "connect", "listen", "pipe",
    "stream_pair",
]


def _waker(loop: asyncio.AbstractEventLoop, fut: asyncio.Future) -> Callable[[], None]:
    def wake() -> None:
        if asyncio._get_running_loop() is loop:
            if not fut.done():
                fut.set_result(None)
            return
        try:
            loop.call_soon_threadsafe(_resolve, fut)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more
    return wake


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


async def _wait(attempt: Callable[[], Any], timeout: float | None, what: str) -> Any:
    """The asyncio twin of ``_sync.wait_sync``: awaits a future the wake-up resolves."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            with LOCK:
                result = attempt()
                if not isinstance(result, Waitable):
                    return result
                fut = loop.create_future()
                wake = _waker(loop, fut)
                result._waiters.append(wake)
                flush = _sync.FLUSH_HOOK
                if flush is not None:
                    flush()  # what this task queued leaves before it sleeps (see _hub)
            hub = _hub._hub
            if hub is not None:
                hub.loop_waits(loop, +1)
            try:
                if deadline is None:
                    await fut
                else:
                    async with asyncio.timeout(deadline - time.monotonic()):
                        await fut
            except TimeoutError:
                with LOCK:
                    result._unwait(wake)
                    final = attempt()
                if not isinstance(final, Waitable):
                    return final
                raise Timeout(f"{what} timed out after {timeout} s") from None
            except asyncio.CancelledError:
                with LOCK:
                    result._unwait(wake)
                raise
            finally:
                if hub is not None:
                    hub.loop_waits(loop, -1)
    finally:
        _sync.settle()


class Sender(SenderBase):
    """The sending end of a channel (asyncio)."""

    __slots__ = ()

    async def send(self, msg: Any, timeout: float | None = None) -> None:
        """Send one message; waits while the receiver has no room.  See chan.Sender.send."""
        with LOCK:
            sink = self._sink
            sent = sink is not None and sink.attempt_send(msg) is None
        if sent:
            _sync.settle()
            return
        await _wait(lambda: self._attempt_send(msg), timeout, "send")

    async def close(self, error: BaseException | None = None,
                    timeout: float | None = None) -> None:
        """End the channel once what was sent is delivered.  See chan.Sender.close."""
        sink = self._begin_close(error)
        if sink is not None:
            await _wait(sink.attempt_ended, timeout, "close")

    async def __aenter__(self) -> "Sender":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()


class Receiver(ReceiverBase):
    """The receiving end of a channel (asyncio); ``async for`` iterates it."""

    __slots__ = ()

    async def recv(self, timeout: float | None = None) -> Any:
        """The next message.  See chan.Receiver.recv."""
        with LOCK:
            q = self._q
            got = q is not None and bool(q.items)
            if got:
                msg = q.attempt_get()
        if got:
            _sync.settle()
            return msg
        return await _wait(self._attempt_recv, timeout, "recv")

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.recv()
        except EndOfChannel:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> "Receiver":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.close()


class ByteStream(ByteStreamBase):
    """One end of a duplex byte stream (asyncio).  See chan.ByteStream."""

    __slots__ = ()

    async def read(self, n: int = -1, timeout: float | None = None) -> bytes:
        """Up to ``n`` bytes as soon as any are there; ``n < 0``: all until EOF."""
        return await _wait(lambda: self._reader().attempt_read(n), timeout, "read")

    async def readline(self, limit: int = -1, timeout: float | None = None) -> bytes:
        """One line including its newline (the rest of the stream at EOF)."""
        return await _wait(lambda: self._reader().attempt_readline(limit), timeout,
                                "readline")

    async def write(self, data: bytes | bytearray | memoryview,
                    timeout: float | None = None) -> int:
        """Write all of ``data``, waiting while the reader's buffer is full."""
        view = memoryview(data).cast("B")
        off, total = 0, len(view)
        while off < total:
            try:
                off += await _wait(lambda: self._writer().attempt_write(view[off:]),
                                   timeout, "write")
            except Timeout as exc:
                exc.written = off
                raise
        return total

    async def close_write(self, timeout: float | None = None) -> None:
        """Send EOF once what was written is delivered."""
        sink = self._begin_close_write()
        if sink is not None:
            await _wait(sink.attempt_ended, timeout, "close_write")

    async def close(self, error: BaseException | None = None,
                    timeout: float | None = None) -> None:
        """Close both directions (with ``error``, the peer's reads raise RemoteError)."""
        sink = self._begin_close(error)
        if sink is not None:
            await _wait(sink.attempt_ended, timeout, "close")

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line

    async def __aenter__(self) -> "ByteStream":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()


_ASYNCIO = SimpleNamespace(Sender=Sender, Receiver=Receiver, ByteStream=ByteStream)


def pipe(capacity: int = DEFAULT_CAPACITY) -> tuple[Sender, Receiver]:
    """An in-memory channel with asyncio ends.  See chan.pipe."""
    if capacity < 1:
        raise ValueError("capacity must be at least 1")
    q = MsgQueue(capacity)
    return Sender(q), Receiver(q)


def stream_pair(buffer: int = DEFAULT_BUFFER) -> tuple[ByteStream, ByteStream]:
    """Two connected asyncio stream ends.  See chan.stream_pair."""
    qa, qb = ByteQueue(buffer), ByteQueue(buffer)
    return ByteStream(qa, qb), ByteStream(qb, qa)


class Listener(ListenerBase):
    """Accepts the channels peers open (asyncio).  Use :func:`listen`."""

    _flavor = _ASYNCIO

    async def accept(self, timeout: float | None = None) -> Receiver:
        """The Receiver of the next channel a peer opened."""
        return await _wait(self._attempt_accept, timeout, "accept")

    async def close(self) -> None:
        """Stop listening; every session of this listener ends."""
        self._close()

    async def __aenter__(self) -> "Listener":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()


class Session(SessionBase):
    """The connecting side of a session (asyncio).  Use :func:`connect`."""

    _flavor = _ASYNCIO

    def open(self) -> Sender:
        """A new channel to the peer: its Receiver comes out of the peer's accept()."""
        return super().open()

    async def close(self, timeout: float | None = None) -> None:
        """End the session once the peer has everything sent on it.  See chan.Session."""
        timeout = self._close_timeout(timeout)
        try:
            if await _wait(self._attempt_bye, timeout, "close"):
                await _wait(self._attempt_closed, timeout, "close")
        except Timeout as exc:
            raise self._unconfirmed(timeout, exc) from exc

    async def __aenter__(self) -> "Session":
        return self

    async def __aexit__(self, exc_type: Any, *exc_info: Any) -> None:
        try:
            await self.close()
        except (SessionLost, Timeout):
            if exc_type is None:
                raise


async def listen(endpoint: str, *, settings: Settings | None = None,
                 curve: CurveKeys | None = None, allow: Iterable[bytes] | None = None) -> Listener:
    """Listen on ``endpoint``.  See chan.listen."""
    return Listener(endpoint, settings=settings, curve=curve, allow=allow)


async def connect(endpoint: str, *, settings: Settings | None = None,
                  curve: CurveKeys | None = None, server_key: bytes | None = None,
                  timeout: float | None = None) -> Session:
    """Open a session; returns once the peer answered.  See chan.connect."""
    session = Session(endpoint, settings=settings, curve=curve, server_key=server_key)
    timeout = session.settings.timeout_ms / 1000 if timeout is None else timeout
    try:
        await _wait(session._attempt_handshake, timeout, "connect")
    except Timeout as exc:
        raise session._no_answer(timeout, exc) from exc
    return session
