"""CurveZMQ: a listener that requires it lets in only the client keys it allows.

An allowed client connects and exchanges messages (in this process and with a listener
in a child process); a client with an unknown key, a client without CurveZMQ, and a
client that expects another server key get nothing: chan.connect raises SessionLost
within its timeout, and nothing they send, even raw frames of chan's protocol from
sockets of our own, reaches accept().
"""

from __future__ import annotations

import os
import time
from typing import Any

import msgpack
import pytest
import zmq

import chan
from chan import protocol as P


REFUSED_WITHIN = 1.0  # the connect timeout the refused clients use
MARGIN = 1.5



class Keys:
    def __init__(self) -> None:
        self.server = chan.CurveKeys.generate()
        self.client = chan.CurveKeys.generate()
        self.stranger = chan.CurveKeys.generate()


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
def listener(keys):
    with chan.listen("tcp://127.0.0.1:0", curve=keys.server,
                     allow=[keys.client.public]) as lst:
        yield lst


def rec(*fields: Any) -> bytes:
    return msgpack.packb(list(fields), use_bin_type=True)


def hello() -> bytes:
    return rec(P.HELLO, P.VERSION, os.urandom(8), chan.Settings().to_wire())


def raw_dealer(ctx: zmq.Context, endpoint: str, client: chan.CurveKeys | None = None,
               server_key: bytes | None = None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if client is not None:
        sock.curve_serverkey = server_key
        sock.curve_publickey = client.public
        sock.curve_secretkey = client.secret
    sock.connect(endpoint)
    return sock


def assert_refused(listener: chan.Listener, endpoint: str, **how: Any) -> None:
    """chan.connect(**how) gets SessionLost in time, and no channel reaches accept()."""
    began = time.monotonic()
    with pytest.raises(chan.SessionLost):
        chan.connect(endpoint, timeout=REFUSED_WITHIN, **how)
    took = time.monotonic() - began
    assert took < REFUSED_WITHIN + MARGIN, f"refusal took {took:.2f} s"
    with pytest.raises(chan.Timeout):
        listener.accept(timeout=0.3)


def assert_raw_frames_go_nowhere(ctx: zmq.Context, listener: chan.Listener,
                                 **curve: Any) -> None:
    """HELLO, OPEN and a MSG from a raw socket: no answer, nothing accepted."""
    sock = raw_dealer(ctx, listener.endpoint, **curve)
    sock.send(hello())
    sock.send(rec(P.OPEN, 1) + rec(P.MSG, 1, msgpack.packb("let me in")))
    assert not sock.poll(500), "the refused socket got an answer"
    with pytest.raises(chan.Timeout):
        listener.accept(timeout=0.2)
    sock.close(linger=0)


def round_trip(session: chan.Session, listener: chan.Listener) -> None:
    """Request/reply with a reply channel and a byte stream, both ways."""
    ret_tx, ret_rx = chan.pipe()
    mine, theirs = chan.stream_pair()
    with session.open() as tx:
        tx.send({"verb": "hello", "ret": ret_tx, "stream": theirs}, timeout=10)
        rx = listener.accept(timeout=10)
        msg = rx.recv(timeout=10)
    assert msg["verb"] == "hello"
    msg["ret"].send({"answer": 42}, timeout=10)
    msg["ret"].close(timeout=10)
    assert ret_rx.recv(timeout=10) == {"answer": 42}
    with pytest.raises(chan.EndOfChannel):
        ret_rx.recv(timeout=10)
    msg["stream"].write(b"over curve", timeout=10)
    assert mine.read(10, timeout=10) == b"over curve"
    mine.write(b"and back", timeout=10)
    assert msg["stream"].read(8, timeout=10) == b"and back"
    with pytest.raises(chan.EndOfChannel):
        rx.recv(timeout=10)


# ---------------------------------------------------------------------------- tests
def test_allowed_client_exchanges_messages(listener, keys):
    with chan.connect(listener.endpoint, curve=keys.client, server_key=keys.server.public,
                      timeout=10) as session:
        round_trip(session, listener)
        round_trip(session, listener)


def test_unknown_key_gets_nothing(listener, keys, zctx):
    assert_refused(listener, listener.endpoint, curve=keys.stranger,
                   server_key=keys.server.public)
    assert_raw_frames_go_nowhere(zctx, listener, client=keys.stranger,
                                 server_key=keys.server.public)
    # The refusals cost the listener nothing: the allowed client still gets in.
    with chan.connect(listener.endpoint, curve=keys.client, server_key=keys.server.public,
                      timeout=10) as session:
        round_trip(session, listener)


def test_client_without_curve_gets_nothing(listener, keys, zctx):
    assert_refused(listener, listener.endpoint)
    assert_raw_frames_go_nowhere(zctx, listener)
    with chan.connect(listener.endpoint, curve=keys.client, server_key=keys.server.public,
                      timeout=10) as session:
        round_trip(session, listener)


def test_client_expecting_another_server_key_gets_nothing(listener, keys, zctx):
    impostor = chan.CurveKeys.generate().public  # the key the client believes in
    assert_refused(listener, listener.endpoint, curve=keys.client, server_key=impostor)
    assert_raw_frames_go_nowhere(zctx, listener, client=keys.client, server_key=impostor)


def test_raw_socket_with_an_allowed_key_is_answered(listener, keys, zctx):
    # The control for the raw refusals above: the same frames, with the allowed key.
    sock = raw_dealer(zctx, listener.endpoint, client=keys.client,
                      server_key=keys.server.public)
    sock.send(hello())
    sock.send(rec(P.OPEN, 1) + rec(P.MSG, 1, msgpack.packb("let me in")))
    assert sock.poll(10_000), "the allowed socket got no answer"
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(sock.recv())
    assert next(unpacker)[0] == P.WELCOME
    assert listener.accept(timeout=10).recv(timeout=10) == "let me in"


def test_each_listener_has_its_own_allow_list(keys):
    other_client = chan.CurveKeys.generate()
    with chan.listen("tcp://127.0.0.1:0", curve=keys.server,
                     allow=[other_client.public]) as other:
        with chan.listen("tcp://127.0.0.1:0", curve=keys.server,
                         allow=[keys.client.public]) as mine:
            assert_refused(other, other.endpoint, curve=keys.client,
                           server_key=keys.server.public)
            assert_refused(mine, mine.endpoint, curve=other_client,
                           server_key=keys.server.public)
            with chan.connect(mine.endpoint, curve=keys.client,
                              server_key=keys.server.public, timeout=10) as s1:
                round_trip(s1, mine)
            with chan.connect(other.endpoint, curve=other_client,
                              server_key=keys.server.public, timeout=10) as s2:
                round_trip(s2, other)


def test_curve_client_to_a_plain_listener_gets_nothing(keys):
    with chan.listen("tcp://127.0.0.1:0") as plain:
        assert_refused(plain, plain.endpoint, curve=keys.client,
                       server_key=keys.server.public)


def test_curve_needs_the_server_key(keys):
    with pytest.raises(ValueError):
        chan.connect("tcp://127.0.0.1:1", curve=keys.client)


def test_curve_listener_in_another_process(children, keys):
    server = children.start(
        "server.py", "tcp://127.0.0.1:0",
        # One word each: a Z85 key may start with "-", which argparse would take for
        # an option.
        "--curve-public=" + keys.server.public.decode(),
        "--curve-secret=" + keys.server.secret.decode(),
        "--allow=" + keys.client.public.decode())
    endpoint = server.expect("READY")
    with chan.connect(endpoint, curve=keys.client, server_key=keys.server.public,
                      timeout=10) as session:
        for value in ("a", {"b": [1, 2.5, None]}, b"\x00" * 1000):
            ret_tx, ret_rx = chan.pipe()
            with session.open() as tx:
                tx.send({"verb": "echo", "x": value, "ret": ret_tx}, timeout=10)
            assert ret_rx.recv(timeout=10) == value
    began = time.monotonic()
    with pytest.raises(chan.SessionLost):
        chan.connect(endpoint, curve=keys.stranger, server_key=keys.server.public,
                     timeout=REFUSED_WITHIN)
    with pytest.raises(chan.SessionLost):
        chan.connect(endpoint, timeout=REFUSED_WITHIN)
    assert time.monotonic() - began < 2 * REFUSED_WITHIN + MARGIN
    assert server.alive()
