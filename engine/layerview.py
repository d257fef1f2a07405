"""The merged view of an image's layers: what overlayfs would show, read from the layers.

A layer holds overlayfs's form of its changes: a character device 0/0 for a deleted
entry and ``trusted.overlay.opaque=y`` on a directory that hides everything below it.
Layers are looked at top first; a whiteout or an opaque directory ends the search.
"""

from __future__ import annotations

import os
import stat

from .tarlayer import OPAQUE_XATTR

__all__ = ["LayerView", "entries_of", "is_opaque"]


def entries_of(path: str) -> list[os.DirEntry[str]]:
    """The entries of the directory ``path`` (its scandir closed)."""
    with os.scandir(path) as it:
        return list(it)


def is_opaque(path: str) -> bool:
    """Whether the directory ``path`` hides what lower layers have under it."""
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


class LayerView:
    """The merged view of an image's layers (top-most first), asked one path at a time."""

    def __init__(self, lowers: list[str]) -> None:
        self.lowers = lowers

    def _layers_with_dirs(self, dirs: list[str]) -> list[str]:
        """The layers where the path of directories ``dirs`` shows, top first.

        A layer shows it when each of ``dirs`` is a real directory there (never through
        a symlink: a layer's ``/a -> /etc`` must not lead to the host's /etc).  One that
        is a file, a symlink or a whiteout hides the path in that layer and in every
        layer below, as overlayfs does; an opaque one hides it below.
        """
        shown = []
        for layer in self.lowers:
            path, hides_below = layer, False
            for comp in dirs:
                path = os.path.join(path, comp)
                try:
                    st = os.lstat(path)
                except (FileNotFoundError, NotADirectoryError):
                    break  # not in this layer: the layers below may have it
                if not stat.S_ISDIR(st.st_mode):
                    return shown  # a file, a symlink or a whiteout covers it and all below
                if is_opaque(path):
                    hides_below = True
            else:
                shown.append(layer)
            if hides_below:
                break
        return shown

    def locate(self, rel: str) -> tuple[str, os.stat_result] | None:
        """Where the entry ``rel`` shows from (the top-most layer's path) and its lstat;
        None if the merged tree has no such entry."""
        for layer in self._layers_with_dirs(rel.split("/")[:-1]):
            path = os.path.join(layer, rel)
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                return None  # deleted in this layer
            return path, st
        return None

    def lstat(self, rel: str) -> os.stat_result | None:
        """The image's entry ``rel`` (not followed if a symlink), None if it has none."""
        found = self.locate(rel)
        return found[1] if found is not None else None

    def has(self, rel: str) -> bool:
        """Whether the image has the entry ``rel``."""
        return self.lstat(rel) is not None

    def names(self, rel: str) -> list[str]:
        """What the image's directory ``rel`` holds."""
        names: set[str] = set()
        gone: set[str] = set()
        for layer in self._layers_with_dirs(rel.split("/") if rel else []):
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
