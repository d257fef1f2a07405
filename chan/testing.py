"""chan.testing: one conformance suite that every transport must pass.

In the manner of trio's ``trio.testing.check_*_stream``: each ``check_*`` function takes
a *pair maker* (a callable returning a connected ``(Sender, Receiver)`` on a fresh
channel) and raises ``AssertionError`` (or the chan error that broke it) when the
transport behind it does not behave as :mod:`chan` promises.  The ``acheck_*`` twins do
the same for :mod:`chan.aio` with an async pair maker.

Pair makers for the built-in transports come from links::

    from chan import testing

    with testing.open_link("tcp") as link:          # "pipe", "tcp", "ipc", "inproc"
        testing.check_transport(link.pair)          # every generic check

    async with testing.open_alink("ipc") as link:   # the asyncio front end
        await testing.acheck_transport(link.pair)

A session link is one listener and one session connected to it; ``link.pair()`` opens
a channel on the session (the Sender, on the connecting side) and accepts it on the
listener (the Receiver).  Closing the link closes the session, then the listener, and
removes what it created (an ipc:// socket file in its own temporary directory).

:data:`CHECKS` / :data:`ACHECKS` map names to the checks that take one pair maker, so a
test suite can parametrize over checks and transports.  Some checks need more:
:func:`check_forwarding` and :func:`check_forwarding_errors` take two pair makers
(channel ends handed on to a third party: A to B over one, B to C over the other), and
:func:`check_message_too_large` a pair maker of a session link made with a small
``Settings.max_message``.  The combinators :func:`sent_sender_pair` and
:func:`sent_receiver_pair` turn a pair maker into one whose Sender (or Receiver) has
itself travelled in a message, so every check also runs over nested ends.

Every wait in a check is bounded (:data:`WAIT` seconds): a broken transport fails a
check with :class:`chan.Timeout`, it never hangs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import tempfile
import threading
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Iterator

import msgpack

from . import aio
from .channel import Receiver, Sender, pipe
from .errors import (ClosedChannelError, EndOfChannel, MessageTooLarge, RemoteError,
                     Timeout)
from .net import Listener, Session, Settings, connect, listen
from .stream import ByteStream, stream_pair

__all__ = [
    "ACHECKS",
    "AsyncLink",
    "AsyncPairMaker",
    "CHECKS",
    "CodedError",
    "Link",
    "PairMaker",
    "SESSION_TRANSPORTS",
    "SHORT",
    "TRANSPORTS",
    "VALUES",
    "WAIT",
    "acheck_close",
    "acheck_close_with_error",
    "acheck_closed_channel_error",
    "acheck_deep_nesting",
    "acheck_flow_control",
    "acheck_forwarding",
    "acheck_forwarding_errors",
    "acheck_iteration",
    "acheck_message_too_large",
    "acheck_not_msgpack",
    "acheck_ordering",
    "acheck_ordering_per_channel",
    "acheck_receiver_close",
    "acheck_receiver_in_message",
    "acheck_recv_timeout",
    "acheck_reply_channel",
    "acheck_same_end_twice",
    "acheck_sent_away",
    "acheck_sent_end_close_with_error",
    "acheck_stream_bulk",
    "acheck_stream_in_message",
    "acheck_transport",
    "acheck_tuple_as_list",
    "acheck_values",
    "asent_receiver_pair",
    "asent_sender_pair",
    "assert_same",
    "check_close",
    "check_close_with_error",
    "check_closed_channel_error",
    "check_deep_nesting",
    "check_flow_control",
    "check_forwarding",
    "check_forwarding_errors",
    "check_iteration",
    "check_message_too_large",
    "check_not_msgpack",
    "check_ordering",
    "check_ordering_per_channel",
    "check_receiver_close",
    "check_receiver_in_message",
    "check_recv_timeout",
    "check_reply_channel",
    "check_same_end_twice",
    "check_sent_away",
    "check_sent_end_close_with_error",
    "check_stream_bulk",
    "check_stream_in_message",
    "check_transport",
    "check_tuple_as_list",
    "check_values",
    "endpoint_for",
    "open_alink",
    "open_link",
    "raises",
    "sent_receiver_pair",
    "sent_sender_pair",
]

TRANSPORTS = ("pipe", "tcp", "ipc", "inproc")
SESSION_TRANSPORTS = ("tcp", "ipc", "inproc")

WAIT = 5.0  # the bound on every wait that should succeed
SHORT = 0.05  # the timeout of waits that are meant to time out

PairMaker = Callable[[], "tuple[Sender, Receiver]"]
AsyncPairMaker = Callable[[], "Awaitable[tuple[aio.Sender, aio.Receiver]]"]


# ------------------------------------------------------------------------- values
class CodedError(Exception):
    """An error with a ``code``: ``close(error=CodedError(...))`` shows it to the peer."""

    code = "E_CODED"


#: Every kind of msgpack value, as ``name -> value``: each arrives equal, with its type.
#: (Tuples are not here: they arrive as lists, see :func:`check_tuple_as_list`.)
VALUES: dict[str, Any] = {
    "none": None,
    "true": True,
    "false": False,
    "zero": 0,
    "int": 42,
    "negative int": -7,
    "uint64 max": 2**64 - 1,
    "int64 min": -2**63,
    "float": 1.5,
    "negative float": -2.25e-300,
    "inf": float("inf"),
    "empty str": "",
    "unicode str": "héllo wörld ✓ 日本語 🎉",
    "empty bytes": b"",
    "bytes": bytes(range(256)),
    "list": [1, "two", 3.0, None],
    "dict": {"a": 1, "b": [True, False]},
    "int keys": {1: "one", -2: "minus two", 2**40: "big"},
    "mixed keys": {0: "int", "0": "str", b"0": "bytes"},
    "nested": {"a": [{"b": [{"c": [[[[["deep"]]]]]}]}], "n": [[], {}, ""]},
    "deep list": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]],
}


def assert_same(got: Any, want: Any, where: str = "message") -> None:
    """``got == want`` with the same types all the way down (``True`` is not ``1``)."""
    if type(got) is not type(want):
        raise AssertionError(f"{where}: got {type(got).__name__} {got!r}, "
                             f"want {type(want).__name__} {want!r}")
    if isinstance(want, list):
        if len(got) != len(want):
            raise AssertionError(f"{where}: got {got!r}, want {want!r}")
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, dict):
        if list(got) != list(want):
            raise AssertionError(f"{where}: keys {list(got)!r}, want {list(want)!r}")
        for k in want:
            assert_same(got[k], want[k], f"{where}[{k!r}]")
    elif not (got == want or (got != got and want != want)):
        raise AssertionError(f"{where}: got {got!r}, want {want!r}")


class _Raised:
    value: BaseException


@contextlib.contextmanager
def raises(*types: type[BaseException]) -> Iterator[_Raised]:
    """Like ``pytest.raises`` (without needing pytest): the block must raise one of ``types``."""
    box = _Raised()
    try:
        yield box
    except types as exc:
        box.value = exc
    else:
        raise AssertionError(f"expected {' or '.join(t.__name__ for t in types)}, "
                             "nothing was raised")


def _expect(cond: Any, message: str) -> None:
    if not cond:
        raise AssertionError(message)


def _is(obj: Any, cls: type, what: str) -> None:
    _expect(isinstance(obj, cls), f"{what}: got {obj!r}, want a {cls.__module__}.{cls.__name__}")


# ------------------------------------------------------------------------- links
_names = itertools.count(1)


@contextlib.contextmanager
def endpoint_for(kind: str) -> Iterator[str]:
    """A fresh endpoint to listen on for ``kind`` (``tcp``, ``ipc``, ``inproc``).

    ``ipc``: a socket file ``cbx.sock`` in a new temporary directory (prefix ``cbx``);
    on exit the file (by its exact name) and the directory are removed.
    """
    if kind == "tcp":
        yield "tcp://127.0.0.1:0"
    elif kind == "inproc":
        yield f"inproc://cbx-{os.getpid()}-{next(_names)}"
    elif kind == "ipc":
        directory = tempfile.mkdtemp(prefix="cbx")
        path = os.path.join(directory, "cbx.sock")
        try:
            yield f"ipc://{path}"
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            os.rmdir(directory)
    else:
        raise ValueError(f"unknown transport {kind!r}: one of {TRANSPORTS}")


class Link:
    """Makes connected channel pairs over one transport (see :func:`open_link`)."""

    def __init__(self, kind: str, listener: Listener | None = None,
                 session: Session | None = None) -> None:
        self.kind = kind
        self.listener = listener
        self.session = session

    def pair(self) -> tuple[Sender, Receiver]:
        """A new channel: ``(Sender, Receiver)``; over a session, client to listener."""
        if self.session is None:
            return pipe()
        tx = self.session.open()
        return tx, self.listener.accept(timeout=WAIT)

    def __repr__(self) -> str:
        return f"<Link {self.kind}>"


@contextlib.contextmanager
def open_link(kind: str, settings: Settings | None = None,
              listener_settings: Settings | None = None) -> Iterator[Link]:
    """A :class:`Link` over ``kind`` (one of :data:`TRANSPORTS`), closed on exit.

    ``settings`` go to both sides of a session; ``listener_settings`` (default:
    ``settings``) to the listener alone.  On a clean exit errors of closing are raised;
    when the body raised, cleanup still runs and its errors are suppressed.
    """
    if kind == "pipe":
        yield Link(kind)
        return
    with endpoint_for(kind) as endpoint:
        listener = listen(endpoint, settings=listener_settings or settings)
        try:
            session = connect(listener.endpoint, settings=settings, timeout=WAIT)
            try:
                yield Link(kind, listener, session)
            except BaseException:
                with contextlib.suppress(Exception):
                    session.close(timeout=WAIT)
                raise
            session.close(timeout=WAIT)
        finally:
            listener.close()


class AsyncLink:
    """The asyncio twin of :class:`Link` (see :func:`open_alink`)."""

    def __init__(self, kind: str, listener: aio.Listener | None = None,
                 session: aio.Session | None = None) -> None:
        self.kind = kind
        self.listener = listener
        self.session = session

    async def pair(self) -> tuple[aio.Sender, aio.Receiver]:
        if self.session is None:
            return aio.pipe()
        tx = self.session.open()
        return tx, await self.listener.accept(timeout=WAIT)

    def __repr__(self) -> str:
        return f"<AsyncLink {self.kind}>"


@contextlib.asynccontextmanager
async def open_alink(kind: str, settings: Settings | None = None,
                     listener_settings: Settings | None = None) -> AsyncIterator[AsyncLink]:
    """An :class:`AsyncLink` (chan.aio ends) over ``kind``; see :func:`open_link`."""
    if kind == "pipe":
        yield AsyncLink(kind)
        return
    with endpoint_for(kind) as endpoint:
        listener = await aio.listen(endpoint, settings=listener_settings or settings)
        try:
            session = await aio.connect(listener.endpoint, settings=settings, timeout=WAIT)
            try:
                yield AsyncLink(kind, listener, session)
            except BaseException:
                with contextlib.suppress(Exception):
                    await session.close(timeout=WAIT)
                raise
            await session.close(timeout=WAIT)
        finally:
            await listener.close()


def sent_sender_pair(make_pair: PairMaker) -> PairMaker:
    """Pairs whose Sender travelled over ``make_pair``'s channel (a reply channel)."""
    def pair() -> tuple[Sender, Receiver]:
        carrier, far = make_pair()
        tx, rx = pipe()
        carrier.send({"ret": tx})
        carrier.close()
        return far.recv(timeout=WAIT)["ret"], rx
    return pair


def sent_receiver_pair(make_pair: PairMaker) -> PairMaker:
    """Pairs whose Receiver travelled over ``make_pair``'s channel."""
    def pair() -> tuple[Sender, Receiver]:
        carrier, far = make_pair()
        tx, rx = pipe()
        carrier.send({"feed": rx})
        carrier.close()
        return tx, far.recv(timeout=WAIT)["feed"]
    return pair


def asent_sender_pair(make_pair: AsyncPairMaker) -> AsyncPairMaker:
    """The asyncio twin of :func:`sent_sender_pair`."""
    async def pair() -> tuple[aio.Sender, aio.Receiver]:
        carrier, far = await make_pair()
        tx, rx = aio.pipe()
        await carrier.send({"ret": tx})
        await carrier.close()
        return (await far.recv(timeout=WAIT))["ret"], rx
    return pair


def asent_receiver_pair(make_pair: AsyncPairMaker) -> AsyncPairMaker:
    """The asyncio twin of :func:`sent_receiver_pair`."""
    async def pair() -> tuple[aio.Sender, aio.Receiver]:
        carrier, far = await make_pair()
        tx, rx = aio.pipe()
        await carrier.send({"feed": rx})
        await carrier.close()
        return tx, (await far.recv(timeout=WAIT))["feed"]
    return pair


# ------------------------------------------------------------------------- helpers
class _Background:
    """``fn()`` in a daemon thread (a stuck transport must not keep the process alive)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._done = threading.Event()
        self._box: list = []

        def run() -> None:
            try:
                self._box.append((True, fn()))
            except BaseException as exc:
                self._box.append((False, exc))
            self._done.set()

        threading.Thread(target=run, name="chan-testing", daemon=True).start()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float = WAIT) -> Any:
        if not self._done.wait(timeout):
            raise AssertionError(f"a background task did not finish within {timeout} s")
        ok, value = self._box[0]
        if not ok:
            raise value
        return value


def _send_all(tx: Sender, items: Any, close: bool = True) -> None:
    for item in items:
        tx.send(item, timeout=WAIT)
    if close:
        tx.close(timeout=WAIT)


def _drain(rx: Receiver) -> list:
    """Every message until the clean end (each wait bounded)."""
    out = []
    while True:
        try:
            out.append(rx.recv(timeout=WAIT))
        except EndOfChannel:
            return out


def _read_exactly(stream: ByteStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf), timeout=WAIT)
        _expect(chunk, f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def _packed_bytes(size: int) -> bytes:
    """A bytes message whose msgpack form is exactly ``size`` bytes long."""
    for header in (2, 3, 5):  # bin 8, bin 16, bin 32
        data = b"x" * (size - header)
        if len(msgpack.packb(data)) == size:
            return data
    raise ValueError(f"no bytes value packs to exactly {size} bytes")


def _expect_end(rx: Receiver) -> None:
    with raises(EndOfChannel):
        rx.recv(timeout=WAIT)


# ------------------------------------------------------------------------- checks
def check_ordering(make_pair: PairMaker, n: int = 5000) -> None:
    """``n`` messages (many windows' worth) arrive once each, in order, then the end."""
    tx, rx = make_pair()
    sender = _Background(lambda: _send_all(tx, ({"seq": i} for i in range(n))))
    got = [msg["seq"] for msg in _drain(rx)]
    sender.result()
    _expect(got == list(range(n)), "messages were lost, duplicated or reordered")


def check_ordering_per_channel(make_pair: PairMaker, channels: int = 4,
                               n: int = 600) -> None:
    """Several channels busy at once: each keeps its own order."""
    pairs = [make_pair() for _ in range(channels)]
    senders = [_Background(lambda tx=tx, c=c: _send_all(tx, [[c, i] for i in range(n)]))
               for c, (tx, _) in enumerate(pairs)]
    for c, (_, rx) in reversed(list(enumerate(pairs))):
        got = _drain(rx)
        _expect(got == [[c, i] for i in range(n)],
                f"channel {c}: messages lost or reordered")
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
    tx.send((1, (2, "three"), {"k": (4,)}), timeout=WAIT)
    assert_same(rx.recv(timeout=WAIT), [1, [2, "three"], {"k": [4]}])


def check_reply_channel(make_pair: PairMaker) -> None:
    """A Sender in a message lets the peer answer, and answer with a Sender in turn."""
    tx, rx = make_pair()
    ret_tx, ret_rx = pipe()
    tx.send({"verb": "ping", "ret": ret_tx}, timeout=WAIT)
    req = rx.recv(timeout=WAIT)
    _expect(req["verb"] == "ping", f"got {req!r}")
    ret = req["ret"]
    _is(ret, Sender, "the reply channel")
    ret.send({"pong": 1}, timeout=WAIT)
    back_tx, back_rx = pipe()
    ret.send({"next": back_tx}, timeout=WAIT)
    ret.close(timeout=WAIT)
    assert_same(ret_rx.recv(timeout=WAIT), {"pong": 1})
    nxt = ret_rx.recv(timeout=WAIT)["next"]
    _is(nxt, Sender, "a Sender sent back on the reply channel")
    _expect_end(ret_rx)
    nxt.send("hello", timeout=WAIT)
    nxt.close(timeout=WAIT)
    _expect(back_rx.recv(timeout=WAIT) == "hello", "second-level reply lost")
    _expect_end(back_rx)


def check_receiver_in_message(make_pair: PairMaker) -> None:
    """A Receiver in a message lets the peer read what is sent on it afterwards."""
    tx, rx = make_pair()
    feed_tx, feed_rx = pipe()
    tx.send({"feed": feed_rx}, timeout=WAIT)
    far = rx.recv(timeout=WAIT)["feed"]
    _is(far, Receiver, "the Receiver sent in a message")
    for i in range(10):
        feed_tx.send(i, timeout=WAIT)
    feed_tx.close(timeout=WAIT)
    _expect(_drain(far) == list(range(10)), "messages on a sent Receiver lost or reordered")


def _expect_remote_error(err: _Raised, code: str, message: str, what: str) -> None:
    got = (err.value.code, err.value.message)
    _expect(got == (code, message), f"{what}: got RemoteError code={got[0]!r} "
            f"message={got[1]!r}, want code={code!r} message={message!r}")


def check_sent_end_close_with_error(make_pair: PairMaker) -> None:
    """close(error=...) reaches the peer unchanged through ends sent in a message."""
    tx, rx = make_pair()
    feed_tx, feed_rx = pipe()
    near, end = stream_pair()
    tx.send([feed_rx, end], timeout=WAIT)
    far, far_io = rx.recv(timeout=WAIT)
    feed_tx.send("last", timeout=WAIT)
    feed_tx.close(error=CodedError("relayed"), timeout=WAIT)
    _expect(far.recv(timeout=WAIT) == "last", "message before the error lost")
    with raises(RemoteError) as err:
        far.recv(timeout=WAIT)
    _expect_remote_error(err, "E_CODED", "relayed", "through a sent Receiver")
    near.write(b"abc", timeout=WAIT)
    near.close(error=ValueError("stream broke"), timeout=WAIT)
    _expect(_read_exactly(far_io, 3) == b"abc", "bytes before the error lost")
    with raises(RemoteError) as err:
        far_io.read(timeout=WAIT)
    _expect_remote_error(err, "ValueError", "stream broke", "through a sent stream end")


def check_stream_in_message(make_pair: PairMaker) -> None:
    """A ByteStream end in a message is duplex; close_write is EOF, each way."""
    tx, rx = make_pair()
    near, end = stream_pair()
    tx.send({"io": end}, timeout=WAIT)
    far = rx.recv(timeout=WAIT)["io"]
    _is(far, ByteStream, "the stream end sent in a message")
    near.write(b"ping\n", timeout=WAIT)
    _expect(far.readline(timeout=WAIT) == b"ping\n", "line lost")
    far.write(b"pong\n", timeout=WAIT)
    _expect(near.readline(timeout=WAIT) == b"pong\n", "answer lost")
    near.write(b"tail", timeout=WAIT)
    near.close_write(timeout=WAIT)
    _expect(far.read(timeout=WAIT) == b"tail", "bytes before EOF lost")
    _expect(far.read(10, timeout=WAIT) == b"", "EOF is not sticky")
    far.write(b"still open this way", timeout=WAIT)  # half-closed: the other way works
    far.close_write(timeout=WAIT)
    _expect(near.read(timeout=WAIT) == b"still open this way", "reverse direction broken")
    near.close()
    far.close()


def check_stream_bulk(make_pair: PairMaker, size: int = 2 * 1024 * 1024) -> None:
    """Megabytes through a sent stream end (beyond every buffer) arrive intact."""
    tx, rx = make_pair()
    near, end = stream_pair()
    tx.send(end, timeout=WAIT)
    far = rx.recv(timeout=WAIT)
    data = os.urandom(size)

    def write() -> None:
        near.write(data, timeout=WAIT)
        near.close_write(timeout=WAIT)
    writer = _Background(write)
    _expect(_read_exactly(far, size) == data, "stream bytes corrupted or reordered")
    _expect(far.read(timeout=WAIT) == b"", "no EOF after the data")
    writer.result()
    lines = [f"line {i}\n".encode() for i in range(500)]
    far.write(b"".join(lines), timeout=WAIT)  # fits every buffer: no reader needed
    far.close_write(timeout=WAIT)
    _expect(list(near) == lines, "iterating a stream lost or split lines")


def check_deep_nesting(make_pair: PairMaker) -> None:
    """Ends deep inside lists, tuples and dicts all work on the other side."""
    tx, rx = make_pair()
    ret_tx, ret_rx = pipe()
    feed_tx, feed_rx = pipe()
    near, end = stream_pair()
    deep: Any = {"io": end}
    for i in range(20):
        deep = [deep] if i % 2 else {"level": i, "inner": (deep,)}
    tx.send({"a": [0, {"b": ({"ret": ret_tx},)}], "c": {1: [None, {"feed": feed_rx}]},
             "d": deep}, timeout=WAIT)
    msg = rx.recv(timeout=WAIT)
    ret, feed = msg["a"][1]["b"][0]["ret"], msg["c"][1][1]["feed"]
    far = msg["d"]
    for i in reversed(range(20)):
        far = far[0] if i % 2 else far["inner"][0]
    far = far["io"]
    _is(ret, Sender, "nested Sender")
    _is(feed, Receiver, "nested Receiver")
    _is(far, ByteStream, "nested stream end")
    ret.send("up", timeout=WAIT)
    _expect(ret_rx.recv(timeout=WAIT) == "up", "nested Sender does not reach us")
    feed_tx.send("down", timeout=WAIT)
    _expect(feed.recv(timeout=WAIT) == "down", "nested Receiver does not hear us")
    near.write(b"x", timeout=WAIT)
    _expect(far.read(1, timeout=WAIT) == b"x", "nested stream end deaf")
    far.write(b"y", timeout=WAIT)
    _expect(near.read(1, timeout=WAIT) == b"y", "nested stream end mute")


def check_close(make_pair: PairMaker) -> None:
    """close(): the peer drains what was sent, then gets EndOfChannel (every time)."""
    tx, rx = make_pair()
    for i in range(3):
        tx.send(i, timeout=WAIT)
    tx.close(timeout=WAIT)
    tx.close(timeout=WAIT)  # idempotent
    _expect([rx.recv(timeout=WAIT) for _ in range(3)] == [0, 1, 2], "lost before the end")
    _expect_end(rx)
    _expect_end(rx)  # the end is sticky
    with raises(ClosedChannelError):
        tx.send(3, timeout=WAIT)


def check_close_with_error(make_pair: PairMaker) -> None:
    """close(error=exc): RemoteError after the drain; .code is exc.code or the class name."""
    class Plain(Exception):
        pass
    cases = [(CodedError("no such thing ✓"), "E_CODED", "no such thing ✓"),
             (ValueError("bad value"), "ValueError", "bad value"),
             (Plain(), "Plain", "")]
    for exc, code, message in cases:
        tx, rx = make_pair()
        tx.send("before", timeout=WAIT)
        tx.close(error=exc, timeout=WAIT)
        _expect(rx.recv(timeout=WAIT) == "before", "message before the error lost")
        for _ in range(2):  # sticky
            with raises(RemoteError) as err:
                rx.recv(timeout=WAIT)
            _expect_remote_error(err, code, message, f"close(error={exc!r})")
        with raises(ClosedChannelError):
            tx.send("after", timeout=WAIT)


def check_closed_channel_error(make_pair: PairMaker) -> None:
    """Using an end you closed raises ClosedChannelError, not EndOfChannel."""
    tx, rx = make_pair()
    tx.send(1, timeout=WAIT)
    _expect(rx.recv(timeout=WAIT) == 1, "lost")
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
    got["s"].send("theirs", timeout=WAIT)
    _expect(s_rx.recv(timeout=WAIT) == "theirs", "closing a moved Sender closed the peer's")
    r_tx.send("theirs", timeout=WAIT)
    _expect(got["r"].recv(timeout=WAIT) == "theirs",
            "closing a moved Receiver closed the peer's")
    near.write(b"theirs", timeout=WAIT)
    _expect(_read_exactly(got["io"], 6) == b"theirs", "closing a moved stream end closed it")


def check_iteration(make_pair: PairMaker) -> None:
    """``for msg in rx`` yields every message and stops at the clean end."""
    tx, rx = make_pair()
    for i in range(20):
        tx.send(i, timeout=WAIT)
    tx.close(timeout=WAIT)
    _expect(list(rx) == list(range(20)), "iteration lost messages")
    _expect(list(rx) == [], "a finished channel yields more")
    tx, rx = make_pair()
    tx.send("x", timeout=WAIT)
    tx.close(error=CodedError("broken"), timeout=WAIT)
    seen = []
    with raises(RemoteError):  # an error is not an end: the loop raises it
        for msg in rx:
            seen.append(msg)
    _expect(seen == ["x"], "message before the error lost")


def check_recv_timeout(make_pair: PairMaker) -> None:
    """recv(timeout=...) raises chan.Timeout (a TimeoutError); the channel keeps working."""
    tx, rx = make_pair()
    start = time.monotonic()
    with raises(Timeout) as err:
        rx.recv(timeout=SHORT)
    elapsed = time.monotonic() - start
    _is(err.value, TimeoutError, "chan.Timeout")
    _expect(SHORT * 0.9 <= elapsed < WAIT, f"recv(timeout={SHORT}) returned after {elapsed} s")
    with raises(Timeout):
        rx.recv(timeout=0)
    tx.send("after", timeout=WAIT)
    _expect(rx.recv(timeout=WAIT) == "after", "channel broken by a timeout")
    tx.send("queued", timeout=WAIT)
    deadline = time.monotonic() + WAIT
    while True:  # once a message is there, timeout=0 returns it
        try:
            _expect(rx.recv(timeout=0) == "queued", "wrong message")
            break
        except Timeout:
            _expect(time.monotonic() < deadline, "message never arrived")
            time.sleep(0.001)
    tx.close(timeout=WAIT)
    _expect_end(rx)


_PAD = b"x" * 1024  # flow control is checked with 1 KiB messages


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
            tx.send([n, _PAD], timeout=SHORT)
        except Timeout:
            break
        n += 1
        _expect(n <= bound, f"{bound} messages taken and the sender never waited")
    _expect(n > 0, "nothing could be sent")
    sender = _Background(lambda: _send_all(tx, ([i, _PAD] for i in range(n, n + 10))))
    time.sleep(SHORT)
    _expect(not sender.done(), "a send went through a full window")
    _expect([i for i, _ in _drain(rx)] == list(range(n + 10)),
            "flow control lost or repeated messages")
    sender.result()


def check_receiver_close(make_pair: PairMaker) -> None:
    """Receiver.close(): the sender's next sends raise RemoteError; its close is quiet."""
    tx, rx = make_pair()
    tx.send(1, timeout=WAIT)
    _expect(rx.recv(timeout=WAIT) == 1, "lost")
    rx.close()
    deadline = time.monotonic() + WAIT
    with raises(RemoteError):
        while time.monotonic() < deadline:  # over a network the news takes a moment
            tx.send("into the void", timeout=WAIT)
            time.sleep(0.001)
    with raises(RemoteError):  # and keeps raising
        tx.send("again", timeout=WAIT)
    tx.close(timeout=WAIT)


def check_not_msgpack(make_pair: PairMaker) -> None:
    """A value that is not msgpack raises TypeError; nothing is sent or taken over."""
    tx, rx = make_pair()
    s_tx, s_rx = pipe()
    for bad in ({1, 2}, object(), 2**64, [1, {"x": 1j}], {"f": len}):
        with raises(TypeError):
            tx.send(bad, timeout=WAIT)
    with raises(TypeError):
        tx.send({"ret": s_tx, "bad": {1, 2}}, timeout=WAIT)
    s_tx.send("still mine", timeout=WAIT)  # the end was not taken over
    _expect(s_rx.recv(timeout=WAIT) == "still mine", "end lost by a failed send")
    tx.send("fine", timeout=WAIT)
    _expect(rx.recv(timeout=WAIT) == "fine", "channel broken by a TypeError")
    tx.send({"ret": s_tx}, timeout=WAIT)
    rx.recv(timeout=WAIT)["ret"].send("via peer", timeout=WAIT)
    _expect(s_rx.recv(timeout=WAIT) == "via peer", "end unusable after a failed send")


def check_same_end_twice(make_pair: PairMaker) -> None:
    """A message holding one end twice raises ValueError; the end stays yours."""
    tx, rx = make_pair()
    s_tx, s_rx = pipe()
    r_tx, r_rx = pipe()
    near, end = stream_pair()
    for msg in ([s_tx, s_tx], {"a": s_tx, "b": [{"c": s_tx}]}, (r_rx, r_rx), [end, [end]]):
        with raises(ValueError):
            tx.send(msg, timeout=WAIT)
    s_tx.send("still mine", timeout=WAIT)
    _expect(s_rx.recv(timeout=WAIT) == "still mine", "end lost by a failed send")
    tx.send("fine", timeout=WAIT)
    _expect(rx.recv(timeout=WAIT) == "fine", "channel broken by a ValueError")


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


def check_forwarding(make_ab: PairMaker, make_bc: PairMaker) -> None:
    """Ends handed on to a third party: A gives B an end over one link, B hands it to C
    over another, and C talks to A directly (replies, a feed, and a stream)."""
    ab_tx, ab_rx = make_ab()
    bc_tx, bc_rx = make_bc()
    ret_tx, ret_rx = pipe()
    feed_tx, feed_rx = pipe()
    near, end = stream_pair()
    ab_tx.send({"ret": ret_tx, "feed": feed_rx, "io": end}, timeout=WAIT)
    at_b = ab_rx.recv(timeout=WAIT)
    bc_tx.send(at_b, timeout=WAIT)
    at_c = bc_rx.recv(timeout=WAIT)
    n = 1000  # several windows: flow control holds across the relay
    answer = _Background(lambda: _send_all(at_c["ret"], range(n), close=False))
    _expect([ret_rx.recv(timeout=WAIT) for _ in range(n)] == list(range(n)),
            "replies from C lost or reordered")
    answer.result()
    at_c["ret"].close(timeout=WAIT)
    _expect_end(ret_rx)
    feeder = _Background(lambda: _send_all(feed_tx, range(n)))
    _expect(_drain(at_c["feed"]) == list(range(n)), "feed to C lost or reordered")
    feeder.result()
    near.write(b"to C\n", timeout=WAIT)
    _expect(at_c["io"].readline(timeout=WAIT) == b"to C\n", "stream to C")
    at_c["io"].write(b"to A\n", timeout=WAIT)
    at_c["io"].close_write(timeout=WAIT)
    _expect(near.read(timeout=WAIT) == b"to A\n", "stream from C, then EOF")


def check_forwarding_errors(make_ab: PairMaker, make_bc: PairMaker) -> None:
    """Errors and closes travel unchanged through ends handed on to a third party."""
    ab_tx, ab_rx = make_ab()
    bc_tx, bc_rx = make_bc()
    ret_tx, ret_rx = pipe()
    feed_tx, feed_rx = pipe()
    drop_tx, drop_rx = pipe()
    near, end = stream_pair()
    ab_tx.send({"ret": ret_tx, "feed": feed_rx, "drop": drop_rx, "io": end}, timeout=WAIT)
    bc_tx.send(ab_rx.recv(timeout=WAIT), timeout=WAIT)
    at_c = bc_rx.recv(timeout=WAIT)
    at_c["ret"].close(error=CodedError("from C"), timeout=WAIT)
    with raises(RemoteError) as err:
        ret_rx.recv(timeout=WAIT)
    _expect_remote_error(err, "E_CODED", "from C", "C's Sender closed with an error")
    feed_tx.close(error=ValueError("from A"), timeout=WAIT)
    with raises(RemoteError) as err:
        at_c["feed"].recv(timeout=WAIT)
    _expect_remote_error(err, "ValueError", "from A", "A's Sender closed with an error")
    near.close(error=CodedError("stream from A"), timeout=WAIT)
    with raises(RemoteError) as err:
        at_c["io"].read(timeout=WAIT)
    _expect_remote_error(err, "E_CODED", "stream from A", "A's stream closed with an error")
    at_c["drop"].close()
    deadline = time.monotonic() + WAIT
    with raises(RemoteError):  # C stopped reading: A's sends fail
        while time.monotonic() < deadline:
            drop_tx.send("into the void", timeout=WAIT)
            time.sleep(0.001)


def check_message_too_large(make_pair: PairMaker, max_message: int) -> None:
    """Over a session limited to ``max_message`` bytes (on either side), a bigger message
    raises MessageTooLarge, in both directions, and nothing breaks: the channel, and the
    ends the message carried, stay usable; big data still goes through a stream."""
    tx, rx = make_pair()
    fits, too_big = _packed_bytes(max_message), _packed_bytes(max_message + 1)
    tx.send(fits, timeout=WAIT)
    _expect(rx.recv(timeout=WAIT) == fits, "a message at the limit was refused")
    with raises(MessageTooLarge):
        tx.send(too_big, timeout=WAIT)
    s_tx, s_rx = pipe()
    with raises(MessageTooLarge):
        tx.send({"ret": s_tx, "blob": too_big}, timeout=WAIT)
    tx.send({"ret": s_tx}, timeout=WAIT)  # the end was not taken over
    ret = rx.recv(timeout=WAIT)["ret"]
    with raises(MessageTooLarge):  # the other direction
        ret.send(too_big, timeout=WAIT)
    ret.send("small", timeout=WAIT)
    _expect(s_rx.recv(timeout=WAIT) == "small", "reply broken by MessageTooLarge")
    near, end = stream_pair()
    tx.send(end, timeout=WAIT)
    far = rx.recv(timeout=WAIT)
    data = os.urandom(8 * max_message)
    writer = _Background(lambda: (near.write(data, timeout=WAIT), near.close()))
    _expect(_read_exactly(far, len(data)) == data, "stream data above max_message")
    writer.result()
    tx.send("still fine", timeout=WAIT)
    _expect(rx.recv(timeout=WAIT) == "still fine", "channel broken by MessageTooLarge")


# ------------------------------------------------------------------- asyncio checks
async def _asend_all(tx: aio.Sender, items: Any, close: bool = True) -> None:
    for item in items:
        await tx.send(item, timeout=WAIT)
    if close:
        await tx.close(timeout=WAIT)


async def _adrain(rx: aio.Receiver) -> list:
    out = []
    while True:
        try:
            out.append(await rx.recv(timeout=WAIT))
        except EndOfChannel:
            return out


async def _aread_exactly(stream: aio.ByteStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.read(n - len(buf), timeout=WAIT)
        _expect(chunk, f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def _aexpect_end(rx: aio.Receiver) -> None:
    with raises(EndOfChannel):
        await rx.recv(timeout=WAIT)


async def _finish(task: asyncio.Task) -> Any:
    return await asyncio.wait_for(task, WAIT)


async def acheck_ordering(make_pair: AsyncPairMaker, n: int = 5000) -> None:
    """See :func:`check_ordering`."""
    tx, rx = await make_pair()
    sender = asyncio.ensure_future(_asend_all(tx, ({"seq": i} for i in range(n))))
    got = [msg["seq"] for msg in await _adrain(rx)]
    await _finish(sender)
    _expect(got == list(range(n)), "messages were lost, duplicated or reordered")


async def acheck_ordering_per_channel(make_pair: AsyncPairMaker, channels: int = 4,
                                      n: int = 600) -> None:
    """See :func:`check_ordering_per_channel`."""
    pairs = [await make_pair() for _ in range(channels)]
    senders = [asyncio.ensure_future(_asend_all(tx, [[c, i] for i in range(n)]))
               for c, (tx, _) in enumerate(pairs)]
    for c, (_, rx) in reversed(list(enumerate(pairs))):
        got = await _adrain(rx)
        _expect(got == [[c, i] for i in range(n)],
                f"channel {c}: messages lost or reordered")
    for s in senders:
        await _finish(s)


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
    await tx.send((1, (2, "three"), {"k": (4,)}), timeout=WAIT)
    assert_same(await rx.recv(timeout=WAIT), [1, [2, "three"], {"k": [4]}])


async def acheck_reply_channel(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_reply_channel`; received ends are chan.aio ends."""
    tx, rx = await make_pair()
    ret_tx, ret_rx = aio.pipe()
    await tx.send({"verb": "ping", "ret": ret_tx}, timeout=WAIT)
    req = await rx.recv(timeout=WAIT)
    ret = req["ret"]
    _is(ret, aio.Sender, "the reply channel")
    await ret.send({"pong": 1}, timeout=WAIT)
    back_tx, back_rx = aio.pipe()
    await ret.send({"next": back_tx}, timeout=WAIT)
    await ret.close(timeout=WAIT)
    assert_same(await ret_rx.recv(timeout=WAIT), {"pong": 1})
    nxt = (await ret_rx.recv(timeout=WAIT))["next"]
    _is(nxt, aio.Sender, "a Sender sent back on the reply channel")
    await _aexpect_end(ret_rx)
    await nxt.send("hello", timeout=WAIT)
    await nxt.close(timeout=WAIT)
    _expect(await back_rx.recv(timeout=WAIT) == "hello", "second-level reply lost")
    await _aexpect_end(back_rx)


async def acheck_receiver_in_message(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_receiver_in_message`."""
    tx, rx = await make_pair()
    feed_tx, feed_rx = aio.pipe()
    await tx.send({"feed": feed_rx}, timeout=WAIT)
    far = (await rx.recv(timeout=WAIT))["feed"]
    _is(far, aio.Receiver, "the Receiver sent in a message")
    for i in range(10):
        await feed_tx.send(i, timeout=WAIT)
    await feed_tx.close(timeout=WAIT)
    _expect([m async for m in far] == list(range(10)), "messages on a sent Receiver lost")


async def acheck_sent_end_close_with_error(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_sent_end_close_with_error`."""
    tx, rx = await make_pair()
    feed_tx, feed_rx = aio.pipe()
    near, end = aio.stream_pair()
    await tx.send([feed_rx, end], timeout=WAIT)
    far, far_io = await rx.recv(timeout=WAIT)
    await feed_tx.send("last", timeout=WAIT)
    await feed_tx.close(error=CodedError("relayed"), timeout=WAIT)
    _expect(await far.recv(timeout=WAIT) == "last", "message before the error lost")
    with raises(RemoteError) as err:
        await far.recv(timeout=WAIT)
    _expect_remote_error(err, "E_CODED", "relayed", "through a sent Receiver")
    await near.write(b"abc", timeout=WAIT)
    await near.close(error=ValueError("stream broke"), timeout=WAIT)
    _expect(await _aread_exactly(far_io, 3) == b"abc", "bytes before the error lost")
    with raises(RemoteError) as err:
        await far_io.read(timeout=WAIT)
    _expect_remote_error(err, "ValueError", "stream broke", "through a sent stream end")


async def acheck_stream_in_message(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_stream_in_message`."""
    tx, rx = await make_pair()
    near, end = aio.stream_pair()
    await tx.send({"io": end}, timeout=WAIT)
    far = (await rx.recv(timeout=WAIT))["io"]
    _is(far, aio.ByteStream, "the stream end sent in a message")
    await near.write(b"ping\n", timeout=WAIT)
    _expect(await far.readline(timeout=WAIT) == b"ping\n", "line lost")
    await far.write(b"pong\n", timeout=WAIT)
    _expect(await near.readline(timeout=WAIT) == b"pong\n", "answer lost")
    await near.write(b"tail", timeout=WAIT)
    await near.close_write(timeout=WAIT)
    _expect(await far.read(timeout=WAIT) == b"tail", "bytes before EOF lost")
    _expect(await far.read(10, timeout=WAIT) == b"", "EOF is not sticky")
    await far.write(b"still open this way", timeout=WAIT)
    await far.close_write(timeout=WAIT)
    _expect(await near.read(timeout=WAIT) == b"still open this way",
            "reverse direction broken")
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
    _expect(await _aread_exactly(far, size) == data, "stream bytes corrupted or reordered")
    _expect(await far.read(timeout=WAIT) == b"", "no EOF after the data")
    await _finish(writer)
    lines = [f"line {i}\n".encode() for i in range(500)]
    await write(far, b"".join(lines))  # fits every buffer: no reader needed
    _expect([line async for line in near] == lines, "iterating a stream lost or split lines")


async def acheck_deep_nesting(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_deep_nesting`."""
    tx, rx = await make_pair()
    ret_tx, ret_rx = aio.pipe()
    feed_tx, feed_rx = aio.pipe()
    near, end = aio.stream_pair()
    deep: Any = {"io": end}
    for i in range(20):
        deep = [deep] if i % 2 else {"level": i, "inner": (deep,)}
    await tx.send({"a": [0, {"b": ({"ret": ret_tx},)}], "c": {1: [None, {"feed": feed_rx}]},
                   "d": deep}, timeout=WAIT)
    msg = await rx.recv(timeout=WAIT)
    ret, feed = msg["a"][1]["b"][0]["ret"], msg["c"][1][1]["feed"]
    far = msg["d"]
    for i in reversed(range(20)):
        far = far[0] if i % 2 else far["inner"][0]
    far = far["io"]
    _is(ret, aio.Sender, "nested Sender")
    _is(feed, aio.Receiver, "nested Receiver")
    _is(far, aio.ByteStream, "nested stream end")
    await ret.send("up", timeout=WAIT)
    _expect(await ret_rx.recv(timeout=WAIT) == "up", "nested Sender does not reach us")
    await feed_tx.send("down", timeout=WAIT)
    _expect(await feed.recv(timeout=WAIT) == "down", "nested Receiver does not hear us")
    await near.write(b"x", timeout=WAIT)
    _expect(await far.read(1, timeout=WAIT) == b"x", "nested stream end deaf")
    await far.write(b"y", timeout=WAIT)
    _expect(await near.read(1, timeout=WAIT) == b"y", "nested stream end mute")


async def acheck_close(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_close`."""
    tx, rx = await make_pair()
    for i in range(3):
        await tx.send(i, timeout=WAIT)
    await tx.close(timeout=WAIT)
    await tx.close(timeout=WAIT)
    _expect([await rx.recv(timeout=WAIT) for _ in range(3)] == [0, 1, 2],
            "lost before the end")
    await _aexpect_end(rx)
    await _aexpect_end(rx)
    with raises(ClosedChannelError):
        await tx.send(3, timeout=WAIT)


async def acheck_close_with_error(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_close_with_error`."""
    class Plain(Exception):
        pass
    cases = [(CodedError("no such thing ✓"), "E_CODED", "no such thing ✓"),
             (ValueError("bad value"), "ValueError", "bad value"),
             (Plain(), "Plain", "")]
    for exc, code, message in cases:
        tx, rx = await make_pair()
        await tx.send("before", timeout=WAIT)
        await tx.close(error=exc, timeout=WAIT)
        _expect(await rx.recv(timeout=WAIT) == "before", "message before the error lost")
        for _ in range(2):
            with raises(RemoteError) as err:
                await rx.recv(timeout=WAIT)
            _expect_remote_error(err, code, message, f"close(error={exc!r})")
        with raises(ClosedChannelError):
            await tx.send("after", timeout=WAIT)


async def acheck_closed_channel_error(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_closed_channel_error`."""
    tx, rx = await make_pair()
    await tx.send(1, timeout=WAIT)
    _expect(await rx.recv(timeout=WAIT) == 1, "lost")
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
    await got["s"].send("theirs", timeout=WAIT)
    _expect(await s_rx.recv(timeout=WAIT) == "theirs",
            "closing a moved Sender closed the peer's")
    await r_tx.send("theirs", timeout=WAIT)
    _expect(await got["r"].recv(timeout=WAIT) == "theirs",
            "closing a moved Receiver closed the peer's")
    await near.write(b"theirs", timeout=WAIT)
    _expect(await _aread_exactly(got["io"], 6) == b"theirs",
            "closing a moved stream end closed it")


async def acheck_iteration(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_iteration` (``async for``)."""
    tx, rx = await make_pair()
    for i in range(20):
        await tx.send(i, timeout=WAIT)
    await tx.close(timeout=WAIT)
    _expect([m async for m in rx] == list(range(20)), "iteration lost messages")
    _expect([m async for m in rx] == [], "a finished channel yields more")
    tx, rx = await make_pair()
    await tx.send("x", timeout=WAIT)
    await tx.close(error=CodedError("broken"), timeout=WAIT)
    seen = []
    with raises(RemoteError):
        async for msg in rx:
            seen.append(msg)
    _expect(seen == ["x"], "message before the error lost")


async def acheck_recv_timeout(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_recv_timeout`."""
    tx, rx = await make_pair()
    start = time.monotonic()
    with raises(Timeout) as err:
        await rx.recv(timeout=SHORT)
    elapsed = time.monotonic() - start
    _is(err.value, TimeoutError, "chan.Timeout")
    _expect(SHORT * 0.9 <= elapsed < WAIT, f"recv(timeout={SHORT}) returned after {elapsed} s")
    with raises(Timeout):
        await rx.recv(timeout=0)
    await tx.send("after", timeout=WAIT)
    _expect(await rx.recv(timeout=WAIT) == "after", "channel broken by a timeout")
    await tx.send("queued", timeout=WAIT)
    deadline = time.monotonic() + WAIT
    while True:
        try:
            _expect(await rx.recv(timeout=0) == "queued", "wrong message")
            break
        except Timeout:
            _expect(time.monotonic() < deadline, "message never arrived")
            await asyncio.sleep(0.001)
    await tx.close(timeout=WAIT)
    await _aexpect_end(rx)


async def acheck_flow_control(make_pair: AsyncPairMaker, bound: int = 10_000) -> None:
    """See :func:`check_flow_control`."""
    tx, rx = await make_pair()
    n = 0
    while True:
        try:
            await tx.send([n, _PAD], timeout=SHORT)
        except Timeout:
            break
        n += 1
        _expect(n <= bound, f"{bound} messages taken and the sender never waited")
    _expect(n > 0, "nothing could be sent")
    sender = asyncio.ensure_future(_asend_all(tx, ([i, _PAD] for i in range(n, n + 10))))
    await asyncio.sleep(SHORT)
    _expect(not sender.done(), "a send went through a full window")
    _expect([i for i, _ in await _adrain(rx)] == list(range(n + 10)),
            "flow control lost or repeated messages")
    await _finish(sender)


async def acheck_receiver_close(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_receiver_close`."""
    tx, rx = await make_pair()
    await tx.send(1, timeout=WAIT)
    _expect(await rx.recv(timeout=WAIT) == 1, "lost")
    rx.close()
    deadline = time.monotonic() + WAIT
    with raises(RemoteError):
        while time.monotonic() < deadline:
            await tx.send("into the void", timeout=WAIT)
            await asyncio.sleep(0.001)
    with raises(RemoteError):
        await tx.send("again", timeout=WAIT)
    await tx.close(timeout=WAIT)


async def acheck_not_msgpack(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_not_msgpack`."""
    tx, rx = await make_pair()
    s_tx, s_rx = aio.pipe()
    for bad in ({1, 2}, object(), 2**64, [1, {"x": 1j}], {"f": len}):
        with raises(TypeError):
            await tx.send(bad, timeout=WAIT)
    with raises(TypeError):
        await tx.send({"ret": s_tx, "bad": {1, 2}}, timeout=WAIT)
    await s_tx.send("still mine", timeout=WAIT)
    _expect(await s_rx.recv(timeout=WAIT) == "still mine", "end lost by a failed send")
    await tx.send("fine", timeout=WAIT)
    _expect(await rx.recv(timeout=WAIT) == "fine", "channel broken by a TypeError")
    await tx.send({"ret": s_tx}, timeout=WAIT)
    await (await rx.recv(timeout=WAIT))["ret"].send("via peer", timeout=WAIT)
    _expect(await s_rx.recv(timeout=WAIT) == "via peer", "end unusable after a failed send")


async def acheck_same_end_twice(make_pair: AsyncPairMaker) -> None:
    """See :func:`check_same_end_twice`."""
    tx, rx = await make_pair()
    s_tx, s_rx = aio.pipe()
    r_tx, r_rx = aio.pipe()
    near, end = aio.stream_pair()
    for msg in ([s_tx, s_tx], {"a": s_tx, "b": [{"c": s_tx}]}, (r_rx, r_rx), [end, [end]]):
        with raises(ValueError):
            await tx.send(msg, timeout=WAIT)
    await s_tx.send("still mine", timeout=WAIT)
    _expect(await s_rx.recv(timeout=WAIT) == "still mine", "end lost by a failed send")
    await tx.send("fine", timeout=WAIT)
    _expect(await rx.recv(timeout=WAIT) == "fine", "channel broken by a ValueError")


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


async def acheck_forwarding(make_ab: AsyncPairMaker, make_bc: AsyncPairMaker) -> None:
    """See :func:`check_forwarding`."""
    ab_tx, ab_rx = await make_ab()
    bc_tx, bc_rx = await make_bc()
    ret_tx, ret_rx = aio.pipe()
    feed_tx, feed_rx = aio.pipe()
    near, end = aio.stream_pair()
    await ab_tx.send({"ret": ret_tx, "feed": feed_rx, "io": end}, timeout=WAIT)
    at_b = await ab_rx.recv(timeout=WAIT)
    await bc_tx.send(at_b, timeout=WAIT)
    at_c = await bc_rx.recv(timeout=WAIT)
    n = 1000
    answer = asyncio.ensure_future(_asend_all(at_c["ret"], range(n), close=False))
    _expect([await ret_rx.recv(timeout=WAIT) for _ in range(n)] == list(range(n)),
            "replies from C lost or reordered")
    await _finish(answer)
    await at_c["ret"].close(timeout=WAIT)
    await _aexpect_end(ret_rx)
    feeder = asyncio.ensure_future(_asend_all(feed_tx, range(n)))
    _expect(await _adrain(at_c["feed"]) == list(range(n)), "feed to C lost or reordered")
    await _finish(feeder)
    await near.write(b"to C\n", timeout=WAIT)
    _expect(await at_c["io"].readline(timeout=WAIT) == b"to C\n", "stream to C")
    await at_c["io"].write(b"to A\n", timeout=WAIT)
    await at_c["io"].close_write(timeout=WAIT)
    _expect(await near.read(timeout=WAIT) == b"to A\n", "stream from C, then EOF")


async def acheck_forwarding_errors(make_ab: AsyncPairMaker, make_bc: AsyncPairMaker) -> None:
    """See :func:`check_forwarding_errors`."""
    ab_tx, ab_rx = await make_ab()
    bc_tx, bc_rx = await make_bc()
    ret_tx, ret_rx = aio.pipe()
    feed_tx, feed_rx = aio.pipe()
    drop_tx, drop_rx = aio.pipe()
    near, end = aio.stream_pair()
    await ab_tx.send({"ret": ret_tx, "feed": feed_rx, "drop": drop_rx, "io": end},
                     timeout=WAIT)
    await bc_tx.send(await ab_rx.recv(timeout=WAIT), timeout=WAIT)
    at_c = await bc_rx.recv(timeout=WAIT)
    await at_c["ret"].close(error=CodedError("from C"), timeout=WAIT)
    with raises(RemoteError) as err:
        await ret_rx.recv(timeout=WAIT)
    _expect_remote_error(err, "E_CODED", "from C", "C's Sender closed with an error")
    await feed_tx.close(error=ValueError("from A"), timeout=WAIT)
    with raises(RemoteError) as err:
        await at_c["feed"].recv(timeout=WAIT)
    _expect_remote_error(err, "ValueError", "from A", "A's Sender closed with an error")
    await near.close(error=CodedError("stream from A"), timeout=WAIT)
    with raises(RemoteError) as err:
        await at_c["io"].read(timeout=WAIT)
    _expect_remote_error(err, "E_CODED", "stream from A", "A's stream closed with an error")
    at_c["drop"].close()
    deadline = time.monotonic() + WAIT
    with raises(RemoteError):
        while time.monotonic() < deadline:
            await drop_tx.send("into the void", timeout=WAIT)
            await asyncio.sleep(0.001)


async def acheck_message_too_large(make_pair: AsyncPairMaker, max_message: int) -> None:
    """See :func:`check_message_too_large`."""
    tx, rx = await make_pair()
    fits, too_big = _packed_bytes(max_message), _packed_bytes(max_message + 1)
    await tx.send(fits, timeout=WAIT)
    _expect(await rx.recv(timeout=WAIT) == fits, "a message at the limit was refused")
    with raises(MessageTooLarge):
        await tx.send(too_big, timeout=WAIT)
    s_tx, s_rx = aio.pipe()
    with raises(MessageTooLarge):
        await tx.send({"ret": s_tx, "blob": too_big}, timeout=WAIT)
    await tx.send({"ret": s_tx}, timeout=WAIT)
    ret = (await rx.recv(timeout=WAIT))["ret"]
    with raises(MessageTooLarge):
        await ret.send(too_big, timeout=WAIT)
    await ret.send("small", timeout=WAIT)
    _expect(await s_rx.recv(timeout=WAIT) == "small", "reply broken by MessageTooLarge")
    near, end = aio.stream_pair()
    await tx.send(end, timeout=WAIT)
    far = await rx.recv(timeout=WAIT)
    data = os.urandom(8 * max_message)

    async def write() -> None:
        await near.write(data, timeout=WAIT)
        await near.close()
    writer = asyncio.ensure_future(write())
    _expect(await _aread_exactly(far, len(data)) == data, "stream data above max_message")
    await _finish(writer)
    await tx.send("still fine", timeout=WAIT)
    _expect(await rx.recv(timeout=WAIT) == "still fine", "channel broken by MessageTooLarge")
