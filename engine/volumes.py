"""Named volumes (``docker volume``): directories the engine keeps apart from any
container, mounted where ``-v NAME:/path`` says.

A volume is ``<root>/volumes/<name>/`` with its record ``volume.json`` and its files in
``_data`` (the layout of Docker's ``local`` driver).  It is built in a staging directory
and renamed into place, so a half-made volume is never seen; creating a name that
exists gives the existing volume, as Docker's does.  ``-v /path`` alone makes an
*anonymous* volume (a random 64-hex name), removed with its container by ``rm -v`` or
``--rm``.

Whether a volume is in use is read from the containers' records (their
``HostConfig.Binds``) by the engine, which refuses to remove one that is.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from . import fsutil
from .errors import InvalidArgument, NotFound
from .timefmt import rfc3339

__all__ = ["VolumeStore", "valid_name"]

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")  # Docker's rule for volume names


def valid_name(name: str) -> bool:
    """Whether ``name`` is a volume name (not a path)."""
    return bool(_NAME.match(name))


class VolumeStore:
    """The volumes of one engine root."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.dir = os.path.join(root, "volumes")

    def path(self, name: str) -> str:
        """The directory a container mounts: the volume's ``_data``."""
        return os.path.join(self.dir, name, "_data")

    def create(self, name: str | None = None, *, labels: dict[str, str] | None = None) -> tuple[dict[str, Any], bool]:
        """Make the volume ``name`` (an anonymous one without a name); ``(its record,
        whether this call made it)``.  An existing name is returned as it is."""
        anonymous = name is None
        if name is None:
            name = os.urandom(32).hex()
        elif not valid_name(name):
            raise InvalidArgument(f"invalid volume name {name!r}: use letters, digits and "
                                  "_ . - (at least two characters, starting with a letter or digit)")
        final = os.path.join(self.dir, name)
        if os.path.isdir(final):
            return self.get(name), False
        os.makedirs(self.dir, exist_ok=True)
        stage = fsutil.staging_dir(self.root, "volume")
        try:
            os.mkdir(os.path.join(stage, "_data"), 0o755)
            record = {"Name": name, "Driver": "local", "CreatedAt": time.time_ns(),
                      "Labels": dict(labels or {}), "Anonymous": anonymous}
            fsutil.write_json(os.path.join(stage, "volume.json"), record)
            try:
                os.rename(stage, final)
            except OSError:
                if not os.path.isdir(final):
                    raise
                return self.get(name), False  # another process made it first
        finally:
            fsutil.remove_tree(stage)
        return self.get(name), True

    def get(self, name: str) -> dict[str, Any]:
        """The volume's record in Docker's ``volume inspect`` shape; NotFound if none."""
        record = fsutil.read_json(os.path.join(self.dir, name, "volume.json")) if valid_name(name) else None
        if record is None:
            raise NotFound(f"no such volume: {name}")
        return {"Name": record["Name"], "Driver": "local", "Mountpoint": self.path(name),
                "CreatedAt": rfc3339(record["CreatedAt"]), "Labels": record["Labels"] or None,
                "Scope": "local", "Options": None, "Anonymous": record["Anonymous"]}

    def list(self) -> list[dict[str, Any]]:
        """Every volume, by name."""
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            try:
                out.append(self.get(name))
            except NotFound:
                continue  # being removed
        return out

    def remove(self, name: str) -> None:
        """Delete the volume and its files (the caller checked no container uses it)."""
        self.get(name)
        # renamed out of sight first: a half-removed volume is never found by name
        stage = fsutil.staging_dir(self.root, "volume-rm")
        try:
            os.rename(os.path.join(self.dir, name), os.path.join(stage, "v"))
        except FileNotFoundError:
            raise NotFound(f"no such volume: {name}") from None
        finally:
            fsutil.remove_tree(stage)
