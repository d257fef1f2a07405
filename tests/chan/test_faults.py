"""Fault tests with real processes (issue 2, "Tests").

- a peer killed with SIGKILL mid-conversation: every channel and stream of its session,
  nested ones included, fails with chan.SessionLost within the heartbeat timeout, in both
  directions (server killed, client killed);
- a listener that restarts on the same endpoint: the old client fails fast (the new
  listener answers ABORT UnknownSession) instead of waiting for its timeout;
- "sender closes and exits immediately", 200 times over ipc:// and 200 times over tcp://:
  every message arrives, in order, then EndOfChannel (ZeroMQ's linger alone loses
  messages here, libzmq #4660; chan's acknowledged close must not);
- a slow reader: the sender blocks (chan.Timeout), the RSS of both processes stays
  bounded while 200 MiB and 1e5 messages are pushed, then everything arrives.

Peers are the scripts in ``peers/``, started with ``sys.executable``; the ``children``
fixture SIGKILLs and reaps exactly the processes it started, even when a test fails.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from typing import Any, Callable

import psutil
import pytest

import chan


TRANSPORTS = ["tcp", "ipc"]
DEFAULT_TIMEOUT = chan.Settings().timeout_ms / 1000  # the heartbeat timeout (3 s)
MARGIN = 1.5  # scheduling slack on a loaded 2-core machine
LOST_WITHIN = DEFAULT_TIMEOUT + MARGIN


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture
def endpoint():
    """``endpoint("tcp")`` or ``endpoint("ipc")``: a fresh address on this machine.

    ipc sockets live in a directory made here; teardown removes each socket file by its
    exact name, then the directory.
    """
    directory = tempfile.mkdtemp(prefix="cbx-faults-")
    paths: list[str] = []

    def make(transport: str) -> str:
        if transport == "tcp":
            return "tcp://127.0.0.1:0"
        path = os.path.join(directory, f"cbx-{len(paths)}.sock")
        paths.append(path)
        return "ipc://" + path

    yield make
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    try:
        os.rmdir(directory)
    except OSError:
        pass


# ---------------------------------------------------------------------------- helpers
def until_lost(op: Callable[[float], Any], deadline: float | Callable[[], float]) -> float:
    """Call ``op(timeout)`` until it raises SessionLost; returns when (monotonic).

    ``op`` may succeed while the failure is not yet noticed (a send with credit left, a
    message that arrived before the peer died): it is then called again.  A Timeout, an
    EOF (``b""`` from a stream) or any other error fails the caller.  ``deadline`` may be
    a callable, read again before each call.
    """
    when = deadline if callable(deadline) else (lambda: deadline)
    while True:
        remaining = when() - time.monotonic()
        if remaining <= 0:
            raise AssertionError("no SessionLost before the deadline")
        try:
            result = op(remaining)
        except chan.SessionLost:
            return time.monotonic()
        except chan.Timeout:
            raise AssertionError("timed out instead of raising SessionLost") from None
        if result == b"":
            raise AssertionError("a stream read saw EOF instead of SessionLost")
        time.sleep(0.02)


class Watchers:
    """One thread per end of a session, each using it until it raises SessionLost.

    The threads start (and block in recv/read, or send now and then) before the peer is
    killed; :meth:`start_clock` is called at the kill, :meth:`check` asserts that every
    end raised SessionLost within ``limit`` seconds of it.
    """

    def __init__(self, ops: dict[str, Callable[[float], Any]], limit: float) -> None:
        self.limit = limit
        self.results: dict[str, Any] = {}
        self.t0 = 0.0
        self.deadline = time.monotonic() + 1000.0  # until the clock starts
        self.threads = [threading.Thread(target=self._run, args=(name, op), daemon=True)
                        for name, op in ops.items()]
        for t in self.threads:
            t.start()
        time.sleep(0.3)  # let them block

    def _run(self, name: str, op: Callable[[float], Any]) -> None:
        try:
            self.results[name] = until_lost(op, lambda: self.deadline)
        except BaseException as exc:  # reported by check()
            self.results[name] = exc

    def start_clock(self) -> None:
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.limit

    def check(self) -> dict[str, float]:
        for t in self.threads:
            t.join(self.limit + 10)
        elapsed = {}
        for name, value in self.results.items():
            if isinstance(value, BaseException):
                raise AssertionError(f"{name}: {value!r}") from value
            elapsed[name] = value - self.t0
        assert len(elapsed) == len(self.threads), "a watcher is still blocked"
        slow = {k: round(v, 2) for k, v in elapsed.items() if not 0 <= v <= self.limit}
        assert not slow, f"SessionLost not within {self.limit} s of the kill: {slow}"
        return elapsed


def sender_op(tx: Any) -> Callable[[float], Any]:
    return lambda t: tx.send("ping", timeout=t)


def recv_op(rx: Any) -> Callable[[float], Any]:
    return lambda t: rx.recv(timeout=min(t, 5.0))


def echo(session: chan.Session, value: Any, timeout: float = 10) -> Any:
    """One request/reply with the server peer over a fresh channel."""
    ret_tx, ret_rx = chan.pipe()
    with session.open() as tx:
        tx.send({"verb": "echo", "x": value, "ret": ret_tx}, timeout=timeout)
    answer = ret_rx.recv(timeout=timeout)
    with pytest.raises(chan.EndOfChannel):
        ret_rx.recv(timeout=timeout)
    return answer


def ask_give(tx: chan.Sender) -> tuple[chan.Receiver, dict]:
    """Ask the server peer for ends at every depth; returns (its reply channel, ends)."""
    ret_tx, ret_rx = chan.pipe()
    tx.send({"verb": "give", "ret": ret_tx}, timeout=10)
    got = ret_rx.recv(timeout=10)
    ends = {
        "rx": got["rx"][0],
        "rx_deep": got["rx"][1]["deep"],
        "tx_nested": got["tx"]["x"][0],
        "stream": got["stream"],
    }
    assert isinstance(ends["rx"], chan.Receiver)
    assert isinstance(ends["rx_deep"], chan.Receiver)
    assert isinstance(ends["tx_nested"], chan.Sender)
    assert isinstance(ends["stream"], chan.ByteStream)
    # The conversation is live: every end works before the kill.
    assert ends["rx"].recv(timeout=10) == "hi"
    assert ends["rx_deep"].recv(timeout=10) == "hi"
    assert ends["stream"].read(5, timeout=10) == b"hello"
    ends["tx_nested"].send("to the server", timeout=10)
    ends["stream"].write(b"to the server", timeout=10)
    return ret_rx, ends


# ---------------------------------------------------------------------------- SIGKILL
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_server_killed_every_end_of_the_session_fails(children, endpoint, transport):
    server = children.start("server.py", endpoint(transport))
    session = chan.connect(server.expect("READY"), timeout=10)
    assert echo(session, "warm-up") == "warm-up"
    tx = session.open()
    ret_rx, ends = ask_give(tx)

    watchers = Watchers({
        "opened Sender": sender_op(tx),
        "reply Receiver (kept open by the server)": recv_op(ret_rx),
        "Receiver in a message": recv_op(ends["rx"]),
        "Receiver nested deeper": recv_op(ends["rx_deep"]),
        "Sender nested in a message": sender_op(ends["tx_nested"]),
        "ByteStream read": lambda t: ends["stream"].read(100, timeout=min(t, 5.0)),
        "ByteStream write": lambda t: ends["stream"].write(b"x" * 1000, timeout=t),
    }, LOST_WITHIN)
    watchers.start_clock()  # before the kill: a send may notice the death at once
    server.kill()
    elapsed = watchers.check()
    assert max(elapsed.values()) <= LOST_WITHIN

    # The session itself is over too.
    with pytest.raises(chan.SessionLost):
        session.open()
    with pytest.raises(chan.SessionLost):
        session.close(timeout=5)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_killed_the_server_side_ends_fail(children, endpoint, transport):
    with chan.listen(endpoint(transport)) as listener:
        client = children.start("holder.py", listener.endpoint)
        rx = listener.accept(timeout=10)
        msg = rx.recv(timeout=10)
        client.expect("READY")
        reply, feed, stream = msg["reply"][0], msg["feed"]["deep"], msg["stream"]
        assert isinstance(reply, chan.Sender)
        assert isinstance(feed, chan.Receiver)
        assert isinstance(stream, chan.ByteStream)
        assert feed.recv(timeout=10) == "hi"
        assert stream.read(5, timeout=10) == b"hello"
        reply.send("answer", timeout=10)

        watchers = Watchers({
            "accepted Receiver": recv_op(rx),
            "Sender received in a message": sender_op(reply),
            "Receiver nested deeper": recv_op(feed),
            "ByteStream read": lambda t: stream.read(100, timeout=min(t, 5.0)),
            "ByteStream write": lambda t: stream.write(b"x" * 1000, timeout=t),
        }, LOST_WITHIN)
        watchers.start_clock()  # before the kill: a send may notice the death at once
        client.kill()
        watchers.check()

        # Only that session ended: the listener serves a new client.
        with chan.connect(listener.endpoint, timeout=10) as session:
            with session.open() as tx:
                tx.send({"after": "the kill"}, timeout=10)
            rx2 = listener.accept(timeout=10)
            assert rx2.recv(timeout=10) == {"after": "the kill"}
            with pytest.raises(chan.EndOfChannel):
                rx2.recv(timeout=10)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("client_sends", [False, True], ids=["idle-client", "sending-client"])
def test_listener_restarted_old_session_fails_fast(children, endpoint, transport,
                                                   client_sends):
    # A client timeout far above the restart detection: if the session fails within a
    # couple of seconds, it was told (ABORT UnknownSession), not timed out.
    patient = chan.Settings(timeout_ms=20_000)
    first = children.start("server.py", endpoint(transport), name="first listener")
    ep = first.expect("READY")
    session = chan.connect(ep, settings=patient, timeout=10)
    assert echo(session, 1) == 1
    tx = session.open()
    ret_rx, ends = ask_give(tx)

    first.kill()
    second = children.start("server.py", ep, name="restarted listener")
    assert second.expect("READY") == ep
    restarted = time.monotonic()
    if client_sends:
        # Sends may still be taken (credit left) until the ABORT arrives.
        until_lost(sender_op(tx), restarted + 3.0)
    with pytest.raises(chan.SessionLost) as info:
        ret_rx.recv(timeout=3.0)
    took = time.monotonic() - restarted
    assert took < 3.0, f"the old session took {took:.2f} s to fail"
    assert "UnknownSession" in str(info.value)
    # Every end of the old session fails at once now.
    for name in ("rx", "rx_deep"):
        with pytest.raises(chan.SessionLost):
            ends[name].recv(timeout=1)
    with pytest.raises(chan.SessionLost):
        ends["stream"].read(10, timeout=1)
    with pytest.raises(chan.SessionLost):
        ends["tx_nested"].send("x", timeout=1)
    with pytest.raises(chan.SessionLost):
        tx.send("x", timeout=1)

    # The restarted listener serves new sessions.
    with chan.connect(ep, timeout=10) as fresh:
        assert echo(fresh, "again") == "again"


@pytest.mark.parametrize("impatient", ["client", "listener"])
def test_an_impatient_peer_keeps_an_idle_session(children, endpoint, impatient):
    """A side whose timeout_ms is below the other's heartbeat_ms is pinged often enough."""
    brisk = chan.Settings(heartbeat_ms=100, timeout_ms=500)
    if impatient == "client":
        server = children.start("server.py", endpoint("tcp"))
        session = chan.connect(server.expect("READY"), settings=brisk, timeout=10)
    else:
        server = children.start("server.py", endpoint("tcp"), "--timeout-ms", 500)
        session = chan.connect(server.expect("READY"), timeout=10)
    tx = session.open()
    time.sleep(2.0)  # idle: only heartbeats flow
    ret_tx, ret_rx = chan.pipe()
    tx.send({"verb": "echo", "x": "still here", "ret": ret_tx}, timeout=5)
    assert ret_rx.recv(timeout=5) == "still here"
    session.close(timeout=5)


# ---------------------------------------------------------------------------- abrupt exit
RUNS = 200
MESSAGES = 20
PAD = 100
CONCURRENT = 4


@pytest.mark.timeout(90)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sender_closes_and_exits_immediately(children, endpoint, transport):
    """200 child processes each send 20 messages, close, and os._exit() at once."""
    with chan.listen(endpoint(transport)) as listener:
        received: dict[int, list] = {}
        problems: list[str] = []

        senders_done_at: list[float] = []  # set once every sender has exited

        def read_all() -> None:
            accepted = 0
            while accepted < RUNS:
                try:
                    rx = listener.accept(timeout=1)
                except chan.Timeout:
                    # Every sender exited: what has not arrived 10 s later never will.
                    if senders_done_at and time.monotonic() > senders_done_at[0] + 10:
                        problems.append(f"only {accepted} of {RUNS} channels arrived")
                        return
                    continue
                accepted += 1
                msgs: list = []
                try:
                    while True:
                        msgs.append(rx.recv(timeout=10))
                except chan.EndOfChannel:
                    pass
                except chan.ChannelError as exc:
                    problems.append(f"after {len(msgs)} messages: {exc!r}")
                if not msgs:
                    problems.append("a channel with no message")
                    continue
                received.setdefault(msgs[0]["run"], []).append(msgs)

        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        running: list = []
        exits: dict[int, int] = {}

        def reap(child: Any, run: int) -> None:
            exits[run] = child.proc.wait(60)
            if exits[run] != 0:
                problems.append(f"run {run} exited {exits[run]}: {child.stderr()}")
            child.release()

        for run in range(RUNS):
            child = children.start("abrupt_sender.py", listener.endpoint, run, MESSAGES,
                                   PAD, name=f"sender {run}")
            running.append((child, run))
            if len(running) >= CONCURRENT:
                reap(*running.pop(0))
        for item in running:
            reap(*item)
        senders_done_at.append(time.monotonic())
        reader.join(60)
        assert not reader.is_alive(), "the reader is still waiting for channels"

    assert not problems, problems[:10]
    assert sorted(received) == list(range(RUNS)), \
        f"runs missing: {sorted(set(range(RUNS)) - set(received))[:20]}"
    for run, channels in received.items():
        assert len(channels) == 1, f"run {run} arrived {len(channels)} times"
        msgs = channels[0]
        assert [m["i"] for m in msgs] == list(range(MESSAGES)), f"run {run}: {msgs!r:.200}"
        for m in msgs:
            assert m == {"run": run, "i": m["i"], "pad": bytes([m["i"] % 256]) * PAD}


# ---------------------------------------------------------------------------- slow reader
PUSH_MESSAGES = 100_000
PUSH_MIB = 200
RSS_GROWTH_LIMIT = 64 << 20  # far below the 200 MiB pushed: nothing piles up


def _rss(proc: psutil.Process) -> int:
    return proc.memory_info().rss


@pytest.mark.timeout(90)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_slow_reader_blocks_the_sender_and_memory_stays_bounded(children, endpoint,
                                                                transport):
    from pusher import chunk, message  # the pusher's data, regenerated to compare

    with chan.listen(endpoint(transport)) as listener:
        pusher = children.start("pusher.py", listener.endpoint, PUSH_MESSAGES, PUSH_MIB)
        rx = listener.accept(timeout=10)
        first = rx.recv(timeout=10)
        data, probe = first["data"], first["probe"]
        probe_rx = listener.accept(timeout=10)  # accepted, never read

        taken_msgs, taken_bytes, send_timed_out, write_timed_out = \
            map(int, pusher.expect("PROBED", 30).split())
        assert send_timed_out, "send(timeout=0.3) never raised chan.Timeout"
        assert write_timed_out, "write(timeout=0.3) never raised chan.Timeout"
        assert taken_msgs < 1_000_000 and taken_bytes < 64 << 20

        me, him = psutil.Process(), psutil.Process(pusher.pid)
        base_me, base_him = _rss(me), _rss(him)
        pusher.expect("PUSHING", 10)
        # Nobody reads for a while: the pusher's threads must be stuck, not buffering.
        peak_me, peak_him = base_me, base_him
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            peak_me, peak_him = max(peak_me, _rss(me)), max(peak_him, _rss(him))
            time.sleep(0.05)
        assert pusher.alive()
        assert pusher.lines.empty(), "the pusher finished although nobody read"

        # Drain: 200 MiB through the stream, then 1e5 messages, sampling RSS as we go.
        digest = hashlib.sha256()
        total = 0
        while True:
            piece = data.read(1 << 20, timeout=30)
            if not piece:
                break
            digest.update(piece)
            total += len(piece)
            if total % (16 << 20) < len(piece):
                peak_me, peak_him = max(peak_me, _rss(me)), max(peak_him, _rss(him))
        assert total == PUSH_MIB << 20
        expected = hashlib.sha256()
        for k in range(PUSH_MIB):
            expected.update(chunk(k))
        assert digest.hexdigest() == expected.hexdigest()

        i = 0
        for msg in rx:
            if msg != message(i):
                pytest.fail(f"message {i} is {msg!r:.100}")
            i += 1
            if i % 20_000 == 0:
                peak_me, peak_him = max(peak_me, _rss(me)), max(peak_him, _rss(him))
        assert i == PUSH_MESSAGES
        pusher.expect("DONE", 30)
        peak_him = max(peak_him, _rss(him))

        # What the probes took before blocking arrives too (the pusher's session close
        # waits for it).
        for n in range(taken_msgs):
            assert probe_rx.recv(timeout=10) == {"probe": n}
        got = 0
        while got < taken_bytes:
            piece = probe.read(taken_bytes - got, timeout=10)
            assert piece and piece == b"p" * len(piece)
            got += len(piece)
        assert pusher.proc.wait(30) == 0, pusher.stderr()

    grew = {"reader (this process)": peak_me - base_me, "pusher": peak_him - base_him}
    assert all(g < RSS_GROWTH_LIMIT for g in grew.values()), \
        {k: f"{v / 2**20:.1f} MiB" for k, v in grew.items()}
