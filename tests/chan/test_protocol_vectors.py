"""docs/PROTOCOL.md's test vectors, checked against chan.protocol and chan.codec.

The vectors are parsed out of the document (fenced blocks with the info string
``chan-vector``), so the spec and the code cannot drift apart unnoticed (libchan's lesson).
The ``answer`` of an undelivered message is checked against the runtime
(chan._session.SessionCore, with a transport that only collects what it is given).
"""

from __future__ import annotations

import ast
import pathlib
import re
from typing import Any, Callable

import msgpack
import pytest

from chan import _sync, codec
from chan import protocol as P
from chan._session import SessionCore
from chan.channel import MsgQueue
from chan.errors import ProtocolError, SessionLost
from chan.net import BLOCKING

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
LITERAL_KEYS = ("records", "message", "events", "answer")
EXPECTATIONS = {"ProtocolError", "UnknownSession", "dropped", "undelivered", "accepted"}
REF_NAMES = {"SENDER": codec.EXT_SENDER, "RECEIVER": codec.EXT_RECEIVER,
             "STREAM": codec.EXT_STREAM}
REF_CODES = {v: k for k, v in REF_NAMES.items()}


# ------------------------------------------------------------------------ parsing
def parse_vectors(text: str) -> list[dict]:
    vectors = []
    for block in re.findall(r"^```chan-vector\n(.*?)^```", text, re.S | re.M):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if not line.strip():
                continue
            if line[0].isspace():
                assert key is not None, f"continuation without a key: {line!r}"
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip()
            assert key not in fields, f"duplicate key {key!r} in {block!r}"
            fields[key] = value.strip()
        vector: dict[str, Any] = dict(fields)
        vector["bytes"] = bytes.fromhex(re.sub(r"\s+", "", fields["hex"]))
        for k in LITERAL_KEYS:
            if k in fields:
                vector[k] = ast.literal_eval(fields[k])
        vectors.append(vector)
    return vectors


VECTORS = parse_vectors(DOC.read_text())
BY_NAME = {v["name"]: v for v in VECTORS}
TRANSCRIPT = [v for v in VECTORS if "from" in v and not v["name"].startswith("abort-")]
ABORTS = [v for v in VECTORS if v["name"].startswith("abort-")]
INVALID = [v for v in VECTORS if "setup" in v]
WITH_RECORDS = [v for v in VECTORS if "records" in v]
WITH_MESSAGE = [v for v in VECTORS if "message" in v]


def ids(vectors: list[dict]) -> list[str]:
    return [v["name"] for v in vectors]


def test_the_document_has_the_vectors() -> None:
    assert len(BY_NAME) == len(VECTORS), "vector names must be unique"
    # Every opcode appears in a valid vector; there is a batch, nested references and
    # several invalid frames.
    ops = {r[0] for v in TRANSCRIPT + ABORTS for r in v["records"]}
    assert ops == set(range(13))
    assert any(len(v["records"]) == 2 for v in TRANSCRIPT)
    assert len(INVALID) >= 10
    assert {v["expect"] for v in INVALID} == EXPECTATIONS
    for v in INVALID:
        assert v["setup"] in SETUPS, v["name"]
        if v["expect"] in ("undelivered", "accepted"):
            assert "events" in v, v["name"]
        if "answer" in v:
            assert v["expect"] == "undelivered" and v["setup"] == "server-stopped", v["name"]
    # The HELLO and WELCOME of the transcript announce all five settings.
    for name in ("hello", "welcome"):
        assert list(BY_NAME[name]["records"][0][3]) == list(P.Settings().to_wire()), name
    # An undelivered message with every kind of reference, answered by the runtime.
    assert any(v.get("answer") and len(v["answer"]) == 4 for v in INVALID)


# ------------------------------------------------------------------------ bytes <-> meaning
def pack_records(records: list) -> bytes:
    return b"".join(msgpack.packb(r, use_bin_type=True) for r in records)


def unpack_records(data: bytes) -> list:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(data)
    return list(unpacker)


@pytest.mark.parametrize("vector", WITH_RECORDS, ids=ids(WITH_RECORDS))
def test_encoding_the_records_gives_the_bytes(vector: dict) -> None:
    assert pack_records(vector["records"]).hex(" ") == vector["bytes"].hex(" ")


@pytest.mark.parametrize("vector", WITH_RECORDS, ids=ids(WITH_RECORDS))
def test_decoding_the_bytes_gives_the_records(vector: dict) -> None:
    assert unpack_records(vector["bytes"]) == vector["records"]


def _to_wire(value: Any) -> Any:
    """A vector's message with its reference tuples turned into ext values."""
    if isinstance(value, tuple):
        name, chid = value
        return codec.ref(REF_NAMES[name], chid)
    if isinstance(value, list):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    return value


def _from_ref(code: int, chid: int) -> tuple:
    return (REF_CODES[code], chid)


def _msg_payload(vector: dict) -> bytes:
    payloads = [r[2] for r in vector["records"] if r[0] == P.MSG]
    assert len(payloads) == 1, "a vector with `message` has exactly one MSG"
    return payloads[0]


@pytest.mark.parametrize("vector", WITH_MESSAGE, ids=ids(WITH_MESSAGE))
def test_message_encodes_to_the_payload(vector: dict) -> None:
    def to_ref(obj: Any) -> Any:
        raise AssertionError(f"unexpected {obj!r}")
    assert codec.encode(_to_wire(vector["message"]), to_ref) == _msg_payload(vector)


@pytest.mark.parametrize("vector", WITH_MESSAGE, ids=ids(WITH_MESSAGE))
def test_payload_decodes_to_the_message(vector: dict) -> None:
    assert codec.decode(_msg_payload(vector), _from_ref) == vector["message"]


# ------------------------------------------------------------------------ replaying
class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


_DIRECTIONS = {
    codec.EXT_SENDER: (P.KIND_CHANNEL, True, False),
    codec.EXT_RECEIVER: (P.KIND_CHANNEL, False, True),
    codec.EXT_STREAM: (P.KIND_STREAM, True, True),
}


def receive(session: P.Session, data: bytes) -> tuple[list, list]:
    """Feed one frame as a front end does: events, and the decoded MSG values.

    Decoding registers the ids of references (the reader's side of each channel); a
    payload that does not decode ends the session with ProtocolError.
    """
    def from_ref(code: int, chid: int) -> tuple:
        kind, send, recv = _DIRECTIONS[code]
        session.register_peer_channel(chid, kind, we_send=send, we_recv=recv)
        return (REF_CODES[code], chid)

    session.receive_frame(data)
    events, values = [], []
    while (event := session.next_event()) is not None:
        events.append(event)
        if type(event) is P.MessageReceived:
            try:
                values.append(codec.decode(event.payload, from_ref))
            except ProtocolError as exc:
                session.violation(str(exc))
    return events, values


def _settings(vector: dict) -> P.Settings:
    return P.Settings(**vector["records"][0][3])


def _names(events: list) -> list[str]:
    return [type(e).__name__ for e in events]


def test_the_transcript_replays_through_two_sessions() -> None:
    hello, welcome = BY_NAME["hello"]["records"][0], BY_NAME["welcome"]["records"][0]
    clock = Clock()
    c = P.Session(client=True, settings=_settings(BY_NAME["hello"]), clock=clock,
                  nonce=hello[2])
    s = P.Session(client=False, settings=_settings(BY_NAME["welcome"]), clock=clock,
                  nonce=welcome[2])
    sides = {"client": (c, s), "server": (s, c)}

    def ref(name: str, chid: int) -> msgpack.ExtType:
        return codec.ref(REF_NAMES[name], chid)

    def encode(value: Any) -> bytes:
        return codec.encode(_to_wire(value), None)

    # The API calls that make each frame, in the document's order.  A side's protocol
    # layer answers END and BYE by itself, and the client says HELLO by itself.
    def open_and_message() -> None:
        assert c.new_channel(P.KIND_CHANNEL, we_send=True, we_recv=False) == 1
        c.send_open(1)
        assert c.new_channel(P.KIND_CHANNEL, we_send=False, we_recv=True) == 3
        c.send_message(1, encode({"verb": "ls", "ret": ("SENDER", 3)}))

    def nested() -> None:
        assert c.new_channel(P.KIND_STREAM, we_send=True, we_recv=True) == 5
        assert c.new_channel(P.KIND_CHANNEL, we_send=True, we_recv=False) == 7
        c.send_message(1, encode(BY_NAME["nested-references"]["message"]))

    def message_and_end() -> None:
        c.send_message(7, encode("TERM"))
        c.send_end(7, ("Cancelled", "interrupted by the user"))

    def ping() -> None:
        clock.now += c.settings.heartbeat_ms / 1000
        c.tick()

    first_cost = len(_msg_payload(BY_NAME["open-and-message"])) + P.MSG_COST
    script: dict[str, Callable[[], None]] = {
        "hello": lambda: None,
        "welcome": lambda: None,
        "open-and-message": open_and_message,
        "reply": lambda: s.send_message(3, encode(["a", "b"])),
        "end": lambda: s.send_end(3),
        "end-ack": lambda: None,
        "credit": lambda: s.grant(1, first_cost),
        "nested-references": nested,
        "data": lambda: c.send_data(5, b"hi\n"),
        "data-back": lambda: s.send_data(5, b"hi\n"),
        "message-and-end-with-error": message_and_end,
        "end-ack-with-error": lambda: None,
        "stop": lambda: s.send_stop(1, ("ReceiverClosed",
                                        "the receiving end of this channel was closed")),
        "ping": ping,
        "bye": c.send_bye,
        "bye-ack": lambda: None,
    }
    assert [v["name"] for v in TRANSCRIPT] == list(script), "replay script out of date"
    assert first_cost == BY_NAME["credit"]["records"][0][2]
    for vector in TRANSCRIPT:
        sender, receiver = sides[vector["from"]]
        script[vector["name"]]()
        frames = sender.data_to_send()
        assert [bytes(f).hex(" ") for f in frames] == [vector["bytes"].hex(" ")], vector["name"]
        events, values = receive(receiver, vector["bytes"])
        assert _names(events) == vector["events"], vector["name"]
        if "message" in vector:
            assert values == [vector["message"]], vector["name"]
    assert c.state == s.state == P.CLOSED
    assert c.data_to_send() == [] and s.data_to_send() == []


@pytest.mark.parametrize("vector", ABORTS, ids=ids(ABORTS))
def test_abort_vectors(vector: dict) -> None:
    clock = Clock()
    c = P.Session(client=True, clock=clock)
    s = P.Session(client=False, clock=clock)
    for f in c.data_to_send():
        receive(s, bytes(f))
    for f in s.data_to_send():
        receive(c, bytes(f))
    assert c.state == P.OPEN_STATE
    events, _ = receive(c, vector["bytes"])
    assert _names(events) == vector["events"]
    error = {"SessionLost": SessionLost, "ProtocolError": ProtocolError}[vector["error"]]
    assert type(events[-1].error) is error
    assert vector["records"][0][2] in str(events[-1].error)
    assert c.state == P.CLOSED and c.data_to_send() == []


# ------------------------------------------------------------------------ invalid frames
def _server_new() -> P.Session:
    return P.Session(client=False, clock=Clock())


def _client_new() -> P.Session:
    c = P.Session(client=True, clock=Clock())
    assert c.data_to_send()  # its HELLO
    return c


SERVER_OPEN_SETTINGS = P.Settings(window=1, stream_window=16, max_message=64,
                                  heartbeat_ms=1000, max_channels=3)


def _server_open() -> P.Session:
    s = P.Session(client=False, clock=Clock(), settings=SERVER_OPEN_SETTINGS)
    events, _ = receive(s, BY_NAME["hello"]["bytes"])
    assert _names(events) == ["Handshaken"]
    events, _ = receive(s, bytes.fromhex("920201"))
    assert _names(events) == ["ChannelOpened"]
    s.data_to_send()  # its WELCOME
    return s


def _server_stopped() -> P.Session:
    s = _server_open()
    s.send_stop(1)
    assert unpack_records(b"".join(s.data_to_send())) == [[P.STOP, 1, None]]
    return s


SETUPS: dict[str, Callable[[], P.Session]] = {
    "server-new": _server_new,
    "client-new": _client_new,
    "server-open": _server_open,
    "server-stopped": _server_stopped,
}


@pytest.mark.parametrize("vector", INVALID, ids=ids(INVALID))
def test_invalid_and_late_frames(vector: dict) -> None:
    session = SETUPS[vector["setup"]]()
    events, values = receive(session, vector["bytes"])
    expect = vector["expect"]
    if expect == "dropped":
        assert events == []
        assert session.state == P.OPEN_STATE
        assert session.data_to_send() == []
        return
    if expect == "undelivered":
        assert _names(events) == vector["events"] == ["MessageReceived"] * len(events)
        assert session.state == P.OPEN_STATE
        assert session.data_to_send() == []  # the protocol layer itself says nothing
        if "message" in vector:
            assert values == [vector["message"]]
        return
    if expect == "accepted":
        assert _names(events) == vector["events"]
        assert session.state == P.OPEN_STATE
        queued = unpack_records(b"".join(session.data_to_send()))
        assert [r[0] for r in queued] == ([P.WELCOME] if "Handshaken" in vector["events"]
                                          else [])
        if "Handshaken" in vector["events"]:
            wire = vector["records"][0][3]
            # timeout_ms is optional on receipt: three heartbeats when missing.
            assert session.peer.timeout_ms == wire.get("timeout_ms",
                                                       3 * wire["heartbeat_ms"])
        return
    assert events and type(events[-1]) is P.SessionFailed, events
    assert type(events[-1].error) is ProtocolError
    assert session.state == P.CLOSED
    queued = unpack_records(b"".join(session.data_to_send()))
    assert queued, "the peer must be told with an ABORT"
    abort = queued[-1]
    assert abort[0] == P.ABORT and isinstance(abort[2], str)
    assert abort[1] == {"ProtocolError": P.PROTOCOL_ERROR,
                        "UnknownSession": P.UNKNOWN_SESSION}[expect]


# ------------------------------------------------------------------------ the runtime's answer
class _Transport:
    """What SessionCore needs of a transport; frames stay in the protocol session."""

    def __init__(self) -> None:
        self.ended = False

    def flush_soon(self, core: SessionCore) -> None:
        pass

    def session_ended(self, core: SessionCore) -> None:
        self.ended = True


ANSWERED = [v for v in INVALID if "answer" in v]


@pytest.mark.parametrize("vector", ANSWERED, ids=ids(ANSWERED))
def test_the_runtime_answers_undelivered_messages(vector: dict) -> None:
    # server-stopped, with the runtime on top: the accept()ed Receiver of channel 1 is
    # closed (that is what sends STOP 1); then the vector's frame arrives.
    transport = _Transport()
    with _sync.LOCK:
        accepts = MsgQueue(capacity=16)
        core = SessionCore(P.Session(client=False, clock=Clock(),
                                     settings=SERVER_OPEN_SETTINGS),
                           transport, BLOCKING, accepts=accepts)
        core.feed(BY_NAME["hello"]["bytes"])
        core.feed(bytes.fromhex("920201"))
        receiver = accepts.attempt_get()
        assert type(receiver) is BLOCKING.Receiver
        receiver.close()
        before = unpack_records(b"".join(core.proto.data_to_send()))
        assert [r[0] for r in before] == [P.WELCOME, P.STOP] and before[1][1] == 1
        core.feed(vector["bytes"])
        answer = unpack_records(b"".join(core.proto.data_to_send()))
        assert answer == vector["answer"]
        assert core.proto.state == P.OPEN_STATE and not core.closed and not transport.ended
        # Every end the message carried is closed: none is left in the session's tables
        # but the Senders' sinks, which wait for the END_ACK of their END.
        ends = [r[1] for r in vector["answer"]]
        assert not set(core.ins) & set(ends)
        assert set(core.outs) == {r[1] for r in vector["answer"] if r[0] == P.END}
