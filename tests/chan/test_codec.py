"""Property tests of chan.codec: message values round-trip; bad payloads are ProtocolError.

A message is one msgpack value (use_bin_type: str is str8/16/32, bytes is bin) in which
channel ends travel as ext types 1 (SENDER), 2 (RECEIVER) and 3 (STREAM) whose data is
the channel id as 8 bytes big-endian (docs/PROTOCOL.md, "Messages and references").
msgpack timestamps (ext type -1, part of the msgpack spec) are message values too.
The codec never sees real ends here: fake to_ref/from_ref hooks stand in for a session.
"""

from __future__ import annotations

import datetime
import math
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import chan
from chan import codec

INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


class FakeEnd:
    """Stands for a Sender/Receiver/ByteStream end: the session's hook turns it into a ref."""

    __slots__ = ("code", "chid")

    def __init__(self, code: int, chid: int) -> None:
        self.code, self.chid = code, chid

    def __eq__(self, other: object) -> bool:
        return type(other) is FakeEnd and (self.code, self.chid) == (other.code, other.chid)

    def __hash__(self) -> int:
        return hash((self.code, self.chid))

    def __repr__(self) -> str:
        return f"FakeEnd({self.code}, {self.chid})"


def to_ref(obj: Any) -> msgpack.ExtType:
    if isinstance(obj, FakeEnd):
        return codec.ref(obj.code, obj.chid)
    raise codec.unsupported(obj)


def from_ref(code: int, chid: int) -> FakeEnd:
    return FakeEnd(code, chid)


def same(a: Any, b: Any) -> bool:
    """Equality that tells bool from int, 0.0 from -0.0, and lets NaN equal NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return (list(a) == list(b)  # keys and their order (msgpack maps keep it)
                and all(same(a[k], b[k]) for k in a))
    return a == b


def as_decoded(value: Any) -> Any:
    """What a value looks like after the wire: tuples become lists, bytearray bytes."""
    if isinstance(value, (list, tuple)):
        return [as_decoded(v) for v in value]
    if isinstance(value, dict):
        return {k: as_decoded(v) for k, v in value.items()}
    if isinstance(value, bytearray):
        return bytes(value)
    return value


timestamps = st.builds(msgpack.Timestamp, st.integers(INT64_MIN, 2**63 - 1),
                       st.integers(0, 999_999_999))
scalars = (st.none() | st.booleans() | st.integers(INT64_MIN, UINT64_MAX)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text() | st.binary()
           | timestamps)
keys = st.text(max_size=8) | st.integers(INT64_MIN, UINT64_MAX)
refs = st.builds(FakeEnd, st.sampled_from(codec.EXT_CODES), st.integers(0, UINT64_MAX))


def nested(leaves: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(
        leaves,
        lambda children: (st.lists(children, max_size=5)
                          | st.tuples(children, children)
                          | st.dictionaries(keys, children, max_size=5)),
        max_leaves=20)


values = nested(scalars | st.binary().map(bytearray))
values_with_refs = nested(scalars | refs)


# ------------------------------------------------------------------------ round trips
@SETTINGS
@given(values)
@example(float("nan"))
@example(-0.0)
@example([INT64_MIN, UINT64_MAX, -1, 0, 2**32, True, False])
@example(("a", (b"b", None)))
@example({1: "int key", "1": "str key"})
def test_round_trip(value: Any) -> None:
    payload = codec.encode(value, to_ref)
    assert type(payload) is bytes
    assert same(codec.decode(payload, from_ref), as_decoded(value))


@SETTINGS
@given(values)
def test_encoding_is_plain_msgpack(value: Any) -> None:
    # Without references a message is exactly what any msgpack library writes with the
    # bin type on; a second implementation needs nothing more.
    assert codec.encode(value, to_ref) == msgpack.packb(value, use_bin_type=True)


@SETTINGS
@given(values_with_refs)
@example({"verb": "ls", "ret": FakeEnd(codec.EXT_SENDER, 3)})
@example([FakeEnd(codec.EXT_RECEIVER, 0), [FakeEnd(codec.EXT_STREAM, UINT64_MAX)]])
def test_references_round_trip(value: Any) -> None:
    found: list[FakeEnd] = []

    def hook(obj: Any) -> msgpack.ExtType:
        found.append(obj)
        return to_ref(obj)

    seen: list[FakeEnd] = []

    def unhook(code: int, chid: int) -> FakeEnd:
        seen.append(FakeEnd(code, chid))
        return seen[-1]

    payload = codec.encode(value, hook)
    assert same(codec.decode(payload, unhook), as_decoded(value))
    # Each end is announced once, and the receiver meets them in the writer's order.
    assert seen == found


def test_reference_layout() -> None:
    # fixext 8 (d7), type code, channel id big-endian: what PROTOCOL.md specifies.
    assert codec.ref(codec.EXT_SENDER, 3) == msgpack.ExtType(1, bytes(7) + b"\x03")
    payload = codec.encode({"ret": FakeEnd(codec.EXT_RECEIVER, 0x0102030405060708)}, to_ref)
    assert payload == bytes.fromhex("81a3726574d7020102030405060708")
    assert (codec.EXT_SENDER, codec.EXT_RECEIVER, codec.EXT_STREAM) == (1, 2, 3)


def test_unsupported_value_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="object"):
        codec.encode({"x": object()}, to_ref)
    with pytest.raises(TypeError):
        codec.encode({1, 2}, to_ref)


def test_from_ref_errors_pass_through() -> None:
    # The session's hook rejects an invalid id with ProtocolError: that error, unchanged.
    boom = chan.ProtocolError("invalid channel id 2")

    def reject(code: int, chid: int) -> Any:
        raise boom

    with pytest.raises(chan.ProtocolError) as info:
        codec.decode(codec.encode([FakeEnd(1, 2)], to_ref), reject)
    assert info.value is boom


# ------------------------------------------------------------------------ bad payloads
BAD = {
    "empty": b"",
    "reserved byte c1": b"\xc1",
    "truncated array": b"\x92\x01",
    "truncated str": b"\xa5ab",
    "trailing bytes": b"\x01\x02",
    "invalid utf-8 in str": b"\xa2\xff\xfe",
    "unhashable map key": b"\x81\x90\xc0",
    "unknown ext type 5": b"\xd7\x05" + bytes(8),
    "ext type 0": b"\xd7\x00" + bytes(8),
    "ref with 4 bytes of data": b"\xd6\x01\x00\x00\x00\x03",
    "ref with 16 bytes of data": b"\xd8\x01" + bytes(16),
    "bad timestamp": b"\xc7\x03\xff\x00\x00\x00",
    "nesting too deep": b"\x91" * 100_000 + b"\xc0",
    "huge array header": b"\xdd\xff\xff\xff\xff",
    "huge map header": b"\xdf\xff\xff\xff\xff",
    "huge bin header": b"\xc6\xff\xff\xff\xff",
}


@pytest.mark.parametrize("payload", BAD.values(), ids=BAD.keys())
def test_bad_payload_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(chan.ProtocolError):
        codec.decode(payload, from_ref)


# ------------------------------------------------------------------------ timestamps
TIMESTAMPS = {
    # the three forms of the msgpack spec's timestamp extension (ext type -1)
    "32-bit": (msgpack.Timestamp(1, 0), "d6 ff 00 00 00 01"),
    "64-bit": (msgpack.Timestamp(2**33, 7), "d7 ff 00 00 00 1e 00 00 00 00"),
    "96-bit": (msgpack.Timestamp(-1, 5), "c7 0c ff 00 00 00 05 ff ff ff ff ff ff ff ff"),
}


@pytest.mark.parametrize("ts, wire", TIMESTAMPS.values(), ids=TIMESTAMPS.keys())
def test_timestamps_round_trip(ts: msgpack.Timestamp, wire: str) -> None:
    payload = codec.encode({"at": ts, "refs": [FakeEnd(codec.EXT_SENDER, 3)]}, to_ref)
    assert bytes.fromhex(wire) in payload  # the shortest form, as msgpack writes it
    value = codec.decode(payload, from_ref)
    assert type(value["at"]) is msgpack.Timestamp and value["at"] == ts
    assert value["refs"] == [FakeEnd(codec.EXT_SENDER, 3)]
    assert codec.decode(bytes.fromhex(wire), from_ref) == ts
    assert codec.encode(ts, to_ref) == bytes.fromhex(wire) == msgpack.packb(ts)


def test_the_reusable_encoder_and_decoder_round_trip_timestamps() -> None:
    ts = msgpack.Timestamp(1_700_000_000, 123_456_789)
    pack, unpack = codec.encoder(to_ref), codec.decoder(from_ref)
    assert unpack(pack([ts, FakeEnd(codec.EXT_STREAM, 5)])) == [ts, FakeEnd(codec.EXT_STREAM, 5)]


def test_timestamps_do_not_reach_from_ref() -> None:
    def no_ref(code: int, chid: int) -> Any:
        raise AssertionError(f"ext {code} is not a reference")
    assert codec.decode(b"\xd6\xff\x00\x00\x00\x01", no_ref) == msgpack.Timestamp(1, 0)


@pytest.mark.parametrize("payload", [
    b"\xc7\x03\xff\x00\x00\x00",  # 3 bytes: no such form
    b"\xd8\xff" + bytes(16),  # 16 bytes: no such form
    b"\xd7\xff" + struct.pack(">Q", (10**9 << 34) | 1),  # 64-bit, nanoseconds too big
    b"\xc7\x0c\xff" + struct.pack(">Iq", 10**9, 1),  # 96-bit, nanoseconds too big
], ids=["3-bytes", "16-bytes", "64-bit-ns-overflow", "96-bit-ns-overflow"])
def test_malformed_timestamps_are_protocol_errors(payload: bytes) -> None:
    with pytest.raises(chan.ProtocolError):
        codec.decode(payload, from_ref)


def test_datetime_is_not_converted() -> None:
    # Only msgpack.Timestamp travels; a datetime goes to the session's hook, which
    # rejects it like any other foreign object.
    with pytest.raises(TypeError, match="datetime"):
        codec.encode(datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc), to_ref)


def _decode_or_protocol_error(payload: bytes) -> None:
    try:
        codec.decode(payload, from_ref)
    except chan.ProtocolError:
        pass  # the only error a peer's bytes may cause


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_decode_or_raise_protocol_error(payload: bytes) -> None:
    _decode_or_protocol_error(payload)


@SETTINGS
@given(values_with_refs, st.data())
def test_mutated_payloads_decode_or_raise_protocol_error(value: Any, data: st.DataObject) -> None:
    payload = bytearray(codec.encode(value, to_ref))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, len(payload)))
        if op == "flip" and i < len(payload):
            payload[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del payload[i:]
        else:
            payload[i:i] = data.draw(st.binary(min_size=1, max_size=4))
    _decode_or_protocol_error(bytes(payload))


def test_big_endian_id_covers_64_bits() -> None:
    data = struct.pack(">Q", UINT64_MAX)
    assert codec.decode(b"\xd7\x03" + data, from_ref) == FakeEnd(3, UINT64_MAX)
