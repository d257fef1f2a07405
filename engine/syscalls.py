"""Thin ctypes bindings to the Linux system calls the runtime needs and Python lacks.

Each wrapper raises :class:`OSError` with ``errno`` and the path it was about, so the
runtime's child can report exactly which step the kernel refused.  Importing this
module only opens libc (already mapped by the interpreter): the CLI imports the engine,
so nothing heavy happens here.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

# clone(2)/unshare(2) flags
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount(2) flags
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_STRICTATIME = 0x1000000

# umount2(2) flags
MNT_DETACH = 0x2

# prctl(2) options
PR_SET_PDEATHSIG = 1
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_SECCOMP = 22
PR_GET_SECCOMP = 21
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
SECCOMP_MODE_FILTER = 2

# capset(2)
LINUX_CAPABILITY_VERSION_3 = 0x20080522

# close_range(2)
CLOSE_RANGE_CLOEXEC = 0x4

# ioctl(2)
TIOCSCTTY = 0x540E
TIOCGPTN = 0x80045430  # the number of a pty master's slave
TIOCSPTLCK = 0x40045431  # lock/unlock a pty's slave (unlockpt)

_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
_SYS_OPENAT2 = 437  # the same on every architecture (Linux 5.6)
_SYS_MOUNT_SETATTR = 442  # likewise (Linux 5.12)

AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1

# openat2(2)'s resolve flags
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10  # symlinks and ".." resolve as if dirfd were "/" (chroot-like)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(ret: int, what: str, path: str | bytes | None = None) -> int:
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return ret


def _b(s: str | bytes | None) -> bytes | None:
    if s is None or isinstance(s, bytes):
        return s
    return os.fsencode(s)


def mount(source: str | bytes | None, target: str | bytes, fstype: str | bytes | None,
          flags: int = 0, data: str | bytes | None = None) -> None:
    """mount(2); raises OSError naming ``target``."""
    ret = _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    _check(ret, "mount", target)


def openat2(dirfd: int, path: str | bytes, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): open ``path`` relative to ``dirfd`` under the ``resolve`` rules (e.g.
    :data:`RESOLVE_IN_ROOT`: never outside ``dirfd``, whatever symlinks it meets)."""
    how = _OpenHow(flags, mode, resolve)
    return _check(_libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dirfd), _b(path),
                                ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))),
                  "openat2", path)


def mount_setattr(fd: int, attr_set: int, *, recursive: bool = True) -> None:
    """mount_setattr(2) on the mount whose root ``fd`` is (an O_PATH descriptor): set
    ``attr_set`` (e.g. :data:`MOUNT_ATTR_RDONLY`) on it and, with ``recursive``, on every
    mount below it.  Raises OSError (ENOSYS before Linux 5.12)."""
    attr = _MountAttr(attr_set, 0, 0, 0)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    _check(_libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(fd), b"",
                         ctypes.c_uint(flags), ctypes.byref(attr),
                         ctypes.c_size_t(ctypes.sizeof(attr))), "mount_setattr")


def umount2(target: str | bytes, flags: int = 0) -> None:
    """umount2(2)."""
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), "umount2", target)


def pivot_root(new_root: str | bytes, put_old: str | bytes) -> None:
    """pivot_root(2) (glibc has no wrapper: a raw syscall)."""
    nr = _SYS_PIVOT_ROOT[os.uname().machine]
    _check(_libc.syscall(ctypes.c_long(nr), _b(new_root), _b(put_old)), "pivot_root", new_root)


def unshare(flags: int) -> None:
    """unshare(2)."""
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2) on an open ``/proc/<pid>/ns/<kind>`` descriptor."""
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def sethostname(name: str | bytes) -> None:
    """sethostname(2) in the caller's UTS namespace."""
    b = _b(name) or b""
    _check(_libc.sethostname(b, ctypes.c_size_t(len(b))), "sethostname")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2) with integer arguments; returns the call's result."""
    return _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                              ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)), "prctl")


class SockFprog(ctypes.Structure):
    """``struct sock_fprog``: a classic-BPF program for seccomp."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_load_program(prog: SockFprog) -> None:
    """Install a prebuilt seccomp filter (needs no_new_privs or CAP_SYS_ADMIN)."""
    ret = _libc.prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER),
                      ctypes.byref(prog), ctypes.c_ulong(0), ctypes.c_ulong(0))
    _check(ret, "seccomp")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set the calling thread's capability sets (64-bit masks)."""
    hdr = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(hdr), data), "capset")


def capget() -> tuple[int, int, int]:
    """The calling thread's (effective, permitted, inheritable) capability masks."""
    hdr = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(hdr), data), "capget")
    eff = data[0].effective | (data[1].effective << 32)
    prm = data[0].permitted | (data[1].permitted << 32)
    inh = data[0].inheritable | (data[1].inheritable << 32)
    return eff, prm, inh


def cloexec_from(lowfd: int) -> None:
    """Mark every descriptor >= ``lowfd`` close-on-exec (one close_range(2) call)."""
    fn = getattr(_libc, "close_range", None)
    if fn is not None and fn(ctypes.c_uint(lowfd), ctypes.c_uint(0xFFFFFFFF),
                             ctypes.c_int(CLOSE_RANGE_CLOEXEC)) == 0:
        return
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd >= lowfd:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the listing's own descriptor, already closed


def ioctl_int(fd: int, request: int, arg: int = 0) -> None:
    """ioctl(2) with an integer argument (TIOCSCTTY)."""
    _check(_libc.ioctl(ctypes.c_int(fd), ctypes.c_ulong(request), ctypes.c_long(arg)), "ioctl")


_SIOCSIFFLAGS = 0x8914
_IFF_UP_LOOPBACK_RUNNING = 0x1 | 0x8 | 0x40


def loopback_up() -> None:
    """Bring ``lo`` up in the caller's network namespace (as Docker does for every
    container): one socket and one SIOCSIFFLAGS."""
    fd = _check(_libc.socket(ctypes.c_int(2), ctypes.c_int(2 | 0o2000000), ctypes.c_int(0)),
                "socket for lo")
    try:
        ifr = ctypes.create_string_buffer(40)
        ifr[0:2] = b"lo"
        ctypes.memmove(ctypes.addressof(ifr) + 16,
                       ctypes.byref(ctypes.c_short(_IFF_UP_LOOPBACK_RUNNING)), 2)
        _check(_libc.ioctl(ctypes.c_int(fd), ctypes.c_ulong(_SIOCSIFFLAGS), ifr), "bring lo up")
    finally:
        os.close(fd)
