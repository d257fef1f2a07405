"""Talking to a running container's monitor (what the engine calls).

Each call opens one connection to the monitor's abstract unix socket
(``"\\0cbx-mon-<id>"``).  Wire format, both ways: 1 byte type, 4 bytes big-endian
length, payload (JSON where structured).  A client sends one request frame
(:data:`REQ_ATTACH`, :data:`REQ_WAIT`, :data:`REQ_SIGNAL`, :data:`REQ_EXEC`,
:data:`REQ_STATUS`), then, after attach or exec with stdin, :data:`REQ_STDIN` frames
(an empty one, or a half-close, closes the process's stdin).  When no monitor
answers (the container is not running, or its monitor was killed) the calls raise
:class:`engine.errors.NotRunning`; the engine then reads ``exit.json``.
"""

from __future__ import annotations

import dataclasses
import json
import select
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from engine import errors
from engine.spec import ProcessSpec

__all__ = ["Attachment", "alive", "attach", "exec", "resize", "signal", "wait"]

# -- the wire protocol (shared with engine.monitor) ---------------------------------------------------------------
HEADER = struct.Struct(">cI")
MAX_PAYLOAD = 1 << 20  # a client frame larger than this is malformed
CANCEL_CHECK = 0.5  # seconds between a waiter's looks at whether it should give up

REQ_ATTACH = b"A"  # {"stdin": bool, "stdout": bool, "stderr": bool}
REQ_WAIT = b"W"  # {}
REQ_SIGNAL = b"K"  # {"signal": n}
REQ_EXEC = b"E"  # {"process": ProcessSpec dict, "open_stdin": bool}
REQ_STATUS = b"S"  # {}
REQ_STDIN = b"I"  # raw bytes; empty = close stdin
REQ_RESIZE = b"Z"  # {"rows": n, "cols": n}

REP_OK = b"a"  # request accepted: {} (attach, signal) or {"pid": n} (exec)
REP_STDOUT = b"1"
REP_STDERR = b"2"
REP_EXIT = b"X"  # the exit record (container) or {"exit_code": n} (exec)
REP_ERROR = b"F"  # {"code": ..., "message": ...}
REP_STATUS = b"s"  # {"running": bool, "pid": n}

def socket_name(container_id: str) -> str:
    """The abstract unix socket address of a container's monitor."""
    return "\0cbx-mon-" + container_id


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    """One wire frame."""
    return HEADER.pack(kind, len(payload)) + payload


def json_frame(kind: bytes, obj: Any) -> bytes:
    """One wire frame whose payload is ``obj`` as JSON."""
    return frame(kind, json.dumps(obj, separators=(",", ":")).encode())


def error_payload(exc: BaseException) -> dict[str, str]:
    """The ``{"code", "message"}`` that carries ``exc`` to a client."""
    code = getattr(exc, "code", None) or errors.RuntimeFailure.code
    return {"code": code, "message": str(exc)}


def _error_classes() -> dict[str, type[errors.EngineError]]:
    out: dict[str, type[errors.EngineError]] = {}
    todo = [errors.EngineError]
    while todo:
        cls = todo.pop()
        out[cls.code] = cls
        todo.extend(cls.__subclasses__())
    return out


def rebuild_error(payload: dict[str, Any]) -> errors.EngineError:
    """The engine error described by a ``{"code", "message"}`` payload."""
    cls = _error_classes().get(payload.get("code", ""), errors.EngineError)
    return cls(payload.get("message", "unknown error reported by the container monitor"))



_STREAMS = {REP_STDOUT: "stdout", REP_STDERR: "stderr"}


def _not_running(container_id: str) -> errors.NotRunning:
    return errors.NotRunning(f"container {container_id[:12]} is not running")


def _connect(container_id: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(socket_name(container_id))
    except OSError as exc:  # ECONNREFUSED: nobody listens under that name
        sock.close()
        raise _not_running(container_id) from exc
    return sock


def _request(container_id: str, kind: bytes, body: dict[str, Any]) -> socket.socket:
    sock = _connect(container_id)
    try:
        sock.sendall(frame(kind, json.dumps(body).encode()))
    except OSError as exc:
        sock.close()
        raise _not_running(container_id) from exc
    return sock


class _Reader:
    """Reads whole frames off a socket, never more than the current frame (so that a
    ``select`` on the socket says exactly whether another frame is coming)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def next(self, timeout: float | None) -> tuple[bytes, bytes] | None:
        """The next ``(type, payload)``; ``None`` at EOF; ``TimeoutError`` on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            need = HEADER.size
            if len(self.buf) >= HEADER.size:
                kind, length = HEADER.unpack_from(self.buf)
                need += length
                if len(self.buf) >= need:
                    payload = bytes(self.buf[HEADER.size:need])
                    del self.buf[:need]
                    return kind, payload
            if deadline is not None:
                left = deadline - time.monotonic()
                ready, _, _ = select.select([self.sock], [], [], max(left, 0))
                if not ready:
                    raise TimeoutError(f"no message from the container monitor "
                                       f"within {timeout} s")
            try:
                data = self.sock.recv(need - len(self.buf))
            except ConnectionResetError:
                data = b""
            if not data:
                return None
            self.buf += data


def _reply(container_id: str, sock: socket.socket, reader: _Reader,
           timeout: float | None = None) -> tuple[bytes, Any]:
    """The monitor's reply to a request: raises its error, NotRunning if it vanished."""
    got = reader.next(timeout)
    if got is None:
        raise _not_running(container_id)
    kind, payload = got
    body = json.loads(payload) if payload else {}
    if kind == REP_ERROR:
        raise rebuild_error(body)
    return kind, body


class Attachment:
    """A live connection to a container's (or an exec'd process's) stdio."""

    def __init__(self, container_id: str, sock: socket.socket, reader: _Reader,
                 *, stdin: bool, pid: int | None = None) -> None:
        self._id = container_id
        self._sock = sock
        self._reader = reader
        self._stdin = stdin
        #: the exit record once the process ended (``{"exit_code": ...}`` at least)
        self.exit: dict | None = None
        #: the PID of an exec'd process (``None`` for an attach)
        self.pid = pid

    def read(self, timeout: float | None = None) -> tuple[str, bytes] | None:
        """The next ``("stdout"|"stderr", data)``; ``None`` when the process ended (then
        :attr:`exit` is set).  Raises ``TimeoutError`` when nothing came in ``timeout``
        seconds, and :class:`NotRunning` when the monitor went away without an exit."""
        if self.exit is not None:
            return None
        got = self._reader.next(timeout)
        if got is None:
            if not alive(self._id):
                raise _not_running(self._id)
            raise errors.EngineError(
                f"the monitor of container {self._id[:12]} dropped this attachment (it "
                "fell too far behind the output); attach again, the log has everything")
        kind, payload = got
        if kind in _STREAMS:
            return _STREAMS[kind], payload
        if kind == REP_EXIT:
            self.exit = json.loads(payload)
            return None
        if kind == REP_ERROR:
            raise rebuild_error(json.loads(payload))
        raise errors.EngineError(f"unexpected frame {kind!r} from the monitor of container "
                                 f"{self._id[:12]}; this is a bug")

    def write(self, data: bytes) -> None:
        """Send ``data`` to the process's stdin (blocks while the monitor is behind)."""
        if not self._stdin:
            raise errors.InvalidArgument("this attachment has no stdin; "
                                         "attach with stdin=True (and open_stdin)")
        if data:
            self._send(frame(REQ_STDIN, bytes(data)))

    def close_stdin(self) -> None:
        """Close the process's stdin (``cat`` sees EOF); output keeps coming."""
        if self._stdin:
            self._stdin = False
            self._send(frame(REQ_STDIN))

    def resize(self, rows: int, cols: int) -> None:
        """Set the terminal size of a ``-t`` process."""
        self._send(frame(REQ_RESIZE, json.dumps({"rows": rows, "cols": cols}).encode()))

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise _not_running(self._id) from exc

    def fileno(self) -> int:
        """The socket's fd, for ``select``: readable when :meth:`read` has something."""
        return self._sock.fileno()

    def close(self) -> None:
        """Detach (the process goes on)."""
        self._sock.close()

    def __enter__(self) -> Attachment:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def attach(container_id: str, *, stdin: bool = False, stdout: bool = True,
           stderr: bool = True) -> Attachment:
    """Attach to a running container: its output from now on, its stdin if it was
    started with ``open_stdin``, and its exit record at the end."""
    sock = _request(container_id, REQ_ATTACH,
                    {"stdin": stdin, "stdout": stdout, "stderr": stderr})
    reader = _Reader(sock)
    try:
        _reply(container_id, sock, reader)
    except BaseException:
        sock.close()
        raise
    return Attachment(container_id, sock, reader, stdin=stdin)


def wait(container_id: str, timeout: float | None = None,
         cancelled: Callable[[], bool] | None = None) -> dict:
    """Block until the container exits; its exit record (``exit_code``, ``signal``,
    ``oom_killed``, ``finished_at``).  ``TimeoutError`` if it still runs after
    ``timeout`` seconds; :class:`Cancelled` once ``cancelled()`` (asked every
    :data:`CANCEL_CHECK` seconds) says to stop waiting."""
    deadline = None if timeout is None else time.monotonic() + timeout
    sock = _request(container_id, REQ_WAIT, {})
    reader = _Reader(sock)
    try:
        while True:
            step = None if deadline is None else max(0.0, deadline - time.monotonic())
            if cancelled is not None:
                step = CANCEL_CHECK if step is None else min(step, CANCEL_CHECK)
            try:
                kind, body = _reply(container_id, sock, reader, step)
                break
            except TimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                if cancelled is not None and cancelled():
                    raise errors.Cancelled(f"stopped waiting for container "
                                           f"{container_id[:12]}") from None
    finally:
        sock.close()
    if kind != REP_EXIT:
        raise errors.EngineError(f"unexpected reply {kind!r} to wait; this is a bug")
    return body


def resize(container_id: str, rows: int, cols: int) -> None:
    """Set the size of the container's terminal (a container started with ``tty``; for
    any other the monitor ignores it)."""
    sock = _request(container_id, REQ_RESIZE, {"rows": int(rows), "cols": int(cols)})
    sock.close()  # the monitor answers nothing; what was sent is read before the EOF


def signal(container_id: str, signum: int) -> None:
    """Send ``signum`` to the container's init process."""
    sock = _request(container_id, REQ_SIGNAL, {"signal": int(signum)})
    try:
        _reply(container_id, sock, _Reader(sock))
    finally:
        sock.close()


def exec(container_id: str, process: ProcessSpec, *,
         open_stdin: bool = False) -> Attachment:
    """Run ``process`` in the running container; its output, stdin and
    ``{"exit_code"}`` come through the returned attachment."""
    sock = _request(container_id, REQ_EXEC,
                    {"process": dataclasses.asdict(process), "open_stdin": open_stdin})
    reader = _Reader(sock)
    try:
        _, body = _reply(container_id, sock, reader)
    except BaseException:
        sock.close()
        raise
    return Attachment(container_id, sock, reader, stdin=open_stdin, pid=body.get("pid"))


def alive(container_id: str) -> bool:
    """Whether the container's process is running (its monitor answers and says so)."""
    try:
        sock = _request(container_id, REQ_STATUS, {})
    except errors.NotRunning:
        return False
    try:
        kind, body = _reply(container_id, sock, _Reader(sock), 10.0)
    except (errors.NotRunning, TimeoutError):
        return False
    finally:
        sock.close()
    return kind == REP_STATUS and bool(body.get("running"))
