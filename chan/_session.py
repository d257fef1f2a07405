"""A live session: the sans-IO protocol bound to channel ends.

:class:`SessionCore` owns one :class:`protocol.Session`.  It turns protocol events into
queue operations (messages into Receivers' queues, credits into woken Senders) and turns
channel ends found in outgoing messages into references (allocating ids, attaching the
session in the end's place).  It never touches a socket: the transport that owns it is
told to flush with ``transport.flush_soon(core)`` and feeds frames to :meth:`feed`.
Everything here runs under ``_sync.LOCK``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from . import codec, protocol
from ._malloc import keep_freed_memory
from ._sync import Waitable, fresh
from .channel import RECEIVER_CLOSED, MsgPump, MsgQueue, ReceiverBase, SenderBase
from .errors import (ClosedChannelError, MessageTooLarge, ProtocolError, RemoteError,
                     SessionLost)
from .stream import BytePump, ByteQueue, ByteStreamBase


class InChan:
    """The session's side of a channel or stream that flows towards us.

    Sits as ``upstream`` of the queue the messages land in: grants credit as the local
    consumer takes, and tells the peer to STOP when the consumer goes away.
    """

    __slots__ = ("core", "chid", "pending", "threshold", "costs")

    def __init__(self, core: "SessionCore", chid: int, window: int, counted: bool) -> None:
        self.core, self.chid = core, chid
        self.pending = 0
        # Granting each quarter of the window as it frees up keeps the sender from
        # stalling for a round trip while the receiver keeps up.
        self.threshold = max(1, window // 4)
        # Message channels: the credit each queued message cost, in queue order.
        self.costs: deque[int] | None = deque() if counted else None

    def taken(self, n: int) -> None:
        costs = self.costs
        if costs is not None:  # n messages: return what each cost
            if n == 1:
                n = costs.popleft() if costs else 0
            else:
                k = 0
                for _ in range(min(n, len(costs))):
                    k += costs.popleft()
                n = k
        self.pending += n
        if self.pending >= self.threshold:
            self.core.proto.grant(self.chid, self.pending)
            self.pending = 0
            self.core.flush_soon()

    def abandon(self, error: tuple[str, str] | None) -> None:
        core = self.core
        core.ins.pop(self.chid, None)
        core.proto.send_stop(self.chid, error)
        core.flush_soon()


class _RemoteEnd(Waitable):
    """What ends that send into a session share: end, ack and failure."""

    __slots__ = ("core", "chid", "broken", "acked")

    def __init__(self, core: "SessionCore", chid: int) -> None:
        super().__init__()
        self.core, self.chid = core, chid
        self.broken: BaseException | None = None
        self.acked = False

    def end(self, error: tuple[str, str] | None) -> None:
        if self.broken is None and not self.acked:
            self.core.proto.send_end(self.chid, error)
            self.core.flush_soon()

    def gone(self) -> bool:
        """Whether nothing sent here can reach the receiver any more."""
        return self.broken is not None or self.core.closed

    def attempt_ended(self) -> Any:
        if self.acked:
            return None
        if self.broken is not None:
            if isinstance(self.broken, SessionLost | ClosedChannelError | ProtocolError):
                raise fresh(self.broken)
            return None  # the receiver stopped: nothing more to deliver
        return self


class RemoteSink(_RemoteEnd):
    """A channel into a session: the sink behind a Sender whose receiver is remote."""

    __slots__ = ()

    def attempt_send(self, msg: Any) -> Any:
        if self.broken is not None:
            raise fresh(self.broken)
        core = self.core
        if self.acked or core.proto.state != protocol.OPEN_STATE:
            raise fresh(core.error or ClosedChannelError("send on a closed channel"))
        if core.proto.credit(self.chid) <= 0:
            return self
        core.proto.send_message(self.chid, core.encode(msg))
        core.flush_soon()
        return None


class RemoteByteSink(_RemoteEnd):
    """A stream into a session: where a ByteStream writes when its peer is remote."""

    __slots__ = ()

    def attempt_write(self, data: Any) -> Any:
        if self.broken is not None:
            raise fresh(self.broken)
        core = self.core
        if self.acked or core.proto.state != protocol.OPEN_STATE:
            raise fresh(core.error or ClosedChannelError("write on a closed stream"))
        credit = core.proto.credit(self.chid)
        if credit <= 0:
            return self
        n = min(len(data), credit, core.max_send)
        core.proto.send_data(self.chid, data[:n])  # packing copies it (the caller may reuse data)
        core.flush_soon()
        return n


class SessionCore:
    """Protocol state plus the channel ends attached to it, for one session."""

    def __init__(self, proto: protocol.Session, transport: Any, flavor: Any,
                 accepts: MsgQueue | None = None) -> None:
        self.proto = proto
        self.flavor = flavor  # the front end's classes: .Sender, .Receiver, .ByteStream
        self.transport = transport
        self.accepts = accepts  # where channels the peer OPENs go (listeners only)
        self.ins: dict[int, Any] = {}  # chid -> MsgQueue | ByteQueue we fill
        self.outs: dict[int, _RemoteEnd] = {}  # chid -> sink we send through
        self.state = Waitable()  # woken on handshake, close and failure
        self.error: BaseException | None = None
        self.closed = False  # the session is over (cleanly or not)
        self.clean_end = False  # ... ended on purpose by us or by the peer
        self.feeders: set = set()  # pumps relaying local queues into this session
        self.dirty = False  # the transport will flush it (set and cleared by the transport)
        self.last_flush = 0.0  # when the transport last sent this session's frames
        self.max_send = proto.settings.max_message
        self._found: list[tuple[Any, int]] = []  # ends met by the encoder in this message
        self._pack = codec.encoder(self._to_ref)
        self._decode = codec.decoder(self._from_ref)
        self._dropping: list | None = None  # ends decoded from a message being discarded

    # ---------------------------------------------------------------- transport side
    def flush_soon(self) -> None:
        """Records are queued: have the transport send them (now or batched)."""
        if not self.dirty:
            self.transport.flush_soon(self)

    def feed(self, frame: bytes) -> None:
        """One frame from the transport: process every event it carries."""
        proto = self.proto
        proto.receive_frame(frame)
        self._process()

    def violation(self, message: str) -> None:
        self.proto.violation(message)
        self._process()

    def tick(self) -> None:
        self.proto.tick()
        self._process()

    def _process(self) -> None:
        proto = self.proto
        while True:
            event = proto.next_event()
            if event is None:
                break
            try:
                self._dispatch(event)
            except ProtocolError as exc:
                if proto.state != protocol.CLOSED:
                    proto.abort(protocol.PROTOCOL_ERROR, str(exc))
                    self.fail(ProtocolError(str(exc)))
        if proto.has_data():
            self.flush_soon()

    def _dispatch(self, event: Any) -> None:
        cls = type(event)
        if cls is protocol.MessageReceived:
            q = self.ins.get(event.chid)
            if q is not None:
                payload = event.payload
                value = self._decode(payload)
                # (what it cost returns as credit once the consumer takes it)
                q.upstream.costs.append(len(payload) + protocol.MSG_COST)
                q.put_nowait(value)
            else:
                self._discard(event.payload)
        elif cls is protocol.DataReceived:
            q = self.ins.get(event.chid)
            if q is not None:
                q.put_nowait(event.data)
        elif cls is protocol.CreditGranted:
            sink = self.outs.get(event.chid)
            if sink is not None:
                sink._wake()
        elif cls is protocol.Ended:
            q = self.ins.pop(event.chid, None)
            if q is not None:
                q.end(event.error)
        elif cls is protocol.EndAcked:
            sink = self.outs.pop(event.chid, None)
            if sink is not None:
                sink.acked = True
                sink._wake()
        elif cls is protocol.Stopped:
            sink = self.outs.pop(event.chid, None)
            if sink is not None:
                sink.broken = RemoteError(*(event.error or RECEIVER_CLOSED))
                sink._wake()
        elif cls is protocol.ChannelOpened:
            if self.accepts is None:
                raise ProtocolError("the listening side may not open channels")
            q = self._inbound(MsgQueue(), event.chid,
                              self.proto.settings.window)
            self.accepts.put_nowait(self.flavor.Receiver(q))
        elif cls is protocol.Handshaken:
            peer = event.peer_settings
            self.max_send = min(self.proto.settings.max_message, peer.max_message)
            self.state._wake()
        elif cls is protocol.ByeReceived:
            self.fail(SessionLost("the peer closed the session"), clean=True)
        elif cls is protocol.ByeAcked:
            self.fail(ClosedChannelError("its session was closed"))
        elif cls is protocol.SessionFailed:
            self.fail(event.error, clean=event.code == protocol.SHUTDOWN)

    def _discard(self, payload: bytes) -> None:
        """A message nobody will receive: register the ends it carries, then close them,
        so the peer learns at once that they lead nowhere."""
        self._dropping = dropped = []
        try:
            self._decode(payload)
        finally:
            self._dropping = None
        for end in dropped:
            if isinstance(end, ReceiverBase):
                end.close()
            elif isinstance(end, SenderBase):
                end._begin_close(RemoteError(*RECEIVER_CLOSED))
            else:
                end._begin_close(None)

    def fail(self, error: BaseException, clean: bool = False) -> None:
        """The session is over: every end attached to it fails with ``error``.

        ``clean``: the peer ended it on purpose (BYE, or its listener/process shut down),
        so closing our side has nothing left to report.
        """
        if self.closed:
            return
        self.closed = True
        self.error = error
        self.clean_end = clean or isinstance(error, ClosedChannelError)
        ins, outs = self.ins, self.outs
        self.ins, self.outs = {}, {}
        for q in ins.values():
            q.fail(error)
        for sink in outs.values():
            sink.broken = error
            sink._wake()
        self.state._wake()
        self.transport.session_ended(self)

    # ---------------------------------------------------------------- references
    def _inbound(self, q: Any, chid: int, window: int) -> Any:
        q.upstream = InChan(self, chid, window, counted=isinstance(q, MsgQueue))
        self.ins[chid] = q
        return q

    def _from_ref(self, code: int, chid: int) -> Any:
        end = self._make_end(code, chid)
        if self._dropping is not None:
            self._dropping.append(end)
        return end

    def _make_end(self, code: int, chid: int) -> Any:
        proto, ours = self.proto, self.proto.settings
        if code == codec.EXT_SENDER:
            proto.register_peer_channel(chid, protocol.KIND_CHANNEL, we_send=True, we_recv=False)
            sink = RemoteSink(self, chid)
            self.outs[chid] = sink
            return self.flavor.Sender(sink)
        if code == codec.EXT_RECEIVER:
            proto.register_peer_channel(chid, protocol.KIND_CHANNEL, we_send=False, we_recv=True)
            return self.flavor.Receiver(self._inbound(MsgQueue(), chid, ours.window))
        proto.register_peer_channel(chid, protocol.KIND_STREAM, we_send=True, we_recv=True)
        keep_freed_memory()  # a stream's chunks would fault in their buffers anew
        sink = RemoteByteSink(self, chid)
        self.outs[chid] = sink
        rq = self._inbound(ByteQueue(ours.stream_window), chid, ours.stream_window)
        return self.flavor.ByteStream(rq, sink)

    def _to_ref(self, obj: Any) -> Any:
        """The encoder's hook: a channel end becomes a reference to a new channel id."""
        if isinstance(obj, SenderBase):
            code, kind, send, recv = codec.EXT_SENDER, protocol.KIND_CHANNEL, False, True
            if obj._sink is None:
                raise ClosedChannelError(obj._gone or "cannot send a closed Sender")
        elif isinstance(obj, ReceiverBase):
            code, kind, send, recv = codec.EXT_RECEIVER, protocol.KIND_CHANNEL, True, False
            if obj._q is None:
                raise ClosedChannelError(obj._gone or "cannot send a closed Receiver")
        elif isinstance(obj, ByteStreamBase):
            code, kind, send, recv = codec.EXT_STREAM, protocol.KIND_STREAM, True, True
            if obj._rq is None or obj._sink is None:
                raise ClosedChannelError("cannot send a stream end that is (half) closed")
            keep_freed_memory()  # a stream's chunks would fault in their buffers anew
        else:
            raise codec.unsupported(obj)
        found = self._found
        if any(o is obj for o, _ in found):
            raise ValueError(f"{obj!r} appears twice in one message")
        chid = self.proto.new_channel(kind, send, recv)
        found.append((obj, chid))
        return codec.ref(code, chid)

    def encode(self, msg: Any) -> bytes:
        """Serialise ``msg`` for the peer, attaching the ends it carries to this session.

        The ends are only taken over once the message is known to fit: a message that
        raises (too large, not serialisable) leaves every end as it was.
        """
        found = self._found
        try:
            payload = self._pack(msg)
            if len(payload) > self.max_send:
                raise MessageTooLarge(
                    f"message of {len(payload)} bytes exceeds the session's limit of "
                    f"{self.max_send} bytes (max_message); send big data through a ByteStream")
        except BaseException:
            for _, chid in found:
                self.proto.forget_channel(chid)
            found.clear()
            raise
        if found:
            # Copy first: attaching may start a relay that encodes into this session.
            ends = found[:]
            found.clear()
            for obj, chid in ends:
                self._attach(obj, chid)
        return payload

    def _attach(self, obj: Any, chid: int) -> None:
        ours = self.proto.settings
        if isinstance(obj, SenderBase):
            sink = obj._moved()
            if isinstance(sink, MsgQueue):
                # A pipe's Sender: the session becomes the producer of the pipe's queue.
                self._inbound(sink, chid, ours.window)
                if sink.closed:
                    sink.upstream.abandon(RECEIVER_CLOSED)
            else:
                # A Sender of another session: relay through a queue of our own.
                MsgPump(self._inbound(MsgQueue(), chid, ours.window), sink)
        elif isinstance(obj, ReceiverBase):
            sink = RemoteSink(self, chid)
            self.outs[chid] = sink
            MsgPump(obj._moved(), sink)
        else:
            rq, wsink = obj._moved()
            sink = RemoteByteSink(self, chid)
            self.outs[chid] = sink
            if isinstance(wsink, ByteQueue):
                self._inbound(wsink, chid, ours.stream_window)
            else:
                BytePump(self._inbound(ByteQueue(ours.stream_window), chid,
                                       ours.stream_window), wsink)
            BytePump(rq, sink)

    # ---------------------------------------------------------------- user side
    def attempt_drained(self) -> Any:
        """None once no relay holds messages for this session (close waits for that)."""
        if not self.closed:
            for pump in self.feeders:
                waiting = pump.backlog()
                if waiting is not None:
                    return waiting
        return None

    def open(self) -> Any:
        proto = self.proto
        if self.closed:
            raise fresh(self.error) if self.error else ClosedChannelError("session closed")
        chid = proto.new_channel(protocol.KIND_CHANNEL, True, False)
        proto.send_open(chid)
        sink = RemoteSink(self, chid)
        self.outs[chid] = sink
        self.flush_soon()
        return self.flavor.Sender(sink)
