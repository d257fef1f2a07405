"""The ZeroMQ transport's own promises (chan/_hub.py, chan/net.py), beyond the protocol."""

from __future__ import annotations

import os
import tempfile

import pytest

import chan
from chan import _session


@pytest.fixture
def ipc_dir():
    path = tempfile.mkdtemp(prefix="cbx-transport-")
    yield path
    for name in os.listdir(path):  # only what the test made in its own directory
        os.unlink(os.path.join(path, name))
    os.rmdir(path)


def test_listener_close_removes_its_ipc_socket_file(ipc_dir):
    path = os.path.join(ipc_dir, "cbx.sock")
    listener = chan.listen(f"ipc://{path}")
    assert os.path.exists(path)
    listener.close()
    assert not os.path.exists(path)


def test_a_bug_in_one_session_ends_that_session_only(monkeypatch):
    """An exception escaping a session's processing (a chan bug) ends that session with
    SessionLost; the I/O thread, the listener and other sessions carry on."""
    with chan.listen("inproc://cbx-transport-bug") as listener:
        good = chan.connect(listener.endpoint, timeout=5)
        good_tx = good.open()
        good_rx = listener.accept(timeout=5)
        bad = chan.connect(listener.endpoint, timeout=5)
        bad_tx = bad.open()
        bad_rx = listener.accept(timeout=5)

        dispatch = _session.SessionCore._dispatch
        doomed = bad_rx._q.upstream.core  # the listener's side of the bad session

        def buggy(core, event):
            if core is doomed:
                raise RuntimeError("simulated bug")
            return dispatch(core, event)

        monkeypatch.setattr(_session.SessionCore, "_dispatch", buggy)
        bad_tx.send("boom", timeout=5)
        with pytest.raises(chan.SessionLost, match="internal error"):
            bad_rx.recv(timeout=5)
        monkeypatch.setattr(_session.SessionCore, "_dispatch", dispatch)

        good_tx.send("still here", timeout=5)
        assert good_rx.recv(timeout=5) == "still here"
        with chan.connect(listener.endpoint, timeout=5) as fresh:
            with fresh.open() as tx:
                tx.send("new session", timeout=5)
            assert listener.accept(timeout=5).recv(timeout=5) == "new session"
        good_tx.close(timeout=5)
        good.close(timeout=5)
        with pytest.raises(chan.SessionLost):
            bad.close(timeout=5)


def test_close_times_out_when_the_peer_never_confirms_and_lets_go(zctx):
    """A peer that answers the handshake but never the BYE: close() raises SessionLost
    (not Timeout) after its timeout, and the session is given up (its ends fail)."""
    import msgpack
    import zmq

    from chan import protocol as P

    router = zctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")

    def answer_hello() -> None:
        ident, hello = router.recv_multipart()
        welcome = msgpack.packb([P.WELCOME, P.VERSION, b"12345678",
                                 chan.Settings().to_wire()])
        router.send_multipart([ident, welcome])

    import threading
    t = threading.Thread(target=answer_hello)
    t.start()
    session = chan.connect(f"tcp://127.0.0.1:{port}", timeout=5)
    t.join()
    tx = session.open()
    with pytest.raises(chan.SessionLost, match="did not confirm"):
        session.close(timeout=0.5)
    with pytest.raises(chan.ClosedChannelError):
        tx.send("after")
    router.close(linger=0)
