"""The asyncio checks: the twins of checks.py for :mod:`chan.aio` ends, and :data:`ACHECKS`.

Each ``acheck_X`` does what ``check_X`` does, with ``await`` (and tasks where the
blocking check uses a thread); see the blocking check for what it promises.  The
messages and expectations both share are in _cases.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Awaitable, Callable, Iterable

from .. import aio
from ..errors import ClosedChannelError, RemoteError, Timeout
from ._cases import (LINES, NOT_MSGPACK, PAD, TUPLE_RECEIVED, TUPLE_SENT, close_errors,
                     expect_timed_out, nest, twice, unnest)
from ._steps import (adrain, aexpect_end, aexpect_passes, aread_exactly, asend_all,
                     asend_until_refused, finish)
from ._util import (SHORT, VALUES, WAIT, CodedError, assert_same, expect, expect_type,
                    raises, raises_remote)
from .links import AsyncPairMaker


async def acheck_ordering(make_pair: AsyncPairMaker, n: int = 5000) -> None:
    """See :func:`check_ordering`."""
    tx, rx = await make_pair()
    sender = asyncio.ensure_future(asend_all(tx, ({"seq": i} for i in range(n))))
    got = [msg["seq"] for msg in await adrain(rx)]
    await finish(sender)
    expect(got == list(range(n)), "messages were lost, duplicated or reordered")


async def acheck_ordering_per_channel(make_pair: AsyncPairMaker, channels: int = 4,
                                      n: int = 600) -> None:
    """See :func:`check_ordering_per_channel`."""
    pairs = [await make_pair() for _ in range(channels)]
    senders = [asyncio.ensure_future(asend_all(tx, [[c, i] for i in range(n)]))
               for c, (tx, _) in enumerate(pairs)]
    for c, (_, rx) in reversed(list(enumerate(pairs))):
        got = await adrain(rx)
        expect(got == [[c, i] for i in range(n)], f"channel {c}: messages lost or reordered")
    for s in senders:
        await finish(s)


async def acheck_values(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_values`."""
    tx, rx = await make_pair()
    for name, value in VALUES.items():
        await tx.send(value, timeout=WAIT)
        assert_same(await rx.recv(timeout=WAIT), value, name)
    await tx.send(VALUES, timeout=WAIT)
    assert_same(await rx.recv(timeout=WAIT), VALUES, "all values in one message")


async def acheck_tuple_as_list(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_tuple_as_list`."""
    tx, rx = await make_pair()
    await tx.send(TUPLE_SENT, timeout=WAIT)
    assert_same(await rx.recv(timeout=WAIT), TUPLE_RECEIVED)


async def acheck_reply_channel(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_reply_channel`; received ends are chan.aio ends."""
    tx, rx = await make_pair()
    ret_tx, ret_rx = aio.pipe()
    await tx.send({"verb": "ping", "ret": ret_tx}, timeout=WAIT)
    req = await rx.recv(timeout=WAIT)
    ret = req["ret"]
    expect_type(ret, aio.Sender, "the reply channel")
    await ret.send({"pong": 1}, timeout=WAIT)
    back_tx, back_rx = aio.pipe()
    await ret.send({"next": back_tx}, timeout=WAIT)
    await ret.close(timeout=WAIT)
    assert_same(await ret_rx.recv(timeout=WAIT), {"pong": 1})
    nxt = (await ret_rx.recv(timeout=WAIT))["next"]
    expect_type(nxt, aio.Sender, "a Sender sent back on the reply channel")
    await aexpect_end(ret_rx)
    await nxt.send("hello", timeout=WAIT)
    await nxt.close(timeout=WAIT)
    expect(await back_rx.recv(timeout=WAIT) == "hello", "second-level reply lost")
    await aexpect_end(back_rx)


async def acheck_receiver_in_message(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_receiver_in_message`."""
    tx, rx = await make_pair()
    feed_tx, feed_rx = aio.pipe()
    await tx.send({"feed": feed_rx}, timeout=WAIT)
    far = (await rx.recv(timeout=WAIT))["feed"]
    expect_type(far, aio.Receiver, "the Receiver sent in a message")
    await asend_all(feed_tx, range(10))
    expect([m async for m in far] == list(range(10)), "messages on a sent Receiver lost")


async def acheck_sent_end_close_with_error(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_sent_end_close_with_error`."""
    tx, rx = await make_pair()
    feed_tx, feed_rx = aio.pipe()
    near, end = aio.stream_pair()
    await tx.send([feed_rx, end], timeout=WAIT)
    far, far_io = await rx.recv(timeout=WAIT)
    await feed_tx.send("last", timeout=WAIT)
    await feed_tx.close(error=CodedError("relayed"), timeout=WAIT)
    expect(await far.recv(timeout=WAIT) == "last", "message before the error lost")
    with raises_remote("E_CODED", "relayed", "through a sent Receiver"):
        await far.recv(timeout=WAIT)
    await near.write(b"abc", timeout=WAIT)
    await near.close(error=ValueError("stream broke"), timeout=WAIT)
    expect(await aread_exactly(far_io, 3) == b"abc", "bytes before the error lost")
    with raises_remote("ValueError", "stream broke", "through a sent stream end"):
        await far_io.read(timeout=WAIT)


async def acheck_stream_in_message(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_stream_in_message`."""
    tx, rx = await make_pair()
    near, end = aio.stream_pair()
    await tx.send({"io": end}, timeout=WAIT)
    far = (await rx.recv(timeout=WAIT))["io"]
    expect_type(far, aio.ByteStream, "the stream end sent in a message")
    await near.write(b"ping\n", timeout=WAIT)
    expect(await far.readline(timeout=WAIT) == b"ping\n", "line lost")
    await far.write(b"pong\n", timeout=WAIT)
    expect(await near.readline(timeout=WAIT) == b"pong\n", "answer lost")
    await near.write(b"tail", timeout=WAIT)
    await near.close_write(timeout=WAIT)
    expect(await far.read(timeout=WAIT) == b"tail", "bytes before EOF lost")
    expect(await far.read(10, timeout=WAIT) == b"", "EOF is not sticky")
    await far.write(b"still open this way", timeout=WAIT)
    await far.close_write(timeout=WAIT)
    expect(await near.read(timeout=WAIT) == b"still open this way", "reverse direction broken")
    await near.close()
    await far.close()


async def acheck_stream_bulk(make_pair: AsyncPairMaker, size: int = 2 * 1024 * 1024) -> None:
    """See :func:`check_stream_bulk`."""
    tx, rx = await make_pair()
    near, end = aio.stream_pair()
    await tx.send(end, timeout=WAIT)
    far = await rx.recv(timeout=WAIT)
    data = os.urandom(size)

    async def write(stream: aio.ByteStream, data: bytes) -> None:
        await stream.write(data, timeout=WAIT)
        await stream.close_write(timeout=WAIT)
    writer = asyncio.ensure_future(write(near, data))
    expect(await aread_exactly(far, size) == data, "stream bytes corrupted or reordered")
    expect(await far.read(timeout=WAIT) == b"", "no EOF after the data")
    await finish(writer)
    await write(far, b"".join(LINES))  # fits every buffer: no reader needed
    expect([line async for line in near] == LINES, "iterating a stream lost or split lines")


async def acheck_deep_nesting(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_deep_nesting`."""
    tx, rx = await make_pair()
    ret_tx, ret_rx = aio.pipe()
    feed_tx, feed_rx = aio.pipe()
    near, end = aio.stream_pair()
    await tx.send(nest(ret_tx, feed_rx, end), timeout=WAIT)
    ret, feed, far = unnest(await rx.recv(timeout=WAIT))
    expect_type(ret, aio.Sender, "nested Sender")
    expect_type(feed, aio.Receiver, "nested Receiver")
    expect_type(far, aio.ByteStream, "nested stream end")
    await aexpect_passes(ret, ret_rx, "up", "nested Sender does not reach us")
    await aexpect_passes(feed_tx, feed, "down", "nested Receiver does not hear us")
    await near.write(b"x", timeout=WAIT)
    expect(await far.read(1, timeout=WAIT) == b"x", "nested stream end deaf")
    await far.write(b"y", timeout=WAIT)
    expect(await near.read(1, timeout=WAIT) == b"y", "nested stream end mute")


async def acheck_close(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_close`."""
    tx, rx = await make_pair()
    await asend_all(tx, range(3))  # and close
    await tx.close(timeout=WAIT)
    expect([await rx.recv(timeout=WAIT) for _ in range(3)] == [0, 1, 2], "lost before the end")
    await aexpect_end(rx)
    await aexpect_end(rx)
    with raises(ClosedChannelError):
        await tx.send(3, timeout=WAIT)


async def acheck_close_with_error(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_close_with_error`."""
    for exc, code, message in close_errors():
        tx, rx = await make_pair()
        await tx.send("before", timeout=WAIT)
        await tx.close(error=exc, timeout=WAIT)
        expect(await rx.recv(timeout=WAIT) == "before", "message before the error lost")
        for _ in range(2):
            with raises_remote(code, message, f"close(error={exc!r})"):
                await rx.recv(timeout=WAIT)
        with raises(ClosedChannelError):
            await tx.send("after", timeout=WAIT)


async def acheck_closed_channel_error(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_closed_channel_error`."""
    tx, rx = await make_pair()
    await aexpect_passes(tx, rx, 1, "lost")
    rx.close()
    rx.close()
    with raises(ClosedChannelError):
        await rx.recv(timeout=WAIT)
    with raises(ClosedChannelError):
        [m async for m in rx]
    await tx.close(timeout=WAIT)
    with raises(ClosedChannelError):
        await tx.send(2, timeout=WAIT)
    near, end = aio.stream_pair()
    tx2, rx2 = await make_pair()
    await tx2.send(end, timeout=WAIT)
    far = await rx2.recv(timeout=WAIT)
    await far.close()
    with raises(ClosedChannelError):
        await far.read(1, timeout=WAIT)
    with raises(ClosedChannelError):
        await far.write(b"x", timeout=WAIT)


async def acheck_sent_away(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_sent_away`."""
    tx, rx = await make_pair()
    s_tx, s_rx = aio.pipe()
    r_tx, r_rx = aio.pipe()
    near, end = aio.stream_pair()
    await tx.send({"s": s_tx, "r": r_rx, "io": end}, timeout=WAIT)
    got = await rx.recv(timeout=WAIT)
    with raises(ClosedChannelError):
        await s_tx.send("mine?", timeout=WAIT)
    with raises(ClosedChannelError):
        await r_rx.recv(timeout=SHORT)
    with raises(ClosedChannelError):
        await end.write(b"mine?", timeout=WAIT)
    with raises(ClosedChannelError):
        await end.read(1, timeout=SHORT)
    with raises(ClosedChannelError):
        await tx.send([s_tx], timeout=WAIT)
    await s_tx.close()
    r_rx.close()
    await end.close()
    await aexpect_passes(got["s"], s_rx, "theirs", "closing a moved Sender closed the peer's")
    await aexpect_passes(r_tx, got["r"], "theirs", "closing a moved Receiver closed the peer's")
    await near.write(b"theirs", timeout=WAIT)
    expect(await aread_exactly(got["io"], 6) == b"theirs",
           "closing a moved stream end closed it")


async def acheck_iteration(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_iteration` (``async for``)."""
    tx, rx = await make_pair()
    await asend_all(tx, range(20))
    expect([m async for m in rx] == list(range(20)), "iteration lost messages")
    expect([m async for m in rx] == [], "a finished channel yields more")
    tx, rx = await make_pair()
    await tx.send("x", timeout=WAIT)
    await tx.close(error=CodedError("broken"), timeout=WAIT)
    seen = []
    with raises(RemoteError):
        async for msg in rx:
            seen.append(msg)
    expect(seen == ["x"], "message before the error lost")


async def acheck_recv_timeout(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_recv_timeout`."""
    tx, rx = await make_pair()
    start = time.monotonic()
    with raises(Timeout) as err:
        await rx.recv(timeout=SHORT)
    elapsed = time.monotonic() - start
    expect_type(err.value, TimeoutError, "chan.Timeout")
    expect_timed_out(elapsed)
    with raises(Timeout):
        await rx.recv(timeout=0)
    await aexpect_passes(tx, rx, "after", "channel broken by a timeout")
    await tx.send("queued", timeout=WAIT)
    deadline = time.monotonic() + WAIT
    while True:
        try:
            expect(await rx.recv(timeout=0) == "queued", "wrong message")
            break
        except Timeout:
            expect(time.monotonic() < deadline, "message never arrived")
            await asyncio.sleep(0.001)
    await tx.close(timeout=WAIT)
    await aexpect_end(rx)


async def acheck_flow_control(make_pair: AsyncPairMaker, bound: int = 10_000) -> None:
    """See :func:`check_flow_control`."""
    tx, rx = await make_pair()
    n = 0
    while True:
        try:
            await tx.send([n, PAD], timeout=SHORT)
        except Timeout:
            break
        n += 1
        expect(n <= bound, f"{bound} messages taken and the sender never waited")
    expect(n > 0, "nothing could be sent")
    sender = asyncio.ensure_future(asend_all(tx, ([i, PAD] for i in range(n, n + 10))))
    await asyncio.sleep(SHORT)
    expect(not sender.done(), "a send went through a full window")
    expect([i for i, _ in await adrain(rx)] == list(range(n + 10)),
           "flow control lost or repeated messages")
    await finish(sender)


async def acheck_receiver_close(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_receiver_close`."""
    tx, rx = await make_pair()
    await aexpect_passes(tx, rx, 1, "lost")
    rx.close()
    await asend_until_refused(tx)
    with raises(RemoteError):
        await tx.send("again", timeout=WAIT)
    await tx.close(timeout=WAIT)


async def acheck_not_msgpack(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_not_msgpack`."""
    tx, rx = await make_pair()
    s_tx, s_rx = aio.pipe()
    for bad in NOT_MSGPACK:
        with raises(TypeError):
            await tx.send(bad, timeout=WAIT)
    with raises(TypeError):
        await tx.send({"ret": s_tx, "bad": {1, 2}}, timeout=WAIT)
    await aexpect_passes(s_tx, s_rx, "still mine", "end lost by a failed send")
    await aexpect_passes(tx, rx, "fine", "channel broken by a TypeError")
    await tx.send({"ret": s_tx}, timeout=WAIT)
    await aexpect_passes((await rx.recv(timeout=WAIT))["ret"], s_rx, "via peer",
                          "end unusable after a failed send")


async def acheck_same_end_twice(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_same_end_twice`."""
    tx, rx = await make_pair()
    s_tx, s_rx = aio.pipe()
    r_tx, r_rx = aio.pipe()
    near, end = aio.stream_pair()
    for msg in twice(s_tx, r_rx, end):
        with raises(ValueError):
            await tx.send(msg, timeout=WAIT)
    await aexpect_passes(s_tx, s_rx, "still mine", "end lost by a failed send")
    await aexpect_passes(tx, rx, "fine", "channel broken by a ValueError")


#: The asyncio checks that take one async pair maker, by name (the same names as CHECKS).
ACHECKS: dict[str, Callable[[AsyncPairMaker], Awaitable[None]]] = {
    "ordering": acheck_ordering,
    "ordering_per_channel": acheck_ordering_per_channel,
    "values": acheck_values,
    "tuple_as_list": acheck_tuple_as_list,
    "reply_channel": acheck_reply_channel,
    "receiver_in_message": acheck_receiver_in_message,
    "sent_end_close_with_error": acheck_sent_end_close_with_error,
    "stream_in_message": acheck_stream_in_message,
    "stream_bulk": acheck_stream_bulk,
    "deep_nesting": acheck_deep_nesting,
    "close": acheck_close,
    "close_with_error": acheck_close_with_error,
    "closed_channel_error": acheck_closed_channel_error,
    "sent_away": acheck_sent_away,
    "iteration": acheck_iteration,
    "recv_timeout": acheck_recv_timeout,
    "flow_control": acheck_flow_control,
    "receiver_close": acheck_receiver_close,
    "not_msgpack": acheck_not_msgpack,
    "same_end_twice": acheck_same_end_twice,
}


async def acheck_transport(make_pair: AsyncPairMaker, skip: Iterable[str] = ()) -> None:
    """Run every check of :data:`ACHECKS` against ``make_pair`` (but those in ``skip``)."""
    skip = set(skip)
    for name, check in ACHECKS.items():
        if name not in skip:
            await check(make_pair)
