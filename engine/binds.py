"""Bind mounts of host paths into a container: Docker's ``-v SRC:DST[:OPTIONS]`` form."""

from __future__ import annotations

import os
from typing import Any

from .errors import InvalidArgument

__all__ = ["parse_bind", "bind_text"]

_OPTIONS = {"ro", "rw", "z", "Z", "rprivate", "private"}  # z/Z: SELinux labels, none here


def parse_bind(text: str) -> dict[str, Any]:
    """``"/src:/dst[:ro]"`` as ``{"source", "target", "readonly"}``.

    The source must be an absolute host path (a name would be a named volume, which
    chanbox does not have); the target an absolute path in the container, not ``/``.
    Both are normalised (``/a/./b/`` is ``/a/b``); ``..`` is refused in the target.
    """
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise InvalidArgument(f"invalid volume {text!r}: use -v /host/path:/container/path[:ro]")
    source, target = parts[0], parts[1]
    options = parts[2].split(",") if len(parts) == 3 else []
    if not source.startswith("/"):
        raise InvalidArgument(f"invalid volume {text!r}: {source!r} is not an absolute host path "
                              "(named volumes are not supported; give the host directory)")
    if not target.startswith("/") or os.path.normpath(target) == "/":
        raise InvalidArgument(f"invalid volume {text!r}: the mount point {target!r} must be an "
                              "absolute path in the container, other than /")
    if ".." in target.split("/"):
        raise InvalidArgument(f"invalid volume {text!r}: the mount point may not contain '..'")
    bad = [o for o in options if o not in _OPTIONS]
    if bad or ("ro" in options and "rw" in options):
        raise InvalidArgument(f"invalid volume {text!r}: options are ro or rw")
    return {"source": os.path.normpath(source), "target": os.path.normpath(target),
            "readonly": "ro" in options}


def bind_text(bind: dict[str, Any]) -> str:
    """The inverse of :func:`parse_bind` (what ``HostConfig.Binds`` holds)."""
    return f"{bind['source']}:{bind['target']}" + (":ro" if bind["readonly"] else "")
