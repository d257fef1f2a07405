"""Create containers and run processes in them (the parent side and the child's init).

The sequence, between the monitor (parent) and the child it forks::

    monitor                                   child
    -------                                   -----
    precompute: rootfs plan, env, argv,
      seccomp BPF, capability drops
    unshare(CLONE_NEWPID)
    pipe (close-on-exec)  ── fork ──────────▶ pid 1 of the new pid namespace
    (v2: write pid to cgroup.procs)           (v1: write 0 to each cgroup's tasks)
                                              unshare mnt/uts/ipc[/net]
                                              / rprivate; overlay; /proc /dev /sys; masks
                                              pivot_root; hostname; lo up
    (v2: go-ahead) ─────────────────────────▶ (v2: wait for it); user; caps;
                                              setsid; stdio; no_new_privs; seccomp
    read(pipe) ◀──── EOF at execve ────────── execve(argv)           (success)
               ◀──── "errno\\0kind\\0stage" ─ _exit(125|126|127)      (failure)

A failure before exec is reported through the pipe; :func:`start` reaps the child and
raises the matching :mod:`engine.errors` class.  The child runs no imports and does no
string work it could have been handed ready-made.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import struct
from typing import Any

from engine import cgroups, rootfs, security, syscalls
from engine.network import netlink
from engine.errors import (
    CommandNotFound,
    CommandNotInvokable,
    EngineError,
    InvalidArgument,
    NotRunning,
    RuntimeFailure,
)
from engine.spec import ContainerSpec, ProcessSpec

__all__ = ["CONSOLE_INSIDE", "DEFAULT_PATH", "exec_in", "start", "warm_up"]

#: start() and exec_in() take ``console``: a terminal is made inside the container
CONSOLE_INSIDE = True

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# what the child reports in the error pipe: which kind of step failed
_SETUP, _USER, _EXEC = b"setup", b"user", b"exec"


class _Process:
    """Everything about one process that can be computed before fork."""

    def __init__(self, spec: ContainerSpec, proc: ProcessSpec) -> None:
        if not proc.args:
            raise InvalidArgument("no command given: set the image's Cmd or pass one")
        self.argv = [os.fsencode(a) for a in proc.args]
        env: dict[bytes, bytes] = {}
        for item in proc.env:
            k, sep, v = item.partition("=")
            if not k or not sep:
                raise InvalidArgument(f"environment entry {item!r} is not KEY=VALUE")
            env[os.fsencode(k)] = os.fsencode(v)
        env.setdefault(b"PATH", DEFAULT_PATH.encode())
        env.setdefault(b"HOSTNAME", os.fsencode(spec.hostname))
        if proc.terminal:
            env.setdefault(b"TERM", b"xterm")
        self.env = env
        self.path = [d or b"." for d in env[b"PATH"].split(b":")]
        self.user = proc.user
        self.cwd = os.fsencode(proc.cwd or "/")
        self.terminal = proc.terminal
        # v1: the child joins itself (fast); v2: the parent moves it (see join_files)
        self.cgroup_tasks, self.cgroup_procs = cgroups.join_files(spec.cgroups)
        self.confine = security.Confinement(spec.privileged)


def warm_up() -> None:
    """Compute what every container shares (the seccomp BPF) now, e.g. in a fork server
    before it forks monitors, so no start() pays for it."""
    security.default_seccomp_program()


def start(spec: ContainerSpec, stdin: int, stdout: int, stderr: int, *,
          console: int = -1) -> int:
    """Create the container and exec ``spec.process`` in it; return the init's host PID.

    ``console``, a connected unix socket: the process gets a terminal made in the
    container's own devpts (as runc's console socket: ``tty`` finds ``/dev/pts/N``
    inside), whose master is sent over it; ``stdin``/``stdout``/``stderr`` are then
    ignored.

    Call it in a single-threaded process (the monitor), which becomes the init's parent
    and must reap it.  The caller itself enters the container's pid namespace for its
    later forks (see :func:`exec_in`).  Raises :class:`CommandNotFound` (exit 127),
    :class:`CommandNotInvokable` (126), :class:`InvalidArgument` (bad user) or
    :class:`RuntimeFailure` naming the step the kernel refused.
    """
    proc = _Process(spec, spec.process)
    try:
        steps = rootfs.plan(spec)
    except ValueError as exc:
        raise InvalidArgument(f"{exc} (container {spec.id})") from exc
    flags = syscalls.CLONE_NEWNS | syscalls.CLONE_NEWUTS | syscalls.CLONE_NEWIPC
    if spec.network != "host":
        flags |= syscalls.CLONE_NEWNET
    try:
        syscalls.unshare(syscalls.CLONE_NEWPID)
    except OSError as exc:
        raise RuntimeFailure(f"unshare the pid namespace: {os.strerror(exc.errno or 0)}; "
                             "start() needs root and a process that has not started "
                             "a container yet") from exc
    hostname = os.fsencode(spec.hostname)
    rootfs_b = os.fsencode(spec.rootfs)
    plan = spec.net["plan"] if spec.net else None
    return _spawn(proc, stdin, stdout, stderr, lambda: _build_container(
        flags, steps, rootfs_b, hostname, spec.network != "host", plan), console)


def exec_in(init_pid: int, spec: ContainerSpec, process: ProcessSpec,
            stdin: int, stdout: int, stderr: int, *, console: int = -1) -> int:
    """Run another process in the running container whose init is ``init_pid`` (``docker
    exec``); return its PID.

    Call it from the process that called :func:`start` (its forks already land in the
    container's pid namespace); any other caller is moved into that pid namespace for
    its later forks.  Same errors as :func:`start`; :class:`NotRunning` when the init
    is gone."""
    proc = _Process(spec, process)
    fds: list[int] = []
    try:
        ns_dir = f"/proc/{init_pid}/ns/"
        try:
            if os.readlink(ns_dir + "pid") != os.readlink("/proc/self/ns/pid_for_children"):
                fd = os.open(ns_dir + "pid", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    syscalls.setns(fd, syscalls.CLONE_NEWPID)
                finally:
                    os.close(fd)
            for kind in ("ipc", "uts", "net", "mnt"):
                fds.append(os.open(ns_dir + kind, os.O_RDONLY | os.O_CLOEXEC))
        except (FileNotFoundError, ProcessLookupError) as exc:
            raise NotRunning(f"container {spec.id} is not running (its init {init_pid} is "
                             "gone): start it before exec") from exc
        except OSError as exc:
            raise RuntimeFailure(f"enter container {spec.id} (pid {init_pid}): "
                                 f"{os.strerror(exc.errno or 0)}") from exc
        return _spawn(proc, stdin, stdout, stderr, lambda: _enter(fds), console)
    finally:
        for fd in fds:
            os.close(fd)


# -- parent: wait for exec or a report -------------------------------------------------

def _spawn(proc: _Process, stdin: int, stdout: int, stderr: int, setup: Any,
           console: int = -1) -> int:
    """Fork the child that runs ``setup`` then execs ``proc``; its PID once exec'd.

    The child enters its v1 cgroups itself, first thing.  v2 cgroups are joined by the
    parent while the child builds the container (time the child spends mounting instead
    of waiting, see :func:`cgroups.join_files`); the child then execs only after the
    parent's go-ahead, so the command never runs outside its limits.
    """
    r, w = _pipe()
    go_r, go_w = os.pipe2(os.O_CLOEXEC) if proc.cgroup_procs else (-1, -1)
    pid = os.fork()
    if pid == 0:
        os.close(r)
        if go_w >= 0:
            os.close(go_w)
        _child(w, go_r, proc, stdin, stdout, stderr, setup, console)
    os.close(w)
    if go_w >= 0:  # v2: move the child into its cgroups, then let it exec
        os.close(go_r)
        try:
            pid_b = b"%d" % pid
            for procs in proc.cgroup_procs:
                _write(procs, pid_b, "join cgroup")
        except rootfs.StepFailed as exc:
            os.close(go_w)  # the child sees EOF instead of the go-ahead and exits
            os.close(r)
            os.waitpid(pid, 0)
            raise RuntimeFailure(f"{exc.stage}: {os.strerror(exc.errno)}") from None
        os.write(go_w, b"g")
        os.close(go_w)
    _await_exec(pid, r, proc.argv[0].decode("utf-8", "replace"))
    return pid


def _pipe() -> tuple[int, int]:
    """The error pipe; its write end kept off 0-2, which the child overwrites with stdio."""
    r, w = os.pipe()
    if w < 3:
        high = fcntl.fcntl(w, fcntl.F_DUPFD_CLOEXEC, 3)
        os.close(w)
        w = high
    return r, w


def _await_exec(pid: int, r: int, cmd: str) -> None:
    chunks = []
    try:
        while chunk := os.read(r, 4096):
            chunks.append(chunk)
    finally:
        os.close(r)
    if not chunks:
        return
    os.waitpid(pid, 0)
    raise _error(b"".join(chunks), cmd)


def _error(report: bytes, cmd: str) -> EngineError:
    err_s, kind, stage = (report.split(b"\0", 2) + [b"", b""])[:3]
    err = int(err_s) if err_s.isdigit() else errno.EIO
    what = stage.decode("utf-8", "replace")
    if kind == _USER:
        return InvalidArgument(what)
    if kind == _EXEC:
        if err in (errno.ENOENT, errno.ENOTDIR):
            if "/" in cmd:
                return CommandNotFound(f'exec: "{cmd}": stat {cmd}: no such file or directory')
            return CommandNotFound(f'exec: "{cmd}": executable file not found in $PATH')
        if err in (errno.EACCES, errno.ENOEXEC, errno.EISDIR, errno.EPERM):
            return CommandNotInvokable(f'exec: "{cmd}": {os.strerror(err).lower()}')
    return RuntimeFailure(f"{what}: {os.strerror(err)}")


# -- child ------------------------------------------------------------------------------

def _child(w: int, go: int, proc: _Process, stdin: int, stdout: int, stderr: int,
           setup: Any, console: int = -1) -> None:
    """The child between fork and exec; never returns."""
    code = 125
    try:
        try:
            os.umask(0)
            _die_with_parent()
            for tasks in proc.cgroup_tasks:
                _write(tasks, b"0", "join cgroup")
            setup()
            if go >= 0:
                if os.read(go, 1) != b"g":
                    return  # the parent could not put us in our cgroups; it reports that
                os.close(go)
            if console >= 0:
                stdin = stdout = stderr = _make_console(console)
            _finish(proc, stdin, stdout, stderr)
        except rootfs.StepFailed as exc:
            _report(w, exc.errno, _SETUP, exc.stage)
        except InvalidArgument as exc:
            _report(w, errno.EINVAL, _USER, str(exc))
        except _ExecFailed as exc:
            code = 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126
            _report(w, exc.errno, _EXEC, "exec")
        except OSError as exc:
            _report(w, exc.errno or errno.EIO, _SETUP, exc.strerror or "setup")
        except BaseException as exc:  # noqa: BLE001 - must never unwind into the caller
            _report(w, errno.EIO, _SETUP, f"container init: {exc!r}")
    finally:
        os._exit(code)


def _make_console(console: int) -> int:
    """In the container: a pty of its devpts; the master goes to the monitor over the
    socket ``console``; the slave (returned) becomes the process's stdio."""
    try:
        master = os.open(b"/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        fcntl.ioctl(master, syscalls.TIOCSPTLCK, struct.pack("i", 0))
        n = struct.unpack("I", fcntl.ioctl(master, syscalls.TIOCGPTN, b"\0" * 4))[0]
        slave = os.open(b"/dev/pts/%d" % n, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=console)
        try:
            socket.send_fds(sock, [b"t"], [master])
        finally:
            sock.detach()
        os.close(master)
        os.close(console)
    except OSError as exc:
        raise rootfs.StepFailed("make the container's terminal", exc.errno or errno.EIO) from None
    return slave


def _report(w: int, err: int, kind: bytes, stage: str) -> None:
    try:
        os.write(w, b"%d\0%s\0%s" % (err, kind, stage.encode("utf-8", "replace")))
    except OSError:
        pass  # the parent is gone; nobody to tell


def _write(path: bytes, data: bytes, stage: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        raise rootfs.StepFailed(f"{stage} {os.fsdecode(path)}", exc.errno or errno.EIO) from None


def _build_container(flags: int, steps: list, rootfs_b: bytes, hostname: bytes,
                     new_net: bool, net_plan: dict | None = None) -> None:
    host = None
    if net_plan is not None:
        # a netlink socket opened now stays in the host's namespace after the unshare:
        # the init makes its own veth pair through it (no round trip to the parent)
        try:
            host, master = netlink.open_host(net_plan)
        except netlink.NetlinkFailed as exc:
            raise rootfs.StepFailed(exc.stage, exc.errno or errno.EIO) from None
    try:
        syscalls.unshare(flags)
    except OSError as exc:
        raise rootfs.StepFailed("unshare namespaces", exc.errno or errno.EIO) from None
    if host is not None:
        try:
            netlink.plug_in(host, master, net_plan)
        except netlink.NetlinkFailed as exc:
            raise rootfs.StepFailed(exc.stage, exc.errno or errno.EIO) from None
        except OSError as exc:
            raise rootfs.StepFailed("set up eth0", exc.errno or errno.EIO) from None
        finally:
            host.close()
    try:
        syscalls.mount(None, b"/", None, syscalls.MS_REC | syscalls.MS_PRIVATE, None)
    except OSError as exc:
        raise rootfs.StepFailed("make / private", exc.errno or errno.EIO) from None
    rootfs.apply(steps)
    rootfs.pivot(rootfs_b)
    try:
        syscalls.sethostname(hostname)
        if new_net:
            syscalls.loopback_up()
    except OSError as exc:
        raise rootfs.StepFailed(exc.strerror or "hostname", exc.errno or errno.EIO) from None


def _enter(fds: list[int]) -> None:
    for fd in fds:
        try:
            syscalls.setns(fd, 0)
        except OSError as exc:
            raise rootfs.StepFailed("setns into the container", exc.errno or errno.EIO) from None


class _ExecFailed(Exception):
    def __init__(self, err: int) -> None:
        super().__init__(err)
        self.errno = err


def _finish(proc: _Process, stdin: int, stdout: int, stderr: int) -> None:
    """User, cwd, capabilities, session, stdio, seccomp, exec (inside the container)."""
    uid, gid, groups, home = security.resolve_user(proc.user)
    env = proc.env
    if b"HOME" not in env:
        env[b"HOME"] = os.fsencode(home)
    try:
        os.makedirs(proc.cwd, 0o755, exist_ok=True)
    except OSError as exc:
        raise rootfs.StepFailed(f"create working directory {os.fsdecode(proc.cwd)}",
                                exc.errno or errno.EIO) from None
    conf = proc.confine
    try:
        conf.drop_bounding()
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)
    except OSError as exc:
        raise rootfs.StepFailed(f"switch to user {proc.user or 'root'} ({uid}:{gid})",
                                exc.errno or errno.EIO) from None
    try:
        os.chdir(proc.cwd)
    except OSError as exc:
        raise rootfs.StepFailed(f"chdir to {os.fsdecode(proc.cwd)}", exc.errno or errno.EIO) from None
    try:
        os.setsid()
        _stdio(stdin, stdout, stderr)
        if proc.terminal:
            syscalls.ioctl_int(0, syscalls.TIOCSCTTY, 0)
        syscalls.cloexec_from(3)
    except OSError as exc:
        raise rootfs.StepFailed("set up stdio", exc.errno or errno.EIO) from None
    try:
        conf.after_setuid(uid)
    except OSError as exc:
        raise rootfs.StepFailed("apply capabilities, no_new_privs and seccomp",
                                exc.errno or errno.EIO) from None
    os.umask(0o022)
    _default_signals()
    _die_with_parent()  # again: the switch of user cleared it
    _exec(proc.argv, env, proc.path)


def _die_with_parent() -> None:
    """SIGKILL this process when its parent (the monitor) dies.

    A container whose monitor is gone has no stdio, log or exit record, and its network
    address lease (held by the monitor) is free for another container: like a task
    whose containerd shim died, it must not run on.  The kernel clears the setting when
    the user changes, so it is made again right before exec."""
    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)


# Python ignores SIGPIPE, the monitor ignores SIGINT and SIGHUP, the fork server SIGCHLD:
# ignored dispositions survive exec, and a shell cannot trap a signal ignored at entry.
_CATCHABLE = [s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)]


def _default_signals() -> None:
    """Every signal back to its default and none blocked, as a fresh process expects."""
    for sig in _CATCHABLE:
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # a real-time signal libc keeps for itself
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def _stdio(stdin: int, stdout: int, stderr: int) -> None:
    src = [stdin, stdout, stderr]
    # a source sitting on another slot's number would be clobbered: move it up first
    for i, fd in enumerate(src):
        if fd < 3 and fd != i:
            src[i] = os.dup(fd)
    for i, fd in enumerate(src):
        if fd == i:
            os.set_inheritable(fd, True)
        else:
            os.dup2(fd, i, inheritable=True)


def _exec(argv: list[bytes], env: dict[bytes, bytes], path: list[bytes]) -> None:
    a0 = argv[0]
    if b"/" in a0:
        try:
            os.execve(a0, argv, env)
        except OSError as exc:
            raise _ExecFailed(exc.errno or errno.EIO) from None
    for d in path:
        try:
            os.execve(d + b"/" + a0, argv, env)
        except OSError as exc:
            # like Go's exec.LookPath: what is missing or not executable is skipped
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                raise _ExecFailed(exc.errno or errno.EIO) from None
    raise _ExecFailed(errno.ENOENT)
