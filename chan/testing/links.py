"""Links: the pair makers the checks run on, over every built-in transport.

:func:`open_link` / :func:`open_alink` make them (what a link holds and removes is in
the package docstring); :func:`sent_sender_pair` and its kin nest their ends.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

from .. import aio
from ..channel import Receiver, Sender, pipe
from ..net import Listener, Session, Settings, connect, listen
from ._util import WAIT

TRANSPORTS = ("pipe", "tcp", "ipc", "inproc")
SESSION_TRANSPORTS = ("tcp", "ipc", "inproc")

PairMaker = Callable[[], "tuple[Sender, Receiver]"]
AsyncPairMaker = Callable[[], "Awaitable[tuple[aio.Sender, aio.Receiver]]"]

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


class _BaseLink:
    def __init__(self, kind: str, listener: Any = None, session: Any = None) -> None:
        self.kind = kind
        self.listener = listener
        self.session = session

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind}>"


class Link(_BaseLink):
    """Makes connected channel pairs over one transport (see :func:`open_link`)."""

    listener: Listener | None
    session: Session | None

    def pair(self) -> tuple[Sender, Receiver]:
        """A new channel: ``(Sender, Receiver)``; over a session, client to listener."""
        if self.session is None:
            return pipe()
        tx = self.session.open()
        return tx, self.listener.accept(timeout=WAIT)


class AsyncLink(_BaseLink):
    """The asyncio twin of :class:`Link` (see :func:`open_alink`)."""

    listener: aio.Listener | None
    session: aio.Session | None

    async def pair(self) -> tuple[aio.Sender, aio.Receiver]:
        if self.session is None:
            return aio.pipe()
        tx = self.session.open()
        return tx, await self.listener.accept(timeout=WAIT)


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


# Nested ends: the pair's Sender (or Receiver) first travels in a message over a
# carrier channel of ``make_pair``, which is then closed.
def _carried(carrier: tuple[Sender, Receiver], key: str, end: Any) -> Any:
    tx, far = carrier
    tx.send({key: end})
    tx.close()
    return far.recv(timeout=WAIT)[key]


async def _acarried(carrier: tuple[aio.Sender, aio.Receiver], key: str, end: Any) -> Any:
    tx, far = carrier
    await tx.send({key: end})
    await tx.close()
    return (await far.recv(timeout=WAIT))[key]


def sent_sender_pair(make_pair: PairMaker) -> PairMaker:
    """Pairs whose Sender travelled over ``make_pair``'s channel (a reply channel)."""
    def pair() -> tuple[Sender, Receiver]:
        carrier = make_pair()
        tx, rx = pipe()
        return _carried(carrier, "ret", tx), rx
    return pair


def sent_receiver_pair(make_pair: PairMaker) -> PairMaker:
    """Pairs whose Receiver travelled over ``make_pair``'s channel."""
    def pair() -> tuple[Sender, Receiver]:
        carrier = make_pair()
        tx, rx = pipe()
        return tx, _carried(carrier, "feed", rx)
    return pair


def asent_sender_pair(make_pair: AsyncPairMaker) -> AsyncPairMaker:
    """The asyncio twin of :func:`sent_sender_pair`."""
    async def pair() -> tuple[aio.Sender, aio.Receiver]:
        carrier = await make_pair()
        tx, rx = aio.pipe()
        return await _acarried(carrier, "ret", tx), rx
    return pair


def asent_receiver_pair(make_pair: AsyncPairMaker) -> AsyncPairMaker:
    """The asyncio twin of :func:`sent_receiver_pair`."""
    async def pair() -> tuple[aio.Sender, aio.Receiver]:
        carrier = await make_pair()
        tx, rx = aio.pipe()
        return tx, await _acarried(carrier, "feed", rx)
    return pair
