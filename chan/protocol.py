"""The chan session protocol, sans-IO.

Everything that decides what goes on the wire and what a received frame means lives
here, and nothing else does: no sockets, no threads, no ``zmq``, no ``asyncio``.  The
caller feeds whole transport frames to :meth:`Session.receive_frame`, pulls events with
:meth:`Session.next_event`, queues records with the ``send_*`` methods and moves the bytes
returned by :meth:`Session.data_to_send`.  Time is an input (``clock``), so heartbeats
and timeouts are tested without sleeping.  ``docs/PROTOCOL.md`` is the prose version.

A frame is a concatenation of msgpack arrays ("records"), ``[op, ...]``.  Channel ids are
allocated by the side that creates the channel: odd ids by the connecting side, even
ids by the listening side, strictly increasing, never reused.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import msgpack

from .errors import ProtocolError, SessionLost

VERSION = 1

# Record opcodes (docs/PROTOCOL.md, "Records").
HELLO = 0  # [0, version, nonce, settings]            connecting side, first record
WELCOME = 1  # [1, version, nonce, settings]          listening side's answer
OPEN = 2  # [2, chid]                                 a new channel the peer will accept()
MSG = 3  # [3, chid, payload: bin]                    one message (msgpack, with ext refs)
DATA = 4  # [4, chid, bytes: bin]                     bytes on a stream
CREDIT = 5  # [5, chid, n]                            receiver lets the sender send n more
END = 6  # [6, chid, error: nil | [code, message]]    sender is done (clean or with error)
END_ACK = 7  # [7, chid]                              receiver has everything up to END
STOP = 8  # [8, chid, error]                          receiver went away; sends now fail
PING = 9  # [9]                                       heartbeat
BYE = 10  # [10]                                      graceful end of the session
BYE_ACK = 11  # [11]                                  everything before BYE was received
ABORT = 12  # [12, code, message]                     the session is over, with a reason

# Kinds of channel (and the ext type codes of their references, see codec.py).
KIND_CHANNEL = 0
KIND_STREAM = 1

# Abort codes.
UNKNOWN_SESSION = "UnknownSession"
PROTOCOL_ERROR = "ProtocolError"
SHUTDOWN = "Shutdown"


@dataclass(frozen=True)
class Settings:
    """What one side tells the other in its HELLO/WELCOME."""

    window: int = 4 << 20  # cost units (see MSG_COST) a channel may have in flight to us
    stream_window: int = 4 << 20  # bytes a stream may have in flight towards us
    max_message: int = 64 * 1024 * 1024  # largest MSG payload / DATA chunk we accept
    heartbeat_ms: int = 1000  # we send a PING when idle this long (or sooner, see tick)
    timeout_ms: int = 3000  # we declare the peer dead after this long without a frame
    max_channels: int = 65536  # live channels in a session (both sides' together)

    def to_wire(self) -> dict:
        """The settings as sent in HELLO/WELCOME."""
        return {
            "window": self.window,
            "stream_window": self.stream_window,
            "max_message": self.max_message,
            "heartbeat_ms": self.heartbeat_ms,
            "timeout_ms": self.timeout_ms,
        }


FRAME_OVERHEAD = 64  # bytes a record adds around its payload, at most
# A message costs its payload's length plus MSG_COST credit units: windows bound the
# bytes in flight, and the per-message term bounds how many tiny messages pile up.
MSG_COST = 64
BATCH_BYTES = 256 * 1024  # small records are batched into frames up to this size
BIG_RECORD = 16 * 1024  # records this large travel in a frame of their own


# ---------------------------------------------------------------------------- events
class _Event:
    """Base of the events: slotted values, equal when of one type with equal fields.

    Plain classes, not frozen dataclasses: one is made per message (a frozen
    dataclass's __init__ costs 2.5x as much), and defining a dozen dataclasses cost
    every process that imports chan's transport ~8 ms.  Treat them as immutable.
    """

    __slots__ = ()

    def _values(self) -> tuple:
        return tuple(getattr(self, f) for f in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, _Event) and type(other) is type(self)
                and other._values() == self._values())

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Handshaken(_Event):
    """The peer answered the handshake; ``peer_settings`` are its."""

    __slots__ = ("peer_settings", "peer_nonce")

    def __init__(self, peer_settings: Settings, peer_nonce: bytes) -> None:
        self.peer_settings, self.peer_nonce = peer_settings, peer_nonce


class ChannelOpened(_Event):
    """The peer opened channel ``chid`` (it sends, we receive): a listener's accept()."""

    __slots__ = ("chid",)

    def __init__(self, chid: int) -> None:
        self.chid = chid


class MessageReceived(_Event):
    """A message (still packed) arrived on ``chid``."""

    __slots__ = ("chid", "payload")

    def __init__(self, chid: int, payload: bytes) -> None:
        self.chid, self.payload = chid, payload


class DataReceived(_Event):
    """Stream bytes arrived on ``chid``."""

    __slots__ = ("chid", "data")

    def __init__(self, chid: int, data: bytes) -> None:
        self.chid, self.data = chid, data


class CreditGranted(_Event):
    """The peer lets us send ``n`` more cost units on ``chid``."""

    __slots__ = ("chid", "n")

    def __init__(self, chid: int, n: int) -> None:
        self.chid, self.n = chid, n


class Ended(_Event):
    """The peer finished sending on ``chid``; ``error`` is None or (code, message)."""

    __slots__ = ("chid", "error")

    def __init__(self, chid: int, error: tuple[str, str] | None) -> None:
        self.chid, self.error = chid, error


class EndAcked(_Event):
    """The peer has everything we sent on ``chid`` and our end of it."""

    __slots__ = ("chid",)

    def __init__(self, chid: int) -> None:
        self.chid = chid


class Stopped(_Event):
    """The peer stopped receiving on ``chid``: our further sends must fail."""

    __slots__ = ("chid", "error")

    def __init__(self, chid: int, error: tuple[str, str] | None) -> None:
        self.chid, self.error = chid, error


class ByeReceived(_Event):
    """The peer closed the session gracefully (we have acknowledged it)."""

    __slots__ = ()


class ByeAcked(_Event):
    """The peer received everything we sent before our BYE."""

    __slots__ = ()


class SessionFailed(_Event):
    """The session is over: ``error`` is a :class:`SessionLost` or :class:`ProtocolError`.

    ``code`` is the peer's ABORT code when the peer ended it (e.g. ``"Shutdown"``).
    """

    __slots__ = ("error", "code")

    def __init__(self, error: Exception, code: str | None = None) -> None:
        self.error, self.code = error, code


Event = (
    Handshaken | ChannelOpened | MessageReceived | DataReceived | CreditGranted | Ended
    | EndAcked | Stopped | ByeReceived | ByeAcked | SessionFailed
)


class _Chan:
    """What the protocol knows of one channel: direction, credits, end state."""

    __slots__ = ("kind", "we_send", "we_recv", "credit", "allowed", "ended_out",
                 "ended_in", "acked", "stop_sent", "stopped_out")

    def __init__(self, kind: int, we_send: bool, we_recv: bool, credit: int, allowed: int):
        self.kind = kind
        self.we_send = we_send
        self.we_recv = we_recv
        self.credit = credit  # how much we may still send
        self.allowed = allowed  # how much the peer may still send us
        self.ended_out = False  # we sent END
        self.ended_in = False  # peer sent END
        self.acked = False  # peer acknowledged our END
        self.stop_sent = False  # we told the peer to stop sending (we no longer receive)
        self.stopped_out = False  # the peer told us to stop sending


# States of a session.
HANDSHAKE, OPEN_STATE, CLOSING, CLOSED = "handshake", "open", "closing", "closed"

_pack = msgpack.Packer(use_bin_type=True).pack


class Session:
    """One side of one session: frames in, events out, records queued for sending.

    ``client`` says which side this is (the connecting side sends HELLO and allocates
    odd channel ids).  Methods that queue records never block and never raise for flow
    control: the front ends check :meth:`credit` first.  A protocol violation by the peer
    ends the session: :class:`SessionFailed` is the last event, and an ABORT is queued.
    """

    def __init__(self, client: bool, settings: Settings | None = None,
                 clock: Callable[[], float] = time.monotonic, nonce: bytes | None = None):
        self.client = client
        self.settings = settings or Settings()
        self.peer: Settings | None = None
        self.nonce = nonce or os.urandom(8)
        self.peer_nonce: bytes | None = None
        self.state = HANDSHAKE
        self.error: Exception | None = None
        self._clock = clock
        self._channels: dict[int, _Chan] = {}
        self._next_id = 1 if client else 2
        self._peer_high = 0  # highest id the peer has created
        self._events: deque = deque()
        self._inbox: deque[bytes] = deque()  # frames received, not yet parsed
        self._unpacker: msgpack.Unpacker | None = None  # the frame being parsed
        self._frame_len = self._frame_pos = 0
        self._frames: list[bytearray] = []
        self.urgent = False  # queued records that a peer may be waiting for (credit)
        self._batch_limit = BATCH_BYTES
        self._max_frame = self.settings.max_message + FRAME_OVERHEAD
        now = clock()
        self._last_sent = now
        self._last_recv = now
        if client:
            self._queue([HELLO, VERSION, self.nonce, self.settings.to_wire()])

    # ------------------------------------------------------------------ outgoing
    def _queue(self, record: list) -> None:
        data = _pack(record)
        frames = self._frames
        if len(data) >= BIG_RECORD:
            frames.append(data)  # a frame of its own: copying it into a batch costs more
        elif frames and type(frames[-1]) is bytearray \
                and len(frames[-1]) + len(data) <= self._batch_limit:
            frames[-1] += data
        else:
            frames.append(bytearray(data))

    def data_to_send(self) -> list[bytes | bytearray]:
        """Frames to hand to the transport, in order; each is one transport message."""
        frames = self._frames
        if frames:
            self._frames = []
            self._last_sent = self._clock()
            self.urgent = False
        return frames

    def has_data(self) -> bool:
        return bool(self._frames)

    def frames_ready(self) -> bool:
        """True when a whole frame is waiting (more than one queued, or a big one)."""
        frames = self._frames
        return len(frames) > 1 or (bool(frames) and type(frames[0]) is bytes)

    def new_channel(self, kind: int, we_send: bool, we_recv: bool) -> int:
        """Allocate an id for a channel we create (for OPEN or a reference in a message)."""
        self._require_open()
        chid = self._next_id
        self._next_id += 2
        self._channels[chid] = self._make(kind, we_send, we_recv)
        return chid

    def _make(self, kind: int, we_send: bool, we_recv: bool) -> _Chan:
        peer, ours = self.peer, self.settings
        assert peer is not None
        if kind == KIND_STREAM:
            return _Chan(kind, we_send, we_recv, peer.stream_window, ours.stream_window)
        return _Chan(kind, we_send, we_recv, peer.window if we_send else 0,
                     ours.window if we_recv else 0)

    def forget_channel(self, chid: int) -> None:
        """Drop a channel we created that the peer never heard of (its message failed)."""
        self._channels.pop(chid, None)

    def send_open(self, chid: int) -> None:
        self._queue([OPEN, chid])

    def credit(self, chid: int) -> int:
        ch = self._channels.get(chid)
        return ch.credit if ch is not None else 0

    def send_message(self, chid: int, payload: bytes) -> None:
        ch = self._channels[chid]
        assert ch.we_send and ch.credit > 0 and not ch.ended_out
        # Any positive credit admits one whole message, so a message larger than the
        # window still goes through (the credit goes negative until the peer catches up).
        ch.credit -= len(payload) + MSG_COST
        self._queue([MSG, chid, payload])

    def send_data(self, chid: int, data: bytes) -> None:
        ch = self._channels[chid]
        assert ch.we_send and len(data) <= ch.credit and not ch.ended_out
        ch.credit -= len(data)
        self._queue([DATA, chid, data])

    def grant(self, chid: int, n: int) -> None:
        """Let the peer send ``n`` more messages (or bytes) on ``chid``."""
        ch = self._channels.get(chid)
        if ch is None or ch.ended_in or self.state != OPEN_STATE:
            return
        ch.allowed += n
        self._queue([CREDIT, chid, n])
        self.urgent = True  # the sender may be stalled on this credit

    def send_end(self, chid: int, error: tuple[str, str] | None = None) -> None:
        """We are done sending on ``chid``; the peer answers with END_ACK."""
        ch = self._channels.get(chid)
        if ch is None or ch.ended_out:
            return
        ch.ended_out = True
        if self.state == OPEN_STATE:
            self._queue([END, chid, list(error) if error else None])
        self._maybe_forget(chid, ch)

    def send_stop(self, chid: int, error: tuple[str, str] | None = None) -> None:
        """We will not receive on ``chid`` any more; the peer's sends will fail."""
        ch = self._channels.get(chid)
        if ch is None or ch.stop_sent or ch.ended_in:
            return
        ch.stop_sent = True
        ch.ended_in = True
        if self.state == OPEN_STATE:
            self._queue([STOP, chid, list(error) if error else None])
        self._maybe_forget(chid, ch)

    def _maybe_forget(self, chid: int, ch: _Chan) -> None:
        # A channel is forgotten once neither direction can carry anything more.  Late
        # frames for a forgotten id (<= the high-water mark) are dropped silently.
        out_done = not ch.we_send or (ch.ended_out and ch.acked) or ch.stopped_out
        in_done = not ch.we_recv or ch.ended_in
        if out_done and in_done:
            del self._channels[chid]

    def send_bye(self) -> None:
        if self.state == OPEN_STATE:
            self._queue([BYE])
            self.state = CLOSING

    def abort(self, code: str, message: str) -> None:
        """End the session now, telling the peer why (no more events after this)."""
        if self.state != CLOSED:
            self._queue([ABORT, code, message])
            self._close(SessionLost(f"session aborted locally: {message}"))

    def close_now(self, error: Exception) -> None:
        """Forget the session without telling the peer (transport gone, or timeout)."""
        if self.state != CLOSED:
            self._close(error)
            self._events.append(SessionFailed(error))

    def _close(self, error: Exception) -> None:
        self.state = CLOSED
        self.error = error
        self._channels.clear()
        self._unpacker = None  # nothing after the end of a session is read
        self._inbox.clear()

    def _require_open(self) -> None:
        if self.state != OPEN_STATE:
            raise self.error or SessionLost(f"session is {self.state}")

    # ------------------------------------------------------------------ timers
    def _ping_interval(self) -> float:
        # Often enough for our own habit and for the peer's patience (a third of its
        # timeout, so two PINGs may be late before it gives up on us).
        ms = self.settings.heartbeat_ms
        if self.peer is not None:
            ms = min(ms, self.peer.timeout_ms // 3)
        return ms / 1000

    def tick(self) -> None:
        """Queue a PING when idle; fail the session when the peer has been silent too long."""
        if self.state == CLOSED:
            return
        now = self._clock()
        silent = now - self._last_recv
        if silent >= self.settings.timeout_ms / 1000:
            self.close_now(SessionLost(
                f"peer silent for {silent:.1f} s (timeout {self.settings.timeout_ms} ms): "
                "it died, restarted or the network is down"))
            return
        if self.state != HANDSHAKE and not self._frames and \
                now - self._last_sent >= self._ping_interval():
            self._queue([PING])

    # ------------------------------------------------------------------ incoming
    def receive_frame(self, frame: bytes) -> None:
        """Take one transport frame; its events come out of :meth:`next_event`."""
        if self.state == CLOSED:
            return
        self._last_recv = self._clock()
        self._inbox.append(frame)

    def next_event(self) -> Event | None:
        """The next event, or None when everything received so far is processed."""
        while True:
            if self._events:
                return self._events.popleft()
            unpacker = self._unpacker
            if unpacker is None:
                if not self._inbox or self.state == CLOSED:
                    return None
                frame = self._inbox.popleft()
                if len(frame) > self._max_frame:
                    self.violation(f"frame of {len(frame)} bytes exceeds the limit of "
                                   f"{self._max_frame} bytes (max_message "
                                   f"{self.settings.max_message})")
                    continue
                if len(frame) >= BIG_RECORD and frame[1] == DATA and frame[0] == 0x93 \
                        and self.state == OPEN_STATE:
                    lone = _lone_data(frame)
                    if lone is not None:  # a big DATA record alone in its frame: slice it
                        try:
                            self._handle([DATA, lone[0], lone[1]])
                        except ProtocolError:
                            pass  # already reported by violation()
                        except (TypeError, ValueError, KeyError) as exc:
                            self.violation(f"malformed DATA record: {exc}")
                        continue
                unpacker = self._unpacker = msgpack.Unpacker(
                    raw=False, max_buffer_size=max(len(frame), 1), strict_map_key=False)
                unpacker.feed(frame)
                self._frame_len, self._frame_pos = len(frame), 0
            try:
                record = next(unpacker)
            except StopIteration:
                self._unpacker = None
                # tell() is not reliable after a partial object: compare with the end of
                # the last whole record instead.
                if self._frame_pos != self._frame_len:
                    self.violation(f"truncated record at byte {self._frame_pos} of a "
                                   f"{self._frame_len}-byte frame")
                continue
            except (ValueError, TypeError, msgpack.UnpackException) as exc:
                # msgpack reports garbage as FormatError/StackError (ValueError
                # subclasses), ExtraData, or TypeError for unhashable map keys.
                self.violation(f"malformed frame: {type(exc).__name__}: {exc}")
                continue
            self._frame_pos = unpacker.tell()
            # Fast path for the commonest record: a valid MSG on an open channel.  Anything
            # unusual falls through to _handle, which checks everything and says what.
            if type(record) is list and len(record) == 3 and type(record[0]) is int \
                    and record[0] == MSG and self.state == OPEN_STATE:
                chid, payload = record[1], record[2]
                ch = self._channels.get(chid) if type(chid) is int else None
                if ch is not None and ch.we_recv and ch.kind == KIND_CHANNEL \
                        and not ch.ended_in and ch.allowed > 0 and type(payload) is bytes \
                        and len(payload) <= self.settings.max_message:
                    ch.allowed -= len(payload) + MSG_COST
                    return MessageReceived(chid, payload)
            try:
                self._handle(record)
            except ProtocolError:
                continue  # already reported by violation()
            except (TypeError, ValueError, IndexError, KeyError) as exc:
                self.violation(f"malformed record {record!r:.80}: {exc}")

    def violation(self, message: str) -> None:
        """The peer broke the protocol: queue an ABORT and end the session."""
        self._unpacker = None
        self._inbox.clear()
        if self.state != CLOSED:
            self._queue([ABORT, PROTOCOL_ERROR, message])
            error = ProtocolError(message)
            self._close(error)
            self._events.append(SessionFailed(error))

    def _handle(self, record) -> None:
        if not isinstance(record, list) or not record or type(record[0]) is not int:
            raise ValueError("a record is an array starting with an opcode")
        op = record[0]
        if self.state == HANDSHAKE:
            return self._handshake(op, record)
        if op == MSG:
            chid, payload = record[1], record[2]
            if type(payload) is not bytes:
                raise TypeError("MSG payload must be bin")
            if len(payload) > self.settings.max_message:
                self.violation(f"message of {len(payload)} bytes exceeds max_message "
                               f"{self.settings.max_message}")
                return
            ch = self._known(chid)
            if ch is None or ch.stop_sent:
                # Not delivered (we stopped receiving), yet it may carry references:
                # the runtime must still register them (and close them), or the peer's
                # use of those ids would look like a protocol violation.
                self._events.append(MessageReceived(chid, payload))
                return
            ch = self._receiving(chid, KIND_CHANNEL)
            if ch.allowed <= 0:
                self.violation(f"peer sent on channel {chid} without credit")
                return
            ch.allowed -= len(payload) + MSG_COST
            self._events.append(MessageReceived(chid, payload))
        elif op == DATA:
            chid, data = record[1], record[2]
            ch = self._receiving(chid, KIND_STREAM)
            if ch is None:
                return
            if type(data) is not bytes and type(data) is not memoryview:  # (a view: see _lone_data)
                raise TypeError("DATA must be bin")
            if len(data) > ch.allowed:
                self.violation(f"peer overran the window of stream {chid}")
                return
            ch.allowed -= len(data)
            self._events.append(DataReceived(chid, data))
        elif op == CREDIT:
            chid, n = record[1], record[2]
            if type(n) is not int or n <= 0:
                raise ValueError("CREDIT needs a positive count")
            ch = self._known(chid)
            if ch is not None and not ch.we_send:
                raise ValueError(f"CREDIT for channel {chid}, on which we do not send")
            if ch is None or ch.ended_out or ch.stopped_out:
                return
            ch.credit += n
            self._events.append(CreditGranted(chid, n))
        elif op == END:
            chid, err = record[1], _error(record[2])
            ch = self._receiving(chid, None)
            if ch is None:
                return
            ch.ended_in = True
            self._queue([END_ACK, chid])
            self._events.append(Ended(chid, err))
            self._maybe_forget(chid, ch)
        elif op == END_ACK:
            chid = record[1]
            ch = self._known(chid)
            if ch is None:
                return
            if not ch.ended_out:
                raise ValueError(f"END_ACK for channel {chid}, which we did not end")
            ch.acked = True
            self._events.append(EndAcked(chid))
            self._maybe_forget(chid, ch)
        elif op == STOP:
            chid, err = record[1], _error(record[2])
            ch = self._known(chid)
            if ch is None:
                return
            if not ch.we_send:
                raise ValueError(f"STOP for channel {chid}, on which we do not send")
            ch.stopped_out = True
            self._events.append(Stopped(chid, err))
            self._maybe_forget(chid, ch)
        elif op == OPEN:
            chid = record[1]
            self.register_peer_channel(chid, KIND_CHANNEL, we_send=False, we_recv=True)
            if self.state == OPEN_STATE or self.state == CLOSING:
                self._events.append(ChannelOpened(chid))
        elif op == PING:
            pass
        elif op == BYE:
            self._queue([BYE_ACK])
            self._close(SessionLost("the peer closed the session"))
            self._events.append(ByeReceived())
        elif op == BYE_ACK:
            if self.state != CLOSING:
                raise ValueError("BYE_ACK without BYE")
            self._close(SessionLost("session closed"))
            self._events.append(ByeAcked())
        elif op == ABORT:
            code, message = str(record[1]), str(record[2])
            if code == PROTOCOL_ERROR:
                error: Exception = ProtocolError(f"the peer ended the session: {message}")
            else:
                error = SessionLost(f"the peer ended the session ({code}): {message}")
            self._close(error)
            self._events.append(SessionFailed(error, code))
        elif op in (HELLO, WELCOME):
            raise ValueError("handshake record after the handshake")
        else:
            raise ValueError(f"unknown opcode {op}")

    def _handshake(self, op: int, record: list) -> None:
        expected = WELCOME if self.client else HELLO
        if op == ABORT:
            self.state = OPEN_STATE  # let the ABORT branch report it
            return self._handle(record)
        if op != expected:
            if not self.client:
                # A frame of a session this side never saw: typically a client whose
                # listener restarted.  Tell it, so it fails at once instead of timing out.
                self._queue([ABORT, UNKNOWN_SESSION,
                             "no such session here (did the listener restart?)"])
                error = ProtocolError("first frame was not HELLO")
                self._close(error)
                self._events.append(SessionFailed(error))
                return
            raise ValueError(f"expected the handshake, got opcode {op}")
        version, nonce, settings = record[1], record[2], record[3]
        if version != VERSION:
            self.violation(f"protocol version {version!r} is not supported (we speak {VERSION})")
            return
        if type(nonce) is not bytes or not isinstance(settings, dict):
            raise TypeError("bad handshake fields")
        peer = Settings(
            window=_positive(settings, "window"),
            stream_window=_positive(settings, "stream_window"),
            max_message=_positive(settings, "max_message"),
            heartbeat_ms=_positive(settings, "heartbeat_ms"),
            timeout_ms=_positive(settings, "timeout_ms", 3 * settings.get("heartbeat_ms", 1000)),
        )
        self.peer = peer
        self.peer_nonce = nonce
        self.state = OPEN_STATE
        # Batches never exceed what the peer accepts as one frame.
        self._batch_limit = min(BATCH_BYTES, peer.max_message + FRAME_OVERHEAD)
        if not self.client:
            self._queue([WELCOME, VERSION, self.nonce, self.settings.to_wire()])
        self._events.append(Handshaken(peer, nonce))

    def register_peer_channel(self, chid, kind: int, we_send: bool, we_recv: bool) -> None:
        """Record a channel the peer created (by OPEN, or by a reference in a message)."""
        if type(chid) is not int or chid <= self._peer_high or (chid & 1) == (self._next_id & 1):
            self.violation(f"peer used an invalid new channel id {chid!r}")
            raise ProtocolError(f"invalid channel id {chid!r}")
        if len(self._channels) >= self.settings.max_channels:
            self.violation(f"peer opened more than {self.settings.max_channels} channels")
            raise ProtocolError("too many channels")
        self._peer_high = chid
        self._channels[chid] = self._make(kind, we_send, we_recv)

    def _known(self, chid) -> _Chan | None:
        """The channel ``chid``, None if it was forgotten; unknown ids are violations."""
        if type(chid) is not int or chid <= 0:  # (1.0 and True would find channel 1)
            raise ValueError(f"bad channel id {chid!r}")
        ch = self._channels.get(chid)
        if ch is not None:
            return ch
        ours = (chid & 1) == (self._next_id & 1)
        if (ours and chid >= self._next_id) or (not ours and chid > self._peer_high):
            raise ValueError(f"unknown channel id {chid}")
        return None  # a channel that existed and is closed: late frames are dropped

    def _receiving(self, chid, kind: int | None) -> _Chan | None:
        ch = self._known(chid)
        if ch is None:
            return None
        if not ch.we_recv or (kind is not None and ch.kind != kind):
            raise ValueError(f"channel {chid} does not carry that towards us")
        if ch.ended_in:
            if ch.stop_sent:
                return None  # we stopped receiving; the peer has not heard yet
            raise ValueError(f"frame on channel {chid} after its END")
        return ch


_UINT = {0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8}  # msgpack uint8..uint64 markers: sizes
_BIN = {0xc4: 1, 0xc5: 2, 0xc6: 4}  # msgpack bin8..bin32 markers: length sizes


def _lone_data(frame: bytes | memoryview) -> tuple[int, bytes | memoryview] | None:
    """``(chid, data)`` when ``frame`` is exactly one ``[DATA, chid, bin]`` record.

    Big stream chunks travel one per frame.  The payload is a slice of the frame: of a
    received frame's memoryview, a view, so no copy is made until the stream is read;
    the general parser would copy it into its buffer and out again.
    """
    pos = 2
    marker = frame[pos]
    if marker <= 0x7F:
        chid, pos = marker, pos + 1
    elif marker in _UINT:
        size = _UINT[marker]
        chid, pos = int.from_bytes(frame[pos + 1:pos + 1 + size], "big"), pos + 1 + size
    else:
        return None
    size = _BIN.get(frame[pos])
    if size is None:
        return None
    n = int.from_bytes(frame[pos + 1:pos + 1 + size], "big")
    pos += 1 + size
    if pos + n != len(frame):
        return None  # not alone, or truncated: the general parser says what is wrong
    return chid, frame[pos:]


def _positive(settings: dict, key: str, default: object = None) -> int:
    value = settings.get(key, default)
    if type(value) is not int or value <= 0:
        raise ValueError(f"handshake setting {key} must be a positive integer")
    return value


def _error(value) -> tuple[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError("an error is [code, message]")
    return str(value[0]), str(value[1])
