"""The ``busybox`` base image, made from the host's static busybox.

:func:`make_rootfs` lays out a minimal root filesystem (busybox and a symlink per
applet, ``/etc/passwd`` and ``/etc/group`` with root and nobody, the empty directories
a container expects); :func:`import_busybox` imports it with Docker's busybox config.
Every mtime is the busybox binary's, so the same busybox always gives the same image id.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess

from engine import fsutil
from engine.errors import InvalidArgument, NotFound
from engine.images import Image, ImageStore

__all__ = ["make_rootfs", "import_busybox", "BUSYBOX_CONFIG"]

BUSYBOX_CONFIG = {
    "Cmd": ["sh"],
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
}

_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n"
_GROUP = "root:x:0:\nnobody:x:65534:\n"
_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
_DIRS = {
    "bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
    "etc": 0o755, "proc": 0o555, "sys": 0o555, "dev": 0o755, "tmp": 0o1777, "root": 0o700,
    "home": 0o755, "var": 0o755,
}
_PT_INTERP = 3


def _is_static_elf(path: str) -> bool:
    """True for an ELF executable without a program interpreter (statically linked)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF":
            raise InvalidArgument(f"{path} is not an ELF executable; give the path of a static busybox binary")
        is64, little = head[4] == 2, head[5] == 1
        e = "<" if little else ">"
        if is64:
            phoff, = struct.unpack_from(e + "Q", head, 0x20)
            phentsize, phnum = struct.unpack_from(e + "HH", head, 0x36)
        else:
            phoff, = struct.unpack_from(e + "I", head, 0x1C)
            phentsize, phnum = struct.unpack_from(e + "HH", head, 0x2A)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from(e + "I", table, i * phentsize)[0] != _PT_INTERP for i in range(phnum))


def make_rootfs(dest: str, busybox: str = "/bin/busybox") -> None:
    """Lay out a minimal busybox root filesystem in the (new or empty) directory ``dest``."""
    if not os.path.isfile(busybox):
        raise NotFound(f"no busybox at {busybox}; install the Debian package busybox-static")
    if not _is_static_elf(busybox):
        raise InvalidArgument(
            f"{busybox} is dynamically linked and would not run inside a container; "
            "install the Debian package busybox-static (apt-get install busybox-static) "
            "and give /bin/busybox"
        )
    try:
        listing = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise InvalidArgument(f"{busybox} --list-full failed ({exc}); is it a working busybox?") from exc
    os.makedirs(dest, exist_ok=True)
    for d, mode in _DIRS.items():
        path = os.path.join(dest, d)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, mode)
    shutil.copy2(busybox, os.path.join(dest, "bin", "busybox"))
    os.chmod(os.path.join(dest, "bin", "busybox"), 0o755)
    for applet in listing.split():
        applet = applet.strip("/")
        if not applet or ".." in applet.split("/") or applet == "bin/busybox":
            continue
        link = os.path.join(dest, applet)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if not os.path.lexists(link):
            os.symlink("/bin/busybox", link)
    for name, text, mode in (("passwd", _PASSWD, 0o644), ("group", _GROUP, 0o644), ("hosts", _HOSTS, 0o644)):
        path = os.path.join(dest, "etc", name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
    # one mtime everywhere: the same busybox makes the same layer, hence the same image id
    mtime = os.stat(busybox).st_mtime_ns
    for dirpath, dirnames, filenames in os.walk(dest, topdown=False):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), ns=(mtime, mtime), follow_symlinks=False)
    os.utime(dest, ns=(mtime, mtime))


def import_busybox(store: ImageStore, ref: str = "busybox:latest", busybox: str = "/bin/busybox") -> Image:
    """Build the busybox rootfs (in the store's staging area) and import it as ``ref``."""
    stage = fsutil.staging_dir(store.root, "busybox")
    try:
        rootfs = os.path.join(stage, "rootfs")
        make_rootfs(rootfs, busybox)
        return store.import_path(rootfs, ref, config=BUSYBOX_CONFIG, comment="busybox base image",
                                 created_by=f"chanbox busybox from {busybox}")
    finally:
        fsutil.remove_tree(stage)
