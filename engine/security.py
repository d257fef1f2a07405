"""What confines a container's processes: Docker's default capabilities, masked and
read-only paths, the default seccomp filter, and user resolution from the container's
own ``/etc/passwd`` and ``/etc/group``.

Everything that can be computed before the runtime forks is computed here, once (the
capability mask, the seccomp program as classic BPF): the child only issues syscalls.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any

from engine import syscalls
from engine.errors import InvalidArgument

#: Docker's default capability set (moby's ``oci/caps/defaults.go``), name -> number
DEFAULT_CAPS: dict[str, int] = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FSETID": 4, "CAP_FOWNER": 3,
    "CAP_MKNOD": 27, "CAP_NET_RAW": 13, "CAP_SETGID": 6, "CAP_SETUID": 7,
    "CAP_SETFCAP": 31, "CAP_SETPCAP": 8, "CAP_NET_BIND_SERVICE": 10,
    "CAP_SYS_CHROOT": 18, "CAP_KILL": 5, "CAP_AUDIT_WRITE": 29,
}
#: the same set as a mask (0x00000000a80425fb, what ``CapBnd`` shows in Docker)
DEFAULT_CAP_MASK: int = sum(1 << n for n in DEFAULT_CAPS.values())

MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
)
READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)

#: system calls Docker's default profile does not allow; they fail with EPERM
DENIED_SYSCALLS: tuple[str, ...] = (
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module",
    "delete_module", "finit_module", "get_kernel_syms", "get_mempolicy", "init_module",
    "ioperm", "iopl", "kcmp", "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie",
    "mbind", "mount", "move_pages", "name_to_handle_at", "nfsservctl", "open_by_handle_at",
    "perf_event_open", "pivot_root", "process_vm_readv", "process_vm_writev", "ptrace",
    "query_module", "quotactl", "reboot", "request_key", "set_mempolicy", "setns",
    "settimeofday", "swapoff", "swapon", "sysfs", "_sysctl", "umount", "umount2",
    "unshare", "uselib", "userfaultfd", "ustat", "vm86", "vm86old",
)

_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_ACT_ERRNO_EPERM = 0x00050000 | errno.EPERM


def last_cap() -> int:
    """The highest capability number this kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return 40


class Confinement:
    """The precomputed confinement of one process: applied by the child before exec."""

    def __init__(self, privileged: bool) -> None:
        self.privileged = privileged
        self.drop = () if privileged else tuple(
            c for c in range(last_cap() + 1) if not DEFAULT_CAP_MASK >> c & 1)
        self.seccomp = None if privileged else default_seccomp_program()

    def drop_bounding(self) -> None:
        """Drop the bounding set to the default (before changing user: needs SETPCAP)."""
        for cap in self.drop:
            syscalls.prctl(syscalls.PR_CAPBSET_DROP, cap)

    def after_setuid(self, uid: int) -> None:
        """Trim root's sets to the default, then no_new_privs and the seccomp filter."""
        if self.privileged:
            return
        if uid == 0:
            m = DEFAULT_CAP_MASK
            syscalls.capset(m, m, m)
        syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
        if self.seccomp is not None:
            syscalls.seccomp_load_program(self.seccomp[0])


_seccomp_cache: list[Any] = []


def _libseccomp() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        pass
    from ctypes import util  # slow (imports subprocess): only on unusual hosts

    name = util.find_library("seccomp")
    try:
        return ctypes.CDLL(name, use_errno=True) if name else None
    except OSError:
        return None


def default_seccomp_program() -> tuple[syscalls.SockFprog, Any] | None:
    """Docker's deny list compiled to classic BPF by libseccomp (cached), or ``None``
    when libseccomp is absent.  Returns the ``sock_fprog`` and the buffer it points to
    (keep both alive)."""
    if _seccomp_cache:
        return _seccomp_cache[0]
    lib = _libseccomp()
    prog = None
    if lib is not None:
        prog = _compile(lib)
    _seccomp_cache.append(prog)
    return prog


def _compile(lib: ctypes.CDLL) -> tuple[syscalls.SockFprog, Any]:
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                     ctypes.c_uint]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError(errno.ENOMEM, "seccomp_init failed")
    try:
        for name in DENIED_SYSCALLS:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue  # not a system call on this architecture
            rc = lib.seccomp_rule_add(ctx, _SCMP_ACT_ERRNO_EPERM, nr, 0)
            if rc < 0:
                raise OSError(-rc, f"seccomp_rule_add({name}): {os.strerror(-rc)}")
        r, w = os.pipe()
        try:
            rc = lib.seccomp_export_bpf(ctx, w)
            os.close(w)
            w = -1
            if rc < 0:
                raise OSError(-rc, f"seccomp_export_bpf: {os.strerror(-rc)}")
            chunks = []
            while chunk := os.read(r, 65536):
                chunks.append(chunk)
            code = b"".join(chunks)
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
    finally:
        lib.seccomp_release(ctx)
    buf = ctypes.create_string_buffer(code, len(code))
    prog = syscalls.SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    return prog, buf


# -- users -------------------------------------------------------------------------

def _read_db(path: str) -> list[list[str]]:
    try:
        with open(path, "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line.split(":") for line in data.splitlines()
            if line and not line.startswith("#") and line.count(":") >= 2]


def resolve_user(user: str, passwd: str = "/etc/passwd",
                 group: str = "/etc/group") -> tuple[int, int, list[int], str]:
    """``(uid, gid, supplementary gids, home)`` for a Docker ``--user`` value, looked up
    in the (container's) ``passwd`` and ``group`` files.

    ``""`` is root; numeric ids need no entry (an unknown uid gets gid 0 and home
    ``/``, as in Docker); names must exist.
    """
    name, _, grp = (user or "0").partition(":")
    users = _read_db(passwd)
    entry = None
    for e in users:
        if len(e) >= 4 and (e[0] == name or (name.isdigit() and e[2] == name)):
            entry = e
            break
    if entry is None and not name.isdigit():
        raise InvalidArgument(
            f"unable to find user {name}: no matching entries in passwd file; "
            "use a numeric uid or add the user to the image")
    uid = int(name) if name.isdigit() else int(entry[2])  # type: ignore[index]
    gid = int(entry[3]) if entry is not None and entry[3].isdigit() else 0
    home = entry[5] if entry is not None and len(entry) >= 6 and entry[5] else "/"
    username = entry[0] if entry is not None else None
    groups_db = _read_db(group)
    if grp:
        if grp.isdigit():
            gid = int(grp)
        else:
            for g in groups_db:
                if g[0] == grp and g[2].isdigit():
                    gid = int(g[2])
                    break
            else:
                raise InvalidArgument(
                    f"unable to find group {grp}: no matching entries in group file; "
                    "use a numeric gid or add the group to the image")
    sgids = [gid]
    if username is not None:
        for g in groups_db:
            if len(g) >= 4 and g[2].isdigit() and username in g[3].split(","):
                n = int(g[2])
                if n not in sgids:
                    sgids.append(n)
    return uid, gid, sgids, home


def info() -> dict[str, Any]:
    """What confinement this kernel offers, for ``chanbox info``."""
    return {
        "seccomp": "enabled (default profile)" if _libseccomp() is not None
        else "not available (libseccomp missing)",
        "apparmor": "not available on this kernel"
        if not os.path.exists("/sys/kernel/security/apparmor") else "available (not used)",
        "selinux": "not available on this kernel"
        if not os.path.exists("/sys/fs/selinux/enforce") else "available (not used)",
        "no_new_privileges": True,
        "default_capabilities": sorted(DEFAULT_CAPS),
    }
