"""Mounts of host paths and volumes into a container: Docker's ``-v SRC:DST[:OPTIONS]`` form."""

from __future__ import annotations

import os
from typing import Any

from .errors import InvalidArgument

__all__ = ["parse_bind", "bind_text"]

_OPTIONS = {"ro", "rw", "z", "Z", "rprivate", "private"}  # z/Z: SELinux labels, none here


def parse_bind(text: str) -> dict[str, Any]:
    """``"SRC:/dst[:ro]"`` as ``{"source", "volume", "target", "readonly"}``.

    SRC is an absolute host path (``source``) or a volume's name (``volume``; its
    ``source`` is None until the engine resolves it); ``"/dst"`` alone is an anonymous
    volume (``volume`` is ``""`` until the engine names it).  The target is an absolute
    path in the container, not ``/``.  Paths are normalised (``/a/./b/`` is ``/a/b``);
    ``..`` is refused in the target.
    """
    parts = text.split(":")
    if len(parts) == 1:
        parts = ["", parts[0]]
    elif len(parts) not in (2, 3):
        raise InvalidArgument(f"invalid volume {text!r}: use -v /host/path:/container/path[:ro] "
                              "or -v NAME:/container/path[:ro]")
    source, target = parts[0], parts[1]
    options = parts[2].split(",") if len(parts) == 3 else []
    volume = None
    if not source.startswith("/"):
        from .volumes import valid_name

        if source and not valid_name(source):
            raise InvalidArgument(f"invalid volume {text!r}: {source!r} is neither an absolute "
                                  "host path nor a volume name (letters, digits, _ . -)")
        volume, source = source, None
    if not target.startswith("/") or os.path.normpath(target) == "/":
        raise InvalidArgument(f"invalid volume {text!r}: the mount point {target!r} must be an "
                              "absolute path in the container, other than /")
    if ".." in target.split("/"):
        raise InvalidArgument(f"invalid volume {text!r}: the mount point may not contain '..'")
    bad = [o for o in options if o not in _OPTIONS]
    if bad or ("ro" in options and "rw" in options):
        raise InvalidArgument(f"invalid volume {text!r}: options are ro or rw")
    return {"source": None if source is None else os.path.normpath(source), "volume": volume,
            "target": os.path.normpath(target), "readonly": "ro" in options}


def bind_text(bind: dict[str, Any]) -> str:
    """The inverse of :func:`parse_bind` (what ``HostConfig.Binds`` holds)."""
    src = bind["source"] if bind["volume"] is None else bind["volume"]
    return f"{src}:{bind['target']}" + (":ro" if bind["readonly"] else "")
