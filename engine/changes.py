"""What a container changed: its writable layer read against its image (``docker diff``).

The writable (upper) directory holds overlayfs's form of the changes: new and changed
entries, a character device 0/0 for each deleted one, and ``trusted.overlay.opaque=y``
on a directory that hides everything below it.  Whether an entry in it is *added* or
*changed* depends on whether the image has it: the image's layers are looked at top
first, where a whiteout or an opaque directory ends the search.
"""

from __future__ import annotations

import os
import stat

from .tarlayer import OPAQUE_XATTR

__all__ = ["CHANGED", "ADDED", "DELETED", "changes"]

#: the kinds, with Docker's numbers (``GET /containers/ID/changes``)
CHANGED, ADDED, DELETED = 0, 1, 2


def changes(upper: str, lowers: list[str]) -> list[dict]:
    """``[{"Path": "/etc/x", "Kind": CHANGED | ADDED | DELETED}, ...]`` sorted by path.

    ``upper`` is the container's writable directory, ``lowers`` its image's layer
    directories, top-most first.  A new directory is listed with everything in it; a
    directory that was there already is listed as changed when anything in it is, and
    an opaque one also lists what it hides as deleted.
    """
    image = _Image(lowers)
    out: list[dict] = []

    def walk(rel: str, inherited_new: bool) -> None:
        try:
            entries = entries_of(os.path.join(upper, rel) if rel else upper)
        except FileNotFoundError:
            return
        for e in entries:
            path = f"{rel}/{e.name}" if rel else e.name
            st = e.stat(follow_symlinks=False)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                if not inherited_new and image.has(path):
                    out.append({"Path": "/" + path, "Kind": DELETED})
                continue
            new = inherited_new or not image.has(path)
            out.append({"Path": "/" + path, "Kind": ADDED if new else CHANGED})
            if e.is_dir(follow_symlinks=False):
                if not new and _opaque(e.path):
                    kept = {x.name for x in entries_of(e.path)}
                    out.extend({"Path": f"/{path}/{name}", "Kind": DELETED}
                               for name in image.names(path) if name not in kept)
                walk(path, new)

    walk("", False)
    out.sort(key=lambda c: c["Path"])
    return out


def entries_of(path: str) -> list[os.DirEntry[str]]:
    with os.scandir(path) as it:
        return list(it)


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _whiteout(path: str) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


class _Image:
    """The merged view of an image's layers, asked one path at a time."""

    def __init__(self, lowers: list[str]) -> None:
        self.lowers = lowers

    def _layers_for(self, rel: str) -> list[str]:
        """The layers that can show ``rel``: top first, down to the first one where
        a parent directory is opaque or deleted."""
        parts = rel.split("/")
        seen = []
        for layer in self.lowers:
            seen.append(layer)
            cut = False
            for i in range(1, len(parts)):
                parent = os.path.join(layer, *parts[:i])
                if _whiteout(parent):
                    seen.pop()  # the parent is deleted here: nothing below shows
                    return seen
                if _opaque(parent):
                    cut = True
            if cut:
                return seen
        return seen

    def has(self, rel: str) -> bool:
        """Whether the image has the entry ``rel``."""
        for layer in self._layers_for(rel):
            p = os.path.join(layer, rel)
            if _whiteout(p):
                return False
            if os.path.lexists(p):
                return True
        return False

    def names(self, rel: str) -> list[str]:
        """What the image's directory ``rel`` holds."""
        names: set[str] = set()
        gone: set[str] = set()
        for layer in self._layers_for(rel + "/x"):
            d = os.path.join(layer, rel)
            try:
                entries = entries_of(d)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for e in entries:
                if e.name in names or e.name in gone:
                    continue
                if _whiteout(e.path):
                    gone.add(e.name)
                else:
                    names.add(e.name)
        return sorted(names)
