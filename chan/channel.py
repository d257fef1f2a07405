"""Channels: :class:`Sender`, :class:`Receiver`, :func:`pipe`.

A :class:`Receiver` always reads from a bounded :class:`MsgQueue`.  A :class:`Sender`
writes into a *sink*: the queue of an in-memory pipe, or a channel of a session
(``_session.RemoteSink``).  Both kinds of sink offer the same three calls:

``attempt_send(msg)``  None when taken, the Waitable to sleep on when full, or raises;
``end(error)``         no more messages (error: None or (code, message)); never blocks;
``attempt_ended()``    None once the end is delivered (a session waits for the ack).

When an end is put in a message that crosses a session, the session takes its place:
it becomes the producer of a pipe's queue (a Sender sent away) or its consumer (a
Receiver sent away, moved on by a :class:`MsgPump`).  The local object is then *moved*.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Iterator

from ._sync import LOCK, Pump, QueueBase, Waitable, fresh, settle, wait_sync
from .errors import ClosedChannelError, EndOfChannel, error_tuple

DEFAULT_CAPACITY = 256

RECEIVER_CLOSED = ("ReceiverClosed", "the receiving end of this channel was closed")


class MsgQueue(QueueBase):
    """A bounded FIFO of messages: the consumer side of every channel."""

    __slots__ = ("items",)
    CONSUMER_GONE = RECEIVER_CLOSED

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        super().__init__(capacity)
        self.items: deque = deque()

    def backlog(self) -> bool:
        return bool(self.items)

    def discard(self) -> None:
        self.items.clear()

    # -- consumer side
    def attempt_get(self) -> Any:
        items = self.items
        if items:
            item = items.popleft()
            if self.upstream is not None:
                self.upstream.taken(1)
            if self._waiters:
                self._wake()
            return item
        if self.closed:
            raise ClosedChannelError("recv on a Receiver that you closed")
        if self.error is not None:
            raise fresh(self.error)
        if self.eof:
            raise EndOfChannel()
        return self

    # -- producer (sink) side
    def attempt_send(self, msg: Any) -> Waitable | None:
        if self.broken is not None:
            raise fresh(self.broken)
        if self.eof or self.error is not None:
            raise ClosedChannelError("send on a channel whose sending end was closed")
        if len(self.items) >= self.capacity:
            return self
        self.items.append(msg)
        if self._waiters:
            self._wake()
        return None

    def put_nowait(self, msg: Any) -> None:
        """Used by a session delivering a message the peer had credit for."""
        if not self.closed:
            self.items.append(msg)
            if self._waiters:
                self._wake()


class SenderBase:
    """State of a sending end, shared by the blocking and asyncio front ends."""

    __slots__ = ("_sink", "_gone", "__weakref__")

    def __init__(self, sink: Any) -> None:
        self._sink = sink
        self._gone: str | None = None  # why this end cannot be used any more

    def _take_sink(self) -> Any:
        sink = self._sink
        if sink is None:
            raise ClosedChannelError(self._gone or "this Sender is closed")
        return sink

    def _attempt_send(self, msg: Any) -> Waitable | None:
        return self._take_sink().attempt_send(msg)

    def _begin_close(self, error: BaseException | None) -> Any:
        with LOCK:
            sink = self._sink
            if sink is None:
                return None
            self._sink = None
            self._gone = "send on a Sender that you closed"
            sink.end(None if error is None else error_tuple(error))
            return sink

    @property
    def peer_gone(self) -> bool:
        """True once nothing sent on this end can be delivered any more: the receiving
        end was closed, its session was lost (noticed within the heartbeat timeout), or
        you closed this end or sent it away.  Never blocks: a server waiting for
        something to send (a followed log, an idle attach) looks at it to learn that
        its client left."""
        with LOCK:
            sink = self._sink
            return sink is None or sink.gone()

    def _moved(self) -> Any:
        """Hand the sink over (the Sender is going into a message)."""
        sink = self._take_sink()
        self._sink = None
        self._gone = "this Sender was sent away in a message; only the peer may use it now"
        return sink

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.Sender {'open' if self._sink is not None else 'closed'}>"


class Sender(SenderBase):
    """The sending end of a channel.  Send it in a message to let the peer send to you."""

    __slots__ = ()

    def send(self, msg: Any, timeout: float | None = None) -> None:
        """Send one message; blocks while the receiver has no room (flow control).

        Raises :class:`ClosedChannelError` if you closed this end, :class:`RemoteError`
        if the receiver closed its end, :class:`SessionLost` if the peer is gone,
        :class:`MessageTooLarge`, :class:`Timeout`, or ``TypeError`` for a value that
        cannot travel in a message.
        """
        with LOCK:
            sink = self._sink
            sent = sink is not None and sink.attempt_send(msg) is None
        if sent:  # the common case: there was room
            settle()
            return
        wait_sync(lambda: self._attempt_send(msg), timeout, "send")

    def close(self, error: BaseException | None = None, timeout: float | None = None) -> None:
        """End the channel; with ``error`` the receiver's recv raises :class:`RemoteError`.

        Returns once the receiver has everything sent before (over a session: once the
        peer acknowledged the end), or raises :class:`SessionLost`.  Idempotent.
        """
        sink = self._begin_close(error)
        if sink is not None:
            wait_sync(sink.attempt_ended, timeout, "close")

    def __enter__(self) -> "Sender":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class ReceiverBase:
    """State of a receiving end, shared by the blocking and asyncio front ends."""

    __slots__ = ("_q", "_gone", "__weakref__")

    def __init__(self, queue: MsgQueue) -> None:
        self._q: MsgQueue | None = queue
        self._gone: str | None = None

    def _queue(self) -> MsgQueue:
        q = self._q
        if q is None:
            raise ClosedChannelError(self._gone or "this Receiver is closed")
        return q

    def _attempt_recv(self) -> Any:
        return self._queue().attempt_get()

    def close(self) -> None:
        """Stop receiving: queued messages are dropped and the sender's sends fail."""
        with LOCK:
            q = self._q
            if q is not None:
                self._q = None
                self._gone = "recv on a Receiver that you closed"
                q.close_consumer()

    def _moved(self) -> MsgQueue:
        q = self._queue()
        self._q = None
        self._gone = "this Receiver was sent away in a message; only the peer may use it now"
        return q

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.Receiver {'open' if self._q is not None else 'closed'}>"


class Receiver(ReceiverBase):
    """The receiving end of a channel.  Iterate it, or call :meth:`recv`."""

    __slots__ = ()

    def recv(self, timeout: float | None = None) -> Any:
        """The next message.  Blocks until one arrives.

        Raises :class:`EndOfChannel` once the sender closed and all is drained,
        :class:`RemoteError` if it closed with an error, :class:`SessionLost` if the
        peer is gone (after what arrived before), :class:`Timeout`.
        """
        with LOCK:
            q = self._q
            got = q is not None and bool(q.items)
            if got:
                msg = q.attempt_get()
        if got:  # the common case: a message was waiting
            settle()
            return msg
        return wait_sync(self._attempt_recv, timeout, "recv")

    def __iter__(self) -> Iterator[Any]:
        while True:
            try:
                yield self.recv()
            except EndOfChannel:
                return

    def __enter__(self) -> "Receiver":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def pipe(capacity: int = DEFAULT_CAPACITY) -> tuple[Sender, Receiver]:
    """An in-memory channel: ``(Sender, Receiver)``.  Messages are passed as objects.

    ``capacity`` bounds the messages queued; a full pipe makes ``send`` wait.
    """
    if capacity < 1:
        raise ValueError("capacity must be at least 1")
    q = MsgQueue(capacity)
    return Sender(q), Receiver(q)


class MsgPump(Pump):
    """Moves messages from a queue into a sink (see :class:`_sync.Pump`)."""

    __slots__ = ()

    def _move(self, src: MsgQueue, dst: Any) -> Waitable | None:
        blocked = dst.attempt_send(src.items[0])
        if blocked is None:
            src.attempt_get()  # pops, grants credit upstream, wakes producers
        return blocked
