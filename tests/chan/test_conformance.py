"""The transport conformance suite (chan.testing) on every transport, blocking front end.

Each check of ``chan.testing.CHECKS`` runs against channel pairs made over:
an in-memory pipe; a session over tcp://, ipc:// and inproc://; and, on each session
transport, pairs whose Sender (``+sent-sender``) or Receiver (``+sent-receiver``) has
itself travelled in a message, so nested ends pass the same suite as top-level ones.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time

import pytest

import chan
from chan import testing

# A pipe passes messages by reference (DESIGN: no serialisation in memory): its Sender
# does not check for msgpack values, tuples stay tuples, and ends inside stay usable by
# both sides, as with Go channels.  These checks are about what a serialising Sender
# does, so they apply where the sending end is a session's: not to a pipe, nor to a pipe
# whose Receiver was sent into a session (see test_pipe_* and test_relay_* below).
SERIALISING = ("tuple_as_list", "not_msgpack", "same_end_twice", "sent_away")


def applies(check: str, kind: str) -> bool:
    """Whether ``check`` is about pairs of ``kind``."""
    return check not in SERIALISING or not (kind == "pipe" or kind.endswith("sent-receiver"))


def pair_kinds() -> list[str]:
    nested = [f"{k}+{how}" for how in ("sent-sender", "sent-receiver")
              for k in testing.SESSION_TRANSPORTS]
    return list(testing.TRANSPORTS) + nested


def check_params(checks) -> list:
    return [pytest.param(check, kind, id=f"{check}-{kind}")
            for check, kind in itertools.product(checks, pair_kinds()) if applies(check, kind)]


@contextlib.contextmanager
def pair_maker(kind: str, **settings):
    base, _, how = kind.partition("+")
    with testing.open_link(base, **settings) as link:
        make = link.pair
        if how == "sent-sender":
            make = testing.sent_sender_pair(make)
        elif how == "sent-receiver":
            make = testing.sent_receiver_pair(make)
        yield make


@pytest.mark.parametrize("check,kind", check_params(testing.CHECKS))
def test_conformance(check: str, kind: str) -> None:
    with pair_maker(kind) as make_pair:
        testing.CHECKS[check](make_pair)


HOPS = [pytest.param(ab, bc, id=f"{ab}-{bc}")
        for ab, bc in itertools.product(testing.TRANSPORTS, repeat=2)]


@pytest.mark.parametrize("ab,bc", HOPS)
def test_forwarding_to_a_third_party(ab: str, bc: str) -> None:
    """A gives B ends over link ab, B hands them to C over link bc; C talks to A."""
    with testing.open_link(ab) as link_ab, testing.open_link(bc) as link_bc:
        testing.check_forwarding(link_ab.pair, link_bc.pair)


@pytest.mark.parametrize("ab,bc", HOPS)
def test_forwarding_errors_to_a_third_party(ab: str, bc: str) -> None:
    with testing.open_link(ab) as link_ab, testing.open_link(bc) as link_bc:
        testing.check_forwarding_errors(link_ab.pair, link_bc.pair)


LIMIT = 4096


@pytest.mark.parametrize("kind", testing.SESSION_TRANSPORTS)
@pytest.mark.parametrize("side", ["both", "listener", "connector"])
def test_message_too_large(kind: str, side: str) -> None:
    """max_message set on both sides, or on one only: each side honours the smaller."""
    small = chan.Settings(max_message=LIMIT)
    settings = {"both": dict(settings=small),
                "listener": dict(listener_settings=small),
                "connector": dict(settings=small, listener_settings=chan.Settings())}[side]
    with testing.open_link(kind, **settings) as link:
        testing.check_message_too_large(link.pair, LIMIT)


def test_check_transport_runs_every_check() -> None:
    with testing.open_link("inproc") as link:
        testing.check_transport(link.pair)


PAD = b"x" * 1024


@pytest.mark.parametrize("kind", [k + how for how in ("", "+sent-receiver")
                                  for k in testing.SESSION_TRANSPORTS])
def test_close_then_session_close_loses_nothing(kind: str) -> None:
    """The exit path of a program: close() the channel, close() the session.  Both return
    only once everything sent is delivered, so the reader gets it all, then the end."""
    base, _, how = kind.partition("+")
    with testing.open_link(base) as link:
        tx, rx = testing.sent_receiver_pair(link.pair)() if how else link.pair()
        n = 0
        with pytest.raises(chan.Timeout):  # fill every window and buffer on the way
            while n < 100_000:
                tx.send([n, PAD], timeout=testing.SHORT)
                n += 1

        def finish() -> None:
            tx.close(timeout=testing.WAIT)
            link.session.close(timeout=testing.WAIT)
        writer = threading.Thread(target=finish, daemon=True)
        writer.start()
        time.sleep(4 * testing.SHORT)  # a reader that comes late
        got = []
        with pytest.raises(chan.EndOfChannel):
            while True:
                got.append(rx.recv(timeout=testing.WAIT)[0])
        writer.join(testing.WAIT)
        assert got == list(range(n))


# ------------------------------------------------------------------ the suite itself
class _LossySender:
    """Wraps a Sender and drops every 1000th message: a transport that loses data."""

    def __init__(self, tx: chan.Sender) -> None:
        self.tx, self.n = tx, 0

    def send(self, msg, timeout=None) -> None:
        self.n += 1
        if self.n % 1000:
            self.tx.send(msg, timeout=timeout)

    def close(self, error=None, timeout=None) -> None:
        self.tx.close(error=error, timeout=timeout)


def test_the_suite_catches_a_lossy_transport() -> None:
    def lossy_pair():
        tx, rx = chan.pipe()
        return _LossySender(tx), rx
    with pytest.raises(AssertionError, match="lost"):
        testing.check_ordering(lossy_pair)


def test_the_suite_catches_a_transport_without_flow_control() -> None:
    with pytest.raises(AssertionError, match="never waited"):
        testing.check_flow_control(lambda: chan.pipe(capacity=1 << 30), bound=2000)


def test_ipc_link_removes_its_socket_file() -> None:
    with testing.endpoint_for("ipc") as endpoint:
        path = endpoint.removeprefix("ipc://")
        directory = os.path.dirname(path)
        assert os.path.basename(directory).startswith("cbx")
        with chan.listen(endpoint):
            assert os.path.exists(path)
    assert not os.path.exists(path)
    assert not os.path.exists(directory)


def test_link_cleans_up_when_the_body_fails() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with testing.open_link("ipc") as link:
            path = link.listener.endpoint.removeprefix("ipc://")
            tx, rx = link.pair()
            raise RuntimeError("boom")
    assert not os.path.exists(path)
    assert link.session.closed
    with pytest.raises(chan.ChannelError):
        link.listener.accept(timeout=0)


def test_pipe_passes_messages_by_reference() -> None:
    """In memory nothing is serialised: the receiver gets the very objects sent."""
    tx, rx = chan.pipe()
    s_tx, s_rx = chan.pipe()
    msg = {"t": (1, 2), "set": {3}, "ret": s_tx}
    tx.send(msg)
    got = rx.recv(timeout=testing.WAIT)
    assert got is msg and got["t"] == (1, 2)
    s_tx.send("both may use it")  # like a Go channel value, the end is shared
    got["ret"].send("from the receiver")
    assert [s_rx.recv(timeout=1), s_rx.recv(timeout=1)] == ["both may use it",
                                                           "from the receiver"]


@pytest.mark.parametrize("kind", testing.SESSION_TRANSPORTS)
def test_relay_reports_what_it_cannot_encode(kind: str) -> None:
    """A pipe whose Receiver went into a session takes any object (it is a pipe); the one
    the session cannot encode ends the channel with that error on both sides."""
    with pair_maker(kind + "+sent-receiver") as make_pair:
        tx, rx = make_pair()
        tx.send("before")
        tx.send({1, 2})
        assert rx.recv(timeout=testing.WAIT) == "before"
        with pytest.raises(chan.RemoteError) as err:
            rx.recv(timeout=testing.WAIT)
        assert err.value.code == "TypeError" and "set" in err.value.message
        with pytest.raises(TypeError):
            tx.send("after")
