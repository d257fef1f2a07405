"""A chan listener in its own process, for fault, fuzz and CurveZMQ tests.

    server.py ENDPOINT [--max-channels N] [--max-message BYTES] [--timeout-ms MS]
              [--window N] [--stream-window BYTES]
              [--curve-secret Z85 --curve-public Z85 --allow Z85 ...]

Prints ``READY <bound endpoint>`` once listening, then serves every channel it accepts.
Requests are dicts with a ``verb``:

- ``echo``: ``{"verb": "echo", "x": V, "ret": Sender}`` -> ``ret`` gets V, then closes.
- ``give``: ``{"verb": "give", "ret": Sender}`` -> ``ret`` gets a message holding ends
  at several depths, which this process keeps open and alive:
  ``{"rx": [Receiver, {"deep": Receiver}], "tx": {"x": [Sender]}, "stream": ByteStream}``;
  each Receiver is sent one message (``"hi"``) and the stream the bytes ``b"hello"``.
- ``count``: ``{"verb": "count", "ret": Sender}`` -> ``ret`` gets
  ``{"accepted": channels accepted so far, "errors": channels that ended in an error}``.
Anything else (and any error, such as a fuzzer's session ending with ProtocolError) is
ignored: a misbehaving peer must never stop this server.
"""

import argparse
import asyncio

import chan
import chan.aio

from _common import die_with_parent, say

KEEP: list = []  # ends handed out by "give": kept open until the process dies
STATS = {"accepted": 0, "errors": 0}


async def give(ret) -> None:
    s1, r1 = chan.aio.pipe()
    s2, r2 = chan.aio.pipe()
    s3, r3 = chan.aio.pipe()
    mine, theirs = chan.aio.stream_pair()
    await ret.send({"rx": [r1, {"deep": r2}], "tx": {"x": [s3]}, "stream": theirs})
    await s1.send("hi")
    await s2.send("hi")
    await mine.write(b"hello")
    KEEP.extend([s1, s2, r3, mine, ret])


async def serve_channel(rx) -> None:
    try:
        async for msg in rx:
            if not isinstance(msg, dict):
                continue
            verb, ret = msg.get("verb"), msg.get("ret")
            if not isinstance(ret, chan.aio.Sender):
                continue
            if verb == "echo":
                await ret.send(msg.get("x"))
                await ret.close()
            elif verb == "give":
                await give(ret)
            elif verb == "count":
                await ret.send(dict(STATS))
                await ret.close()
    except chan.ChannelError:
        STATS["errors"] += 1


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("endpoint")
    p.add_argument("--max-channels", type=int)
    p.add_argument("--max-message", type=int)
    p.add_argument("--timeout-ms", type=int)
    p.add_argument("--window", type=int)
    p.add_argument("--stream-window", type=int)
    p.add_argument("--curve-secret")
    p.add_argument("--curve-public")
    p.add_argument("--allow", action="append", default=[])
    a = p.parse_args()
    kw = {}
    if a.max_channels:
        kw["max_channels"] = a.max_channels
    if a.max_message:
        kw["max_message"] = a.max_message
    if a.timeout_ms:
        kw["timeout_ms"] = a.timeout_ms
    if a.window:
        kw["window"] = a.window
    if a.stream_window:
        kw["stream_window"] = a.stream_window
    curve = None
    if a.curve_secret:
        curve = chan.CurveKeys(a.curve_public.encode(), a.curve_secret.encode())
    listener = await chan.aio.listen(a.endpoint, settings=chan.Settings(**kw), curve=curve,
                                     allow=[k.encode() for k in a.allow])
    say("READY", listener.endpoint)
    tasks = set()
    while True:
        rx = await listener.accept()
        STATS["accepted"] += 1
        task = asyncio.ensure_future(serve_channel(rx))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        # accept() does not suspend while channels are queued: let the served ones run
        # (a flood of garbage channels must not starve the well-behaved clients).
        await asyncio.sleep(0)


if __name__ == "__main__":
    die_with_parent()
    asyncio.run(main())
