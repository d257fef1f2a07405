"""The checks a plain pair maker cannot run (so not in CHECKS / ACHECKS).

Forwarding to a third party takes two pair makers (A to B over one link, B to C over
the other); :func:`check_message_too_large` takes the pair maker of a session link
made with a small ``Settings.max_message``.  Each blocking check is followed by its
asyncio twin.
"""

from __future__ import annotations

import asyncio
import os

from .. import aio
from ..channel import Receiver, Sender, pipe
from ..errors import MessageTooLarge
from ..stream import stream_pair
from ._cases import packed_bytes
from ._steps import (Background, adrain, aexpect_end, aexpect_passes, aread_exactly,
                     asend_all, asend_until_refused, drain, expect_end, expect_passes,
                     finish, read_exactly, send_all, send_until_refused)
from ._util import WAIT, CodedError, expect, raises, raises_remote
from .links import AsyncPairMaker, PairMaker

Pair = tuple[Sender, Receiver]
AsyncPair = tuple[aio.Sender, aio.Receiver]


def _hand_on(ab: Pair, bc: Pair, ends: dict) -> dict:
    """``ends`` as C has them: sent by A to B over ``ab``, handed on by B to C over ``bc``."""
    (ab_tx, ab_rx), (bc_tx, bc_rx) = ab, bc
    ab_tx.send(ends, timeout=WAIT)
    bc_tx.send(ab_rx.recv(timeout=WAIT), timeout=WAIT)
    return bc_rx.recv(timeout=WAIT)


async def _ahand_on(ab: AsyncPair, bc: AsyncPair, ends: dict) -> dict:
    (ab_tx, ab_rx), (bc_tx, bc_rx) = ab, bc
    await ab_tx.send(ends, timeout=WAIT)
    await bc_tx.send(await ab_rx.recv(timeout=WAIT), timeout=WAIT)
    return await bc_rx.recv(timeout=WAIT)


def check_forwarding(make_ab: PairMaker, make_bc: PairMaker) -> None:
    """Ends handed on to a third party: A gives B an end over one link, B hands it to C
    over another, and C talks to A directly (replies, a feed, and a stream)."""
    ab, bc = make_ab(), make_bc()
    ret_tx, ret_rx = pipe()
    feed_tx, feed_rx = pipe()
    near, end = stream_pair()
    at_c = _hand_on(ab, bc, {"ret": ret_tx, "feed": feed_rx, "io": end})
    n = 1000  # several windows: flow control holds across the relay
    answer = Background(lambda: send_all(at_c["ret"], range(n), close=False))
    expect([ret_rx.recv(timeout=WAIT) for _ in range(n)] == list(range(n)),
           "replies from C lost or reordered")
    answer.result()
    at_c["ret"].close(timeout=WAIT)
    expect_end(ret_rx)
    feeder = Background(lambda: send_all(feed_tx, range(n)))
    expect(drain(at_c["feed"]) == list(range(n)), "feed to C lost or reordered")
    feeder.result()
    near.write(b"to C\n", timeout=WAIT)
    expect(at_c["io"].readline(timeout=WAIT) == b"to C\n", "stream to C")
    at_c["io"].write(b"to A\n", timeout=WAIT)
    at_c["io"].close_write(timeout=WAIT)
    expect(near.read(timeout=WAIT) == b"to A\n", "stream from C, then EOF")


async def acheck_forwarding(make_ab: AsyncPairMaker, make_bc: AsyncPairMaker) -> None:
    """See :func:`check_forwarding`."""
    ab, bc = await make_ab(), await make_bc()
    ret_tx, ret_rx = aio.pipe()
    feed_tx, feed_rx = aio.pipe()
    near, end = aio.stream_pair()
    at_c = await _ahand_on(ab, bc, {"ret": ret_tx, "feed": feed_rx, "io": end})
    n = 1000
    answer = asyncio.ensure_future(asend_all(at_c["ret"], range(n), close=False))
    expect([await ret_rx.recv(timeout=WAIT) for _ in range(n)] == list(range(n)),
           "replies from C lost or reordered")
    await finish(answer)
    await at_c["ret"].close(timeout=WAIT)
    await aexpect_end(ret_rx)
    feeder = asyncio.ensure_future(asend_all(feed_tx, range(n)))
    expect(await adrain(at_c["feed"]) == list(range(n)), "feed to C lost or reordered")
    await finish(feeder)
    await near.write(b"to C\n", timeout=WAIT)
    expect(await at_c["io"].readline(timeout=WAIT) == b"to C\n", "stream to C")
    await at_c["io"].write(b"to A\n", timeout=WAIT)
    await at_c["io"].close_write(timeout=WAIT)
    expect(await near.read(timeout=WAIT) == b"to A\n", "stream from C, then EOF")


def check_forwarding_errors(make_ab: PairMaker, make_bc: PairMaker) -> None:
    """Errors and closes travel unchanged through ends handed on to a third party."""
    ab, bc = make_ab(), make_bc()
    ret_tx, ret_rx = pipe()
    feed_tx, feed_rx = pipe()
    drop_tx, drop_rx = pipe()
    near, end = stream_pair()
    at_c = _hand_on(ab, bc, {"ret": ret_tx, "feed": feed_rx, "drop": drop_rx, "io": end})
    at_c["ret"].close(error=CodedError("from C"), timeout=WAIT)
    with raises_remote("E_CODED", "from C", "C's Sender closed with an error"):
        ret_rx.recv(timeout=WAIT)
    feed_tx.close(error=ValueError("from A"), timeout=WAIT)
    with raises_remote("ValueError", "from A", "A's Sender closed with an error"):
        at_c["feed"].recv(timeout=WAIT)
    near.close(error=CodedError("stream from A"), timeout=WAIT)
    with raises_remote("E_CODED", "stream from A", "A's stream closed with an error"):
        at_c["io"].read(timeout=WAIT)
    at_c["drop"].close()
    send_until_refused(drop_tx)  # C stopped reading: A's sends fail


async def acheck_forwarding_errors(make_ab: AsyncPairMaker, make_bc: AsyncPairMaker) -> None:
    """See :func:`check_forwarding_errors`."""
    ab, bc = await make_ab(), await make_bc()
    ret_tx, ret_rx = aio.pipe()
    feed_tx, feed_rx = aio.pipe()
    drop_tx, drop_rx = aio.pipe()
    near, end = aio.stream_pair()
    at_c = await _ahand_on(ab, bc, {"ret": ret_tx, "feed": feed_rx, "drop": drop_rx,
                                    "io": end})
    await at_c["ret"].close(error=CodedError("from C"), timeout=WAIT)
    with raises_remote("E_CODED", "from C", "C's Sender closed with an error"):
        await ret_rx.recv(timeout=WAIT)
    await feed_tx.close(error=ValueError("from A"), timeout=WAIT)
    with raises_remote("ValueError", "from A", "A's Sender closed with an error"):
        await at_c["feed"].recv(timeout=WAIT)
    await near.close(error=CodedError("stream from A"), timeout=WAIT)
    with raises_remote("E_CODED", "stream from A", "A's stream closed with an error"):
        await at_c["io"].read(timeout=WAIT)
    at_c["drop"].close()
    await asend_until_refused(drop_tx)


def check_message_too_large(make_pair: PairMaker, max_message: int) -> None:
    """Over a session limited to ``max_message`` bytes (on either side), a bigger message
    raises MessageTooLarge, in both directions, and nothing breaks: the channel, and the
    ends the message carried, stay usable; big data still goes through a stream."""
    tx, rx = make_pair()
    fits, too_big = packed_bytes(max_message), packed_bytes(max_message + 1)
    expect_passes(tx, rx, fits, "a message at the limit was refused")
    with raises(MessageTooLarge):
        tx.send(too_big, timeout=WAIT)
    s_tx, s_rx = pipe()
    with raises(MessageTooLarge):
        tx.send({"ret": s_tx, "blob": too_big}, timeout=WAIT)
    tx.send({"ret": s_tx}, timeout=WAIT)  # the end was not taken over
    ret = rx.recv(timeout=WAIT)["ret"]
    with raises(MessageTooLarge):  # the other direction
        ret.send(too_big, timeout=WAIT)
    expect_passes(ret, s_rx, "small", "reply broken by MessageTooLarge")
    near, end = stream_pair()
    tx.send(end, timeout=WAIT)
    far = rx.recv(timeout=WAIT)
    data = os.urandom(8 * max_message)
    writer = Background(lambda: (near.write(data, timeout=WAIT), near.close()))
    expect(read_exactly(far, len(data)) == data, "stream data above max_message")
    writer.result()
    expect_passes(tx, rx, "still fine", "channel broken by MessageTooLarge")


async def acheck_message_too_large(make_pair: AsyncPairMaker, max_message: int) -> None:
    """See :func:`check_message_too_large`."""
    tx, rx = await make_pair()
    fits, too_big = packed_bytes(max_message), packed_bytes(max_message + 1)
    await aexpect_passes(tx, rx, fits, "a message at the limit was refused")
    with raises(MessageTooLarge):
        await tx.send(too_big, timeout=WAIT)
    s_tx, s_rx = aio.pipe()
    with raises(MessageTooLarge):
        await tx.send({"ret": s_tx, "blob": too_big}, timeout=WAIT)
    await tx.send({"ret": s_tx}, timeout=WAIT)
    ret = (await rx.recv(timeout=WAIT))["ret"]
    with raises(MessageTooLarge):
        await ret.send(too_big, timeout=WAIT)
    await aexpect_passes(ret, s_rx, "small", "reply broken by MessageTooLarge")
    near, end = aio.stream_pair()
    await tx.send(end, timeout=WAIT)
    far = await rx.recv(timeout=WAIT)
    data = os.urandom(8 * max_message)

    async def write() -> None:
        await near.write(data, timeout=WAIT)
        await near.close()
    writer = asyncio.ensure_future(write())
    expect(await aread_exactly(far, len(data)) == data, "stream data above max_message")
    await finish(writer)
    await aexpect_passes(tx, rx, "still fine", "channel broken by MessageTooLarge")
