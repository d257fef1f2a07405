"""The fork server: a small single-threaded process that forks container monitors.

Forking a process that runs threads (ZeroMQ's I/O threads, the engine's) is unsafe, so
the engine forks this server first, while it is still single-threaded, and asks it for
every monitor (the pattern of multiprocessing's forkserver, without a new interpreter).
A monitor therefore costs one fork of a quiet process: copy-on-write pages, no start-up.

Protocol on a ``SOCK_SEQPACKET`` socketpair (one message per request and reply)::

    engine                                   fork server                 monitor
      | -- msgpack {spec, dir, stdin, on_exit} -> |                           |
      |                                           | -- fork -----------------> |
      | <- msgpack monitor_pid + report fd ------ |   (SCM_RIGHTS)            |
      | <------------------- JSON report on the report pipe, then EOF ------- |

The reply comes as soon as the monitor is forked, so many engine threads can wait on
their own report pipes at once while the server forks the next monitor.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import threading
from typing import Any, Callable

import msgpack

from engine import errors, monitor_client
from engine.spec import ContainerSpec

_MAX_MESSAGE = 1 << 20


class ForkServer:
    """Forked at construction (call it while the process is single-threaded: the engine
    builds it before starting any thread). The server process is single-threaded; it
    runs gc.freeze() and ignores SIGCHLD (monitors are auto-reaped if they exit while it
    lives; when it exits they are re-parented to init). Talks over a socketpair with
    msgpack.

    ``starter`` is what starts containers (``start(spec, stdin, stdout, stderr) -> pid``
    and ``exec_in(init_pid, spec, process, stdin, stdout, stderr) -> pid``);
    :mod:`engine.runtime` by default.  Tests pass a plain fork/exec one.

    ``many``: the server will fork many monitors (a daemon, a program using the API), so
    it first arranges its heap for them to share (about 15 ms).  A command that starts
    one container (the CLI's ``run``) passes False: its monitor shares with nobody.
    """

    def __init__(self, *, starter: Any = None, many: bool = True) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # the server
            status = 1
            try:
                ours.detach()
                status = _serve(theirs, starter, many)
            finally:
                os._exit(status)
        theirs.close()
        ours.setblocking(True)
        os.set_inheritable(ours.fileno(), False)
        self._sock: socket.socket | None = ours
        self._pid = pid
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        """The server process's PID."""
        return self._pid

    def spawn(self, spec: ContainerSpec, container_dir: str, *, open_stdin: bool,
              on_exit: tuple[str, list] | None = None) -> dict:
        """Fork a monitor for the container; block until the container's process has
        exec'd (or failed) and return {"pid": init_pid, "monitor_pid": ...,
        "started_at": ns}. Raises the runtime's error (CommandNotFound, ...) rebuilt
        from the monitor's report. Thread-safe (many engine threads may call it)."""
        request = msgpack.packb({
            "spec": spec.to_dict(),
            "dir": container_dir,
            "open_stdin": bool(open_stdin),
            "on_exit": list(on_exit) if on_exit is not None else None,
        })
        with self._lock:
            if self._sock is None:
                raise errors.EngineError("the fork server is closed; "
                                         "make a new ForkServer to start containers")
            try:
                self._sock.sendall(request)
                data, fds, _, _ = socket.recv_fds(self._sock, _MAX_MESSAGE, 1)
            except OSError as exc:
                raise errors.EngineError(f"the fork server (pid {self._pid}) is gone: "
                                         f"{exc}; make a new ForkServer") from exc
        if not data:
            raise errors.EngineError(f"the fork server (pid {self._pid}) exited; "
                                     "make a new ForkServer")
        reply = msgpack.unpackb(data)
        if isinstance(reply, dict):  # the server could not fork
            raise monitor_client.rebuild_error(reply)
        if len(fds) != 1:
            raise errors.EngineError("the fork server sent no report pipe; this is a bug")
        with os.fdopen(fds[0], "rb") as f:
            report = f.read()
        if not report:
            raise errors.RuntimeFailure(
                f"the monitor of container {spec.id[:12]} (pid {reply}) died "
                f"before starting it; see {os.path.join(container_dir, 'monitor.err')}")
        result = json.loads(report)
        if "code" in result:
            raise monitor_client.rebuild_error(result)
        return result

    def close(self) -> None:
        """End the server process (monitors keep running)."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is None:
            return
        sock.close()
        try:
            os.waitpid(self._pid, 0)
        except ChildProcessError:
            pass

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _serve(sock: socket.socket, starter: Any, many: bool) -> int:
    """The fork server's loop: one monitor per request until the engine goes away."""
    # The monitor and the runtime are imported here, in the server, not by the engine
    # (which never needs them): the import runs beside the engine's own work, and the
    # monitors share these pages.
    from engine import monitor
    if many:
        # what a monitor of a bridge container imports: here once and shared, not once
        # per monitor (~2 MiB each)
        from engine.network import ipam, proxy  # noqa: F401

    if starter is None:
        from engine import runtime as starter
    if hasattr(starter, "warm_up"):
        starter.warm_up()  # the seccomp filter, built once for every monitor
    if many:
        monitor.warm_up()  # the monitor's own code, specialised here once for all of them
    fork = _hookless_fork()
    keep = sock.fileno()
    os.closerange(3, keep)  # hold none of the engine's files (locks, sockets)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # monitors are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C in the engine's terminal is its own
    if many:
        gc.collect()
        filler = _fill_free_blocks()  # noqa: F841 -- held for the server's whole life
        gc.freeze()  # keep the shared heap untouched by collections: pages stay shared
    # Every page this loop writes after a fork stays with that monitor alone (the
    # server's copy moves on), so the loop does as little as it can (no 1 MiB buffer
    # allocated per request)
    buf = bytearray(_MAX_MESSAGE)
    while True:
        try:
            n = sock.recv_into(buf)
        except InterruptedError:
            continue
        if not n:
            return 0
        try:
            spec, container_dir, open_stdin, on_exit = _parse(buf[:n])
        except (ValueError, TypeError, KeyError) as exc:
            bad = errors.InvalidArgument(f"malformed fork server request: {exc}")
            sock.send(msgpack.packb(monitor.error_payload(bad)))
            continue
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = fork()
        except OSError as exc:
            os.close(r)
            os.close(w)
            failed = errors.RuntimeFailure(f"cannot fork a monitor: {exc}; "
                                           "check the pids limit and free memory")
            sock.send(msgpack.packb(monitor.error_payload(failed)))
            continue
        if pid == 0:
            sock.close()
            os.close(r)
            monitor.run(spec, container_dir, open_stdin=open_stdin, on_exit=on_exit,
                        report_fd=w, starter=starter)
        os.close(w)
        try:
            socket.send_fds(sock, [msgpack.packb(pid)], [r])
        finally:
            os.close(r)


def _hookless_fork() -> Callable[[], int]:
    """fork(2) without Python's at-fork work (about 0.3 MiB of copied pages a monitor).

    os.fork() re-initialises the interpreter's locks and threading state in the child and
    runs every os.register_at_fork() hook (threading, random, chan's); the server did all
    that already when the engine forked it, it is single-threaded and holds no lock, so
    its monitors start from a state that needs none of it.  The GIL stays held across
    the call (ctypes.PyDLL), so no other Python code runs around the fork."""
    import ctypes
    import sys

    if sys.version_info[:2] != (3, 11):
        return os.fork  # the interpreter's fork-time state was checked on 3.11 only
    libc_fork = ctypes.PyDLL(None, use_errno=True).fork
    libc_fork.restype = ctypes.c_int
    libc_fork.argtypes = []

    def fork() -> int:
        pid = libc_fork()
        if pid < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return pid

    return fork


def _free_blocks() -> dict[int, int]:
    """{block size: free blocks} of Python's small-object allocator, read from
    sys._debugmallocstats() (which writes to the C stderr, fd 2)."""
    import sys

    mem = os.memfd_create("cbx-mallocstats", os.MFD_CLOEXEC)
    saved = os.dup(2)
    try:
        os.dup2(mem, 2)
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    chunks = []
    try:
        os.lseek(mem, 0, os.SEEK_SET)
        while chunk := os.read(mem, 65536):
            chunks.append(chunk)
    finally:
        os.close(mem)
    free = {}
    for line in b"".join(chunks).decode("ascii", "replace").splitlines():
        cols = line.split()  # class, block size, pools, blocks in use, free blocks
        if len(cols) == 5 and all(c.isdigit() for c in cols):
            free[int(cols[1])] = int(cols[4])
    return free


def _fill_free_blocks() -> list[object]:
    """Objects that take every free block of the small-object pools (about 0.1 MiB a
    monitor).

    A monitor's new objects would otherwise land in free blocks scattered over the
    server's heap, each copying a shared page; with those taken, they go to fresh
    pools, a few pages per block size."""
    keep: list[object] = []
    for size, count in _free_blocks().items():
        if size == 16:
            keep.extend(object() for _ in range(count))
        elif size == 32:
            keep.extend(1 << 40 | i for i in range(count))  # ints of 28 bytes
        else:
            keep.extend(bytes(size - 33) for _ in range(count))  # 33 + len bytes
    return keep


def _parse(request: bytearray) -> tuple[ContainerSpec, str, bool, tuple | None]:
    req = msgpack.unpackb(request)
    on_exit = tuple(req["on_exit"]) if req["on_exit"] is not None else None
    return ContainerSpec.from_dict(req["spec"]), req["dir"], bool(req["open_stdin"]), on_exit
