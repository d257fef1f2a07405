"""A container's filesystem as one tar (``docker export``): its writable layer over its
image's layers, merged as overlayfs would show them, read from the layers themselves.

Whiteouts and opaque directories are applied, not carried (the tar is a plain rootfs,
for ``import`` here or elsewhere).  What is mounted in the container at run time
(/proc, /dev, /sys, volumes, the init layer's /etc files) is not in the layers, so
not in the tar, as with Docker.
"""

from __future__ import annotations

import stat
import tarfile
from typing import IO

from .layerview import LayerView
from .tarlayer import add_path

__all__ = ["export_tar"]

_BUF = 1 << 20


class _Counting:
    """A write-only file that counts what passes (tarfile asks ``tell()``; a byte
    stream does not answer it)."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.count = 0

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self.count += len(data)
        return len(data)

    def tell(self) -> int:
        return self.count


def export_tar(layers: list[str], out: IO[bytes], top: str = "") -> None:
    """Write the merged tree of ``layers`` (overlay-form directories, top-most first) to
    ``out`` as a tar: sorted, numeric owners, whole-second mtimes.  With ``top`` (a
    directory's path in the tree, relative), only what is below it, named from it, after
    a ``.`` entry for the directory itself."""
    view = LayerView(layers)
    seen: dict[tuple[int, int], str] = {}  # (dev, ino) -> first name: hard links
    tar = tarfile.TarFile(fileobj=_Counting(out), mode="w", format=tarfile.PAX_FORMAT,  # type: ignore[arg-type]
                          copybufsize=_BUF)
    cut = len(top) + 1 if top else 0
    try:
        if top:
            found = view.locate(top)
            if found is None or not stat.S_ISDIR(found[1].st_mode):
                return
            add_path(tar, ".", found[0], found[1], seen)
        stack = [iter(view.names(top))]
        prefixes = [top]
        while stack:
            name = next(stack[-1], None)
            if name is None:
                stack.pop()
                prefixes.pop()
                continue
            rel = f"{prefixes[-1]}/{name}" if prefixes[-1] else name
            found = view.locate(rel)
            if found is None:
                continue  # gone meanwhile (the container is running)
            path, st = found
            add_path(tar, rel[cut:], path, st, seen)
            if stat.S_ISDIR(st.st_mode):
                stack.append(iter(view.names(rel)))
                prefixes.append(rel)
    finally:
        tar.close()
