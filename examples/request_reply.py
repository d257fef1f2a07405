"""Request/reply over ZeroMQ, with the reply channel inside the request.

This is libchan's central pattern.  The client opens one channel to the server and sends
requests on it; each request carries a fresh ``chan.Sender`` (one end of a
``chan.pipe()``).  The server answers on that Sender and closes it.  There are no request
ids and no table of pending calls: the reply channel *is* the correlation.  A request
that fails closes its reply channel with an error, which the client's ``recv`` raises as
``chan.RemoteError``.

Run it as is (the server in a thread, the client in the main thread, tcp on 127.0.0.1)::

    python examples/request_reply.py
    python examples/request_reply.py --ipc      # ipc:// in a temporary directory

or in two terminals::

    python examples/request_reply.py --serve --endpoint tcp://127.0.0.1:5555
    python examples/request_reply.py --connect tcp://127.0.0.1:5555
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import threading
from typing import Any

import chan

# What the server can do: each takes the request's "arg" and returns a msgpack value.
OPS = {
    "upper": str.upper,
    "sum": sum,
    "split": str.split,
}


# -- the server ------------------------------------------------------------------------

def serve(listener: chan.Listener) -> None:
    """Accept channels until the listener is closed; one thread serves each channel."""
    while True:
        try:
            requests = listener.accept()
        except chan.ClosedChannelError:  # the listener was closed: we are done
            return
        threading.Thread(target=handle, args=(requests,), daemon=True).start()


def handle(requests: chan.Receiver) -> None:
    """Answer every request on the Sender it carries, then close that Sender."""
    try:
        for request in requests:  # ends when the client closes the channel
            with request["reply"] as reply:  # leaving the block closes it
                op = OPS.get(request["op"])
                if op is None:
                    reply.close(error=ValueError(f"unknown op {request['op']!r}"))
                else:
                    reply.send(op(request["arg"]))
    except chan.SessionLost:
        pass  # the client went away; its other channels fail the same way


# -- the client ------------------------------------------------------------------------

def call(requests: chan.Sender, op: str, arg: Any) -> Any:
    """Send one request and return its answer (raises chan.RemoteError if it failed)."""
    reply_tx, reply_rx = chan.pipe()
    requests.send({"op": op, "arg": arg, "reply": reply_tx})  # reply_tx moves to the server
    with reply_rx:
        return reply_rx.recv(timeout=10)


def client(endpoint: str) -> None:
    with chan.connect(endpoint) as session, session.open() as requests:
        for op, arg in [("upper", "hello, chan"), ("sum", [1, 2, 3, 4]),
                        ("split", "a reply channel in every request"), ("reverse", "abc")]:
            try:
                print(f"{op}({arg!r}) -> {call(requests, op, arg)!r}")
            except chan.RemoteError as exc:
                print(f"{op}({arg!r}) -> error {exc.code}: {exc.message}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Request/reply with a reply channel.")
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:0",
                        help="where the server listens (default: %(default)s, a free port)")
    parser.add_argument("--ipc", action="store_true",
                        help="listen on ipc:// in a temporary directory instead")
    parser.add_argument("--serve", action="store_true", help="run only the server")
    parser.add_argument("--connect", metavar="ENDPOINT", help="run only the client")
    args = parser.parse_args()

    if args.connect:
        client(args.connect)
        return
    # ZeroMQ leaves ipc socket files behind: put them in a directory that we remove.
    with tempfile.TemporaryDirectory(prefix="cbx-example-") as tmp:
        endpoint = f"ipc://{tmp}/cbx-rr.sock" if args.ipc else args.endpoint
        with chan.listen(endpoint) as listener:
            if args.serve:
                print(f"serving on {listener.endpoint} (Ctrl-C to stop)", flush=True)
                signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill: as Ctrl-C
                try:
                    serve(listener)
                except KeyboardInterrupt:
                    pass
            else:
                threading.Thread(target=serve, args=(listener,), daemon=True).start()
                client(listener.endpoint)


if __name__ == "__main__":
    main()
