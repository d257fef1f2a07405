"""An asyncio channel client of a chanbox daemon: the engine's verbs, awaited.

The same contract as :class:`engine.client.Client` (one reply for ``call``, every
message for ``stream``; a service failure comes back as the matching
:mod:`engine.errors` class), on :mod:`chan.aio` ends so that a thousand waiting
``docker wait`` requests cost a thousand coroutines, not a thousand threads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import chan
import chan.aio

from engine import errors
from engine.client import engine_error


class AsyncClient:
    """Calls the engine's verbs over an asyncio chan session."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.requests = session.open()

    async def _send(self, verb: str, args: dict[str, Any]) -> Any:
        ret_tx, ret_rx = chan.aio.pipe()
        try:
            await self.requests.send({"verb": verb, "args": args, "ret": ret_tx})
        except chan.ChannelError as exc:
            raise errors.NotRunning(f"the chanbox daemon went away ({exc}); restart it "
                                    "and this bridge") from exc
        return ret_rx

    async def receiver(self, verb: str, **args: Any) -> Any:
        """Send ``verb`` and return the channel its answer comes on (for verbs that
        stream bytes meanwhile); :func:`engine.client.engine_error` turns a
        ``chan.RemoteError`` from it into the engine's error."""
        return await self._send(verb, args)

    async def call(self, verb: str, **args: Any) -> Any:
        """Send ``verb`` and return its one reply."""
        rx = await self._send(verb, args)
        try:
            return await rx.recv()
        except chan.RemoteError as exc:
            raise engine_error(exc) from None
        except chan.EndOfChannel:
            raise errors.EngineError(f"the engine closed {verb!r} without an answer") from None
        except chan.SessionLost as exc:
            raise errors.NotRunning(f"the chanbox daemon went away during {verb!r} "
                                    f"({exc})") from exc
        finally:
            rx.close()

    async def stream(self, verb: str, **args: Any) -> AsyncIterator[Any]:
        """Send ``verb`` and yield every message of its answer."""
        rx = await self._send(verb, args)
        try:
            while True:
                try:
                    yield await rx.recv()
                except chan.EndOfChannel:
                    return
                except chan.RemoteError as exc:
                    raise engine_error(exc) from None
                except chan.SessionLost as exc:
                    raise errors.NotRunning(f"the chanbox daemon went away during "
                                            f"{verb!r} ({exc})") from exc
        finally:
            rx.close()

    async def close(self) -> None:
        """Close the request channel and the session."""
        try:
            await self.requests.close(timeout=2)
            await self.session.close(timeout=2)
        except chan.ChannelError:
            pass  # the daemon is gone: nothing left to close


async def connect(endpoint: str, *, key_file: str | None = None,
                  server_key_file: str | None = None, timeout: float = 3.0) -> AsyncClient:
    """A client of the daemon at ``endpoint`` (CurveZMQ with both key files)."""
    from engine.keys import client_curve

    curve, server_key = client_curve(key_file, server_key_file)
    try:
        session = await chan.aio.connect(endpoint, curve=curve, server_key=server_key,
                                         timeout=timeout)
    except chan.SessionLost as exc:
        raise errors.NotRunning(f"no chanbox daemon answers at {endpoint} ({exc}); start "
                                "one with: chanbox daemon") from None
    except ValueError as exc:
        raise errors.InvalidArgument(str(exc)) from None
    return AsyncClient(session)
