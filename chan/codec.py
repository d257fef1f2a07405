"""Message values on the wire: msgpack, with channel ends as ext types.

Pure functions; the session supplies two hooks that turn a local end into a reference
(allocating a channel id) and a reference back into an end.

Ext types (docs/PROTOCOL.md, "References"), data = channel id as 8 bytes big-endian:

====  =========  ==============================================================
code  name       the receiver of the message gets ...
====  =========  ==============================================================
1     SENDER     a Sender: it sends on the id, the side that wrote the ref receives
2     RECEIVER   a Receiver: the side that wrote the ref sends on the id
3     STREAM     one end of a byte stream: both sides send and receive on the id
====  =========  ==============================================================
"""

from __future__ import annotations

import struct
from typing import Any, Callable

import msgpack

from .errors import ProtocolError

EXT_SENDER = 1
EXT_RECEIVER = 2
EXT_STREAM = 3
EXT_CODES = (EXT_SENDER, EXT_RECEIVER, EXT_STREAM)

_ID = struct.Struct(">Q")


def ref(code: int, chid: int) -> msgpack.ExtType:
    """The ext value that stands for channel ``chid`` inside a message."""
    return msgpack.ExtType(code, _ID.pack(chid))


def encode(value: Any, to_ref: Callable[[Any], msgpack.ExtType]) -> bytes:
    """Serialise ``value``; ``to_ref`` is called for every object msgpack does not know.

    Raises ``TypeError`` naming the offending type when ``value`` holds something that is
    neither a msgpack value nor a channel end.
    """
    return msgpack.packb(value, default=to_ref, use_bin_type=True, datetime=False)


def decoder(from_ref: Callable[[int, int], Any]) -> Callable[[bytes], Any]:
    """A function that deserialises one message; ``from_ref(code, chid)`` builds each
    channel end found.

    Malformed msgpack, trailing bytes and unknown ext types raise :class:`ProtocolError`.
    """
    def ext_hook(code: int, data: bytes) -> Any:
        if code not in EXT_CODES or len(data) != 8:
            raise ProtocolError(f"unknown reference: ext type {code} with {len(data)} bytes")
        return from_ref(code, _ID.unpack(data)[0])

    unpackb = msgpack.unpackb

    def decode_one(payload: bytes) -> Any:
        try:
            return unpackb(payload, ext_hook=ext_hook, raw=False, strict_map_key=False)
        except ProtocolError:
            raise
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            # FormatError, StackError, ExtraData, OutOfData, UnicodeDecodeError,
            # unhashable map keys: all mean the peer sent something that is not a message.
            raise ProtocolError(f"malformed message: {type(exc).__name__}: {exc}") from exc

    return decode_one


def decode(payload: bytes, from_ref: Callable[[int, int], Any]) -> Any:
    """Deserialise one message (see :func:`decoder`)."""
    return decoder(from_ref)(payload)


def encoder(to_ref: Callable[[Any], msgpack.ExtType]) -> Callable[[Any], bytes]:
    """A reusable :func:`encode` bound to ``to_ref`` (saves making a Packer per message)."""
    return msgpack.Packer(default=to_ref, use_bin_type=True, datetime=False).pack


def unsupported(obj: Any) -> TypeError:
    """The error for a value that cannot travel in a message."""
    if isinstance(obj, int):
        return TypeError(f"cannot send the integer {obj}: msgpack integers lie between "
                         "-2**63 and 2**64-1 (send big numbers as str or bytes)")
    return TypeError(
        f"cannot send a {type(obj).__module__}.{type(obj).__qualname__} in a message: "
        "messages hold None, bool, int, float, str, bytes, lists, tuples, dicts and "
        "chan Sender/Receiver/ByteStream ends")
