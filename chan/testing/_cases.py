"""What the checks send and what they expect back, written once for both front ends.

The blocking checks (checks.py) and their asyncio twins (achecks.py) differ only in
``await``; the messages, the bad values, the error cases and the shapes they build
live here, so a change to what is checked is made once.
"""

from __future__ import annotations

from typing import Any

import msgpack

from ._util import SHORT, WAIT, CodedError, expect

PAD = b"x" * 1024  # flow control is checked with 1 KiB messages

#: A tuple is sent as a list (the msgpack view of a value), nested ones too.
TUPLE_SENT = (1, (2, "three"), {"k": (4,)})
TUPLE_RECEIVED = [1, [2, "three"], {"k": [4]}]

#: Lines written through a sent stream end (small enough to fit every buffer).
LINES = [f"line {i}\n".encode() for i in range(500)]

#: Values that are not msgpack: send() raises TypeError for each.
NOT_MSGPACK = ({1, 2}, object(), 2**64, [1, {"x": 1j}], {"f": len})

DEPTH = 20  # the levels of lists and dicts around the nested stream end


class Plain(Exception):
    """An error without a ``code``: the peer sees its class name."""


def close_errors() -> list[tuple[BaseException, str, str]]:
    """``(error, code, message)``: what ``close(error=error)`` shows the peer."""
    return [(CodedError("no such thing ✓"), "E_CODED", "no such thing ✓"),
            (ValueError("bad value"), "ValueError", "bad value"),
            (Plain(), "Plain", "")]


def twice(s_tx: Any, r_rx: Any, end: Any) -> tuple:
    """Messages holding one end twice (a Sender, a Receiver, a stream end)."""
    return ([s_tx, s_tx], {"a": s_tx, "b": [{"c": s_tx}]}, (r_rx, r_rx), [end, [end]])


def nest(ret: Any, feed: Any, io: Any) -> dict:
    """A message with a Sender, a Receiver and a stream end deep inside it."""
    deep: Any = {"io": io}
    for i in range(DEPTH):
        deep = [deep] if i % 2 else {"level": i, "inner": (deep,)}
    return {"a": [0, {"b": ({"ret": ret},)}], "c": {1: [None, {"feed": feed}]}, "d": deep}


def unnest(msg: dict) -> tuple[Any, Any, Any]:
    """The ``(ret, feed, io)`` of a received :func:`nest` message."""
    far = msg["d"]
    for i in reversed(range(DEPTH)):
        far = far[0] if i % 2 else far["inner"][0]
    return msg["a"][1]["b"][0]["ret"], msg["c"][1][1]["feed"], far["io"]


def expect_timed_out(elapsed: float) -> None:
    """A ``recv(timeout=SHORT)`` that timed out took about SHORT, not a whole WAIT."""
    expect(SHORT * 0.9 <= elapsed < WAIT, f"recv(timeout={SHORT}) returned after {elapsed} s")


def packed_bytes(size: int) -> bytes:
    """A bytes message whose msgpack form is exactly ``size`` bytes long."""
    for header in (2, 3, 5):  # bin 8, bin 16, bin 32
        data = b"x" * (size - header)
        if len(msgpack.packb(data)) == size:
            return data
    raise ValueError(f"no bytes value packs to exactly {size} bytes")
