"""The container's filesystem: the overlay union, /proc, /dev, /sys, masks, pivot_root.

:func:`plan` runs in the parent and turns a :class:`ContainerSpec` into a flat list of
steps with every path already joined and encoded; :func:`apply` runs in the child (in
its own mount namespace) and only issues the system calls.  Each step carries the
words used when it fails ("mount overlay on /x/rootfs"), which the runtime reports.
"""

from __future__ import annotations

import errno
import os
import stat

from engine import security, syscalls
from engine.spec import ContainerSpec

MS = syscalls
_NOSUID_NODEV_NOEXEC = MS.MS_NOSUID | MS.MS_NODEV | MS.MS_NOEXEC

# step kinds
MOUNT, MKDIR, MKNOD, SYMLINK, MASK, READONLY, SYSFS, CHDIR, BIND = range(9)

#: (name, major, minor) of the devices every container gets (mode 0666)
DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
           ("urandom", 1, 9), ("tty", 5, 0))

Step = tuple  # (kind, what-for-errors, *arguments)


def overlay_options(spec: ContainerSpec) -> str:
    """The ``lowerdir=...,upperdir=...,workdir=...`` option string of the union."""
    opts = (f"lowerdir={':'.join(spec.lowerdirs)},upperdir={spec.upperdir},"
            f"workdir={spec.workdir}")
    if len(opts) >= 4096:
        raise ValueError("overlay options exceed a page; use shorter (relative) lowerdirs")
    return opts


def plan(spec: ContainerSpec) -> list[Step]:
    """The steps that build ``spec.rootfs`` (run in the child, before pivot_root)."""
    r = spec.rootfs.rstrip("/")
    enc = os.fsencode

    def p(rel: str) -> bytes:
        return enc(r + rel)

    steps: list[Step] = [
        (CHDIR, f"chdir to layer root {spec.layer_root}", enc(spec.layer_root)),
        (MOUNT, f"mount overlay on {spec.rootfs}", b"overlay", enc(spec.rootfs), b"overlay",
         0, enc(overlay_options(spec))),
    ]
    for d in ("/proc", "/dev", "/sys"):
        steps.append((MKDIR, f"create {d} in the rootfs", p(d), 0o755))
    steps += [
        (MOUNT, "mount /proc", b"proc", p("/proc"), b"proc", _NOSUID_NODEV_NOEXEC, None),
        (MOUNT, "mount /dev", b"tmpfs", p("/dev"), b"tmpfs",
         MS.MS_NOSUID | MS.MS_STRICTATIME, b"mode=755,size=65536k"),
    ]
    for name, major, minor in DEVICES:
        steps.append((MKNOD, f"mknod /dev/{name}", p(f"/dev/{name}"),
                      0o666 | stat.S_IFCHR, os.makedev(major, minor)))
    for d in ("/dev/pts", "/dev/shm", "/dev/mqueue"):
        steps.append((MKDIR, f"create {d}", p(d), 0o755))
    steps += [
        (MOUNT, "mount /dev/pts", b"devpts", p("/dev/pts"), b"devpts",
         MS.MS_NOSUID | MS.MS_NOEXEC, b"newinstance,ptmxmode=0666,mode=0620,gid=5"),
        (SYMLINK, "link /dev/ptmx", b"pts/ptmx", p("/dev/ptmx")),
        (MOUNT, "mount /dev/shm", b"shm", p("/dev/shm"), b"tmpfs", _NOSUID_NODEV_NOEXEC,
         b"mode=1777,size=65536k"),
        (MOUNT, "mount /dev/mqueue", b"mqueue", p("/dev/mqueue"), b"mqueue",
         _NOSUID_NODEV_NOEXEC, None),
        (SYSFS, "mount /sys", p("/sys")),
        (SYMLINK, "link /dev/fd", b"/proc/self/fd", p("/dev/fd")),
        (SYMLINK, "link /dev/stdin", b"/proc/self/fd/0", p("/dev/stdin")),
        (SYMLINK, "link /dev/stdout", b"/proc/self/fd/1", p("/dev/stdout")),
        (SYMLINK, "link /dev/stderr", b"/proc/self/fd/2", p("/dev/stderr")),
    ]
    for src, dst in (spec.net or {}).get("files", ()):
        steps.append((BIND, f"bind {src} on {dst}", enc(src), enc(r), enc(dst), False))
    for b in spec.binds:
        steps.append((BIND, f"bind-mount {b['source']} on {b['target']}", enc(b["source"]),
                      enc(r), enc(b["target"]), bool(b["readonly"])))
    if not spec.privileged:
        null = p("/dev/null")
        steps += [(MASK, f"mask {m}", p(m), null) for m in security.MASKED_PATHS]
        steps += [(READONLY, f"make {m} read-only", p(m)) for m in security.READONLY_PATHS]
    if spec.readonly:
        steps.append((MOUNT, "remount the rootfs read-only", None, enc(spec.rootfs), None,
                      MS.MS_BIND | MS.MS_REMOUNT | MS.MS_RDONLY, None))
    return steps


class StepFailed(Exception):
    """A step of the plan failed: ``stage`` says which, ``errno`` why."""

    def __init__(self, stage: str, err: int) -> None:
        super().__init__(stage, err)
        self.stage = stage
        self.errno = err


def apply(steps: list[Step]) -> None:
    """Run the plan (in the child's private mount namespace)."""
    mount = syscalls.mount
    for step in steps:
        kind = step[0]
        try:
            if kind == MOUNT:
                mount(step[2], step[3], step[4], step[5], step[6])
            elif kind == MKDIR:
                try:
                    os.mkdir(step[2], step[3])
                except FileExistsError:
                    pass
            elif kind == MKNOD:
                os.mknod(step[2], step[3], step[4])
            elif kind == SYMLINK:
                os.symlink(step[2], step[3])
            elif kind == CHDIR:
                os.chdir(step[2])
            elif kind == SYSFS:
                _mount_sysfs(step[2])
            elif kind == MASK:
                _mask(step[2], step[3])
            elif kind == READONLY:
                _readonly(step[2])
            elif kind == BIND:
                bind(step[2], step[3], step[4], step[5])
        except OSError as exc:
            raise StepFailed(step[1], exc.errno or errno.EIO) from None


def _mount_sysfs(target: bytes) -> None:
    flags = MS.MS_RDONLY | _NOSUID_NODEV_NOEXEC
    try:
        syscalls.mount(b"sysfs", target, b"sysfs", flags, None)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EBUSY):
            raise
        # sysfs of a namespace we do not own (net=host): bind the host's, read-only,
        # without its submounts (cgroupfs stays out of the container)
        syscalls.mount(b"/sys", target, None, MS.MS_BIND, None)
        syscalls.mount(None, target, None, MS.MS_BIND | MS.MS_REMOUNT | flags, None)


def bind(source: bytes, rootfs: bytes, target: bytes, readonly: bool) -> None:
    """Bind-mount the host's ``source`` on ``target`` inside ``rootfs``.

    The target is found with openat2's RESOLVE_IN_ROOT and mounted on through its
    /proc/self/fd link (as runc does): a symlink the container left on the way (``/data
    -> ../../..``, ``/data -> /``) resolves inside the rootfs, never to a host path.
    The mount point is normally in the container's init layer, and is only looked at
    (opening it for writing would copy it up into the writable layer, and so into a
    commit); one the container removed is made again here.
    """
    root = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = _resolve_in(root, target, make_dir=os.path.isdir(source))
        try:
            syscalls.mount(source, b"/proc/self/fd/%d" % fd, None, MS.MS_BIND | MS.MS_REC, None)
        finally:
            os.close(fd)
        if readonly:  # the new mount (and the host's mounts below it), found again
            fd = _resolve_in(root, target, make_dir=False)
            try:
                try:
                    syscalls.mount_setattr(fd, syscalls.MOUNT_ATTR_RDONLY, recursive=True)
                except OSError as exc:
                    if exc.errno != errno.ENOSYS:
                        raise
                    # before Linux 5.12: the top mount only
                    syscalls.mount(None, b"/proc/self/fd/%d" % fd, None,
                                   MS.MS_BIND | MS.MS_REMOUNT | MS.MS_RDONLY, None)
            finally:
                os.close(fd)
    finally:
        os.close(root)


def _resolve_in(root: int, target: bytes, make_dir: bool, depth: int = 0) -> int:
    """An O_PATH descriptor of ``target`` resolved inside ``root``.  What is missing on
    the way is made inside ``root`` too (the mount point: a directory or an empty file
    as ``make_dir`` says; parents: directories), also where a dangling symlink points."""
    how = syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS
    flags = os.O_PATH | os.O_CLOEXEC
    try:
        return syscalls.openat2(root, target, flags, how)
    except FileNotFoundError:
        if depth > 40:  # as the kernel's own limit on symlinks followed
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP)) from None
    parent, _, name = target.rstrip(b"/").rpartition(b"/")
    pfd = _resolve_in(root, parent or b"/", True, depth + 1)
    try:
        try:
            link = os.readlink(name, dir_fd=pfd)
        except OSError:  # nothing there (or not a symlink): make it
            link = None
            if make_dir:
                os.mkdir(name, 0o755, dir_fd=pfd)
            else:
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, 0o644, dir_fd=pfd))
        if link is not None:  # a dangling symlink: make what it names, inside root
            here = os.readlink(b"/proc/self/fd/%d" % pfd)
            top = os.readlink(b"/proc/self/fd/%d" % root)
            base = here[len(top):] if here.startswith(top) else b"/"
            dest = os.path.normpath(os.path.join(b"/" + base.lstrip(b"/"), link))
            os.close(_resolve_in(root, dest, make_dir, depth + 1))
    finally:
        os.close(pfd)
    return syscalls.openat2(root, target, flags, how)


def _mask(path: bytes, null: bytes) -> None:
    try:
        syscalls.mount(null, path, None, MS.MS_BIND, None)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return
        if exc.errno != errno.ENOTDIR:
            raise
        syscalls.mount(b"tmpfs", path, b"tmpfs", MS.MS_RDONLY, None)


def _readonly(path: bytes) -> None:
    try:
        syscalls.mount(path, path, None, MS.MS_BIND | MS.MS_REC, None)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return
        raise
    syscalls.mount(None, path, None, MS.MS_BIND | MS.MS_REMOUNT | MS.MS_RDONLY
                   | _NOSUID_NODEV_NOEXEC, None)


def pivot(rootfs: bytes) -> None:
    """Make ``rootfs`` the root: runc's ``pivot_root(".", ".")`` then detach the old
    root stacked on it, so no directory for the old root is needed."""
    try:
        os.chdir(rootfs)
        syscalls.pivot_root(b".", b".")
        syscalls.umount2(b".", syscalls.MNT_DETACH)
        os.chdir(b"/")
    except OSError as exc:
        raise StepFailed(f"pivot_root to {os.fsdecode(rootfs)}", exc.errno or errno.EIO) from None
