"""Remote exec in libchan's style: a command, three byte streams and a status channel.

For each command the client sends one message::

    {"cmd": ["tr", "a-z", "A-Z"], "stdin": ByteStream, "stdout": ByteStream,
     "stderr": ByteStream, "status": Sender}

The streams are ends of ``chan.stream_pair()``s whose other ends the client keeps, and
``status`` is the sending end of a ``chan.pipe()``.  The server runs the command with
``subprocess``, copies bytes between the streams and the command's pipes (both ways at
once, a thread per direction) and sends the exit status on ``status``.  Everything rides
on one ZeroMQ connection, and every stream has flow control: a command that writes faster
than the client reads is made to wait, as on a pipe.

Run it as is for a short demo (the server in a thread, tcp on 127.0.0.1), or give it a
command: it forwards stdin, prints the command's output and exits with its status::

    python examples/remote_exec.py
    python examples/remote_exec.py --ipc                     # over ipc:// instead
    echo hello | python examples/remote_exec.py -- tr a-z A-Z

or in two terminals::

    python examples/remote_exec.py --serve --endpoint tcp://127.0.0.1:5556
    python examples/remote_exec.py --connect tcp://127.0.0.1:5556 -- ls -l /
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Any, BinaryIO

import chan


def copy(src: Any, dst: Any, close_dst: bool = True) -> None:
    """Copy bytes from src to dst until EOF, then close dst so that its reader sees EOF.

    Both are file-like: ByteStreams, a command's pipes, sys.stdout.buffer.  A side that
    goes away (a command that exits without reading its input, a stream closed by its
    peer) ends the copy quietly, as SIGPIPE would.
    """
    read = getattr(src, "read1", src.read)  # read1: what is there now, not a full buffer
    with contextlib.suppress(OSError, chan.ChannelError):
        try:
            while chunk := read(65536):
                dst.write(chunk)
                dst.flush()
        finally:
            if close_dst:
                dst.close()


def spawn(target: Any, *args: Any, **kwargs: Any) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, kwargs=kwargs, daemon=True)
    thread.start()
    return thread


# -- the server ------------------------------------------------------------------------

def serve(listener: chan.Listener) -> None:
    """Accept channels until the listener is closed; one thread serves each channel."""
    while True:
        try:
            commands = listener.accept()
        except chan.ClosedChannelError:  # the listener was closed: we are done
            return
        spawn(handle, commands)


def handle(commands: chan.Receiver) -> None:
    try:
        for request in commands:  # one at a time, until the client closes the channel
            execute(request)
    except chan.SessionLost:
        pass  # the client went away


def execute(request: dict) -> None:
    """Run one command with its stdio on the request's streams; send its exit status."""
    cmd, stdin, stdout, stderr = (request[k] for k in ("cmd", "stdin", "stdout", "stderr"))
    with request["status"] as status:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        except OSError as exc:  # as a shell says it: 127 not found, 126 cannot run
            stderr.write(f"{cmd[0]}: {exc.strerror}\n".encode())
            for stream in (stdin, stdout, stderr):
                stream.close()
            status.send(127 if isinstance(exc, FileNotFoundError) else 126)
            return
        with proc:  # closes the pipes at the end
            feeder = spawn(copy, stdin, proc.stdin)
            outputs = [spawn(copy, proc.stdout, stdout), spawn(copy, proc.stderr, stderr)]
            for output in outputs:
                output.join()
            code = proc.wait()
            stdin.close()  # the command is done with its input: this ends the feeder
            feeder.join()
        status.send(code)


# -- the client ------------------------------------------------------------------------

def run(commands: chan.Sender, cmd: list[str], stdin: BinaryIO, stdout: BinaryIO,
        stderr: BinaryIO) -> int:
    """Run ``cmd`` on the server with these local files as its stdio; its exit status."""
    in_, their_in = chan.stream_pair()  # we keep one end of each stream, the server gets
    out, their_out = chan.stream_pair()  # the other: what one end writes, the other reads
    err, their_err = chan.stream_pair()
    status_tx, status_rx = chan.pipe()
    commands.send({"cmd": cmd, "stdin": their_in, "stdout": their_out, "stderr": their_err,
                   "status": status_tx})
    spawn(copy, stdin, in_)  # not waited for: stdin may be a terminal that never ends
    outputs = [spawn(copy, out, stdout, close_dst=False),
               spawn(copy, err, stderr, close_dst=False)]
    with status_rx:
        code = status_rx.recv()
    for output in outputs:
        output.join()
    out.close()
    err.close()
    return code


def demo(endpoint: str) -> None:
    print(f"remote exec over {endpoint}")
    examples = [
        (["echo", "hello", "from", "remote", "exec"], b""),
        (["tr", "a-z", "A-Z"], b"stdin goes to the server too\n"),
        (["ls", "/nonexistent"], b""),
    ]
    with chan.connect(endpoint) as session, session.open() as commands:
        for cmd, data in examples:
            here_string = f" <<< {shlex.quote(data.decode().rstrip())}" if data else ""
            print(f"$ {shlex.join(cmd)}{here_string}", flush=True)
            code = run(commands, cmd, io.BytesIO(data), sys.stdout.buffer,
                       sys.stderr.buffer)
            print(f"[exit status {code}]", flush=True)


def run_one(endpoint: str, cmd: list[str]) -> int:
    # Our stdin is read unbuffered, straight from the file descriptor: bytes go to the
    # command as they come (and a terminal that never ends does not hold up the exit).
    stdin = open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)
    with chan.connect(endpoint) as session, session.open() as commands:
        code = run(commands, cmd, stdin, sys.stdout.buffer, sys.stderr.buffer)
    return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as in a shell


def main() -> int:
    parser = argparse.ArgumentParser(description="Remote exec over chan.")
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:0",
                        help="where the server listens (default: %(default)s, a free port)")
    parser.add_argument("--ipc", action="store_true",
                        help="listen on ipc:// in a temporary directory instead")
    parser.add_argument("--serve", action="store_true", help="run only the server")
    parser.add_argument("--connect", metavar="ENDPOINT", help="run only the client")
    parser.add_argument("cmd", nargs="*",
                        help="a command to run (after --); without one, a short demo")
    args = parser.parse_args()

    def client(endpoint: str) -> int:
        if args.cmd:
            return run_one(endpoint, args.cmd)
        demo(endpoint)
        return 0

    if args.connect:
        return client(args.connect)
    # ZeroMQ leaves ipc socket files behind: put them in a directory that we remove.
    with tempfile.TemporaryDirectory(prefix="cbx-example-") as tmp:
        endpoint = f"ipc://{tmp}/cbx-exec.sock" if args.ipc else args.endpoint
        with chan.listen(endpoint) as listener:
            if args.serve:
                print(f"serving on {listener.endpoint} (Ctrl-C to stop)", flush=True)
                signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill: as Ctrl-C
                with contextlib.suppress(KeyboardInterrupt):
                    serve(listener)
                return 0
            spawn(serve, listener)
            return client(listener.endpoint)


if __name__ == "__main__":
    sys.exit(main())
