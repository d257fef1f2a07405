"""Byte streams: :class:`ByteStream` and :func:`stream_pair`.

A stream end reads from its own bounded :class:`ByteQueue` and writes into a byte sink:
the peer end's queue (in memory) or a stream of a session (``_session.RemoteByteSink``).
Byte sinks mirror channel sinks, counted in bytes:

``attempt_write(data)``  the number of bytes taken (> 0), the Waitable when full, or raises;
``end(error)`` and ``attempt_ended()`` as for channels.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Iterator

from ._sync import LOCK, Pump, QueueBase, Waitable, fresh, wait_sync
from .errors import ClosedChannelError, Timeout, error_tuple

DEFAULT_BUFFER = 256 * 1024

READER_CLOSED = ("ReaderClosed", "the reading side of this stream was closed")


class ByteQueue(QueueBase):
    """Bytes waiting to be read, bounded by ``capacity``."""

    __slots__ = ("chunks", "size")
    CONSUMER_GONE = READER_CLOSED

    def __init__(self, capacity: int = DEFAULT_BUFFER) -> None:
        super().__init__(capacity)
        self.chunks: deque[bytes | memoryview] = deque()
        self.size = 0

    def backlog(self) -> bool:
        return self.size > 0

    def discard(self) -> None:
        self.chunks.clear()
        self.size = 0

    # -- reader side
    def _take(self, n: int) -> bytes:
        chunks = self.chunks
        if n >= self.size:
            data = b"".join(chunks)
            chunks.clear()
        else:
            parts, need = [], n
            while need:
                head = chunks[0]
                if len(head) <= need:
                    parts.append(chunks.popleft())
                    need -= len(head)
                else:
                    parts.append(head[:need])
                    chunks[0] = head[need:]
                    need = 0
            data = b"".join(parts)
        self.size -= len(data)
        if self.upstream is not None:
            self.upstream.taken(len(data))
        self._wake()
        return data

    def _at_end(self) -> bytes:
        if self.closed:
            raise ClosedChannelError("read on a stream that you closed")
        if self.error is not None:
            raise fresh(self.error)
        return b""

    def attempt_read(self, n: int) -> Any:
        """Up to ``n`` bytes as soon as any are there (``n < 0``: everything until EOF)."""
        if n < 0:
            if self.eof or self.error is not None or self.closed:
                return self._take(self.size) if self.size else self._at_end()
            return self
        if self.size:
            return self._take(n)
        if self.eof or self.error is not None or self.closed:
            return self._at_end()
        return self

    def attempt_readline(self, limit: int) -> Any:
        seen = 0
        for chunk in self.chunks:
            # (a chunk from a session is a view of the frame it came in)
            i = (chunk if type(chunk) is bytes else bytes(chunk)).find(b"\n")
            if i >= 0:
                return self._take(min(seen + i + 1, limit) if limit >= 0 else seen + i + 1)
            seen += len(chunk)
        if 0 <= limit <= self.size:
            return self._take(limit)
        return self.attempt_read(-1)

    # -- writer (sink) side
    def attempt_write(self, data: bytes | memoryview) -> Any:
        if self.broken is not None:
            raise fresh(self.broken)
        if self.eof or self.error is not None:
            raise ClosedChannelError("write on a stream whose writing side was closed")
        pump = self.pump
        if pump is not None and not self.chunks and not pump._done:
            # This end's reader went into a session: nothing is queued before these
            # bytes, so they go straight to the session (one copy and no relay less).
            return pump.dst.attempt_write(data)
        room = self.capacity - self.size
        if room <= 0:
            return self
        chunk = bytes(data[:room])
        self.chunks.append(chunk)
        self.size += len(chunk)
        self._wake()
        return len(chunk)

    def put_nowait(self, data: bytes | memoryview) -> None:
        if not self.closed:
            self.chunks.append(data)
            self.size += len(data)
            self._wake()


class ByteStreamBase:
    """State of a stream end, shared by the blocking and asyncio front ends."""

    __slots__ = ("_rq", "_sink", "_gone", "__weakref__")

    def __init__(self, rq: ByteQueue, sink: Any) -> None:
        self._rq: ByteQueue | None = rq
        self._sink: Any = sink
        self._gone: str | None = None

    def _reader(self) -> ByteQueue:
        if self._rq is None:
            raise ClosedChannelError(self._gone or "read on a stream that you closed")
        return self._rq

    def _writer(self) -> Any:
        if self._sink is None:
            raise ClosedChannelError(self._gone or "write on a stream that you closed")
        return self._sink

    def _begin_close_write(self) -> Any:
        with LOCK:
            sink = self._sink
            if sink is not None:
                self._sink = None
                sink.end(None)
            return sink

    def _begin_close(self, error: BaseException | None) -> Any:
        with LOCK:
            rq, sink = self._rq, self._sink
            self._rq = self._sink = None
            if rq is not None:
                rq.close_consumer()
            if sink is not None:
                sink.end(None if error is None else error_tuple(error))
            return sink

    def _moved(self) -> tuple[ByteQueue, Any]:
        rq, sink = self._rq, self._sink
        if rq is None or sink is None:
            raise ClosedChannelError("cannot send a stream end that is (half) closed")
        self._rq = self._sink = None
        self._gone = "this stream end was sent away in a message; only the peer may use it now"
        return rq, sink

    @property
    def closed(self) -> bool:
        return self._rq is None and self._sink is None

    def readable(self) -> bool:
        return self._rq is not None

    def writable(self) -> bool:
        return self._sink is not None

    def flush(self) -> None:
        """Nothing to do: written bytes are already on their way."""

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.ByteStream {'closed' if self.closed else 'open'}>"


class ByteStream(ByteStreamBase):
    """One end of a duplex byte stream; file-like.  Send it in a message to hand it over.

    ``read(n)`` returns up to ``n`` bytes as soon as any are there (``b""`` at EOF),
    ``read()`` everything until EOF; ``write`` blocks while the peer's buffer is full.
    """

    __slots__ = ()

    def read(self, n: int = -1, timeout: float | None = None) -> bytes:
        """Up to ``n`` bytes (at least one, unless at EOF); with ``n < 0`` all until EOF."""
        return wait_sync(lambda: self._reader().attempt_read(n), timeout, "read")

    def readline(self, limit: int = -1, timeout: float | None = None) -> bytes:
        """One line including its ``\\n`` (the rest of the stream at EOF)."""
        return wait_sync(lambda: self._reader().attempt_readline(limit), timeout, "readline")

    def write(self, data: bytes | bytearray | memoryview, timeout: float | None = None) -> int:
        """Write all of ``data``; blocks while the reader's buffer is full.  Returns len.

        On :class:`Timeout`, the exception's ``written`` says how many bytes went out.
        """
        view = memoryview(data).cast("B")
        total = len(view)
        off = 0
        while off < total:
            try:
                off += wait_sync(lambda: self._writer().attempt_write(view[off:]), timeout,
                                 "write")
            except Timeout as exc:
                exc.written = off  # how much of ``data`` went out before time ran out
                raise
        return total

    def close_write(self, timeout: float | None = None) -> None:
        """Send EOF: the peer's reads return ``b""`` once drained.  Waits for delivery."""
        sink = self._begin_close_write()
        if sink is not None:
            wait_sync(sink.attempt_ended, timeout, "close_write")

    def close(self, error: BaseException | None = None, timeout: float | None = None) -> None:
        """Close both directions (with ``error``, the peer's reads raise RemoteError)."""
        sink = self._begin_close(error)
        if sink is not None:
            wait_sync(sink.attempt_ended, timeout, "close")

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def __enter__(self) -> "ByteStream":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def stream_pair(buffer: int = DEFAULT_BUFFER) -> tuple[ByteStream, ByteStream]:
    """Two connected stream ends: what one writes, the other reads, both ways."""
    qa, qb = ByteQueue(buffer), ByteQueue(buffer)
    return ByteStream(qa, qb), ByteStream(qb, qa)


class BytePump(Pump):
    """Moves bytes from a queue into a byte sink (see :class:`_sync.Pump`)."""

    __slots__ = ()

    def _move(self, src: ByteQueue, dst: Any) -> Waitable | None:
        taken = dst.attempt_write(src.chunks[0])
        if isinstance(taken, Waitable):
            return taken
        src._take(taken)
        return None
