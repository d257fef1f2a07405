"""CurveZMQ key files for the daemon's tcp:// listeners and the clients that reach them.

``chanbox keys generate NAME`` writes ``NAME.key`` (the secret key and its public key,
mode 0600) and ``NAME.pub`` (the public key alone, to hand out).  A daemon is given its
own ``.key`` and a directory of the ``.pub`` files of the clients it lets in; a client
is given its own ``.key`` and the daemon's ``.pub``.  Keys are Z85 text (40 characters),
one per line, so they can be read, diffed and copied by hand.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from chan import CurveKeys

_SECRET_TAG = "secret "
_PUBLIC_TAG = "public "


def generate(name: str) -> tuple[str, str]:
    """Write a new key pair as ``NAME.key`` and ``NAME.pub``; their paths."""
    from chan import CurveKeys

    keys = CurveKeys.generate()
    key_path, pub_path = name + ".key", name + ".pub"
    for path in (key_path, pub_path):
        if os.path.exists(path):
            raise InvalidArgument(f"{path} exists already; remove it or choose another name")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{_PUBLIC_TAG}{keys.public.decode()}\n{_SECRET_TAG}{keys.secret.decode()}\n")
    with open(pub_path, "w") as f:
        f.write(f"{_PUBLIC_TAG}{keys.public.decode()}\n")
    return key_path, pub_path


def _fields(path: str) -> dict[str, bytes]:
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise NotFound(f"no such key file: {path}") from None
    out = {}
    for line in text.splitlines():
        for tag in (_PUBLIC_TAG, _SECRET_TAG):
            if line.startswith(tag):
                value = line[len(tag):].strip()
                if len(value) != 40:
                    raise InvalidArgument(f"{path}: a {tag.strip()} key is 40 Z85 characters")
                out[tag.strip()] = value.encode()
    return out


def load_pair(path: str) -> CurveKeys:
    """The key pair in a ``.key`` file."""
    from chan import CurveKeys

    f = _fields(path)
    if "secret" not in f or "public" not in f:
        raise InvalidArgument(f"{path} is not a key pair (make one with: chanbox keys "
                              "generate NAME)")
    return CurveKeys(f["public"], f["secret"])


def load_public(path: str) -> bytes:
    """The public key in a ``.pub`` (or ``.key``) file."""
    f = _fields(path)
    if "public" not in f:
        raise InvalidArgument(f"{path} holds no public key")
    return f["public"]


def client_curve(key_file: str | None,
                 server_key_file: str | None) -> tuple[CurveKeys | None, bytes | None]:
    """A client's CurveZMQ settings from its key pair file and the daemon's public key
    file: (keys, server key), or (None, None) for a plain connection."""
    if not (key_file or server_key_file):
        return None, None
    if not (key_file and server_key_file):
        raise InvalidArgument("CurveZMQ needs both this client's key pair (--key) and the "
                              "daemon's public key (--server-key)")
    return load_pair(key_file), load_public(server_key_file)


def load_allowed(directory: str) -> list[bytes]:
    """The public keys of every ``*.pub`` file in ``directory``."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        raise NotFound(f"no such directory of allowed client keys: {directory}") from None
    return [load_public(os.path.join(directory, n)) for n in names if n.endswith(".pub")]
