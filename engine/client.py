"""A channel client of :mod:`engine.service`: what the CLI (and any program) calls.

``Client(requests)`` sends verbs on a :class:`chan.Sender` whose receiver a service
serves, wherever it runs.  :func:`embedded` makes the default: the engine served
in-process over an in-memory pipe (no daemon, no socket).  A failure that the service
reports comes back as the matching :mod:`engine.errors` class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import chan

from . import errors


def _by_code(cls: type[errors.EngineError]) -> dict[str, type[errors.EngineError]]:
    """Every class of the hierarchy under ``cls``, by its stable code."""
    out = {cls.code: cls}
    for sub in cls.__subclasses__():
        out.update(_by_code(sub))
    return out


_BY_CODE = _by_code(errors.EngineError)


def engine_error(exc: chan.RemoteError) -> errors.EngineError:
    """The engine error that a service's ``close(error=...)`` stands for."""
    return _BY_CODE.get(exc.code, errors.EngineError)(exc.message)


_STOPPED = object()


def _recv_unless(rx: chan.Receiver, stop: Callable[[], bool] | None) -> Any:
    """``rx.recv()``, or :data:`_STOPPED` once ``stop()`` says so."""
    while True:
        try:
            return rx.recv(timeout=None if stop is None else 0.25)
        except chan.Timeout:
            if stop is not None and stop():
                return _STOPPED


class Client:
    """Calls the engine's verbs over a channel."""

    def __init__(self, requests: chan.Sender) -> None:
        self.requests = requests
        self.session: Any = None

    def _send(self, verb: str, args: dict[str, Any]) -> chan.Receiver:
        ret_tx, ret_rx = chan.pipe()
        self.requests.send({"verb": verb, "args": args, "ret": ret_tx})
        return ret_rx

    def call(self, verb: str, **args: Any) -> Any:
        """Send ``verb`` and return its one reply."""
        rx = self._send(verb, args)
        try:
            return rx.recv()
        except chan.RemoteError as exc:
            raise engine_error(exc) from None
        except chan.EndOfChannel:
            raise errors.EngineError(f"the engine closed {verb!r} without an answer") from None
        finally:
            rx.close()

    def receiver(self, verb: str, **args: Any) -> chan.Receiver:
        """Send ``verb`` and return the channel its answer arrives on, for a caller that
        waits with timeouts (``recv(timeout=...)``); :func:`engine_error` turns a
        ``chan.RemoteError`` from it into the engine's error."""
        return self._send(verb, args)

    def stream(self, verb: str, *, on_idle: Callable[[], None] | None = None,
               stop: Callable[[], bool] | None = None, **args: Any) -> Iterator[Any]:
        """Send ``verb`` and yield every message of its answer.

        ``on_idle`` is called whenever the next message is not there yet, before
        waiting for it: a consumer that buffers what it makes of the messages (output
        to a terminal, say) flushes there, once per burst instead of once per message.
        ``stop``, asked every quarter second while waiting, ends the stream early.
        """
        rx = self._send(verb, args)
        try:
            while True:
                try:
                    if on_idle is None and stop is None:
                        yield rx.recv()
                        continue
                    try:
                        msg = rx.recv(timeout=0)
                    except chan.Timeout:
                        if on_idle is not None:
                            on_idle()
                        msg = _recv_unless(rx, stop)
                        if msg is _STOPPED:
                            return
                    yield msg
                except chan.EndOfChannel:
                    return
                except chan.RemoteError as exc:
                    raise engine_error(exc) from None
        finally:
            rx.close()

    def close(self) -> None:
        """Close the request channel (an embedded engine's service then stops) and the
        session to a daemon, if this client has one."""
        try:
            self.requests.close()
            if self.session is not None:
                self.session.close()
        except chan.ChannelError:
            pass  # the daemon is gone: nothing is left to close


def connect(endpoint: str, *, key_file: str | None = None,
            server_key_file: str | None = None, timeout: float = 3.0) -> Client:
    """A client of the daemon at ``endpoint`` (``ipc://``, ``tcp://``; CurveZMQ when
    given this client's key pair file and the daemon's public key file)."""
    from .keys import client_curve

    curve, server_key = client_curve(key_file, server_key_file)
    try:
        session = chan.connect(endpoint, curve=curve, server_key=server_key, timeout=timeout)
    except chan.SessionLost as exc:
        raise errors.NotRunning(f"no chanbox daemon answers at {endpoint} ({exc}); start "
                                "one with: chanbox daemon") from None
    except ValueError as exc:
        raise errors.InvalidArgument(str(exc)) from None
    client = Client(session.open())
    client.session = session
    return client


def embedded(root: str | None = None, *, spawn: bool = True,
             forker: Any = None) -> tuple[Client, Any]:
    """An engine served in this process over an in-memory channel, and the engine.

    ``spawn`` forks the fork server first (before the service's threads start), so
    the engine can start containers; or pass a ``forker`` made earlier.
    """
    from .engine import Engine
    from .service import serve_in_thread

    engine = Engine(root, forker=forker)
    if spawn:
        engine.prepare_spawn()
    tx, rx = chan.pipe()
    serve_in_thread(engine, rx)
    return Client(tx), engine
