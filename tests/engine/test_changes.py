"""engine.changes: a writable layer read against its image's layers (docker diff)."""

from __future__ import annotations

import os
import stat

from engine.changes import ADDED, CHANGED, DELETED, changes

from .conftest import needs_root

pytestmark = needs_root  # whiteouts are device nodes; opaque marks are trusted.* xattrs


def _files(root: str, *paths: str) -> None:
    for p in paths:
        full = os.path.join(root, p)
        if p.endswith("/"):
            os.makedirs(full, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(p)


def _whiteout(root: str, path: str) -> None:
    full = os.path.join(root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    os.mknod(full, stat.S_IFCHR | 0o600, os.makedev(0, 0))


def test_added_changed_and_deleted_against_a_stack_of_layers(tmp) -> None:
    bottom, top, upper = (os.path.join(tmp, n) for n in ("bottom", "top", "upper"))
    _files(bottom, "etc/passwd", "old", "bin/sh", "data/c", "gone/deep/f")
    _files(top, "etc/app.conf", "data/a", "data/b")
    _whiteout(top, "old")  # the image itself deleted /old
    _whiteout(top, "gone")  # ... and /gone with all it held
    _files(upper, "etc/app.conf", "etc/new", "newdir/x/y", "old", "gone/deep/f", "data/a")
    _whiteout(upper, "bin/sh")
    _whiteout(upper, "notthere")  # deletes nothing the image has: not a change
    _whiteout(upper, "newdir/x/z")  # inside a new directory: nothing to delete
    os.setxattr(os.path.join(upper, "data"), "trusted.overlay.opaque", b"y")

    got = [(c["Path"], c["Kind"]) for c in changes(upper, [top, bottom])]
    assert got == [
        ("/bin", CHANGED), ("/bin/sh", DELETED),
        ("/data", CHANGED), ("/data/a", CHANGED), ("/data/b", DELETED), ("/data/c", DELETED),
        ("/etc", CHANGED), ("/etc/app.conf", CHANGED), ("/etc/new", ADDED),
        ("/gone", ADDED), ("/gone/deep", ADDED), ("/gone/deep/f", ADDED),
        ("/newdir", ADDED), ("/newdir/x", ADDED), ("/newdir/x/y", ADDED),
        ("/old", ADDED),
    ]


def test_an_untouched_container_changed_nothing(tmp) -> None:
    lower, upper = os.path.join(tmp, "l"), os.path.join(tmp, "u")
    _files(lower, "etc/passwd")
    os.mkdir(upper)
    assert changes(upper, [lower]) == []
