"""The blocking checks that take one pair maker, and :data:`CHECKS` (all of them).

Each fails with AssertionError (or the chan error that broke it).  The asyncio twins
(achecks.py) follow these line by line; what both send and expect is in _cases.py, the
checks that need more than one pair maker are in extra.py.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Iterable

from ..channel import Receiver, Sender, pipe
from ..errors import ClosedChannelError, RemoteError, Timeout
from ..stream import ByteStream, stream_pair
from ._cases import (LINES, NOT_MSGPACK, PAD, TUPLE_RECEIVED, TUPLE_SENT, close_errors,
                     expect_timed_out, nest, twice, unnest)
from ._steps import (Background, drain, expect_end, expect_passes, read_exactly, send_all,
                     send_until_refused)
from ._util import (SHORT, VALUES, WAIT, CodedError, assert_same, expect, expect_type,
                    raises, raises_remote)
from .links import PairMaker


def check_ordering(make_pair: PairMaker, n: int = 5000) -> None:
    """``n`` messages (many windows' worth) arrive once each, in order, then the end."""
    tx, rx = make_pair()
    sender = Background(lambda: send_all(tx, ({"seq": i} for i in range(n))))
    got = [msg["seq"] for msg in drain(rx)]
    sender.result()
    expect(got == list(range(n)), "messages were lost, duplicated or reordered")


def check_ordering_per_channel(make_pair: PairMaker, channels: int = 4,
                               n: int = 600) -> None:
    """Several channels busy at once: each keeps its own order."""
    pairs = [make_pair() for _ in range(channels)]
    senders = [Background(lambda tx=tx, c=c: send_all(tx, [[c, i] for i in range(n)]))
               for c, (tx, _) in enumerate(pairs)]
    for c, (_, rx) in reversed(list(enumerate(pairs))):
        got = drain(rx)
        expect(got == [[c, i] for i in range(n)], f"channel {c}: messages lost or reordered")
    for s in senders:
        s.result()


def check_values(make_pair: PairMaker) -> None:
    """Every kind of msgpack value arrives equal, with its type (tuples as lists)."""
    tx, rx = make_pair()
    for name, value in VALUES.items():
        tx.send(value, timeout=WAIT)
        assert_same(rx.recv(timeout=WAIT), value, name)
    tx.send(VALUES, timeout=WAIT)
    assert_same(rx.recv(timeout=WAIT), VALUES, "all values in one message")


def check_tuple_as_list(make_pair: PairMaker) -> None:
    """A tuple arrives as a list, on every transport (the msgpack view of a value)."""
    tx, rx = make_pair()
    tx.send(TUPLE_SENT, timeout=WAIT)
    assert_same(rx.recv(timeout=WAIT), TUPLE_RECEIVED)


def check_reply_channel(make_pair: PairMaker) -> None:
    """A Sender in a message lets the peer answer, and answer with a Sender in turn."""
    tx, rx = make_pair()
    ret_tx, ret_rx = pipe()
    tx.send({"verb": "ping", "ret": ret_tx}, timeout=WAIT)
    req = rx.recv(timeout=WAIT)
    expect(req["verb"] == "ping", f"got {req!r}")
    ret = req["ret"]
    expect_type(ret, Sender, "the reply channel")
    ret.send({"pong": 1}, timeout=WAIT)
    back_tx, back_rx = pipe()
    ret.send({"next": back_tx}, timeout=WAIT)
    ret.close(timeout=WAIT)
    assert_same(ret_rx.recv(timeout=WAIT), {"pong": 1})
    nxt = ret_rx.recv(timeout=WAIT)["next"]
    expect_type(nxt, Sender, "a Sender sent back on the reply channel")
    expect_end(ret_rx)
    nxt.send("hello", timeout=WAIT)
    nxt.close(timeout=WAIT)
    expect(back_rx.recv(timeout=WAIT) == "hello", "second-level reply lost")
    expect_end(back_rx)


def check_receiver_in_message(make_pair: PairMaker) -> None:
    """A Receiver in a message lets the peer read what is sent on it afterwards."""
    tx, rx = make_pair()
    feed_tx, feed_rx = pipe()
    tx.send({"feed": feed_rx}, timeout=WAIT)
    far = rx.recv(timeout=WAIT)["feed"]
    expect_type(far, Receiver, "the Receiver sent in a message")
    send_all(feed_tx, range(10))
    expect(drain(far) == list(range(10)), "messages on a sent Receiver lost or reordered")


def check_sent_end_close_with_error(make_pair: PairMaker) -> None:
    """close(error=...) reaches the peer unchanged through ends sent in a message."""
    tx, rx = make_pair()
    feed_tx, feed_rx = pipe()
    near, end = stream_pair()
    tx.send([feed_rx, end], timeout=WAIT)
    far, far_io = rx.recv(timeout=WAIT)
    feed_tx.send("last", timeout=WAIT)
    feed_tx.close(error=CodedError("relayed"), timeout=WAIT)
    expect(far.recv(timeout=WAIT) == "last", "message before the error lost")
    with raises_remote("E_CODED", "relayed", "through a sent Receiver"):
        far.recv(timeout=WAIT)
    near.write(b"abc", timeout=WAIT)
    near.close(error=ValueError("stream broke"), timeout=WAIT)
    expect(read_exactly(far_io, 3) == b"abc", "bytes before the error lost")
    with raises_remote("ValueError", "stream broke", "through a sent stream end"):
        far_io.read(timeout=WAIT)


def check_stream_in_message(make_pair: PairMaker) -> None:
    """A ByteStream end in a message is duplex; close_write is EOF, each way."""
    tx, rx = make_pair()
    near, end = stream_pair()
    tx.send({"io": end}, timeout=WAIT)
    far = rx.recv(timeout=WAIT)["io"]
    expect_type(far, ByteStream, "the stream end sent in a message")
    near.write(b"ping\n", timeout=WAIT)
    expect(far.readline(timeout=WAIT) == b"ping\n", "line lost")
    far.write(b"pong\n", timeout=WAIT)
    expect(near.readline(timeout=WAIT) == b"pong\n", "answer lost")
    near.write(b"tail", timeout=WAIT)
    near.close_write(timeout=WAIT)
    expect(far.read(timeout=WAIT) == b"tail", "bytes before EOF lost")
    expect(far.read(10, timeout=WAIT) == b"", "EOF is not sticky")
    far.write(b"still open this way", timeout=WAIT)  # half-closed: the other way works
    far.close_write(timeout=WAIT)
    expect(near.read(timeout=WAIT) == b"still open this way", "reverse direction broken")
    near.close()
    far.close()


def check_stream_bulk(make_pair: PairMaker, size: int = 2 * 1024 * 1024) -> None:
    """Megabytes through a sent stream end (beyond every buffer) arrive intact."""
    tx, rx = make_pair()
    near, end = stream_pair()
    tx.send(end, timeout=WAIT)
    far = rx.recv(timeout=WAIT)
    data = os.urandom(size)

    def write(stream: ByteStream, data: bytes) -> None:
        stream.write(data, timeout=WAIT)
        stream.close_write(timeout=WAIT)
    writer = Background(lambda: write(near, data))
    expect(read_exactly(far, size) == data, "stream bytes corrupted or reordered")
    expect(far.read(timeout=WAIT) == b"", "no EOF after the data")
    writer.result()
    write(far, b"".join(LINES))  # fits every buffer: no reader needed
    expect(list(near) == LINES, "iterating a stream lost or split lines")


def check_deep_nesting(make_pair: PairMaker) -> None:
    """Ends deep inside lists, tuples and dicts all work on the other side."""
    tx, rx = make_pair()
    ret_tx, ret_rx = pipe()
    feed_tx, feed_rx = pipe()
    near, end = stream_pair()
    tx.send(nest(ret_tx, feed_rx, end), timeout=WAIT)
    ret, feed, far = unnest(rx.recv(timeout=WAIT))
    expect_type(ret, Sender, "nested Sender")
    expect_type(feed, Receiver, "nested Receiver")
    expect_type(far, ByteStream, "nested stream end")
    expect_passes(ret, ret_rx, "up", "nested Sender does not reach us")
    expect_passes(feed_tx, feed, "down", "nested Receiver does not hear us")
    near.write(b"x", timeout=WAIT)
    expect(far.read(1, timeout=WAIT) == b"x", "nested stream end deaf")
    far.write(b"y", timeout=WAIT)
    expect(near.read(1, timeout=WAIT) == b"y", "nested stream end mute")


def check_close(make_pair: PairMaker) -> None:
    """close(): the peer drains what was sent, then gets EndOfChannel (every time)."""
    tx, rx = make_pair()
    send_all(tx, range(3))  # and close
    tx.close(timeout=WAIT)  # idempotent
    expect([rx.recv(timeout=WAIT) for _ in range(3)] == [0, 1, 2], "lost before the end")
    expect_end(rx)
    expect_end(rx)  # the end is sticky
    with raises(ClosedChannelError):
        tx.send(3, timeout=WAIT)


def check_close_with_error(make_pair: PairMaker) -> None:
    """close(error=exc): RemoteError after the drain; .code is exc.code or the class name."""
    for exc, code, message in close_errors():
        tx, rx = make_pair()
        tx.send("before", timeout=WAIT)
        tx.close(error=exc, timeout=WAIT)
        expect(rx.recv(timeout=WAIT) == "before", "message before the error lost")
        for _ in range(2):  # sticky
            with raises_remote(code, message, f"close(error={exc!r})"):
                rx.recv(timeout=WAIT)
        with raises(ClosedChannelError):
            tx.send("after", timeout=WAIT)


def check_closed_channel_error(make_pair: PairMaker) -> None:
    """Using an end you closed raises ClosedChannelError, not EndOfChannel."""
    tx, rx = make_pair()
    expect_passes(tx, rx, 1, "lost")
    rx.close()
    rx.close()  # idempotent
    with raises(ClosedChannelError):
        rx.recv(timeout=WAIT)
    with raises(ClosedChannelError):
        list(rx)
    tx.close(timeout=WAIT)
    with raises(ClosedChannelError):
        tx.send(2, timeout=WAIT)
    near, end = stream_pair()
    tx2, rx2 = make_pair()
    tx2.send(end, timeout=WAIT)
    far = rx2.recv(timeout=WAIT)
    far.close()
    with raises(ClosedChannelError):
        far.read(1, timeout=WAIT)
    with raises(ClosedChannelError):
        far.write(b"x", timeout=WAIT)


def check_sent_away(make_pair: PairMaker) -> None:
    """An end you sent away is not yours: using it raises ClosedChannelError.

    Closing your (moved) handle does not close the channel the peer now holds.
    """
    tx, rx = make_pair()
    s_tx, s_rx = pipe()
    r_tx, r_rx = pipe()
    near, end = stream_pair()
    tx.send({"s": s_tx, "r": r_rx, "io": end}, timeout=WAIT)
    got = rx.recv(timeout=WAIT)
    with raises(ClosedChannelError):
        s_tx.send("mine?", timeout=WAIT)
    with raises(ClosedChannelError):
        r_rx.recv(timeout=SHORT)
    with raises(ClosedChannelError):
        end.write(b"mine?", timeout=WAIT)
    with raises(ClosedChannelError):
        end.read(1, timeout=SHORT)
    with raises(ClosedChannelError):  # and it cannot be sent a second time
        tx.send([s_tx], timeout=WAIT)
    s_tx.close()
    r_rx.close()
    end.close()
    expect_passes(got["s"], s_rx, "theirs", "closing a moved Sender closed the peer's")
    expect_passes(r_tx, got["r"], "theirs", "closing a moved Receiver closed the peer's")
    near.write(b"theirs", timeout=WAIT)
    expect(read_exactly(got["io"], 6) == b"theirs", "closing a moved stream end closed it")


def check_iteration(make_pair: PairMaker) -> None:
    """``for msg in rx`` yields every message and stops at the clean end."""
    tx, rx = make_pair()
    send_all(tx, range(20))
    expect(list(rx) == list(range(20)), "iteration lost messages")
    expect(list(rx) == [], "a finished channel yields more")
    tx, rx = make_pair()
    tx.send("x", timeout=WAIT)
    tx.close(error=CodedError("broken"), timeout=WAIT)
    seen = []
    with raises(RemoteError):  # an error is not an end: the loop raises it
        for msg in rx:
            seen.append(msg)
    expect(seen == ["x"], "message before the error lost")


def check_recv_timeout(make_pair: PairMaker) -> None:
    """recv(timeout=...) raises chan.Timeout (a TimeoutError); the channel keeps working."""
    tx, rx = make_pair()
    start = time.monotonic()
    with raises(Timeout) as err:
        rx.recv(timeout=SHORT)
    elapsed = time.monotonic() - start
    expect_type(err.value, TimeoutError, "chan.Timeout")
    expect_timed_out(elapsed)
    with raises(Timeout):
        rx.recv(timeout=0)
    expect_passes(tx, rx, "after", "channel broken by a timeout")
    tx.send("queued", timeout=WAIT)
    deadline = time.monotonic() + WAIT
    while True:  # once a message is there, timeout=0 returns it
        try:
            expect(rx.recv(timeout=0) == "queued", "wrong message")
            break
        except Timeout:
            expect(time.monotonic() < deadline, "message never arrived")
            time.sleep(0.001)
    tx.close(timeout=WAIT)
    expect_end(rx)


def check_flow_control(make_pair: PairMaker, bound: int = 10_000) -> None:
    """A reader that does not read makes send(timeout) time out; reading resumes it.

    At most ``bound`` messages of 1 KiB are taken before the sender waits (memory stays
    bounded), and the message whose send timed out is not delivered: nothing lost,
    nothing extra.
    """
    tx, rx = make_pair()
    n = 0
    while True:
        try:
            tx.send([n, PAD], timeout=SHORT)
        except Timeout:
            break
        n += 1
        expect(n <= bound, f"{bound} messages taken and the sender never waited")
    expect(n > 0, "nothing could be sent")
    sender = Background(lambda: send_all(tx, ([i, PAD] for i in range(n, n + 10))))
    time.sleep(SHORT)
    expect(not sender.done(), "a send went through a full window")
    expect([i for i, _ in drain(rx)] == list(range(n + 10)),
           "flow control lost or repeated messages")
    sender.result()


def check_receiver_close(make_pair: PairMaker) -> None:
    """Receiver.close(): the sender's next sends raise RemoteError; its close is quiet."""
    tx, rx = make_pair()
    expect_passes(tx, rx, 1, "lost")
    rx.close()
    send_until_refused(tx)
    with raises(RemoteError):  # and keeps raising
        tx.send("again", timeout=WAIT)
    tx.close(timeout=WAIT)


def check_not_msgpack(make_pair: PairMaker) -> None:
    """A value that is not msgpack raises TypeError; nothing is sent or taken over."""
    tx, rx = make_pair()
    s_tx, s_rx = pipe()
    for bad in NOT_MSGPACK:
        with raises(TypeError):
            tx.send(bad, timeout=WAIT)
    with raises(TypeError):
        tx.send({"ret": s_tx, "bad": {1, 2}}, timeout=WAIT)
    expect_passes(s_tx, s_rx, "still mine", "end lost by a failed send")  # not taken over
    expect_passes(tx, rx, "fine", "channel broken by a TypeError")
    tx.send({"ret": s_tx}, timeout=WAIT)
    expect_passes(rx.recv(timeout=WAIT)["ret"], s_rx, "via peer",
                   "end unusable after a failed send")


def check_same_end_twice(make_pair: PairMaker) -> None:
    """A message holding one end twice raises ValueError; the end stays yours."""
    tx, rx = make_pair()
    s_tx, s_rx = pipe()
    r_tx, r_rx = pipe()
    near, end = stream_pair()
    for msg in twice(s_tx, r_rx, end):
        with raises(ValueError):
            tx.send(msg, timeout=WAIT)
    expect_passes(s_tx, s_rx, "still mine", "end lost by a failed send")
    expect_passes(tx, rx, "fine", "channel broken by a ValueError")


#: The checks that take one pair maker, by name (all run by :func:`check_transport`).
CHECKS: dict[str, Callable[[PairMaker], None]] = {
    "ordering": check_ordering,
    "ordering_per_channel": check_ordering_per_channel,
    "values": check_values,
    "tuple_as_list": check_tuple_as_list,
    "reply_channel": check_reply_channel,
    "receiver_in_message": check_receiver_in_message,
    "sent_end_close_with_error": check_sent_end_close_with_error,
    "stream_in_message": check_stream_in_message,
    "stream_bulk": check_stream_bulk,
    "deep_nesting": check_deep_nesting,
    "close": check_close,
    "close_with_error": check_close_with_error,
    "closed_channel_error": check_closed_channel_error,
    "sent_away": check_sent_away,
    "iteration": check_iteration,
    "recv_timeout": check_recv_timeout,
    "flow_control": check_flow_control,
    "receiver_close": check_receiver_close,
    "not_msgpack": check_not_msgpack,
    "same_end_twice": check_same_end_twice,
}


def check_transport(make_pair: PairMaker, skip: Iterable[str] = ()) -> None:
    """Run every check of :data:`CHECKS` against ``make_pair`` (but those named in ``skip``)."""
    skip = set(skip)
    for name, check in CHECKS.items():
        if name not in skip:
            check(make_pair)
