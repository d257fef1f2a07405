"""Docker's multiplexed stdio stream and the hijacked connections that carry it.

A non-TTY container's output goes out as frames: an 8-byte header (stream type: 0
stdin, 1 stdout, 2 stderr; three zero bytes; the payload length as a big-endian
uint32) and the payload.  A TTY's output is the raw bytes.

``attach`` and ``exec start`` are *hijacked*: the client asks ``Upgrade: tcp``, the
answer is ``101 Switching Protocols``, and the connection then carries stdin one way
and the output the other, half-closed by the client at its stdin's EOF.  aiohttp's
protocol would close the connection on that EOF, so once the 101 is out the transport
is handed to :class:`_RawProtocol`, which keeps the write side open.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
RAW = "application/vnd.docker.raw-stream"
STREAM_IDS = {"stdin": 0, "stdout": 1, "stderr": 2}
_HEADER = struct.Struct(">BxxxI")


def frame(stream: str, data: bytes) -> bytes:
    """One multiplexed frame of ``data`` on ``stream`` (stdout or stderr)."""
    return _HEADER.pack(STREAM_IDS.get(stream, 1), len(data)) + data


def parse(buf: bytes) -> list[tuple[int, bytes]]:
    """Every complete frame of ``buf`` as ``(stream id, payload)`` (for tests and tools)."""
    out, off = [], 0
    while off + _HEADER.size <= len(buf):
        sid, n = _HEADER.unpack_from(buf, off)
        out.append((sid, buf[off + _HEADER.size: off + _HEADER.size + n]))
        off += _HEADER.size + n
    return out


class _RawProtocol(asyncio.Protocol):
    """The hijacked connection's protocol: bytes in a queue, flow control for writes."""

    def __init__(self, previous: Any, tail: bytes) -> None:
        self.previous = previous
        self.incoming: asyncio.Queue[bytes] = asyncio.Queue()
        if tail:
            self.incoming.put_nowait(tail)
        self._can_write = asyncio.Event()
        self._can_write.set()
        self.lost = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.incoming.put_nowait(data)

    def eof_received(self) -> bool:
        self.incoming.put_nowait(b"")
        return True  # half-closed: the output still flows back

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.incoming.put_nowait(b"")
        self._can_write.set()
        self.lost.set()
        # aiohttp's own protocol cleans up its request handler on this call
        self.previous.connection_lost(exc)


class Hijacked:
    """A connection taken over after ``101``: :meth:`read` stdin, :meth:`write` output."""

    def __init__(self, transport: asyncio.Transport, protocol: _RawProtocol,
                 response: Any) -> None:
        self.transport = transport
        self._proto = protocol
        #: the 101 response (what the aiohttp handler returns)
        self.response = response

    @classmethod
    async def upgrade(cls, request: Any, content_type: str) -> "Hijacked":
        """Answer ``request`` with 101 and take its connection over."""
        from aiohttp import web

        resp = web.StreamResponse(status=101, headers={
            "Content-Type": content_type, "Connection": "Upgrade", "Upgrade": "tcp"})
        resp._length_check = False  # no chunking: raw bytes follow, as for a WebSocket
        await resp.prepare(request)
        request.writer.send_headers()
        transport = request.transport
        previous = transport.get_protocol()
        tail = getattr(previous, "_message_tail", b"") or b""
        proto = _RawProtocol(previous, tail)
        transport.set_protocol(proto)
        if transport.is_reading() is False:
            transport.resume_reading()
        return cls(transport, proto, resp)

    async def read(self) -> bytes:
        """The next bytes from the client; ``b""`` at its EOF (or when it left)."""
        return await self._proto.incoming.get()

    async def write(self, data: bytes) -> None:
        """Send ``data``; waits while the client reads slowly.  ConnectionError if gone."""
        if self.transport.is_closing():
            raise ConnectionResetError("the docker client closed the connection")
        self.transport.write(data)
        await self._proto._can_write.wait()

    @property
    def gone(self) -> asyncio.Event:
        """Set once the client's connection is lost."""
        return self._proto.lost

    def close(self) -> None:
        """End the connection (the client sees EOF after the output)."""
        if not self.transport.is_closing():
            self.transport.close()
