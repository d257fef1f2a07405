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
from .net import CurveKeys, Listener, Session, Settings, connect, listen
from .stream import ByteStream, stream_pair

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
