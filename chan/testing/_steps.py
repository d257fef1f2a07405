"""The steps the checks are made of: bounded sends, drains and reads, blocking and asyncio.

Every wait here is bounded by WAIT.  The blocking steps run a concurrent side on a
daemon thread (:class:`Background`), the asyncio ones on a task (:func:`finish` bounds
the wait for it).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable

from .. import aio
from ..channel import Receiver, Sender
from ..errors import EndOfChannel, RemoteError
from ..stream import ByteStream
from ._util import WAIT, expect, raises


# ------------------------------------------------------------------------ blocking
class Background:
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


def send_all(tx: Sender, items: Any, close: bool = True) -> None:
    for item in items:
        tx.send(item, timeout=WAIT)
    if close:
        tx.close(timeout=WAIT)


def drain(rx: Receiver) -> list:
    """Every message until the clean end (each wait bounded)."""
    out = []
    while True:
        try:
            out.append(rx.recv(timeout=WAIT))
        except EndOfChannel:
            return out


def read_exactly(stream: ByteStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf), timeout=WAIT)
        expect(chunk, f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def expect_end(rx: Receiver) -> None:
    with raises(EndOfChannel):
        rx.recv(timeout=WAIT)


def expect_passes(tx: Sender, rx: Receiver, msg: Any, failure: str) -> None:
    """``msg`` sent on ``tx`` is what ``rx`` receives next."""
    tx.send(msg, timeout=WAIT)
    expect(rx.recv(timeout=WAIT) == msg, failure)


def send_until_refused(tx: Sender) -> None:
    """The peer's Receiver is closed: sends fail with RemoteError (the news takes a
    moment over a network)."""
    deadline = time.monotonic() + WAIT
    with raises(RemoteError):
        while time.monotonic() < deadline:
            tx.send("into the void", timeout=WAIT)
            time.sleep(0.001)


# ------------------------------------------------------------------------- asyncio
async def asend_all(tx: aio.Sender, items: Any, close: bool = True) -> None:
    for item in items:
        await tx.send(item, timeout=WAIT)
    if close:
        await tx.close(timeout=WAIT)


async def adrain(rx: aio.Receiver) -> list:
    out = []
    while True:
        try:
            out.append(await rx.recv(timeout=WAIT))
        except EndOfChannel:
            return out


async def aread_exactly(stream: aio.ByteStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.read(n - len(buf), timeout=WAIT)
        expect(chunk, f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def aexpect_end(rx: aio.Receiver) -> None:
    with raises(EndOfChannel):
        await rx.recv(timeout=WAIT)


async def aexpect_passes(tx: aio.Sender, rx: aio.Receiver, msg: Any, failure: str) -> None:
    await tx.send(msg, timeout=WAIT)
    expect(await rx.recv(timeout=WAIT) == msg, failure)


async def asend_until_refused(tx: aio.Sender) -> None:
    deadline = time.monotonic() + WAIT
    with raises(RemoteError):
        while time.monotonic() < deadline:
            await tx.send("into the void", timeout=WAIT)
            await asyncio.sleep(0.001)


async def finish(task: asyncio.Task) -> Any:
    return await asyncio.wait_for(task, WAIT)
