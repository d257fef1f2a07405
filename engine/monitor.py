"""The per-container monitor: the process that holds a container's stdio, writes its log
and records its exit status, so the container outlives the engine process.

A monitor is forked by :class:`engine.forkserver.ForkServer` (never a new interpreter)
and calls :func:`run`.  It makes the container's stdio, starts the container through the
runtime, then runs one single-threaded ``selectors`` loop until the container's init
exits: output goes to ``container.log`` (Docker's json-file lines) and to attached
clients; clients talk to it over the abstract unix socket ``"\\0cbx-mon-<id>"``.

The wire format of the client socket is defined in :mod:`engine.monitor_client`.
Anything malformed from a client drops that client and nothing else.
"""

from __future__ import annotations

import errno
import fcntl
import importlib
import json
import os
import selectors
import signal
import socket
import struct
import termios
import time
import traceback
from typing import Any

from engine import errors
from engine.events import Journal
from engine.fsutil import read_json, write_json
from engine.monitor_client import (HEADER, MAX_PAYLOAD, REP_ERROR, REP_EXIT, REP_OK,
                                   REP_STATUS, REP_STDERR, REP_STDOUT, REQ_ATTACH, REQ_EXEC,
                                   REQ_RESIZE, REQ_SIGNAL, REQ_STATUS, REQ_STDIN, REQ_WAIT,
                                   error_payload, frame, json_frame, socket_name)
from engine.spec import ContainerSpec, ProcessSpec

try:  # written by the runtime engineer; the monitor must work before it lands
    from engine.cgroups import oom_killed as _oom_killed
except ImportError:  # pragma: no cover - depends on what has landed
    _oom_killed = None

STREAM_FRAME = {"stdout": REP_STDOUT, "stderr": REP_STDERR}

#: unsent bytes a client may have queued: then a slow attacher of the container is
#: dropped (the log has everything), and an exec'd process is not read from until its
#: client has taken half of them (its output exists nowhere else: it must wait)
CLIENT_BUFFER_LIMIT = 4 << 20  # (1 MiB let a fast reader on a busy machine fall behind)
#: how long the monitor keeps flushing to clients after the container exited
EXIT_FLUSH_SECONDS = 2.0
#: Docker splits log lines longer than this into several records
LOG_LINE_MAX = 16 * 1024
_READ_SIZE = 65536


def log_time(ns: int) -> str:
    """``ns`` since the epoch as Docker's log timestamp (RFC 3339, nanoseconds, UTC)."""
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + ".%09dZ" % frac


def exit_status(status: int) -> tuple[int, int | None]:
    """``(exit_code, signal)`` from a wait status; a signal death is ``128 + signal``."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return 128 + sig, sig
    return os.waitstatus_to_exitcode(status), None


# -- stdio ------------------------------------------------------------------------------
class _Stdio:
    """The monitor's ends of one process's stdio, and the child's ends until it started."""

    def __init__(self, *, terminal: bool, open_stdin: bool, inside: bool = False) -> None:
        self.child: list[int] = []
        self.stdin: int | None = None  # we write the process's input here
        self.outputs: dict[str, int] = {}  # stream name -> fd we read
        self.master: int | None = None
        self.open_stdin = open_stdin
        # a terminal the starter makes inside the container: its master comes back here
        self.console: socket.socket | None = None
        if terminal and inside:
            self.console, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self.child = [theirs.detach()]
            return
        if terminal:
            master, slave = os.openpty()
            os.set_inheritable(master, False)
            self.master = master
            self.child = [slave, slave, slave]
            self.outputs["stdout"] = master
            if open_stdin:
                self.stdin = master
            return
        if open_stdin:
            r, w = os.pipe2(os.O_CLOEXEC)
            self.stdin = w
            self.child.append(r)
        else:
            self.child.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        for name in ("stdout", "stderr"):
            r, w = os.pipe2(os.O_CLOEXEC)
            self.outputs[name] = r
            self.child.append(w)

    def starter_args(self) -> tuple[list[int], dict[str, int]]:
        """The child's ends as a starter takes them: (stdin, stdout, stderr), kwargs."""
        if self.console is not None:
            return [-1, -1, -1], {"console": self.child[0]}
        return self.child, {}

    def close_child(self) -> None:
        """Close the child's ends (once it has them); take the master of a terminal
        made inside the container."""
        for fd in set(self.child):
            os.close(fd)
        self.child = []
        if self.console is not None:
            try:
                _, fds, _, _ = socket.recv_fds(self.console, 16, 1)
            finally:
                self.console.close()
                self.console = None
            if len(fds) != 1:
                raise errors.RuntimeFailure("the container's process did not hand over its "
                                            "terminal; this is a bug")
            self.master = fds[0]
            os.set_inheritable(self.master, False)
            self.outputs["stdout"] = self.master
            if self.open_stdin:
                self.stdin = self.master

    def close_all(self) -> None:
        """Close every end (the start failed)."""
        if self.console is not None:
            self.console.close()
            self.console = None
        self.close_child()
        for fd in {self.stdin, *self.outputs.values()}:
            if fd is not None:
                os.close(fd)
        self.stdin = None
        self.outputs = {}


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the peer closed its whole end (POLLHUP), not just its writing half."""
    import select

    poller = select.poll()
    poller.register(sock, select.POLLHUP)
    return any(ev & select.POLLHUP for _, ev in poller.poll(0))


# -- clients ----------------------------------------------------------------------------
class _Client:
    """One connection to the monitor."""

    __slots__ = ("sock", "fd", "inbuf", "outbuf", "role", "streams", "stdin", "proc",
                 "reading", "closed")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.role: str | None = None  # "attach", "wait", "exec", or None before a request
        self.streams: tuple[str, ...] = ()
        self.stdin = False  # its REQ_STDIN frames feed the process
        self.proc: _Proc | None = None  # the process it talks to
        self.reading = True
        self.closed = False


class _Proc:
    """A process the monitor is the parent of: the container's init or an exec'd one."""

    def __init__(self, pid: int, stdio: _Stdio, *, is_init: bool) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        os.set_inheritable(self.pidfd, False)
        self.stdio = stdio
        self.is_init = is_init
        self.stdin_buf = bytearray()
        self.stdin_eof = False
        self.partial = {name: bytearray() for name in stdio.outputs}
        self.exited = False
        self.paused = False  # its outputs are not read: its client is behind


class Monitor:
    """The monitor's state and its loop; one per container, in the monitor process."""

    def __init__(self, spec: ContainerSpec, container_dir: str, starter: Any,
                 listener: socket.socket) -> None:
        self.spec = spec
        self.dir = container_dir
        self.starter = starter
        self.listener = listener
        self.sel = selectors.DefaultSelector()
        # engine.runtime makes a -t process's terminal in the container's own devpts
        self._console_inside = bool(getattr(starter, "CONSOLE_INSIDE", False))
        self.clients: dict[int, _Client] = {}
        self.log_fd = os.open(os.path.join(container_dir, "container.log"),
                              os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self.init: _Proc | None = None
        self.procs: dict[int, _Proc] = {}  # pidfd -> process
        self.exit_record: dict[str, Any] | None = None
        self.proxy: Any = None  # engine.network.proxy.Proxy when ports are published
        self.lease_fd = -1  # our shared lock on the container's address lease

    # -- starting ------------------------------------------------------------------
    def start(self, open_stdin: bool) -> _Proc:
        """Make the container's stdio and start it; raises the runtime's error."""
        stdio = _Stdio(terminal=self.spec.process.terminal, open_stdin=open_stdin,
                       inside=self._console_inside)
        try:
            fds, kw = stdio.starter_args()
            pid = self.starter.start(self.spec, *fds, **kw)
        except BaseException:
            stdio.close_all()
            raise
        try:
            stdio.close_child()
        except BaseException:
            os.kill(pid, signal.SIGKILL)  # a terminal nobody can read: do not run on
            stdio.close_all()
            raise
        self.init = self._adopt(pid, stdio, is_init=True)
        return self.init

    def _adopt(self, pid: int, stdio: _Stdio, *, is_init: bool) -> _Proc:
        proc = _Proc(pid, stdio, is_init=is_init)
        self.procs[proc.pidfd] = proc
        self.sel.register(proc.pidfd, selectors.EVENT_READ, ("exit", proc))
        for name, fd in stdio.outputs.items():
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ, ("out", proc, name))
        if stdio.stdin is not None and stdio.stdin != stdio.master:
            os.set_blocking(stdio.stdin, False)
        return proc

    # -- the loop --------------------------------------------------------------------
    def serve(self) -> None:
        """Run until the container's init exited and clients got the exit record."""
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, ("accept",))
        deadline = None
        while True:
            if self.exit_record is not None:
                if deadline is None:
                    deadline = time.monotonic() + EXIT_FLUSH_SECONDS
                if not any(c.outbuf for c in self.clients.values()):
                    break
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
            else:
                timeout = None
            for key, events in self.sel.select(timeout):
                data = key.data
                kind = data[0]
                if kind == "out":
                    self._on_output(data[1], data[2])
                elif kind == "client":
                    client = data[1]
                    if events & selectors.EVENT_WRITE and not client.closed:
                        self._flush(client)
                    if events & selectors.EVENT_READ and not client.closed:
                        self._on_client_input(client)
                elif kind == "stdin":
                    self._feed_stdin(data[1])
                elif kind == "exit":
                    self._on_exit(data[1])
                elif kind == "accept":
                    self._accept()
                elif kind == "proxy":
                    data[1](key, events)
        for client in list(self.clients.values()):
            self._drop(client)

    # -- output ----------------------------------------------------------------------
    def _on_output(self, proc: _Proc, name: str) -> None:
        fd = proc.stdio.outputs.get(name)
        if fd is None:  # closed by an earlier event of the same select()
            return
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: the pty's slave side closed
                raise
            data = b""
        if data:
            self._deliver(proc, name, data)
        else:
            self._close_output(proc, name)

    def _deliver(self, proc: _Proc, name: str, data: bytes) -> None:
        if proc.is_init:
            self._log(proc, name, data)
        out = frame(STREAM_FRAME[name], data)
        for client in list(self.clients.values()):
            if client.proc is proc and name in client.streams:
                self._send(client, out)
                if not proc.is_init and len(client.outbuf) > CLIENT_BUFFER_LIMIT:
                    self._pause_output(proc)

    def _pause_output(self, proc: _Proc) -> None:
        """Stop reading an exec'd process's output (it blocks writing) until its client
        catches up: :meth:`_flush` resumes it."""
        if proc.paused or proc.exited:
            return
        proc.paused = True
        for fd in proc.stdio.outputs.values():
            self.sel.unregister(fd)

    def _resume_output(self, proc: _Proc) -> None:
        if not proc.paused:
            return
        proc.paused = False
        for name, fd in proc.stdio.outputs.items():
            self.sel.register(fd, selectors.EVENT_READ, ("out", proc, name))

    def _close_output(self, proc: _Proc, name: str) -> None:
        fd = proc.stdio.outputs.pop(name)
        if not proc.paused:
            self.sel.unregister(fd)
        if fd != proc.stdio.master:
            os.close(fd)
        if proc.is_init and proc.partial[name]:
            self._log_records(name, [bytes(proc.partial[name])])
            proc.partial[name].clear()

    def _log(self, proc: _Proc, name: str, data: bytes) -> None:
        # Docker's json-file: one record per line (newline kept); a line without its
        # newline waits for the rest, unless it grew past LOG_LINE_MAX or the fd ended
        partial = proc.partial[name]
        lines = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            if partial:
                partial += data[start:nl + 1]
                lines.append(bytes(partial))
                partial.clear()
            else:
                lines.append(data[start:nl + 1])
            start = nl + 1
        if start < len(data):
            partial += data[start:]
            if len(partial) >= LOG_LINE_MAX:
                lines.append(bytes(partial))
                partial.clear()
        if lines:
            self._log_records(name, lines)

    def _log_records(self, name: str, lines: list[bytes]) -> None:
        tail = ',"stream":"%s","time":"%s"}\n' % (name, log_time(time.time_ns()))
        # surrogateescape, not replace: bytes that are not UTF-8 (a tar piped out of
        # `run`, a character split between two reads) come back exactly from the
        # \udcXX escapes (readers encode with surrogateescape); the file stays ASCII
        text = "".join('{"log":' + json.dumps(line.decode("utf-8", "surrogateescape")) + tail
                       for line in lines)
        os.write(self.log_fd, text.encode())

    # -- exits -----------------------------------------------------------------------
    def _on_exit(self, proc: _Proc) -> None:
        if proc.exited:
            return
        _, status = os.waitpid(proc.pid, 0)
        proc.exited = True
        self.sel.unregister(proc.pidfd)
        os.close(proc.pidfd)
        del self.procs[proc.pidfd]
        # what the process wrote before exiting is in the pipes already: drain it
        for name in list(proc.stdio.outputs):
            fd = proc.stdio.outputs[name]
            while True:
                try:
                    data = os.read(fd, _READ_SIZE)
                except (BlockingIOError, OSError):
                    # a pipe still held open by a leftover grandchild (plain starter)
                    # or a pty whose slave is gone: what was written is read
                    data = None
                if not data:
                    break
                self._deliver(proc, name, data)
            self._close_output(proc, name)
        self._close_stdin(proc)
        code, sig = exit_status(status)
        if proc.is_init:
            self._leave_network()
            self.exit_record = {
                "exit_code": code,
                "signal": sig,
                "oom_killed": self._oom_killed(),
                "finished_at": time.time_ns(),
            }
            write_json(os.path.join(self.dir, "exit.json"), self.exit_record, sync=False)
            self._emit_exit_events(self.exit_record)  # before waiters learn of the exit
            record = json_frame(REP_EXIT, self.exit_record)
            for client in list(self.clients.values()):
                if client.role in ("attach", "wait"):
                    client.proc = None
                    self._finish(client, record)
        else:
            record = json_frame(REP_EXIT, {"exit_code": code})
            for client in list(self.clients.values()):
                if client.proc is proc:
                    client.proc = None
                    self._finish(client, record)

    # -- network -----------------------------------------------------------------------
    def join_network(self) -> list[dict[str, Any]]:
        """Hold the address lease and bind the published ports (before the start, so a
        taken host port refuses it); the bindings with their real host ports."""
        net = self.spec.net
        if not net:
            return []
        from engine.network import ipam

        self.lease_fd = ipam.hold(net["lease"])
        if not net.get("ports"):
            return []
        from engine.network.proxy import Proxy

        self.proxy = Proxy(self.sel, net["ip"])
        return self.proxy.bind(net["ports"])

    def _leave_network(self) -> None:
        """The init exited: close the published ports, give the address back."""
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None
        if self.lease_fd >= 0:
            try:
                os.unlink(self.spec.net["lease"])
            except FileNotFoundError:
                pass
            os.close(self.lease_fd)
            self.lease_fd = -1

    def _emit_exit_events(self, record: dict[str, Any]) -> None:
        """Journal the container's ``oom`` (when OOM-killed) and ``die`` events.

        Only the monitor sees a container exit by itself.  The exit is recorded already;
        a failure here leaves a line in ``monitor.err`` and the monitor goes on.
        """
        containers = os.path.dirname(os.path.abspath(self.dir))
        if os.path.basename(containers) != "containers":
            return  # not in an engine root (<root>/containers/<id>): no journal to write
        try:
            config = read_json(os.path.join(self.dir, "config.json"), {})
            cfg = config.get("Config") or {}
            name, image = config.get("Name", ""), cfg.get("Image", "")
            attrs = {**(cfg.get("Labels") or {}), "name": name, "image": image}
            journal = Journal(os.path.dirname(containers))
            if record["oom_killed"]:
                journal.emit("container", "oom", self.spec.id, name=name, image=image,
                             attributes=attrs)
            journal.emit("container", "die", self.spec.id, name=name, image=image,
                         attributes={"exitCode": str(record["exit_code"]), **attrs})
        except Exception as exc:  # noqa: BLE001 - events must never cost the monitor
            try:
                with open(os.path.join(self.dir, "monitor.err"), "a") as f:
                    f.write(f"journaling the exit events failed: {exc!r}\n")
            except OSError:
                pass

    def _oom_killed(self) -> bool:
        if _oom_killed is None:
            return False
        try:
            return bool(_oom_killed(self.spec.cgroups))
        except Exception:  # noqa: BLE001 - exit.json must be written whatever it raises
            return False

    # -- stdin -----------------------------------------------------------------------
    def _write_stdin(self, proc: _Proc, data: bytes) -> None:
        if proc.stdio.stdin is None or proc.stdin_eof:
            return
        if not data:
            proc.stdin_eof = True
            if not proc.stdin_buf:
                self._close_stdin(proc)
            return
        if proc.stdin_buf:
            proc.stdin_buf += data
        else:
            try:
                n = os.write(proc.stdio.stdin, data)
            except BlockingIOError:
                n = 0
            except OSError:  # EPIPE: the process closed its stdin
                self._close_stdin(proc)
                return
            if n < len(data):
                proc.stdin_buf += data[n:]
                self.sel.register(proc.stdio.stdin, selectors.EVENT_WRITE, ("stdin", proc))
        if len(proc.stdin_buf) > CLIENT_BUFFER_LIMIT:
            # the process does not read its stdin: stop reading its writers until it does
            self._set_client_reading(proc, False)

    def _feed_stdin(self, proc: _Proc) -> None:
        if proc.stdio.stdin is None:  # closed by an earlier event of the same select()
            return
        try:
            n = os.write(proc.stdio.stdin, proc.stdin_buf)
        except BlockingIOError:
            return
        except OSError:
            self._close_stdin(proc)
            return
        del proc.stdin_buf[:n]
        if not proc.stdin_buf:
            self.sel.unregister(proc.stdio.stdin)
            self._set_client_reading(proc, True)
            if proc.stdin_eof:
                self._close_stdin(proc)

    def _close_stdin(self, proc: _Proc) -> None:
        fd = proc.stdio.stdin
        if fd is None:
            return
        proc.stdio.stdin = None
        proc.stdin_buf.clear()
        proc.stdin_eof = True
        if fd == proc.stdio.master:
            if not proc.exited:
                try:
                    os.write(fd, b"\x04")  # a terminal has no half-close: send EOF (^D)
                except OSError:
                    pass
            return
        try:
            self.sel.unregister(fd)
        except KeyError:
            pass
        os.close(fd)
        self._set_client_reading(proc, True)

    def _set_client_reading(self, proc: _Proc, reading: bool) -> None:
        for client in list(self.clients.values()):
            if client.proc is proc and client.stdin and client.reading != reading:
                client.reading = reading
                self._update_events(client)

    # -- clients ---------------------------------------------------------------------
    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        _, uid, _ = struct.unpack("3i", creds)
        if uid not in (0, os.getuid()):
            sock.close()
            return
        sock.setblocking(False)
        client = _Client(sock)
        self.clients[client.fd] = client
        self.sel.register(sock, selectors.EVENT_READ, ("client", client))

    def _update_events(self, client: _Client) -> None:
        if client.closed:
            return
        events = (selectors.EVENT_READ if client.reading else 0) | (
            selectors.EVENT_WRITE if client.outbuf else 0)
        try:
            key = self.sel.get_key(client.sock)
        except KeyError:
            key = None
        if not events:
            # a selector cannot hold a file with no events: park it unregistered
            if key is not None:
                self.sel.unregister(client.sock)
        elif key is None:
            self.sel.register(client.sock, events, ("client", client))
        elif key.events != events:
            self.sel.modify(client.sock, events, ("client", client))

    def _send(self, client: _Client, data: bytes) -> None:
        if client.closed:
            return
        if not client.outbuf:
            try:
                n = client.sock.send(data)
            except BlockingIOError:
                n = 0
            except OSError:
                self._drop(client)
                return
            if n == len(data):
                return
            client.outbuf += data[n:]
            self._update_events(client)
            return
        client.outbuf += data
        if len(client.outbuf) > CLIENT_BUFFER_LIMIT and client.role == "attach":
            self._drop(client)  # too slow: the log still has everything

    def _flush(self, client: _Client) -> None:
        try:
            n = client.sock.send(client.outbuf)
        except BlockingIOError:
            return
        except OSError:
            self._drop(client)
            return
        del client.outbuf[:n]
        proc = client.proc
        if proc is not None and proc.paused and len(client.outbuf) <= CLIENT_BUFFER_LIMIT // 2:
            self._resume_output(proc)
        if not client.outbuf:
            if client.role == "done":
                self._drop(client)
                return
            self._update_events(client)

    def _drop(self, client: _Client) -> None:
        if client.closed:
            return
        client.closed = True
        try:
            self.sel.unregister(client.sock)
        except KeyError:
            pass
        del self.clients[client.fd]
        client.sock.close()
        if client.proc is not None:
            self._resume_output(client.proc)  # nobody waits for it any more: read on

    def _on_client_input(self, client: _Client) -> None:
        try:
            data = client.sock.recv(_READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self._drop(client)
            return
        if not data:
            self._on_client_eof(client)
            return
        client.inbuf += data
        while not client.closed and len(client.inbuf) >= HEADER.size:
            kind, length = HEADER.unpack_from(client.inbuf)
            if length > MAX_PAYLOAD:
                self._drop(client)
                return
            if len(client.inbuf) < HEADER.size + length:
                return
            payload = bytes(client.inbuf[HEADER.size:HEADER.size + length])
            del client.inbuf[:HEADER.size + length]
            try:
                self._on_frame(client, kind, payload)
            except (ValueError, TypeError, KeyError):  # malformed request: drop this client
                self._drop(client)
                return

    def _on_client_eof(self, client: _Client) -> None:
        proc = client.proc
        if client.stdin and proc is not None and (
                proc.stdio.master is None or not _closed_by_peer(client.sock)):
            # a half-close closes the process's stdin; output still flows to the client.
            # So does any close of a pipe's client (docker's StdinOnce: `run -i` killed,
            # the container reads EOF).  A terminal's client that closed for good
            # (detached with ^P^Q, or died) leaves it open for the next attach.
            self._write_stdin(proc, b"")
            client.reading = False
            client.stdin = False
            self._update_events(client)
            return
        self._drop(client)

    def _on_frame(self, client: _Client, kind: bytes, payload: bytes) -> None:
        if kind == REQ_STDIN:
            if not client.stdin and client.role not in ("attach", "exec", "done"):
                raise ValueError("stdin frame before an attach or exec request")
            if client.stdin and client.proc is not None:
                self._write_stdin(client.proc, payload)
            return
        if kind == REQ_RESIZE:
            req = json.loads(payload)
            proc = client.proc or self.init
            if proc is not None and proc.stdio.master is not None:
                size = struct.pack("HHHH", int(req["rows"]), int(req["cols"]), 0, 0)
                fcntl.ioctl(proc.stdio.master, termios.TIOCSWINSZ, size)
            return
        if client.role is not None:
            raise ValueError("a second request on one connection")
        req = json.loads(payload) if payload else {}
        if not isinstance(req, dict):
            raise ValueError("request payload is not an object")
        if kind == REQ_ATTACH:
            self._req_attach(client, req)
        elif kind == REQ_WAIT:
            client.role = "wait"
            if self.exit_record is not None:
                self._finish(client, json_frame(REP_EXIT, self.exit_record))
        elif kind == REQ_SIGNAL:
            self._req_signal(client, int(req["signal"]))
        elif kind == REQ_EXEC:
            self._req_exec(client, req)
        elif kind == REQ_STATUS:
            running = self.exit_record is None
            self._finish(client, json_frame(REP_STATUS, {
                "running": running, "pid": self.init.pid if self.init else None}))
        else:
            raise ValueError(f"unknown request type {kind!r}")

    def _finish(self, client: _Client, data: bytes) -> None:
        """Send a last frame, then close the connection once it is out."""
        client.role = "done"
        client.reading = False
        self._send(client, data)
        if not client.closed and not client.outbuf:
            self._drop(client)
        else:
            self._update_events(client)

    def _req_attach(self, client: _Client, req: dict[str, Any]) -> None:
        client.role = "attach"
        client.streams = tuple(s for s in ("stdout", "stderr") if req.get(s))
        if self.exit_record is not None:
            self._send(client, json_frame(REP_OK, {}))
            self._finish(client, json_frame(REP_EXIT, self.exit_record))
            return
        client.proc = self.init
        client.stdin = bool(req.get("stdin")) and self.init is not None \
            and self.init.stdio.stdin is not None
        self._send(client, json_frame(REP_OK, {}))

    def _req_signal(self, client: _Client, signum: int) -> None:
        if self.exit_record is not None or self.init is None:
            exc: errors.EngineError = errors.NotRunning(
                f"container {self.spec.id[:12]} is not running")
            self._finish(client, json_frame(REP_ERROR, error_payload(exc)))
            return
        try:
            os.kill(self.init.pid, signum)
        except (ValueError, OSError) as err:
            exc = errors.InvalidArgument(
                f"cannot send signal {signum} to container {self.spec.id[:12]}: {err}; "
                "give a signal number between 1 and 64")
            self._finish(client, json_frame(REP_ERROR, error_payload(exc)))
            return
        self._finish(client, json_frame(REP_OK, {}))

    def _req_exec(self, client: _Client, req: dict[str, Any]) -> None:
        client.role = "exec"
        if self.exit_record is not None or self.init is None:
            exc: BaseException = errors.NotRunning(
                f"container {self.spec.id[:12]} is not running")
            self._finish(client, json_frame(REP_ERROR, error_payload(exc)))
            return
        process = ProcessSpec(**req["process"])
        open_stdin = bool(req.get("open_stdin"))
        stdio = _Stdio(terminal=process.terminal, open_stdin=open_stdin,
                       inside=self._console_inside)
        pid = 0
        try:
            fds, kw = stdio.starter_args()
            pid = self.starter.exec_in(self.init.pid, self.spec, process, *fds, **kw)
            stdio.close_child()
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the client
            if pid:
                os.kill(pid, signal.SIGKILL)  # its terminal could not be taken
            stdio.close_all()
            if not isinstance(exc, errors.EngineError):
                exc = errors.RuntimeFailure(f"exec in container {self.spec.id[:12]} "
                                            f"failed: {exc}")
            self._finish(client, json_frame(REP_ERROR, error_payload(exc)))
            return
        proc = self._adopt(pid, stdio, is_init=False)
        client.proc = proc
        client.streams = tuple(stdio.outputs)
        client.stdin = stdio.stdin is not None
        self._send(client, json_frame(REP_OK, {"pid": pid}))


# -- warming up in the fork server ----------------------------------------------------------
def warm_up(rounds: int = 10) -> None:
    """Run the monitor's own steps (stdio, selector, listener, log and state files) a few
    times in the calling process, the fork server before it freezes its heap.

    Python 3.11 rewrites a function's bytecode and fills the type caches the first
    times code runs: done here once, those pages stay shared by every monitor forked
    afterwards instead of being copied into each one."""
    import tempfile

    from engine import fsutil

    tmp = tempfile.mkdtemp(prefix="cbx-monwarm-")
    try:
        for i in range(rounds):
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            listener.bind(socket_name(f"warmup-{os.getpid()}-{i}"))
            listener.listen(64)
            mon = Monitor(None, tmp, None, listener)  # type: ignore[arg-type]
            stdio = _Stdio(terminal=False, open_stdin=False)
            for name, fd in stdio.outputs.items():
                os.set_blocking(fd, False)
                mon.sel.register(fd, selectors.EVENT_READ, ("out", None, name))
            mon.sel.register(listener, selectors.EVENT_READ, ("accept",))
            mon.sel.select(0)
            for fd in stdio.outputs.values():
                mon.sel.unregister(fd)
            mon.sel.close()
            stdio.close_all()
            os.close(mon.log_fd)
            listener.close()
            record = {"exit_code": 0, "signal": None, "oom_killed": False,
                      "finished_at": time.time_ns()}
            log_time(record["finished_at"])
            exit_status(0)
            json.dumps(record).encode()
            write_json(os.path.join(tmp, "exit.json"), record, sync=False)
            read_json(os.path.join(tmp, "exit.json"), {})
    finally:
        fsutil.remove_tree(tmp)


# -- the monitor process ------------------------------------------------------------------
def run(spec: ContainerSpec, container_dir: str, *, open_stdin: bool,
        on_exit: tuple[str, list] | None, report_fd: int, starter: Any) -> None:
    """The monitor process's whole life (called right after fork; never returns).

    Reports ``{"pid", "monitor_pid", "started_at"}`` or ``{"code", "message"}`` as JSON
    on ``report_fd`` and closes it, then serves until the container exits.
    """
    status = 1
    try:
        os.setsid()
        _reset_process_state(report_fd)
        status = _run(spec, container_dir, open_stdin, on_exit, report_fd, starter)
    except BaseException:  # noqa: BLE001 - last resort: leave a trace, never unwind
        try:
            with open(os.path.join(container_dir, "monitor.err"), "a") as f:
                traceback.print_exc(file=f)
        except OSError:
            pass
    finally:
        os._exit(status)


def _reset_process_state(report_fd: int) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the fork server ignores it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # hold none of the engine's stdio (a `| cat` must not wait for a monitor)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd, inheritable=False)
    os.close(null)
    os.set_inheritable(report_fd, False)


def _run(spec: ContainerSpec, container_dir: str, open_stdin: bool,
         on_exit: tuple[str, list] | None, report_fd: int, starter: Any) -> int:
    def report(obj: dict[str, Any]) -> None:
        os.write(report_fd, json.dumps(obj).encode())
        os.close(report_fd)

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        listener.bind(socket_name(spec.id))
    except OSError as exc:
        err = errors.Conflict(f"container {spec.id[:12]} already has a monitor ({exc}); "
                              "stop it before starting the container again")
        report(error_payload(err))
        return 0
    listener.listen(64)
    monitor = Monitor(spec, container_dir, starter, listener)
    try:
        if starter is None:
            raise errors.RuntimeFailure("no container runtime is installed "
                                        "(engine.runtime is missing)")
        ports = monitor.join_network()
        init = monitor.start(open_stdin)
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the engine
        monitor._leave_network()
        if not isinstance(exc, errors.EngineError):
            exc = errors.RuntimeFailure(f"starting container {spec.id[:12]} failed: {exc}")
        report(error_payload(exc))
        return 0
    started = {"monitor_pid": os.getpid(), "pid": init.pid, "started_at": time.time_ns()}
    if ports:
        started["ports"] = ports
    write_json(os.path.join(container_dir, "monitor.json"), started, sync=False)
    report(started)
    monitor.serve()
    listener.close()
    if on_exit is not None:
        target, args = on_exit
        module, _, func = target.partition(":")
        getattr(importlib.import_module(module), func)(*args)
    return 0
