"""The sans-IO session protocol, driven client <-> server with no sockets (h11 style).

Every test moves the frames of one ``protocol.Session`` (``data_to_send()``) into the
other (``receive_frame()``) and looks at the events that come out (``next_event()``).
Time is a fake clock.  docs/PROTOCOL.md is the prose these tests hold the code to.
The last sections drive the runtime on top (chan._session over a fake transport, and
chan.connect/listen over inproc://) where the protocol leaves a duty to it.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import msgpack
import pytest

from chan import codec
from chan import protocol as P
from chan.errors import ProtocolError, SessionLost

PAYLOAD = msgpack.packb("0123456789")  # an 11-byte message
COST = len(PAYLOAD) + P.MSG_COST  # the credit one such message uses


# ------------------------------------------------------------------------ harness
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def drain(session: P.Session) -> list:
    events = []
    while (event := session.next_event()) is not None:
        events.append(event)
    return events


def records_of(frames: list) -> list[list]:
    """Decode frames the way a peer does (each frame: concatenated msgpack records)."""
    out = []
    for frame in frames:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        unpacker.feed(bytes(frame))
        out.extend(unpacker)
    return out


def frame(*records: Any) -> bytes:
    return b"".join(msgpack.packb(r, use_bin_type=True) for r in records)


def feed(session: P.Session, data: bytes) -> list:
    session.receive_frame(data)
    return drain(session)


def kinds(events: list) -> list[str]:
    return [type(e).__name__ for e in events]


_REF_DIRECTION = {
    # ext code -> (kind, the receiver of the message sends?, ... receives?)
    codec.EXT_SENDER: (P.KIND_CHANNEL, True, False),
    codec.EXT_RECEIVER: (P.KIND_CHANNEL, False, True),
    codec.EXT_STREAM: (P.KIND_STREAM, True, True),
}


def register_refs(session: P.Session, events: list, found: list | None = None) -> list:
    """What a front end does with MessageReceived: decode, registering the ids found.

    A ProtocolError from decoding ends the session, as in chan._session.  ``found``
    collects ``(ext code, chid)`` of every reference met.
    """
    values = []

    def from_ref(code: int, chid: int) -> tuple:
        kind, send, recv = _REF_DIRECTION[code]
        session.register_peer_channel(chid, kind, we_send=send, we_recv=recv)
        if found is not None:
            found.append((code, chid))
        return ("ref", code, chid)

    for event in events:
        if type(event) is P.MessageReceived:
            try:
                values.append(codec.decode(event.payload, from_ref))
            except ProtocolError as exc:
                session.violation(str(exc))
    return values


class Pair:
    """A client and a server session that share a fake clock."""

    def __init__(self, client: P.Settings | None = None, server: P.Settings | None = None,
                 handshake: bool = True) -> None:
        self.clock = Clock()
        self.client = P.Session(client=True, settings=client, clock=self.clock,
                                nonce=b"C" * 8)
        self.server = P.Session(client=False, settings=server, clock=self.clock,
                                nonce=b"S" * 8)
        if handshake:
            assert kinds(self.to_server()) == ["Handshaken"]
            assert kinds(self.to_client()) == ["Handshaken"]

    @staticmethod
    def move(src: P.Session, dst: P.Session) -> list:
        events = []
        for f in src.data_to_send():
            dst.receive_frame(bytes(f))
            events.extend(drain(dst))
        return events

    def to_server(self) -> list:
        return self.move(self.client, self.server)

    def to_client(self) -> list:
        return self.move(self.server, self.client)

    def open(self) -> int:
        chid = self.client.new_channel(P.KIND_CHANNEL, we_send=True, we_recv=False)
        self.client.send_open(chid)
        events = self.to_server()
        assert events == [P.ChannelOpened(chid)] and kinds(events) == ["ChannelOpened"]
        return chid


def assert_violation(session: P.Session, events: list, match: str = "") -> ProtocolError:
    """The session ended with ProtocolError and queued an ABORT telling the peer why."""
    assert events, "expected SessionFailed"
    last = events[-1]
    assert type(last) is P.SessionFailed, events
    assert type(last.error) is ProtocolError, last.error
    assert match in str(last.error)
    assert session.state == P.CLOSED
    abort = records_of(session.data_to_send())[-1]
    assert abort[:2] == [P.ABORT, P.PROTOCOL_ERROR], abort
    assert isinstance(abort[2], str)
    return last.error


def assert_quiet(session: P.Session, events: list) -> None:
    assert events == []
    assert session.state == P.OPEN_STATE


# ------------------------------------------------------------------------ handshake
def test_client_starts_with_hello() -> None:
    settings = P.Settings(window=100, stream_window=200, max_message=300, heartbeat_ms=400)
    client = P.Session(client=True, settings=settings, clock=Clock(), nonce=b"N" * 8)
    assert client.state == P.HANDSHAKE
    frames = client.data_to_send()
    assert len(frames) == 1
    assert records_of(frames) == [[P.HELLO, P.VERSION, b"N" * 8, {
        "window": 100, "stream_window": 200, "max_message": 300, "heartbeat_ms": 400,
        "timeout_ms": 3000}]]
    # In this order (the test vectors of docs/PROTOCOL.md pin the bytes).
    assert list(records_of(frames)[0][3]) == ["window", "stream_window", "max_message",
                                              "heartbeat_ms", "timeout_ms"]


def test_server_says_nothing_first() -> None:
    server = P.Session(client=False, clock=Clock())
    assert server.data_to_send() == []
    server.tick()
    assert server.data_to_send() == []


def test_handshake() -> None:
    cs = P.Settings(window=1000, heartbeat_ms=500)
    ss = P.Settings(window=2000, max_message=5000)
    pair = Pair(cs, ss, handshake=False)
    events = pair.to_server()
    assert kinds(events) == ["Handshaken"]
    assert events[0].peer_nonce == b"C" * 8
    # The five wire settings travel; max_channels stays local.
    assert events[0].peer_settings == P.Settings(window=1000, heartbeat_ms=500)
    assert pair.server.peer == P.Settings(window=1000, heartbeat_ms=500)
    assert pair.server.state == P.OPEN_STATE
    welcome = records_of(pair.server.data_to_send())
    assert welcome == [[P.WELCOME, P.VERSION, b"S" * 8, ss.to_wire()]]
    pair.client.receive_frame(frame(*welcome))
    events = drain(pair.client)
    assert kinds(events) == ["Handshaken"]
    assert events[0].peer_settings == P.Settings(window=2000, max_message=5000)
    assert events[0].peer_nonce == b"S" * 8
    assert pair.client.state == P.OPEN_STATE
    assert pair.client.peer_nonce == b"S" * 8 and pair.server.peer_nonce == b"C" * 8


def test_nothing_can_be_opened_before_the_handshake() -> None:
    pair = Pair(handshake=False)
    with pytest.raises(SessionLost):
        pair.client.new_channel(P.KIND_CHANNEL, True, False)


def test_unknown_settings_are_ignored() -> None:
    server = P.Session(client=False, clock=Clock())
    wire = dict(P.Settings().to_wire(), compression="zstd")
    events = feed(server, frame([P.HELLO, P.VERSION, b"n" * 8, wire]))
    assert kinds(events) == ["Handshaken"]


def test_version_mismatch_is_a_protocol_error() -> None:
    server = P.Session(client=False, clock=Clock())
    events = feed(server, frame([P.HELLO, 2, b"n" * 8, P.Settings().to_wire()]))
    assert_violation(server, events, "version")


@pytest.mark.parametrize("settings", [
    {"stream_window": 1, "max_message": 1, "heartbeat_ms": 1},  # window missing
    {"window": 0, "stream_window": 1, "max_message": 1, "heartbeat_ms": 1},
    {"window": -5, "stream_window": 1, "max_message": 1, "heartbeat_ms": 1},
    {"window": "1", "stream_window": 1, "max_message": 1, "heartbeat_ms": 1},
    {"window": 1.0, "stream_window": 1, "max_message": 1, "heartbeat_ms": 1},
    {"window": True, "stream_window": 1, "max_message": 1, "heartbeat_ms": 1},
    [1, 2, 3, 4],
], ids=["missing", "zero", "negative", "str", "float", "bool", "not-a-map"])
def test_bad_settings_are_a_protocol_error(settings: Any) -> None:
    server = P.Session(client=False, clock=Clock())
    assert_violation(server, feed(server, frame([P.HELLO, P.VERSION, b"n" * 8, settings])))


def test_nonce_must_be_bin() -> None:
    server = P.Session(client=False, clock=Clock())
    events = feed(server, frame([P.HELLO, P.VERSION, "nonce", P.Settings().to_wire()]))
    assert_violation(server, events)


def test_client_rejects_hello_as_answer() -> None:
    pair = Pair(handshake=False)
    pair.client.data_to_send()
    events = feed(pair.client, frame([P.HELLO, P.VERSION, b"x" * 8, P.Settings().to_wire()]))
    assert_violation(pair.client, events)


def test_handshake_record_after_the_handshake_is_a_violation() -> None:
    pair = Pair()
    events = feed(pair.server, frame([P.HELLO, P.VERSION, b"x" * 8, P.Settings().to_wire()]))
    assert_violation(pair.server, events, "handshake")


def test_first_frame_not_hello_gets_unknown_session() -> None:
    # A client whose listener restarted keeps sending on its old session: the new
    # listener answers ABORT UnknownSession so that the client fails at once.
    server = P.Session(client=False, clock=Clock())
    events = feed(server, frame([P.MSG, 1, PAYLOAD]))
    assert kinds(events) == ["SessionFailed"]
    assert type(events[0].error) is ProtocolError
    assert server.state == P.CLOSED
    abort = records_of(server.data_to_send())
    assert len(abort) == 1 and abort[0][:2] == [P.ABORT, P.UNKNOWN_SESSION]
    # ... and the client sees SessionLost naming the code.
    pair = Pair(handshake=False)
    pair.client.data_to_send()
    events = feed(pair.client, frame(*abort))
    assert kinds(events) == ["SessionFailed"]
    assert type(events[0].error) is SessionLost
    assert P.UNKNOWN_SESSION in str(events[0].error)


def test_garbage_before_hello_is_a_protocol_error_not_unknown_session() -> None:
    server = P.Session(client=False, clock=Clock())
    assert_violation(server, feed(server, b"\xc1"))


# ------------------------------------------------------------------------ channel ids
def test_ids_have_parity_and_increase() -> None:
    pair = Pair()
    assert [pair.client.new_channel(P.KIND_CHANNEL, True, False) for _ in range(3)] == [1, 3, 5]
    assert [pair.server.new_channel(P.KIND_CHANNEL, True, False) for _ in range(3)] == [2, 4, 6]


def test_ids_are_never_reused() -> None:
    pair = Pair()
    chid = pair.open()
    pair.client.send_end(chid)
    pair.to_server()
    pair.to_client()
    assert pair.client.new_channel(P.KIND_CHANNEL, True, False) == chid + 2


@pytest.mark.parametrize("chid", [2, 0, -1, "1", None, 1.5], ids=repr)
def test_open_with_an_id_of_the_wrong_parity_or_type_is_a_violation(chid: Any) -> None:
    pair = Pair()
    assert_violation(pair.server, feed(pair.server, frame([P.OPEN, chid])), "channel id")


def test_open_must_use_increasing_ids() -> None:
    pair = Pair()
    assert kinds(feed(pair.server, frame([P.OPEN, 5]))) == ["ChannelOpened"]
    # Skipping ids is allowed (ids of failed references are never used) ...
    assert kinds(feed(pair.server, frame([P.OPEN, 9]))) == ["ChannelOpened"]
    # ... going back is not, not even to an id that was skipped.
    assert_violation(pair.server, feed(pair.server, frame([P.OPEN, 7])), "channel id")


def test_reusing_an_id_is_a_violation() -> None:
    pair = Pair()
    chid = pair.open()
    assert_violation(pair.server, feed(pair.server, frame([P.OPEN, chid])), "channel id")


def test_too_many_channels() -> None:
    pair = Pair(server=P.Settings(max_channels=2))
    one, three = pair.open(), pair.open()
    chid = pair.client.new_channel(P.KIND_CHANNEL, True, False)
    pair.client.send_open(chid)
    assert_violation(pair.server, pair.to_server(), "channels")
    assert (one, three, chid) == (1, 3, 5)


def test_max_channels_counts_live_channels_only() -> None:
    pair = Pair(server=P.Settings(max_channels=2))
    one, _ = pair.open(), pair.open()
    pair.client.send_end(one)
    assert kinds(pair.to_server()) == ["Ended"]  # channel 1 is forgotten: room for one more
    pair.open()
    assert pair.server.state == P.OPEN_STATE


def test_references_create_channels_with_the_writers_parity() -> None:
    pair = Pair()
    chid = pair.open()
    reply = pair.client.new_channel(P.KIND_CHANNEL, we_send=False, we_recv=True)
    payload = codec.encode({"ret": codec.ref(codec.EXT_SENDER, reply)}, None)
    pair.client.send_message(chid, payload)
    events = pair.to_server()
    assert register_refs(pair.server, events) == [{"ret": ("ref", codec.EXT_SENDER, reply)}]
    # The server sends on the id it was given; the client receives.
    pair.server.send_message(reply, PAYLOAD)
    events = pair.to_client()
    assert events == [P.MessageReceived(reply, PAYLOAD)]
    assert kinds(events) == ["MessageReceived"]


def test_reference_with_the_wrong_parity_is_a_violation() -> None:
    pair = Pair()
    chid = pair.open()
    # The client writes a reference to an even (server-allocated) id it never got.
    pair.client.send_message(chid, codec.encode([codec.ref(codec.EXT_RECEIVER, 2)], None))
    events = pair.to_server()
    register_refs(pair.server, events)
    assert_violation(pair.server, events + drain(pair.server), "channel id")


def test_unknown_ext_type_in_a_message_is_a_violation() -> None:
    pair = Pair()
    chid = pair.open()
    pair.client.send_message(chid, codec.encode([msgpack.ExtType(9, bytes(8))], None))
    events = pair.to_server()
    register_refs(pair.server, events)
    assert_violation(pair.server, events + drain(pair.server), "ext type 9")


# ------------------------------------------------------------------------ messages, credit
def test_open_and_message_travel_in_one_frame() -> None:
    pair = Pair()
    chid = pair.client.new_channel(P.KIND_CHANNEL, True, False)
    pair.client.send_open(chid)
    pair.client.send_message(chid, PAYLOAD)
    frames = pair.client.data_to_send()
    assert len(frames) == 1
    assert records_of(frames) == [[P.OPEN, chid], [P.MSG, chid, PAYLOAD]]
    events = feed(pair.server, bytes(frames[0]))
    assert kinds(events) == ["ChannelOpened", "MessageReceived"]
    assert events[1] == P.MessageReceived(chid, PAYLOAD)


def test_initial_credit_is_the_peers_window() -> None:
    pair = Pair(server=P.Settings(window=777), client=P.Settings(window=555))
    assert pair.client.credit(pair.open()) == 777


def test_sender_runs_out_of_credit_exactly_at_the_window() -> None:
    pair = Pair(server=P.Settings(window=4 * COST))
    chid = pair.open()
    for _ in range(4):
        assert pair.client.credit(chid) > 0
        pair.client.send_message(chid, PAYLOAD)
    assert pair.client.credit(chid) == 0
    events = pair.to_server()
    assert kinds(events) == ["MessageReceived"] * 4
    assert pair.server.state == P.OPEN_STATE
    # The receiver returns what two messages cost: exactly two more fit.
    pair.server.grant(chid, 2 * COST)
    assert records_of(pair.server.data_to_send()) == [[P.CREDIT, chid, 2 * COST]]
    pair.client.receive_frame(frame([P.CREDIT, chid, 2 * COST]))
    events = drain(pair.client)
    assert events == [P.CreditGranted(chid, 2 * COST)] and kinds(events) == ["CreditGranted"]
    assert pair.client.credit(chid) == 2 * COST
    pair.client.send_message(chid, PAYLOAD)
    pair.client.send_message(chid, PAYLOAD)
    assert pair.client.credit(chid) == 0
    assert kinds(pair.to_server()) == ["MessageReceived"] * 2


def test_msg_without_credit_is_a_violation() -> None:
    pair = Pair(server=P.Settings(window=2 * COST))
    chid = pair.open()
    pair.client.send_message(chid, PAYLOAD)
    pair.client.send_message(chid, PAYLOAD)
    assert kinds(pair.to_server()) == ["MessageReceived"] * 2
    # A misbehaving client sends one more although its credit is 0.
    events = feed(pair.server, frame([P.MSG, chid, PAYLOAD]))
    assert_violation(pair.server, events, "credit")


def test_any_positive_credit_admits_one_whole_message() -> None:
    # A message bigger than the window still goes (the credit goes negative); then the
    # sender must wait until CREDIT brings it above zero again.
    pair = Pair(server=P.Settings(window=10))
    chid = pair.open()
    big = bytes(1000)
    pair.client.send_message(chid, big)
    assert pair.client.credit(chid) == 10 - len(big) - P.MSG_COST
    assert kinds(pair.to_server()) == ["MessageReceived"]
    assert_violation(pair.server, feed(pair.server, frame([P.MSG, chid, PAYLOAD])), "credit")


def test_credit_must_be_positive() -> None:
    for n in (0, -1, "1", 1.0):
        p = Pair()
        chid = p.open()
        assert_violation(p.client, feed(p.client, frame([P.CREDIT, chid, n])))


def test_credit_on_a_channel_we_do_not_send_on_is_a_violation() -> None:
    pair = Pair()
    chid = pair.open()  # the client sends on it, the server receives
    assert_violation(pair.server, feed(pair.server, frame([P.CREDIT, chid, 5])), "CREDIT")


def test_msg_on_a_never_allocated_id_is_a_violation() -> None:
    pair = Pair()
    pair.open()
    assert_violation(pair.server, feed(pair.server, frame([P.MSG, 99, PAYLOAD])), "unknown")
    # Our own parity too: the server never allocated 4.
    pair = Pair()
    assert_violation(pair.client, feed(pair.client, frame([P.MSG, 4, PAYLOAD])), "unknown")


def test_msg_on_a_channel_that_flows_the_other_way_is_a_violation() -> None:
    pair = Pair()
    chid = pair.open()
    # The server receives on `chid`; a MSG from the server on it is a violation.
    assert_violation(pair.client, feed(pair.client, frame([P.MSG, chid, PAYLOAD])))


def test_msg_payload_must_be_bin() -> None:
    pair = Pair()
    chid = pair.open()
    assert_violation(pair.server, feed(pair.server, frame([P.MSG, chid, "text"])), "bin")


def test_message_larger_than_max_message_is_a_violation() -> None:
    pair = Pair(server=P.Settings(max_message=100))
    chid = pair.open()
    events = feed(pair.server, frame([P.MSG, chid, bytes(101)]))
    assert_violation(pair.server, events, "max_message")


def test_frame_larger_than_max_message_plus_overhead_is_a_violation() -> None:
    pair = Pair(server=P.Settings(max_message=100))
    pair.open()
    limit = 100 + P.FRAME_OVERHEAD
    ok = frame(*[[P.PING]] * (limit // 2))  # [9] packs to 2 bytes
    assert len(ok) <= limit
    assert_quiet(pair.server, feed(pair.server, ok))
    too_big = frame(*[[P.PING]] * (limit // 2 + 1))
    assert len(too_big) > limit
    assert_violation(pair.server, feed(pair.server, too_big), "exceeds")


def test_batches_fit_the_peers_frame_limit() -> None:
    pair = Pair(server=P.Settings(max_message=200))
    chid = pair.open()
    for _ in range(30):
        if pair.client.credit(chid) <= 0:
            break
        pair.client.send_message(chid, PAYLOAD)
    frames = pair.client.data_to_send()
    assert len(frames) > 1
    assert all(len(f) <= 200 + P.FRAME_OVERHEAD for f in frames)
    for f in frames:
        assert "SessionFailed" not in kinds(feed(pair.server, bytes(f)))


# ------------------------------------------------------------------------ streams
def _stream_pair(window: int = 100) -> tuple[Pair, int]:
    pair = Pair(client=P.Settings(stream_window=window), server=P.Settings(stream_window=window))
    chid = pair.open()
    sid = pair.client.new_channel(P.KIND_STREAM, we_send=True, we_recv=True)
    pair.client.send_message(chid, codec.encode({"io": codec.ref(codec.EXT_STREAM, sid)}, None))
    values = register_refs(pair.server, pair.to_server())
    assert values == [{"io": ("ref", codec.EXT_STREAM, sid)}]
    return pair, sid


def test_stream_carries_bytes_both_ways_with_byte_credit() -> None:
    pair, sid = _stream_pair(window=100)
    assert pair.client.credit(sid) == 100 and pair.server.credit(sid) == 100
    pair.client.send_data(sid, bytes(60))
    pair.client.send_data(sid, bytes(40))
    assert pair.client.credit(sid) == 0
    events = pair.to_server()
    assert events == [P.DataReceived(sid, bytes(60)), P.DataReceived(sid, bytes(40))]
    pair.server.send_data(sid, b"back")
    assert kinds(pair.to_client()) == ["DataReceived"]
    pair.server.grant(sid, 30)
    assert kinds(pair.to_client()) == ["CreditGranted"]
    assert pair.client.credit(sid) == 30


def test_data_beyond_the_stream_window_is_a_violation() -> None:
    pair, sid = _stream_pair(window=100)
    assert_violation(pair.server, feed(pair.server, frame([P.DATA, sid, bytes(101)])), "window")


def test_data_on_a_message_channel_and_msg_on_a_stream_are_violations() -> None:
    pair, sid = _stream_pair()
    assert_violation(pair.server, feed(pair.server, frame([P.MSG, sid, PAYLOAD])))
    pair = Pair()
    chid = pair.open()
    assert_violation(pair.server, feed(pair.server, frame([P.DATA, chid, b"x"])))


def test_data_after_end_on_a_half_open_stream_is_a_violation() -> None:
    pair, sid = _stream_pair()
    pair.client.send_end(sid)
    assert kinds(pair.to_server()) == ["Ended"]
    # The server still writes on the stream, so it remembers it: more DATA is a violation.
    assert_violation(pair.server, feed(pair.server, frame([P.DATA, sid, b"x"])), "after its END")


# ------------------------------------------------------------------------ END / END_ACK
def test_end_is_acknowledged_and_both_sides_forget_the_channel() -> None:
    pair = Pair()
    chid = pair.open()
    pair.client.send_message(chid, PAYLOAD)
    pair.client.send_end(chid)
    frames = pair.client.data_to_send()
    assert records_of(frames) == [[P.MSG, chid, PAYLOAD], [P.END, chid, None]]
    events = feed(pair.server, bytes(frames[0]))
    # Everything before END comes first; END_ACK is queued by the protocol itself.
    assert kinds(events) == ["MessageReceived", "Ended"]
    assert events[1] == P.Ended(chid, None)
    assert records_of(pair.server.data_to_send()) == [[P.END_ACK, chid]]
    events = feed(pair.client, frame([P.END_ACK, chid]))
    assert events == [P.EndAcked(chid)] and kinds(events) == ["EndAcked"]
    # Forgotten on both sides: late frames for the id are dropped without a word, but
    # a MSG is undelivered (its references must still be registered and closed).
    events = feed(pair.server, frame([P.MSG, chid, PAYLOAD]))
    assert events == [P.MessageReceived(chid, PAYLOAD)]
    assert pair.server.state == P.OPEN_STATE
    assert_quiet(pair.client, feed(pair.client, frame([P.CREDIT, chid, 10])))
    assert_quiet(pair.client, feed(pair.client, frame([P.END_ACK, chid])))
    assert_quiet(pair.client, feed(pair.client, frame([P.STOP, chid, None])))
    assert pair.client.data_to_send() == [] and pair.server.data_to_send() == []


def test_end_with_an_error() -> None:
    pair = Pair()
    chid = pair.open()
    pair.client.send_end(chid, ("Boom", "it broke"))
    frames = pair.client.data_to_send()
    assert records_of(frames) == [[P.END, chid, ["Boom", "it broke"]]]
    events = feed(pair.server, bytes(frames[0]))
    assert events == [P.Ended(chid, ("Boom", "it broke"))] and kinds(events) == ["Ended"]


@pytest.mark.parametrize("error", [["only-code"], "Boom", 5, ["a", "b", "c"]], ids=repr)
def test_malformed_end_error_is_a_violation(error: Any) -> None:
    pair = Pair()
    chid = pair.open()
    assert_violation(pair.server, feed(pair.server, frame([P.END, chid, error])), "[code, message]")


def test_end_is_idempotent() -> None:
    pair = Pair()
    chid = pair.open()
    pair.client.send_end(chid)
    pair.client.send_end(chid)
    assert records_of(pair.client.data_to_send()) == [[P.END, chid, None]]


def test_end_on_a_channel_we_send_on_is_a_violation() -> None:
    pair = Pair()
    chid = pair.open()
    assert_violation(pair.client, feed(pair.client, frame([P.END, chid, None])))


def test_end_ack_for_a_channel_we_did_not_end_is_a_violation() -> None:
    pair = Pair()
    chid = pair.open()
    pair.client.send_message(chid, PAYLOAD)
    pair.to_server()
    assert_violation(pair.client, feed(pair.client, frame([P.END_ACK, chid])), "END_ACK")


def test_grant_after_end_sends_nothing() -> None:
    pair = Pair()
    chid = pair.open()
    pair.client.send_end(chid)
    pair.to_server()
    pair.server.data_to_send()
    pair.server.grant(chid, 100)
    assert pair.server.data_to_send() == []


# ------------------------------------------------------------------------ STOP
def test_stop_fails_the_sender_and_late_messages_are_undelivered() -> None:
    pair = Pair()
    chid = pair.open()
    pair.server.send_stop(chid, ("ReceiverClosed", "gone"))
    assert records_of(pair.server.data_to_send()) == [[P.STOP, chid, ["ReceiverClosed", "gone"]]]
    # The client sent a message before the STOP reached it: the protocol hands it out
    # (for the ends inside it) but queues nothing and stays open.
    events = feed(pair.server, frame([P.MSG, chid, PAYLOAD]))
    assert events == [P.MessageReceived(chid, PAYLOAD)]
    assert pair.server.state == P.OPEN_STATE and pair.server.data_to_send() == []
    events = feed(pair.client, frame([P.STOP, chid, ["ReceiverClosed", "gone"]]))
    assert events == [P.Stopped(chid, ("ReceiverClosed", "gone"))]
    assert kinds(events) == ["Stopped"]
    assert pair.client.credit(chid) == 0  # forgotten


def test_stop_without_error() -> None:
    pair = Pair()
    chid = pair.open()
    pair.server.send_stop(chid)
    events = pair.to_client()
    assert events == [P.Stopped(chid, None)] and kinds(events) == ["Stopped"]


def test_stop_on_a_channel_we_do_not_send_on_is_a_violation() -> None:
    pair = Pair()
    chid = pair.open()
    assert_violation(pair.server, feed(pair.server, frame([P.STOP, chid, None])), "STOP")


def test_end_crossing_stop() -> None:
    # The sender closes while the receiver goes away: STOP stands in for END_ACK.
    pair = Pair()
    chid = pair.open()
    pair.client.send_end(chid)
    pair.server.send_stop(chid)
    assert_quiet(pair.server, pair.to_server())  # END for a forgotten channel: dropped
    events = pair.to_client()
    assert kinds(events) == ["Stopped"]
    assert pair.client.data_to_send() == [] and pair.server.data_to_send() == []


# ------------------------------------------------------------------------ BYE / ABORT
def test_bye_is_acknowledged() -> None:
    pair = Pair()
    chid = pair.open()
    pair.client.send_message(chid, PAYLOAD)
    pair.client.send_bye()
    assert pair.client.state == P.CLOSING
    events = pair.to_server()
    # Everything sent before BYE arrives before it.
    assert kinds(events) == ["MessageReceived", "ByeReceived"]
    assert pair.server.state == P.CLOSED and type(pair.server.error) is SessionLost
    assert records_of(pair.server.data_to_send()) == [[P.BYE_ACK]]
    events = feed(pair.client, frame([P.BYE_ACK]))
    assert kinds(events) == ["ByeAcked"]
    assert pair.client.state == P.CLOSED


def test_crossing_byes() -> None:
    pair = Pair()
    pair.client.send_bye()
    pair.server.send_bye()
    assert kinds(pair.to_server()) == ["ByeReceived"]
    assert kinds(pair.to_client()) == ["ByeReceived"]
    assert pair.to_server() == [] and pair.to_client() == []  # late BYE_ACKs: ignored


def test_bye_ack_without_bye_is_a_violation() -> None:
    pair = Pair()
    assert_violation(pair.server, feed(pair.server, frame([P.BYE_ACK])), "BYE_ACK")


def test_a_closed_session_ignores_frames() -> None:
    pair = Pair()
    pair.client.send_bye()
    pair.to_server()
    assert records_of(pair.server.data_to_send()) == [[P.BYE_ACK]]
    assert feed(pair.server, b"\xc1garbage") == []
    assert pair.server.data_to_send() == []
    pair.server.tick()
    assert pair.server.data_to_send() == [] and drain(pair.server) == []


@pytest.mark.parametrize("code, error", [
    (P.PROTOCOL_ERROR, ProtocolError),
    (P.SHUTDOWN, SessionLost),
    (P.UNKNOWN_SESSION, SessionLost),
    ("SomethingNew", SessionLost),
])
def test_abort_codes(code: str, error: type) -> None:
    pair = Pair()
    events = feed(pair.client, frame([P.ABORT, code, "why"]))
    assert kinds(events) == ["SessionFailed"]
    assert type(events[0].error) is error
    assert events[0].code == code  # the session layer treats "Shutdown" as a clean end
    assert "why" in str(events[0].error)
    assert pair.client.state == P.CLOSED
    assert pair.client.data_to_send() == []  # an ABORT is never answered


def test_local_abort_tells_the_peer() -> None:
    pair = Pair()
    pair.server.abort(P.SHUTDOWN, "the peer process is exiting")
    assert pair.server.state == P.CLOSED
    assert records_of(pair.server.data_to_send()) == [[P.ABORT, "Shutdown",
                                                       "the peer process is exiting"]]
    with pytest.raises(SessionLost):
        pair.server.new_channel(P.KIND_CHANNEL, True, False)


# ------------------------------------------------------------------------ heartbeats
def test_ping_after_heartbeat_ms_idle() -> None:
    pair = Pair(client=P.Settings(heartbeat_ms=1000, timeout_ms=3000))
    pair.clock.advance(0.999)
    pair.client.tick()
    assert pair.client.data_to_send() == []
    pair.clock.advance(0.001)
    pair.client.tick()
    assert records_of(pair.client.data_to_send()) == [[P.PING]]
    # A PING only refreshes the peer's liveness: no event, no answer.
    assert_quiet(pair.server, feed(pair.server, frame([P.PING])))
    assert pair.server.data_to_send() == []


def test_no_ping_while_something_is_queued_or_recently_sent() -> None:
    pair = Pair(client=P.Settings(heartbeat_ms=1000))
    chid = pair.open()
    pair.clock.advance(0.5)
    pair.client.send_message(chid, PAYLOAD)
    pair.client.data_to_send()
    pair.clock.advance(0.9)  # 1.4 s since the handshake, 0.9 s since the last frame
    pair.client.tick()
    assert pair.client.data_to_send() == []
    pair.clock.advance(1.0)
    pair.client.send_message(chid, PAYLOAD)
    pair.client.tick()  # idle long enough, but a frame is waiting anyway
    assert records_of(pair.client.data_to_send()) == [[P.MSG, chid, PAYLOAD]]


def test_heartbeats_keep_a_quiet_session_alive() -> None:
    pair = Pair(client=P.Settings(heartbeat_ms=1000, timeout_ms=3000),
                server=P.Settings(heartbeat_ms=1000, timeout_ms=3000))
    for _ in range(100):
        pair.clock.advance(0.25)
        pair.client.tick()
        pair.server.tick()
        assert pair.to_server() == [] and pair.to_client() == []
    assert pair.client.state == pair.server.state == P.OPEN_STATE


def test_silence_for_timeout_ms_is_session_lost() -> None:
    pair = Pair(server=P.Settings(heartbeat_ms=1000, timeout_ms=3000))
    pair.server.data_to_send()
    pair.clock.advance(2.999)
    pair.server.tick()
    assert pair.server.state == P.OPEN_STATE
    pair.server.data_to_send()  # its own PING: sending does not prove the peer alive
    pair.clock.advance(0.001)
    pair.server.tick()
    events = drain(pair.server)
    assert kinds(events) == ["SessionFailed"]
    assert type(events[0].error) is SessionLost
    assert pair.server.state == P.CLOSED
    assert pair.server.data_to_send() == []  # nobody to tell


def test_client_waiting_for_welcome_times_out() -> None:
    pair = Pair(client=P.Settings(timeout_ms=3000), handshake=False)
    pair.client.data_to_send()
    pair.clock.advance(1.5)
    pair.client.tick()
    assert pair.client.data_to_send() == []  # no PING during the handshake
    pair.clock.advance(1.5)
    pair.client.tick()
    events = drain(pair.client)
    assert kinds(events) == ["SessionFailed"] and type(events[0].error) is SessionLost


def test_any_frame_counts_as_a_sign_of_life() -> None:
    pair = Pair(server=P.Settings(timeout_ms=3000))
    chid = pair.open()
    for _ in range(5):
        pair.clock.advance(2.0)
        pair.client.send_message(chid, PAYLOAD)
        pair.to_server()
        pair.server.tick()
    assert pair.server.state == P.OPEN_STATE


def test_there_is_no_next_deadline() -> None:
    # Removed: front ends tick periodically (the reference every 100 ms).
    assert not hasattr(P.Session, "next_deadline")


def _idle_until_ping(pair: Pair, side: P.Session, step: float = 0.001) -> float:
    """Seconds of idleness after which ``side`` queues a PING (to the millisecond)."""
    pair.to_server()
    pair.to_client()
    side.data_to_send()
    waited = 0.0
    for _ in range(100_000):
        side.tick()
        frames = side.data_to_send()
        if frames:
            assert records_of(frames) == [[P.PING]]
            return round(waited, 3)
        pair.clock.advance(step)
        waited += step
    raise AssertionError("no PING")


@pytest.mark.parametrize("own_heartbeat, peer_timeout, expected", [
    (1000, 3000, 1.0),  # our habit: a third of the peer's timeout is no shorter
    (1000, 900, 0.3),  # the peer is impatient: a third of its timeout
    (200, 3000, 0.2),  # our habit is the shorter
    (5000, 3000, 1.0),  # a slow heartbeat no longer gets us declared dead
    (1000, 1000, 0.333),  # integer milliseconds: 1000 // 3
])
def test_ping_interval_follows_the_peers_timeout(own_heartbeat: int, peer_timeout: int,
                                                 expected: float) -> None:
    pair = Pair(client=P.Settings(heartbeat_ms=own_heartbeat),
                server=P.Settings(timeout_ms=peer_timeout))
    assert pair.client.peer.timeout_ms == peer_timeout  # announced in WELCOME
    assert _idle_until_ping(pair, pair.client) == pytest.approx(expected, abs=0.0015)


def test_ping_interval_without_an_announced_timeout() -> None:
    # A peer that does not send timeout_ms is assumed to wait three of its heartbeats.
    pair = Pair(handshake=False, client=P.Settings(heartbeat_ms=1000))
    pair.client.data_to_send()
    wire = dict(P.Settings(heartbeat_ms=300).to_wire())
    del wire["timeout_ms"]
    assert kinds(feed(pair.client, frame([P.WELCOME, P.VERSION, b"S" * 8, wire]))) == \
        ["Handshaken"]
    assert pair.client.peer.timeout_ms == 900
    assert _idle_until_ping(pair, pair.client) == pytest.approx(0.3, abs=0.0015)


def test_no_ping_during_the_handshake_even_for_an_impatient_peer() -> None:
    pair = Pair(handshake=False, client=P.Settings(heartbeat_ms=100, timeout_ms=60_000))
    pair.client.data_to_send()
    for _ in range(20):
        pair.clock.advance(0.1)
        pair.client.tick()
        assert pair.client.data_to_send() == []


def test_a_slow_heartbeat_meets_a_short_timeout() -> None:
    # heartbeat_ms 5000 against a peer timing out after 3000 ms used to get the idle
    # client declared dead; now it pings every third of the peer's timeout.
    pair = Pair(client=P.Settings(heartbeat_ms=5000, timeout_ms=10_000),
                server=P.Settings(heartbeat_ms=5000, timeout_ms=3000))
    for _ in range(200):  # 20 s of idleness, ticking every 100 ms as the reference does
        pair.clock.advance(0.1)
        pair.client.tick()
        pair.server.tick()
        assert pair.to_server() == [] and pair.to_client() == []
    assert pair.client.state == pair.server.state == P.OPEN_STATE


# ------------------------------------------------------------------------ bad frames
@pytest.mark.parametrize("data, match", [
    (b"\xc1", "malformed"),  # never used in msgpack
    (b"\xff\xff\xff", ""),  # negative fixints: not arrays
    (b"\x93\x03\x01\xc4\x05ab", "truncated"),  # bin8 of 5 bytes with 2 present
    (b"\x92", ""),  # an array header and nothing else
    (b"\x91\x63", "unknown opcode"),  # [99]
    (b"\x90", "record"),  # [] has no opcode
    (b"\x01", "record"),  # a bare integer
    (b"\x91\xa3MSG", "record"),  # opcode as a string
    (b"\x81\x00\x01", "record"),  # a map
    (b"\x91\x0c", ""),  # ABORT without code and message
])
def test_bad_frames_are_violations(data: bytes, match: str) -> None:
    pair = Pair()
    pair.open()
    assert_violation(pair.server, feed(pair.server, data), match)


def test_records_before_a_violation_count_and_the_rest_of_the_frame_is_dropped() -> None:
    pair = Pair()
    chid = pair.open()
    events = feed(pair.server, frame([P.MSG, chid, PAYLOAD]) + b"\xc1" + frame([P.OPEN, 3]))
    assert kinds(events) == ["MessageReceived", "SessionFailed"]
    assert_violation(pair.server, events)


def test_after_a_violation_the_session_is_dead() -> None:
    pair = Pair()
    pair.open()
    assert_violation(pair.server, feed(pair.server, b"\xc1"))
    assert feed(pair.server, frame([P.OPEN, 3])) == []
    with pytest.raises(ProtocolError):
        pair.server.new_channel(P.KIND_CHANNEL, True, False)
    # The peer learns why from the ABORT.
    events = feed(pair.client, frame([P.ABORT, P.PROTOCOL_ERROR, "malformed frame"]))
    assert type(events[0].error) is ProtocolError


def test_empty_frame_is_harmless() -> None:
    pair = Pair()
    assert_quiet(pair.server, feed(pair.server, b""))


def test_ids_between_allocations_count_as_forgotten() -> None:
    # The peer may skip ids (a reference whose message failed to encode is never used);
    # frames for a skipped id below the highest id seen are late frames: dropped, or
    # undelivered for a MSG.
    pair = Pair()
    assert kinds(feed(pair.server, frame([P.OPEN, 5]))) == ["ChannelOpened"]
    assert feed(pair.server, frame([P.MSG, 3, PAYLOAD])) == [P.MessageReceived(3, PAYLOAD)]
    for record in ([P.END, 3, None], [P.DATA, 3, b"x"], [P.CREDIT, 3, 1], [P.STOP, 3, None],
                   [P.END_ACK, 3]):
        assert_quiet(pair.server, feed(pair.server, frame(record)))
    assert pair.server.data_to_send() == []


def test_late_frames_for_a_forgotten_channel_are_dropped_but_msg() -> None:
    pair = Pair()
    chid = pair.open()
    pair.client.send_end(chid)
    pair.to_server()
    pair.to_client()
    for record in ([P.END, chid, None], [P.CREDIT, chid, 1],
                   [P.STOP, chid, None], [P.END_ACK, chid], [P.DATA, chid, b"x"]):
        assert_quiet(pair.server, feed(pair.server, frame(record)))
        assert_quiet(pair.client, feed(pair.client, frame(record)))
    # A MSG is undelivered on either side (whichever way the channel flowed).
    for side in (pair.server, pair.client):
        assert feed(side, frame([P.MSG, chid, PAYLOAD])) == [P.MessageReceived(chid, PAYLOAD)]
        assert side.state == P.OPEN_STATE and side.data_to_send() == []


# ------------------------------------------------------------------------ undelivered messages
RECEIVER_CLOSED = ("ReceiverClosed", "the receiving end of this channel was closed")
READER_CLOSED = ("ReaderClosed", "the reading side of this stream was closed")


def receive_as_front_end(session: P.Session, data: bytes,
                         live: set[int]) -> tuple[list, list[tuple[int, int]]]:
    """Feed one frame the way chan._session does, event by event.

    ``live`` holds the ids on which this side has a receiving end (it grows with the
    receiving ends of delivered messages).  A MessageReceived for any other id is
    undelivered: it is decoded only to register the ends it carries, which are closed at
    once (STOP for what we would receive, END with ReceiverClosed for what we would
    send, both for a stream), as chan._session.SessionCore._discard does.  Decoding
    happens before the next record is handled, since later records of the same frame
    may use the new ids.  Returns the events and the ``(code, chid)`` of the ends closed.
    """
    session.receive_frame(data)
    events: list = []
    closed: list[tuple[int, int]] = []
    while (event := session.next_event()) is not None:
        events.append(event)
        if type(event) is not P.MessageReceived:
            continue
        found: list[tuple[int, int]] = []
        register_refs(session, [event], found)
        for code, chid in found:
            if event.chid in live and code != codec.EXT_SENDER:
                live.add(chid)  # delivered: the application got an end that receives
        if event.chid in live:
            continue
        for code, chid in found:
            if code in (codec.EXT_RECEIVER, codec.EXT_STREAM):
                session.send_stop(chid, READER_CLOSED if code == codec.EXT_STREAM
                                  else RECEIVER_CLOSED)
            if code in (codec.EXT_SENDER, codec.EXT_STREAM):
                session.send_end(chid, None if code == codec.EXT_STREAM else RECEIVER_CLOSED)
            closed.append((code, chid))
    return events, closed


def test_a_message_on_a_stopped_channel_is_handed_out_undelivered() -> None:
    pair = Pair()
    chid = pair.open()
    pair.server.send_stop(chid)
    pair.server.data_to_send()
    payload = codec.encode({"x": [1, 2]}, None)
    events = feed(pair.server, frame([P.MSG, chid, payload]))
    assert events == [P.MessageReceived(chid, payload)]
    assert kinds(events) == ["MessageReceived"]
    assert pair.server.state == P.OPEN_STATE
    assert pair.server.data_to_send() == []  # no CREDIT, no STOP again, no ABORT


def test_undelivered_messages_are_not_charged_to_the_allowance() -> None:
    # The peer sent them with credit it held before our STOP: no "without credit".
    pair = Pair(server=P.Settings(window=COST))
    chid = pair.open()
    pair.server.send_stop(chid)
    pair.server.data_to_send()
    events = feed(pair.server, frame(*[[P.MSG, chid, PAYLOAD]] * 5))
    assert kinds(events) == ["MessageReceived"] * 5
    assert pair.server.state == P.OPEN_STATE


@pytest.mark.parametrize("record, match", [
    ([P.MSG, 1, "text"], "bin"),
    ([P.MSG, 1, bytes(101)], "max_message"),
    ([P.MSG, 1.0, PAYLOAD], "channel id"),
])
def test_undelivered_messages_are_still_checked(record: list, match: str) -> None:
    pair = Pair(server=P.Settings(max_message=100))
    assert pair.open() == 1
    pair.server.send_stop(1)
    pair.server.data_to_send()
    assert_violation(pair.server, feed(pair.server, frame(record)), match)


def test_an_undelivered_message_with_a_bad_reference_is_a_violation() -> None:
    pair = Pair()
    chid = pair.open()
    pair.server.send_stop(chid)
    pair.server.data_to_send()
    bad = codec.encode([codec.ref(codec.EXT_RECEIVER, 2)], None)  # the server's parity
    events, _ = receive_as_front_end(pair.server, frame([P.MSG, chid, bad]), live=set())
    assert_violation(pair.server, events + drain(pair.server), "channel id")


def test_data_for_a_stopped_stream_direction_is_dropped() -> None:
    pair, sid = _stream_pair()
    pair.server.send_stop(sid)  # the server stops reading; it still writes
    assert kinds(pair.to_client()) == ["Stopped"]
    # DATA and END the client sent before the STOP reached it:
    assert_quiet(pair.server, feed(pair.server, frame([P.DATA, sid, b"late"])))
    assert_quiet(pair.server, feed(pair.server, frame([P.END, sid, None])))
    assert pair.server.data_to_send() == []  # not even END_ACK: STOP stands in for it
    pair.server.send_data(sid, b"still writing")
    assert pair.to_client() == [P.DataReceived(sid, b"still writing")]


def test_references_in_an_undelivered_message_are_closed_and_the_session_survives() -> None:
    pair = Pair(server=P.Settings(window=4 * COST))
    chid = pair.open()
    pair.server.send_stop(chid)  # the server's receiver goes away; STOP is in flight
    # Meanwhile the client hands over a Receiver (it sends on `rx`), a Sender (it receives
    # on `tx`) and a stream, and uses the Receiver's channel and the stream at once.
    rx = pair.client.new_channel(P.KIND_CHANNEL, we_send=True, we_recv=False)
    tx = pair.client.new_channel(P.KIND_CHANNEL, we_send=False, we_recv=True)
    io = pair.client.new_channel(P.KIND_STREAM, we_send=True, we_recv=True)
    pair.client.send_message(chid, codec.encode(
        {"rx": codec.ref(codec.EXT_RECEIVER, rx), "tx": codec.ref(codec.EXT_SENDER, tx),
         "io": [codec.ref(codec.EXT_STREAM, io)]}, None))
    pair.client.send_message(rx, PAYLOAD)
    pair.client.send_data(io, b"hello")
    pair.client.send_end(rx)
    frames = pair.client.data_to_send()
    assert len(frames) == 1  # the references and their use travel in one frame
    events, closed = receive_as_front_end(pair.server, bytes(frames[0]), live=set())
    # The message is undelivered; the MSG on rx follows it undelivered too (rx is
    # stopped by then); DATA and END on stopped directions are dropped.
    assert kinds(events) == ["MessageReceived", "MessageReceived"]
    assert [e.chid for e in events] == [chid, rx]
    assert closed == [(codec.EXT_RECEIVER, rx), (codec.EXT_SENDER, tx), (codec.EXT_STREAM, io)]
    assert pair.server.state == P.OPEN_STATE
    back = pair.server.data_to_send()
    assert records_of(back) == [
        [P.STOP, chid, None],
        [P.STOP, rx, list(RECEIVER_CLOSED)],
        [P.END, tx, list(RECEIVER_CLOSED)],
        [P.STOP, io, list(READER_CLOSED)],
        [P.END, io, None],
    ]
    # The client learns at once that each end leads nowhere.
    events = feed(pair.client, b"".join(bytes(f) for f in back))
    assert events == [P.Stopped(chid, None), P.Stopped(rx, RECEIVER_CLOSED),
                      P.Ended(tx, RECEIVER_CLOSED), P.Stopped(io, READER_CLOSED),
                      P.Ended(io, None)]
    acks = pair.client.data_to_send()
    assert records_of(acks) == [[P.END_ACK, tx], [P.END_ACK, io]]
    # ... and the server takes the acknowledgements: every channel is forgotten.
    assert feed(pair.server, b"".join(bytes(f) for f in acks)) == [P.EndAcked(tx),
                                                                  P.EndAcked(io)]
    assert pair.server._channels == {} and pair.client._channels == {}
    # The session goes on.
    other = pair.open()
    pair.client.send_message(other, PAYLOAD)
    assert pair.to_server() == [P.MessageReceived(other, PAYLOAD)]


def test_a_front_end_must_register_the_ids_of_undelivered_messages() -> None:
    # Without registering the undelivered message's references, the peer's next frames
    # on them would be "unknown channel id" (this was the bug).
    pair = Pair()
    chid = pair.open()
    pair.server.send_stop(chid)
    pair.server.data_to_send()
    rx = pair.client.new_channel(P.KIND_CHANNEL, we_send=True, we_recv=False)
    pair.client.send_message(chid, codec.encode([codec.ref(codec.EXT_RECEIVER, rx)], None))
    pair.server.receive_frame(bytes(pair.client.data_to_send()[0]))
    event = pair.server.next_event()
    assert type(event) is P.MessageReceived and event.chid == chid
    # A front end that ignored it:
    assert_violation(pair.server, feed(pair.server, frame([P.MSG, rx, PAYLOAD])), "unknown")


# ------------------------------------------------------------------------ the inbox
def test_two_frames_received_before_draining() -> None:
    pair = Pair()
    chid = pair.open()
    pair.server.receive_frame(frame([P.MSG, chid, b"\x01"]))
    pair.server.receive_frame(frame([P.MSG, chid, b"\x02"]))
    events = drain(pair.server)
    assert events == [P.MessageReceived(chid, b"\x01"), P.MessageReceived(chid, b"\x02")]


def test_frames_are_handled_in_order_while_partly_drained() -> None:
    pair = Pair()
    chid = pair.open()
    pair.server.receive_frame(frame([P.MSG, chid, b"\x01"], [P.MSG, chid, b"\x02"]))
    assert pair.server.next_event() == P.MessageReceived(chid, b"\x01")
    pair.server.receive_frame(frame([P.MSG, chid, b"\x03"], [P.END, chid, None]))
    pair.server.receive_frame(b"")
    assert drain(pair.server) == [P.MessageReceived(chid, b"\x02"),
                                  P.MessageReceived(chid, b"\x03"), P.Ended(chid, None)]
    assert pair.server.next_event() is None
    assert records_of(pair.server.data_to_send()) == [[P.END_ACK, chid]]


def test_an_oversized_frame_is_rejected_when_its_turn_comes() -> None:
    pair = Pair(server=P.Settings(max_message=100))
    chid = pair.open()
    pair.server.receive_frame(frame([P.MSG, chid, PAYLOAD]))
    pair.server.receive_frame(bytes(100 + P.FRAME_OVERHEAD + 1))  # never parsed
    pair.server.receive_frame(frame([P.MSG, chid, PAYLOAD]))  # after it: discarded
    events = drain(pair.server)
    assert kinds(events) == ["MessageReceived", "SessionFailed"]
    assert_violation(pair.server, events, "exceeds")


def test_frames_queued_after_a_violation_are_discarded() -> None:
    pair = Pair()
    chid = pair.open()
    pair.server.receive_frame(b"\xc1")
    pair.server.receive_frame(frame([P.MSG, chid, PAYLOAD]))
    assert kinds(drain(pair.server)) == ["SessionFailed"]
    assert drain(pair.server) == []


def test_a_frame_proves_the_peer_alive_when_received_not_when_read() -> None:
    pair = Pair(server=P.Settings(timeout_ms=3000))
    pair.clock.advance(2.5)
    pair.server.receive_frame(frame([P.PING]))  # not drained yet
    pair.clock.advance(2.5)  # 5 s since the handshake, 2.5 s since the PING arrived
    pair.server.tick()
    assert pair.server.state == P.OPEN_STATE
    assert drain(pair.server) == []


def test_receive_frame_on_a_closed_session_is_ignored() -> None:
    pair = Pair()
    pair.server.close_now(SessionLost("gone"))
    assert kinds(drain(pair.server)) == ["SessionFailed"]
    pair.server.receive_frame(frame([P.OPEN, 1]))
    assert drain(pair.server) == [] and pair.server.data_to_send() == []


# ------------------------------------------------------------------------ integers only
@pytest.mark.parametrize("record", [
    [P.MSG, 1.0, PAYLOAD], [P.MSG, True, PAYLOAD], [3.0, 1, PAYLOAD], [True, 1],
    [P.END, 1.0, None], [P.END, True, None], [P.DATA, 1.0, b"x"], [P.STOP, 1.0, None],
    [P.END_ACK, 1.0], [P.CREDIT, 1.0, 5], [P.OPEN, 3.0], [P.OPEN, True], [9.0],
], ids=repr)
def test_non_integer_ids_and_opcodes_are_violations(record: list) -> None:
    pair = Pair()
    assert pair.open() == 1
    assert_violation(pair.server, feed(pair.server, frame(record)))


@pytest.mark.parametrize("record", [[P.CREDIT, 1.0, 5], [P.CREDIT, True, 5], [P.STOP, 1.0, None]],
                         ids=repr)
def test_non_integer_ids_are_violations_at_the_sender_too(record: list) -> None:
    pair = Pair()
    assert pair.open() == 1
    assert_violation(pair.client, feed(pair.client, frame(record)))


@pytest.mark.parametrize("value", [0, -1, "3000", 3000.0, True], ids=repr)
def test_a_bad_timeout_ms_is_a_protocol_error(value: Any) -> None:
    server = P.Session(client=False, clock=Clock())
    wire = dict(P.Settings().to_wire(), timeout_ms=value)
    assert_violation(server, feed(server, frame([P.HELLO, P.VERSION, b"n" * 8, wire])),
                     "timeout_ms")


def test_timeout_ms_is_optional_on_receipt() -> None:
    server = P.Session(client=False, clock=Clock())
    wire = dict(P.Settings(heartbeat_ms=700).to_wire())
    del wire["timeout_ms"]
    events = feed(server, frame([P.HELLO, P.VERSION, b"n" * 8, wire]))
    assert kinds(events) == ["Handshaken"]
    assert events[0].peer_settings.timeout_ms == 2100 == server.peer.timeout_ms
    # The answer announces ours.
    welcome = records_of(server.data_to_send())
    assert welcome[0][3]["timeout_ms"] == server.settings.timeout_ms


# ------------------------------------------------------------------------ events
def test_events_of_different_types_are_never_equal() -> None:
    assert P.ChannelOpened(1) != P.EndAcked(1)
    assert P.Ended(1, None) != P.Stopped(1, None)
    assert P.ByeReceived() != P.ByeAcked()
    assert P.MessageReceived(1, b"x") == P.MessageReceived(1, b"x")
    assert hash(P.Ended(1, ("a", "b"))) == hash(P.Ended(1, ("a", "b")))


@pytest.mark.parametrize("event", [
    P.Handshaken(P.Settings(), b"n"), P.ChannelOpened(1), P.MessageReceived(1, b""),
    P.DataReceived(1, b""), P.CreditGranted(1, 1), P.Ended(1, None), P.EndAcked(1),
    P.Stopped(1, None), P.ByeReceived(), P.ByeAcked(), P.SessionFailed(SessionLost("x")),
], ids=lambda e: type(e).__name__)
def test_events_are_slotted_values(event: Any) -> None:
    assert not hasattr(event, "__dict__")
    assert not isinstance(event, tuple)  # no equality across event types
    same = type(event)(*(getattr(event, f) for f in type(event).__slots__))
    assert same == event and hash(same) == hash(event)
    assert repr(event).startswith(type(event).__name__ + "(")
    assert all(f"{f}=" in repr(event) for f in type(event).__slots__)


def test_session_failed_carries_the_peers_abort_code() -> None:
    assert P.SessionFailed(SessionLost("x")).code is None
    pair = Pair()
    pair.client.close_now(SessionLost("transport gone"))
    (event,) = drain(pair.client)
    assert type(event) is P.SessionFailed and event.code is None
    (event,) = feed(pair.server, frame([P.ABORT, P.SHUTDOWN, "exiting"]))
    assert type(event) is P.SessionFailed and event.code == P.SHUTDOWN
    pair = Pair()
    (event,) = feed(pair.server, b"\xc1")
    assert type(event) is P.SessionFailed and event.code is None  # our own violation


# ------------------------------------------------------------------------ max_channels
def test_max_channels_counts_both_sides_channels() -> None:
    pair = Pair(server=P.Settings(max_channels=3))
    # The server holds two channels of its own (say, Senders it handed out) ...
    pair.server.new_channel(P.KIND_CHANNEL, we_send=False, we_recv=True)
    pair.server.new_channel(P.KIND_CHANNEL, we_send=True, we_recv=False)
    # ... so the client may open one, not two.
    pair.open()
    chid = pair.client.new_channel(P.KIND_CHANNEL, True, False)
    pair.client.send_open(chid)
    assert_violation(pair.server, pair.to_server(), "channels")


def test_max_channels_does_not_limit_our_own_channels() -> None:
    pair = Pair(client=P.Settings(max_channels=2))
    chid = pair.client.new_channel(P.KIND_CHANNEL, True, False)
    pair.client.send_open(chid)
    ret = pair.client.new_channel(P.KIND_CHANNEL, we_send=False, we_recv=True)
    more = [pair.client.new_channel(P.KIND_CHANNEL, True, False) for _ in range(3)]
    assert [chid, ret, *more] == [1, 3, 5, 7, 9]  # 5 live channels, max_channels 2
    pair.client.send_message(chid, codec.encode([codec.ref(codec.EXT_SENDER, ret)], None))
    register_refs(pair.server, pair.to_server())
    # ... but the peer finds no room left: its reference to a new channel is refused.
    new = pair.server.new_channel(P.KIND_CHANNEL, we_send=False, we_recv=True)
    pair.server.send_message(ret, codec.encode([codec.ref(codec.EXT_SENDER, new)], None))
    events = pair.to_client()
    register_refs(pair.client, events)
    assert_violation(pair.client, events + drain(pair.client), "channels")


# ------------------------------------------------------------------------ the runtime on top
class _Transport:
    """What chan._session.SessionCore needs of a transport; frames stay queued in the
    protocol session, where the test takes them."""

    def flush_soon(self, core: Any) -> None:
        pass

    def session_ended(self, core: Any) -> None:
        pass


def _runtime_server(settings: P.Settings) -> tuple[Any, Pair]:
    """A server SessionCore (blocking front end) and a protocol client talking to it."""
    from chan._session import SessionCore
    from chan.channel import MsgQueue
    from chan.net import BLOCKING

    pair = Pair(server=settings, handshake=False)
    core = SessionCore(pair.server, _Transport(), BLOCKING, accepts=MsgQueue(capacity=16))
    for f in pair.client.data_to_send():
        core.feed(bytes(f))
    assert kinds(pair.to_client()) == ["Handshaken"]
    return core, pair


def _to_core(pair: Pair, core: Any) -> None:
    for f in pair.client.data_to_send():
        core.feed(bytes(f))


def test_the_runtime_grants_credit_per_quarter_window_as_messages_are_taken() -> None:
    from chan import _sync

    window = 1000  # a quarter: 250 units, that is 4 messages of COST 75
    with _sync.LOCK:
        core, pair = _runtime_server(P.Settings(window=window))
        chid = pair.client.new_channel(P.KIND_CHANNEL, True, False)
        pair.client.send_open(chid)
        for _ in range(8):
            pair.client.send_message(chid, PAYLOAD)
        _to_core(pair, core)
        assert pair.client.credit(chid) == window - 8 * COST
        rx = core.accepts.attempt_get()
        granted = []
        for i in range(1, 9):
            assert rx._attempt_recv() == "0123456789"
            granted.append([r for r in records_of(pair.server.data_to_send())
                            if r[0] == P.CREDIT])
        # Nothing until what was taken reaches a quarter of the window, then all of it.
        assert granted == [[], [], [], [[P.CREDIT, chid, 4 * COST]],
                           [], [], [], [[P.CREDIT, chid, 4 * COST]]]


def test_the_runtime_grants_stream_credit_per_quarter_window_as_bytes_are_read() -> None:
    from chan import _sync

    with _sync.LOCK:
        core, pair = _runtime_server(P.Settings(stream_window=400))  # a quarter: 100 bytes
        chid = pair.client.new_channel(P.KIND_CHANNEL, True, False)
        pair.client.send_open(chid)
        sid = pair.client.new_channel(P.KIND_STREAM, we_send=True, we_recv=True)
        pair.client.send_message(chid, codec.encode({"io": codec.ref(codec.EXT_STREAM, sid)},
                                                    None))
        pair.client.send_data(sid, bytes(150))
        _to_core(pair, core)
        stream = core.accepts.attempt_get()._attempt_recv()["io"]
        pair.server.data_to_send()
        assert stream._reader().attempt_read(60) == bytes(60)
        assert pair.server.data_to_send() == []
        assert stream._reader().attempt_read(50) == bytes(50)
        assert records_of(pair.server.data_to_send()) == [[P.CREDIT, sid, 110]]


def test_the_runtime_closes_the_ends_of_a_message_sent_to_a_closed_receiver() -> None:
    # Over a real session (inproc://): the server closes its Receiver while the client,
    # which has not heard of it yet, sends it a message carrying a pipe's Receiver, a
    # pipe's Sender and a stream end.  Holding chan's lock keeps both sessions still
    # between the two steps, so the message surely crosses the STOP.
    import uuid

    import chan
    from chan import _sync

    listener = chan.listen(f"inproc://chan-undelivered-{uuid.uuid4().hex}")
    session = None
    try:
        session = chan.connect(listener.endpoint, timeout=5)
        tx = session.open()
        tx.send("hello", timeout=5)
        rx = listener.accept(timeout=5)
        assert rx.recv(timeout=5) == "hello"
        sub_tx, sub_rx = chan.pipe()  # the client keeps sub_tx and sends sub_rx
        ret_tx, ret_rx = chan.pipe()  # the client keeps ret_rx and sends ret_tx
        mine, theirs = chan.stream_pair()  # the client keeps mine and sends theirs
        with _sync.LOCK:
            rx.close()  # STOP queued at the server
            tx.send({"rx": sub_rx, "tx": ret_tx, "io": theirs}, timeout=5)  # credit: at once
        # Each end the message carried learns at once that it leads nowhere: the
        # Sender handed over was ended with ReceiverClosed ...
        with pytest.raises(chan.RemoteError) as info:
            ret_rx.recv(timeout=5)
        assert info.value.code == "ReceiverClosed"
        # ... the stream's other end was ended (EOF) and stopped (ReaderClosed) ...
        assert mine.read(timeout=5) == b""
        with pytest.raises(chan.RemoteError) as info:
            for _ in range(2):  # the relay learns it on the first write, which it takes
                mine.write(b"x", timeout=5)
        assert info.value.code == "ReaderClosed"
        # ... and the Receiver handed over was stopped (ReceiverClosed).
        with pytest.raises(chan.RemoteError) as info:
            for i in range(2):
                sub_tx.send(i, timeout=5)
        assert info.value.code == "ReceiverClosed"
        with pytest.raises(chan.RemoteError) as info:
            tx.send("more", timeout=5)
        assert info.value.code == "ReceiverClosed"
        # The session survives.
        assert not session.closed
        tx2 = session.open()
        tx2.send("still here", timeout=5)
        rx2 = listener.accept(timeout=5)
        assert rx2.recv(timeout=5) == "still here"
        tx2.close(timeout=5)
        with pytest.raises(chan.EndOfChannel):
            rx2.recv(timeout=5)
        session.close(timeout=5)
        session = None
    finally:
        if session is not None:
            try:
                session.close(timeout=2)
            except chan.ChannelError:
                pass
        listener.close()


# ------------------------------------------------------------------------ the end of a session
@pytest.mark.parametrize("records", [
    [[P.ABORT, P.SHUTDOWN, "exiting"], [P.BYE]],
    [[P.ABORT, P.SHUTDOWN, "exiting"], [P.ABORT, P.SHUTDOWN, "again"]],
    [[P.BYE], [P.BYE]],
    [[P.BYE], [P.OPEN, 3]],
    [[P.ABORT, P.SHUTDOWN, "exiting"], [P.MSG, 1, PAYLOAD]],
    [[P.ABORT, P.SHUTDOWN, "exiting"], b"\xc1"],
], ids=["abort-bye", "abort-abort", "bye-bye", "bye-open", "abort-msg", "abort-garbage"])
def test_records_after_the_end_of_the_session_in_the_same_frame_are_ignored(
        records: list) -> None:
    pair = Pair()
    assert pair.open() == 1
    data = b"".join(r if isinstance(r, bytes) else frame(r) for r in records)
    pair.server.receive_frame(data)
    pair.server.receive_frame(frame([P.OPEN, 5]))  # a later frame: ignored too
    events = drain(pair.server)
    assert len(events) == 1 and type(events[0]) in (P.SessionFailed, P.ByeReceived)
    queued = records_of(pair.server.data_to_send())
    assert queued == ([[P.BYE_ACK]] if records[0] == [P.BYE] else [])
    assert pair.server.state == P.CLOSED


def test_records_after_a_first_record_that_is_not_hello_are_ignored() -> None:
    # (Handling the OPEN used to raise AssertionError, with no peer settings to use.)
    server = P.Session(client=False, clock=Clock())
    events = feed(server, frame([P.MSG, 1, PAYLOAD], [P.OPEN, 1]))
    assert kinds(events) == ["SessionFailed"]
    assert [r[:2] for r in records_of(server.data_to_send())] == [[P.ABORT, P.UNKNOWN_SESSION]]


def test_records_after_abort_at_the_handshake_are_ignored() -> None:
    pair = Pair(handshake=False)
    pair.client.data_to_send()
    events = feed(pair.client, frame([P.ABORT, P.SHUTDOWN, "no"], [P.WELCOME, P.VERSION,
                                                                   b"S" * 8,
                                                                   P.Settings().to_wire()]))
    assert kinds(events) == ["SessionFailed"] and pair.client.peer is None


def test_no_events_after_a_local_abort_in_the_middle_of_a_frame() -> None:
    # The runtime aborts when a payload does not decode; the rest of the frame is moot.
    pair = Pair()
    chid = pair.open()
    pair.server.receive_frame(frame([P.MSG, chid, PAYLOAD], [P.MSG, chid, PAYLOAD]))
    assert pair.server.next_event() == P.MessageReceived(chid, PAYLOAD)
    pair.server.abort(P.PROTOCOL_ERROR, "the front end could not decode the message")
    assert drain(pair.server) == []
    assert [r[:2] for r in records_of(pair.server.data_to_send())] == \
        [[P.ABORT, P.PROTOCOL_ERROR]]


# ------------------------------------------------------------------------ purity
def test_protocol_and_codec_import_neither_zmq_nor_asyncio() -> None:
    # `import chan.protocol` runs chan/__init__.py, which loads the ZeroMQ transport; the
    # claim is about the two modules themselves, so a fresh interpreter loads them (and
    # chan.errors, their one dependency) from their files under a bare package.
    code = (
        "import sys, importlib.util, pathlib, types\n"
        "root = pathlib.Path(sys.argv[1])\n"
        "pkg = types.ModuleType('chan'); pkg.__path__ = [str(root)]; sys.modules['chan'] = pkg\n"
        "for name in ('errors', 'codec', 'protocol'):\n"
        "    spec = importlib.util.spec_from_file_location('chan.' + name, root / (name + '.py'))\n"
        "    mod = importlib.util.module_from_spec(spec); sys.modules['chan.' + name] = mod\n"
        "    spec.loader.exec_module(mod)\n"
        "s = mod.Session(client=True); assert s.data_to_send()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('zmq', 'asyncio'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    import chan
    result = subprocess.run([sys.executable, "-c", code, chan.__path__[0]],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["protocol", "codec"])
def test_protocol_and_codec_sources_do_not_import_io(name: str) -> None:
    import ast
    import pathlib

    import chan
    tree = ast.parse(pathlib.Path(chan.__path__[0], name + ".py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            # relative imports: only the other pure modules
            assert node.module in ("errors", "codec"), node.module
    assert not imported & {"zmq", "asyncio", "socket", "threading", "selectors"}


# ------------------------------------------------------------------------ big chunks
BIG = P.BIG_RECORD * 2


def test_a_big_chunk_travels_alone_and_arrives_whole() -> None:
    """Records of BIG_RECORD bytes or more get a frame of their own (the receiver then
    slices the payload out instead of parsing it), and small ones around them batch."""
    pair, sid = _stream_pair(window=10 * BIG)
    chunk = bytes(range(256)) * (BIG // 256)
    pair.client.send_data(sid, b"small")
    pair.client.send_data(sid, chunk)
    pair.client.send_data(sid, b"tail")
    frames = pair.client.data_to_send()
    assert [len(records_of([f])) for f in frames] == [1, 1, 1]
    events = []
    for f in frames:
        events.extend(feed(pair.server, bytes(f)))
    assert events == [P.DataReceived(sid, b"small"), P.DataReceived(sid, chunk),
                      P.DataReceived(sid, b"tail")]


@pytest.mark.parametrize("chid_bytes", [b"\xcd\x00\x03", b"\xce\x00\x00\x00\x03",
                                        b"\xcf" + (3).to_bytes(8, "big")])
def test_a_lone_big_data_record_with_a_wide_channel_id(chid_bytes: bytes) -> None:
    """msgpack may spell an id in any width; the slicing path reads them all."""
    pair, sid = _stream_pair(window=10 * BIG)
    assert sid == 3
    data = b"z" * BIG
    record = b"\x93\x04" + chid_bytes + b"\xc6" + len(data).to_bytes(4, "big") + data
    assert feed(pair.server, record) == [P.DataReceived(sid, data)]


def test_a_truncated_big_data_frame_is_a_violation() -> None:
    pair, sid = _stream_pair(window=10 * BIG)
    record = frame([P.DATA, sid, b"z" * BIG])
    events = feed(pair.server, record[:-1])
    assert_violation(pair.server, events, "truncated")


def test_a_big_data_frame_over_the_window_is_a_violation() -> None:
    pair, sid = _stream_pair(window=BIG // 2)
    events = feed(pair.server, frame([P.DATA, sid, b"z" * BIG]))
    assert_violation(pair.server, events, "window")
