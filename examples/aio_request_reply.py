"""Request/reply with a reply channel inside the request, in asyncio.

The twin of ``request_reply.py`` with ``chan.aio``: the same names, awaited.  The server
is a task that accepts channels and serves each in a task of its own; the client sends
requests that each carry a fresh reply ``Sender``, here several at once with
``asyncio.gather`` (the replies find their way back by their own channels, whatever
order the server answers in).

    python examples/aio_request_reply.py
    python examples/aio_request_reply.py --ipc      # ipc:// in a temporary directory
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from typing import Any

import chan.aio

# What the server can do: each takes the request's "arg" and returns a msgpack value.
OPS = {
    "upper": str.upper,
    "sum": sum,
    "split": str.split,
}


async def serve(listener: chan.aio.Listener) -> None:
    """Accept channels until cancelled; one task serves each channel."""
    async with asyncio.TaskGroup() as tasks:
        while True:
            tasks.create_task(handle(await listener.accept()))


async def handle(requests: chan.aio.Receiver) -> None:
    """Answer every request on the Sender it carries, then close that Sender."""
    try:
        async for request in requests:  # ends when the client closes the channel
            async with request["reply"] as reply:  # leaving the block closes it
                op = OPS.get(request["op"])
                if op is None:
                    await reply.close(error=ValueError(f"unknown op {request['op']!r}"))
                else:
                    await reply.send(op(request["arg"]))
    except chan.aio.SessionLost:
        pass  # the client went away


async def call(requests: chan.aio.Sender, op: str, arg: Any) -> Any:
    """Send one request and return its answer (raises chan.aio.RemoteError if it failed)."""
    reply_tx, reply_rx = chan.aio.pipe()
    await requests.send({"op": op, "arg": arg, "reply": reply_tx})  # reply_tx moves away
    async with reply_rx:
        return await reply_rx.recv(timeout=10)


async def client(endpoint: str) -> None:
    calls = [("upper", "hello, asyncio"), ("sum", [1, 2, 3, 4]),
             ("split", "one task per channel"), ("reverse", "abc")]
    async with await chan.aio.connect(endpoint) as session, session.open() as requests:
        results = await asyncio.gather(*(call(requests, op, arg) for op, arg in calls),
                                       return_exceptions=True)
    for (op, arg), result in zip(calls, results):
        if isinstance(result, chan.aio.RemoteError):
            print(f"{op}({arg!r}) -> error {result.code}: {result.message}")
        else:
            print(f"{op}({arg!r}) -> {result!r}")


async def main() -> None:
    parser = argparse.ArgumentParser(description="Request/reply with chan.aio.")
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:0",
                        help="where the server listens (default: %(default)s, a free port)")
    parser.add_argument("--ipc", action="store_true",
                        help="listen on ipc:// in a temporary directory instead")
    args = parser.parse_args()

    # ZeroMQ leaves ipc socket files behind: put them in a directory that we remove.
    with tempfile.TemporaryDirectory(prefix="cbx-example-") as tmp:
        endpoint = f"ipc://{tmp}/cbx-rr.sock" if args.ipc else args.endpoint
        async with await chan.aio.listen(endpoint) as listener:
            server = asyncio.create_task(serve(listener))
            try:
                await client(listener.endpoint)
            finally:
                server.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await server


if __name__ == "__main__":
    asyncio.run(main())
