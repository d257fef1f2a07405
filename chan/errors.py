"""The one exception hierarchy of :mod:`chan`.

The lines are trio's: a clean end is not a failure (:class:`EndOfChannel`), misuse of an
end you closed yourself (:class:`ClosedChannelError`) is told apart from the other side or
the transport breaking (:class:`RemoteError`, :class:`SessionLost`), and a peer that sends
garbage (:class:`ProtocolError`) loses its session and nothing else.
Foreign exceptions (zmq, msgpack) are translated at the boundary with ``raise ... from``.
"""

from __future__ import annotations

__all__ = [
    "ChannelError",
    "EndOfChannel",
    "ClosedChannelError",
    "RemoteError",
    "SessionLost",
    "ProtocolError",
    "MessageTooLarge",
    "Timeout",
]


class ChannelError(Exception):
    """Base class of every error raised by :mod:`chan`."""


class EndOfChannel(ChannelError):
    """The sender closed the channel and every message was received: a clean end.

    ``for msg in rx`` stops on it; it is not a failure.
    """


class ClosedChannelError(ChannelError):
    """You used an end that you closed yourself (or handed to a peer in a message)."""


class RemoteError(ChannelError):
    """The other end closed the channel with an error.

    ``code`` is the error's ``code`` attribute when it had one, else its class name;
    ``message`` is ``str(error)``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message

    def __reduce__(self):  # keep code/message across pickling (multiprocessing, tests)
        return (type(self), (self.code, self.message))


class SessionLost(ChannelError):
    """The peer or the transport is gone; every channel and stream of the session fails.

    Raised on each end that belonged to the session, nested ends included; the cause
    (a heartbeat timeout, a reset by a restarted peer, a transport error) is chained or
    named in the message.
    """


class ProtocolError(ChannelError):
    """A peer sent frames or messages that break the protocol; its session is ended."""


class MessageTooLarge(ChannelError):
    """A message exceeds the session's maximum message size; nothing was sent."""


class Timeout(ChannelError, TimeoutError):
    """A blocking call did not complete within its ``timeout``."""


def error_code(exc: BaseException) -> str:
    """The code a peer sees for ``exc``: its ``code`` attribute if set, else its class name."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) and code else type(exc).__name__


def error_tuple(exc: BaseException) -> tuple[str, str]:
    """``(code, message)`` as a peer receives it (a relayed RemoteError keeps its own)."""
    if isinstance(exc, RemoteError):
        return exc.code, exc.message
    return error_code(exc), str(exc)
