"""chan: libchan for Python.

Channels like Go's, over the network.  A message is any msgpack value; a channel end
(:class:`Sender`, :class:`Receiver`) or a byte stream (:class:`ByteStream`) can sit
anywhere inside it and keeps working on the other side.  Transports: an in-memory
:func:`pipe`, and ZeroMQ (``tcp://``, ``ipc://``, ``inproc://``) through :func:`listen`
and :func:`connect`.  :mod:`chan.aio` offers the same names for asyncio.
"""

from .channel import Receiver, Sender, pipe
from .errors import (ChannelError, ClosedChannelError, EndOfChannel, MessageTooLarge,
                     ProtocolError, RemoteError, SessionLost, Timeout)
from .stream import ByteStream, stream_pair

# The ZeroMQ transport costs ~40 ms to import (pyzmq); a process that only uses
# in-memory pipes (the CLI on the embedded engine) never pays for it.
_NET_NAMES = frozenset({"CurveKeys", "Listener", "Session", "Settings", "connect", "listen"})


def __getattr__(name: str) -> object:
    if name in _NET_NAMES:
        from . import net

        return getattr(net, name)
    raise AttributeError(f"module 'chan' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_NET_NAMES})

__all__ = [
    "ByteStream",
    "ChannelError",
    "ClosedChannelError",
    "CurveKeys",
    "EndOfChannel",
    "Listener",
    "MessageTooLarge",
    "ProtocolError",
    "Receiver",
    "RemoteError",
    "Sender",
    "Session",
    "SessionLost",
    "Settings",
    "Timeout",
    "connect",
    "listen",
    "pipe",
    "stream_pair",
]
