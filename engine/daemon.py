"""The chanbox daemon: the engine's verbs served over ZeroMQ for other processes and hosts.

``chanbox daemon`` listens on ``ipc:///run/chanbox/engine.sock`` (mode 0660, group
``chanbox`` when it exists, as Docker's socket) and on every ``--listen`` endpoint.
``tcp://`` needs CurveZMQ keys, or an explicit ``insecure`` opt-out.  Each channel a
client opens is a request channel that :func:`engine.service.serve` answers.

Containers do not belong to the daemon: their monitors run on when it stops or is
killed, and the next daemon finds them (and their logs, exit codes and stdio) through
the same root.  One daemon per root: the second is refused.  A monitor that is killed
takes its container down; the daemon's :class:`~engine.supervisor.Supervisor` records
that exit at once.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import signal
import socket
import sys
import threading
from typing import Any

from .errors import Conflict, InvalidArgument

DEFAULT_SOCKET = "/run/chanbox/engine.sock"
DEFAULT_ENDPOINT = "ipc://" + DEFAULT_SOCKET
SOCKET_GROUP = "chanbox"


def socket_path(endpoint: str) -> str | None:
    """The file of an ``ipc://`` endpoint (None for other schemes)."""
    return endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None


def answers(path: str) -> bool:
    """Whether something listens on the unix socket file ``path`` (a live daemon)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


class Daemon:
    """A running daemon: the engine, its listeners and their accept threads."""

    def __init__(self, root: str | None, endpoints: list[str], *, key_file: str | None = None,
                 allow_dir: str | None = None, insecure: bool = False,
                 log: Any = None) -> None:
        from .engine import Engine, default_root

        self.log = log or (lambda msg: print(f"chanbox daemon: {msg}", file=sys.stderr,
                                              flush=True))
        self.root = os.path.abspath(root or default_root())
        os.makedirs(self.root, mode=0o711, exist_ok=True)
        self._lock_fd = _lock_root(self.root)
        _raise_open_files_limit()  # a pidfd per running container (engine.supervisor)
        curve, allow = _curve(endpoints, key_file, allow_dir, insecure, self.log)
        # the fork server first: forking is safe only before ZeroMQ starts its threads
        self.engine = Engine(self.root)
        self.engine.prepare_spawn()
        self.engine.recover()
        from .supervisor import Supervisor

        # a monitor that is killed cannot record its container's exit: this does
        self.supervisor = Supervisor(self.engine).start()
        self.listeners: list[Any] = []
        self._stopped = threading.Event()
        try:
            for ep in endpoints:
                self.listeners.append(self._listen(ep, curve, allow))
        except BaseException:
            self.close()
            raise

    def _listen(self, endpoint: str, curve: Any, allow: list[bytes] | None) -> Any:
        import chan

        path = socket_path(endpoint)
        if path is not None:
            os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
            if os.path.exists(path):
                if answers(path):
                    raise Conflict(f"something already listens on {endpoint}; is another "
                                   "daemon running? (use --listen to pick another socket)")
                os.unlink(path)  # a stale socket of a daemon that was killed
        is_tcp = endpoint.startswith("tcp://")
        # the socket file is born 0660 (no window in which anyone may connect)
        old_umask = os.umask(0o117) if path is not None else None
        try:
            listener = chan.listen(endpoint, curve=curve if is_tcp else None,
                                   allow=allow if is_tcp else None)
        finally:
            if old_umask is not None:
                os.umask(old_umask)
        if path is not None:
            _secure_socket(path)
        self.log(f"listening on {listener.endpoint}")
        threading.Thread(target=self._accept, args=(listener,), daemon=True,
                         name=f"chanbox-accept {listener.endpoint}").start()
        return listener

    def _accept(self, listener: Any) -> None:
        import chan

        from .service import serve

        while not self._stopped.is_set():
            try:
                requests = listener.accept()
            except chan.ChannelError:
                return  # the listener was closed
            threading.Thread(target=serve, args=(self.engine, requests), daemon=True,
                             name="chanbox-client").start()

    def wait(self) -> None:
        """Block until :meth:`stop` (SIGTERM, SIGINT)."""
        self._stopped.wait()

    def stop(self) -> None:
        """Ask the daemon to stop; :meth:`wait` returns."""
        self._stopped.set()

    def close(self) -> None:
        """Stop listening and let go of the root; containers run on."""
        self._stopped.set()
        for listener in self.listeners:
            listener.close()
        self.listeners = []
        self.supervisor.close()
        self.engine.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def run(root: str | None, endpoints: list[str], **kwargs: Any) -> int:
    """``chanbox daemon``: serve until SIGTERM or SIGINT; the exit status."""
    daemon = Daemon(root, endpoints, **kwargs)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: daemon.stop())
    daemon.log(f"serving root {daemon.root} (pid {os.getpid()})")
    try:
        daemon.wait()
    finally:
        daemon.log("stopping; containers keep running")
        daemon.close()
    return 0


def _raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard one, as containerd does: the
    daemon holds a pidfd per running container besides its clients' sockets."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _lock_root(root: str) -> int:
    """Hold ``<root>/daemon.lock`` for the daemon's life; refuse a second daemon."""
    path = os.path.join(root, "daemon.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise Conflict(f"another chanbox daemon (pid {holder}) serves {root}; stop it "
                       "first, or give this one another --root") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _curve(endpoints: list[str], key_file: str | None, allow_dir: str | None,
           insecure: bool, log: Any) -> tuple[Any, list[bytes] | None]:
    tcp = [ep for ep in endpoints if ep.startswith("tcp://")]
    if not tcp:
        return None, None
    if key_file is None:
        if not insecure:
            raise InvalidArgument(
                f"{tcp[0]} would be open to anyone who reaches it: give --key (the "
                "daemon's key pair) and --allow (a directory of allowed clients' .pub "
                "files), or --insecure for plain text")
        log(f"WARNING: {', '.join(tcp)} is plain text with no authentication (--insecure)")
        return None, None
    if allow_dir is None:
        raise InvalidArgument("--key needs --allow: a directory of the .pub files of the "
                              "clients that may connect")
    from . import keys

    return keys.load_pair(key_file), keys.load_allowed(allow_dir)


def _secure_socket(path: str) -> None:
    """0660, and group ``chanbox`` when it exists (who may drive the engine)."""
    try:
        gid = grp.getgrnam(SOCKET_GROUP).gr_gid
    except KeyError:
        gid = -1
    if gid != -1:
        os.chown(path, -1, gid)
    os.chmod(path, 0o660)
