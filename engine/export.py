"""A container's filesystem as one tar (``docker export``): its writable layer over its
image's layers, merged as overlayfs would show them, read from the layers themselves.

Whiteouts and opaque directories are applied, not carried (the tar is a plain rootfs,
for ``import`` here or elsewhere).  What is mounted in the container at run time
(/proc, /dev, /sys, volumes, the init layer's /etc files) is not in the layers, so
not in the tar, as with Docker.
"""

from __future__ import annotations

import os
import stat
import tarfile
from typing import IO

from .layerview import LayerView
from .tarlayer import add_special, tar_info, xattrs_of

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
            ti = tar_info(".", found[1])
            ti.type, ti.pax_headers = tarfile.DIRTYPE, xattrs_of(found[0])
            tar.addfile(ti)
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
            ti = tar_info(rel[cut:], st)
            ti.pax_headers = xattrs_of(path)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                ti.type = tarfile.DIRTYPE
                tar.addfile(ti)
                stack.append(iter(view.names(rel)))
                prefixes.append(rel)
            elif stat.S_ISREG(mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen:
                    ti.type, ti.linkname = tarfile.LNKTYPE, seen[key]
                    tar.addfile(ti)
                    continue
                seen[key] = rel[cut:]
                try:
                    with open(path, "rb", buffering=0) as f:
                        ti.size = os.fstat(f.fileno()).st_size
                        tar.addfile(ti, f)
                except FileNotFoundError:
                    continue  # removed meanwhile
            else:
                add_special(tar, ti, path, st)
    finally:
        tar.close()
