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

from .layerview import LayerView, entries_of, is_opaque

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
    image = LayerView(lowers)
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
                if not new and is_opaque(e.path):
                    kept = {x.name for x in entries_of(e.path)}
                    out.extend({"Path": f"/{path}/{name}", "Kind": DELETED}
                               for name in image.names(path) if name not in kept)
                walk(path, new)

    walk("", False)
    out.sort(key=lambda c: c["Path"])
    return out
