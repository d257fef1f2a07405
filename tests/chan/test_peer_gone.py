"""``Sender.peer_gone``: a sender that has nothing to send learns that its receiver left.

A server following a log or an idle attach sends nothing for a long time; without this
it would find out that its client vanished only at its next send.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time

import pytest

import chan
import chan.aio

from tests.chan.test_faults import LOST_WITHIN


def becomes_gone(tx: chan.Sender, within: float) -> float:
    """Seconds until ``tx.peer_gone`` turned True (fails after ``within``)."""
    t0 = time.monotonic()
    while not tx.peer_gone:
        assert time.monotonic() - t0 < within, f"peer_gone still False after {within} s"
        time.sleep(0.01)
    return time.monotonic() - t0


@pytest.fixture
def ipc_endpoint():
    directory = tempfile.mkdtemp(prefix="cbx-gone-")
    path = os.path.join(directory, "cbx.sock")
    yield "ipc://" + path
    if os.path.exists(path):
        os.unlink(path)
    os.rmdir(directory)


@pytest.fixture
def across(ipc_endpoint):
    """``across(end)``: ``end`` sent over a real session; what the peer gets."""
    with chan.listen(ipc_endpoint) as listener, chan.connect(listener.endpoint) as session:
        carrier = session.open()
        carrier.send("hello")
        inbox = listener.accept(timeout=10)
        assert inbox.recv(timeout=10) == "hello"

        def send(end):
            carrier.send({"end": end})
            return inbox.recv(timeout=10)["end"]

        yield send


def test_pipe_sender_sees_its_receiver_close():
    tx, rx = chan.pipe()
    assert not tx.peer_gone
    tx.send(1)
    assert not tx.peer_gone  # a full or busy receiver is not a gone one
    rx.close()
    assert tx.peer_gone
    with pytest.raises(chan.RemoteError):
        tx.send(2)


def test_a_closed_or_sent_away_sender_has_no_peer_to_reach(across):
    tx, _rx = chan.pipe()
    tx.close()
    assert tx.peer_gone
    away, _ = chan.pipe()
    got = across(away)
    assert away.peer_gone  # only the peer may use it now
    assert not got.peer_gone


def test_a_sender_received_over_a_session_sees_the_remote_receiver_close(across):
    ret_tx, ret_rx = chan.pipe()
    ret = across(ret_tx)
    assert not ret.peer_gone
    ret.send("first", timeout=10)
    assert ret_rx.recv(timeout=10) == "first"
    assert not ret.peer_gone
    ret_rx.close()
    becomes_gone(ret, within=5)
    with pytest.raises(chan.RemoteError):
        ret.send("second", timeout=10)


def test_a_relayed_sender_sees_the_far_receiver_close(across):
    # Our Receiver went into a session; our pipe Sender writes into a relay queue.
    tx, rx = chan.pipe()
    far = across(rx)
    tx.send("x")
    assert far.recv(timeout=10) == "x"
    assert not tx.peer_gone
    far.close()
    becomes_gone(tx, within=5)


def test_an_idle_sender_learns_that_the_killed_client_is_gone(children, ipc_endpoint):
    with chan.listen(ipc_endpoint) as listener:
        client = children.start("holder.py", listener.endpoint)
        msg = listener.accept(timeout=10).recv(timeout=10)
        client.expect("READY")
        reply = msg["reply"][0]
        assert not reply.peer_gone
        client.kill()
        # nothing is sent: only the heartbeat timeout can tell
        assert becomes_gone(reply, within=LOST_WITHIN) > 0
        with pytest.raises(chan.SessionLost):
            reply.send("too late", timeout=5)


def test_the_asyncio_sender_has_it_too(ipc_endpoint):
    async def main() -> None:
        tx, rx = chan.aio.pipe()
        assert not tx.peer_gone
        rx.close()
        assert tx.peer_gone
        async with await chan.aio.listen(ipc_endpoint) as listener:
            async with await chan.aio.connect(listener.endpoint) as session:
                req = session.open()
                ret_tx, ret_rx = chan.aio.pipe()
                await req.send({"ret": ret_tx})
                ret = await (await listener.accept()).recv()
                ret = ret["ret"]
                assert not ret.peer_gone
                ret_rx.close()
                t0 = time.monotonic()
                while not ret.peer_gone:
                    assert time.monotonic() - t0 < 5
                    await asyncio.sleep(0.01)

    asyncio.run(asyncio.wait_for(main(), 30))
