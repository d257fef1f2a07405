"""chan against raw pyzmq + msgpack (and zerorpc), two processes, tcp and ipc.

Run it from the repo root with the project's interpreter::

    .venv/bin/python bench/chan_bench.py               # everything, ~2 minutes
    .venv/bin/python bench/chan_bench.py --quick       # one round of 1 s each, ~30 s
    .venv/bin/python bench/chan_bench.py --only oneway,ipc      # a subset
    .venv/bin/python bench/chan_bench.py --only stream,chan --profile /tmp/prof

Every measurement starts two fresh processes of this script (``--peer server`` and
``--peer client``, spawned with this interpreter, never forked): the server binds (tcp
on 127.0.0.1 with a free port, or ipc in a temp dir named ``cbx*``), the client
connects and drives the load for ``--duration`` seconds.  The side that receives the
load measures it with ``time.perf_counter`` from its first item to its last; the other
side reports how many it sent, and the two counts must agree (no loss).  The message is
``{"verb": "log", "args": ["x" * 100]}`` everywhere.

Tests (``--only`` also takes the test, impl and transport names):

``oneway``  one channel, client -> server; ``raw`` is PUSH->PULL with ``msgpack.packb``
            and ``unpackb`` per message.  Rate in messages/s, measured by the server.
``reqrep``  round trips measured by the client.  chan: every request carries a fresh
            reply Sender (``rtx, rrx = chan.pipe()``, ``"ret": rtx``), the server
            answers on it and closes it, the client ``rrx.recv()``s; ``raw`` is REQ/REP
            with msgpack; ``zerorpc`` calls ``log("x" * 100)`` on a zerorpc.Server.
``stream``  64 KiB chunks written to a ByteStream that went to the server inside a
            message, read there with ``read(65536)``; ``raw`` is PUSH->PULL of 64 KiB
            frames.  Rate in chunks/s and MB/s, measured by the server.

Impls: ``raw`` (pyzmq, blocking), ``chan`` (blocking front end), ``chan.aio`` (asyncio
on both sides; compared with the same blocking raw baseline), ``zerorpc`` (reqrep only).

Every measurement runs ``--repeat`` times (default 2: all of them, then all again) and
keeps its best run.  The header gives the machine, the versions, the chan commit and
the load average; the last line says how much CPU other processes took during the run:
the rates are only worth comparing on an otherwise idle machine (a warning says when
others took more than 10%).

Each line of the table is one measurement: transport, test, impl, how many items the
measuring side counted, the seconds between its first and last item, the rate (msg/s,
calls/s or chunks/s), MB/s (payload bytes: 118 per message, 65536 per chunk), then for
chan lines the ratio to the line named in ``vs`` (chan/raw; chan/zerorpc on a second
line), the goal from issue 2 and PASS or MISS.  A run whose counts disagree (loss) or
whose process failed or hung is listed under the table with its error (and, for a hang,
both processes' stacks from py-spy); the script then exits with status 1.

``--profile DIR`` runs the chan processes under ``py-spy record --gil`` (``pip install
py-spy``) and prints, for each side, where the samples of the thread holding the GIL
went: per thread, top lines by own time, top chan functions including callees.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any, Awaitable, Callable

import msgpack
import zmq

MSG = {"verb": "log", "args": ["x" * 100]}
REPLY = {"ok": True}
MSG_BYTES = len(msgpack.packb(MSG))
CHUNK_SIZE = 64 * 1024
CHUNK = bytes(range(256)) * (CHUNK_SIZE // 256)
CHECK_EVERY = 64  # one-way senders look at the clock once per this many messages

TESTS = ("oneway", "reqrep", "stream")
IMPLS = ("raw", "chan", "aio", "zerorpc")
TRANSPORTS = ("tcp", "ipc")
IMPL_NAMES = {"aio": "chan.aio"}
UNITS = {"oneway": "msg", "reqrep": "call", "stream": "chunk"}
MEASURED_BY = {"oneway": "server", "reqrep": "client", "stream": "server"}
UNIT_BYTES = {"oneway": MSG_BYTES, "reqrep": MSG_BYTES, "stream": CHUNK_SIZE}

# (test, impl, baseline, goal): impl's rate / baseline's rate must reach goal.
GOALS = [
    ("oneway", "chan", "raw", 0.6), ("oneway", "aio", "raw", 0.6),
    ("reqrep", "chan", "raw", 0.6), ("reqrep", "aio", "raw", 0.6),
    ("reqrep", "chan", "zerorpc", 3.0), ("reqrep", "aio", "zerorpc", 3.0),
    ("stream", "chan", "raw", 0.7), ("stream", "aio", "raw", 0.7),
]
ROOT = Path(__file__).resolve().parent.parent


# ================================================================== peer side: helpers
def ready(endpoint: str) -> None:
    """A server tells the orchestrator where the client must connect."""
    print("READY", endpoint, flush=True)


def report(result: dict) -> None:
    """Hand the result to the orchestrator, then wait until it lets us tear down.

    A server waits here (stdin open) until its client has exited, so that the
    client's closing handshake still finds the server alive.
    """
    print("RESULT", json.dumps(result), flush=True)
    sys.stdin.read()


def measured(total: float, after_first: float, t0: float, t1: float) -> dict:
    """The measuring side's result: ``after_first`` units arrived within ``t1 - t0``."""
    seconds = t1 - t0
    return {"total": total, "seconds": seconds,
            "rate": after_first / seconds if seconds > 0 else 0.0}


def timed_loop(duration: float, step: Callable[[], Any], every: int = 1) -> int:
    """Call ``step`` until ``duration`` has passed; how many calls."""
    deadline = perf_counter() + duration
    n = 0
    while perf_counter() < deadline:
        for _ in range(every):
            step()
        n += every
    return n


async def timed_loop_async(duration: float, step: Callable[[], Awaitable[Any]],
                           every: int = 1) -> int:
    deadline = perf_counter() + duration
    n = 0
    while perf_counter() < deadline:
        for _ in range(every):
            await step()
        n += every
    return n


def drain(next_item: Callable[[], int | None], unit: int) -> dict:
    """Take items (their sizes) until None; measured from the first to the last."""
    first = next_item()
    t0 = perf_counter()
    total = first
    while (size := next_item()) is not None:
        total += size
    return measured(total, (total - first) / unit, t0, perf_counter())


async def drain_async(next_item: Callable[[], Awaitable[int | None]], unit: int) -> dict:
    first = await next_item()
    t0 = perf_counter()
    total = first
    while (size := await next_item()) is not None:
        total += size
    return measured(total, (total - first) / unit, t0, perf_counter())


def round_trips(duration: float, call: Callable[[], Any]) -> dict:
    """A client's rate: calls after the first one, within ``duration``."""
    call()
    t0 = perf_counter()
    n = timed_loop(duration, call)
    return measured(n + 1, n, t0, perf_counter())


async def round_trips_async(duration: float, call: Callable[[], Awaitable[Any]]) -> dict:
    await call()
    t0 = perf_counter()
    n = await timed_loop_async(duration, call)
    return measured(n + 1, n, t0, perf_counter())


def check(value: Any, expected: Any) -> None:
    if value != expected:
        raise AssertionError(f"got {value!r:.100}, expected {expected!r:.100}")


# ================================================================== raw pyzmq + msgpack
def zmq_address(endpoint: str) -> str:
    """chan's ``tcp://HOST:0`` in ZeroMQ's spelling (``tcp://HOST:*``)."""
    return endpoint[:-2] + ":*" if endpoint.startswith("tcp://") and endpoint.endswith(":0") \
        else endpoint


def raw_socket(kind: int, endpoint: str, server: bool) -> tuple[zmq.Context, zmq.Socket]:
    ctx = zmq.Context()
    sock = ctx.socket(kind)
    if server:
        sock.bind(zmq_address(endpoint))
        ready(sock.last_endpoint.decode())
    else:
        sock.connect(endpoint)
    return ctx, sock


def raw_close(ctx: zmq.Context, sock: zmq.Socket) -> None:
    sock.close()  # the default linger waits until every frame is delivered
    ctx.term()


def raw_pull_server(endpoint: str, unpack: bool, unit: int) -> None:
    ctx, sock = raw_socket(zmq.PULL, endpoint, server=True)
    # libzmq may drop the last frames of a PUSH that closes and exits (#4660, seen here
    # over ipc): give up after a silence, so the count check reports it as a LOSS.
    sock.rcvtimeo = 5000
    recv, unpackb = sock.recv, msgpack.unpackb

    def next_item() -> int | None:
        try:
            frame = recv()
        except zmq.Again:
            return None
        if not frame:  # the client's end marker
            return None
        if unpack:
            unpackb(frame)
            return 1
        return len(frame)

    report(drain(next_item, unit))
    raw_close(ctx, sock)


def raw_push_client(endpoint: str, duration: float, step_of: Callable, every: int,
                    size: int) -> None:
    """Push ``step_of(sock)()`` for ``duration``; the total is in units of ``size``."""
    ctx, sock = raw_socket(zmq.PUSH, endpoint, server=False)
    n = timed_loop(duration, step_of(sock), every)
    sock.send(b"")
    report({"total": n * size})
    raw_close(ctx, sock)


def raw_oneway_server(endpoint: str, duration: float) -> None:
    raw_pull_server(endpoint, unpack=True, unit=1)


def raw_oneway_client(endpoint: str, duration: float) -> None:
    def step_of(sock: zmq.Socket) -> Callable[[], None]:
        send, packb = sock.send, msgpack.packb
        return lambda: send(packb(MSG))
    raw_push_client(endpoint, duration, step_of, CHECK_EVERY, size=1)


def raw_stream_server(endpoint: str, duration: float) -> None:
    raw_pull_server(endpoint, unpack=False, unit=CHUNK_SIZE)


def raw_stream_client(endpoint: str, duration: float) -> None:
    def step_of(sock: zmq.Socket) -> Callable[[], None]:
        send = sock.send
        return lambda: send(CHUNK)
    raw_push_client(endpoint, duration, step_of, 1, size=CHUNK_SIZE)


def raw_reqrep_server(endpoint: str, duration: float) -> None:
    ctx, sock = raw_socket(zmq.REP, endpoint, server=True)
    n = 0
    while frame := sock.recv():
        msgpack.unpackb(frame)
        sock.send(msgpack.packb(REPLY))
        n += 1
    sock.send(b"")
    report({"total": n})
    raw_close(ctx, sock)


def raw_reqrep_client(endpoint: str, duration: float) -> None:
    ctx, sock = raw_socket(zmq.REQ, endpoint, server=False)
    send, recv, packb, unpackb = sock.send, sock.recv, msgpack.packb, msgpack.unpackb

    def call() -> Any:
        send(packb(MSG))
        return unpackb(recv())

    check(call(), REPLY)
    result = round_trips(duration, call)
    result["total"] += 1
    sock.send(b"")
    sock.recv()
    report(result)
    raw_close(ctx, sock)


# ================================================================== chan, blocking
def chan_listen(endpoint: str) -> Any:
    import chan
    listener = chan.listen(endpoint)
    ready(listener.endpoint)
    return listener


def chan_next_msg(rx: Any) -> Callable[[], int | None]:
    import chan

    def next_item() -> int | None:
        try:
            rx.recv()
        except chan.EndOfChannel:
            return None
        return 1
    return next_item


def chan_oneway_server(endpoint: str, duration: float) -> None:
    listener = chan_listen(endpoint)
    report(drain(chan_next_msg(listener.accept()), 1))
    listener.close()


def chan_oneway_client(endpoint: str, duration: float) -> None:
    import chan
    with chan.connect(endpoint) as session:
        tx = session.open()
        n = timed_loop(duration, lambda: tx.send(MSG), CHECK_EVERY)
        tx.close()
    report({"total": n})


def chan_reqrep_server(endpoint: str, duration: float) -> None:
    listener = chan_listen(endpoint)
    n = 0
    for msg in listener.accept():
        ret = msg["ret"]
        ret.send(REPLY)
        ret.close()
        n += 1
    report({"total": n})
    listener.close()


def chan_reqrep_client(endpoint: str, duration: float) -> None:
    import chan
    with chan.connect(endpoint) as session:
        tx = session.open()

        def call() -> Any:
            rtx, rrx = chan.pipe()
            tx.send({**MSG, "ret": rtx})
            return rrx.recv()

        check(call(), REPLY)
        result = round_trips(duration, call)
        result["total"] += 1
        tx.close()
    report(result)


def chan_stream_server(endpoint: str, duration: float) -> None:
    listener = chan_listen(endpoint)
    stream = listener.accept().recv()["stream"]
    report(drain(lambda: len(stream.read(CHUNK_SIZE)) or None, CHUNK_SIZE))
    listener.close()


def chan_stream_client(endpoint: str, duration: float) -> None:
    import chan
    with chan.connect(endpoint) as session:
        tx = session.open()
        ours, theirs = chan.stream_pair()
        tx.send({**MSG, "stream": theirs})
        n = timed_loop(duration, lambda: ours.write(CHUNK))
        ours.close_write()
        tx.close()
    report({"total": n * CHUNK_SIZE})


# ================================================================== chan.aio
def aio_main(coro_fn: Callable[[str, float], Awaitable[None]]) -> Callable[[str, float], None]:
    """A peer role that runs ``coro_fn`` in a fresh event loop."""
    def role(endpoint: str, duration: float) -> None:
        asyncio.run(coro_fn(endpoint, duration))
    role.__name__ = coro_fn.__name__
    return role


async def aio_listen(endpoint: str) -> Any:
    import chan.aio
    listener = await chan.aio.listen(endpoint)
    ready(listener.endpoint)
    return listener


def aio_next_msg(rx: Any) -> Callable[[], Awaitable[int | None]]:
    import chan.aio

    async def next_item() -> int | None:
        try:
            await rx.recv()
        except chan.aio.EndOfChannel:
            return None
        return 1
    return next_item


@aio_main
async def aio_oneway_server(endpoint: str, duration: float) -> None:
    listener = await aio_listen(endpoint)
    report(await drain_async(aio_next_msg(await listener.accept()), 1))
    await listener.close()


@aio_main
async def aio_oneway_client(endpoint: str, duration: float) -> None:
    import chan.aio
    async with await chan.aio.connect(endpoint) as session:
        tx = session.open()
        n = await timed_loop_async(duration, lambda: tx.send(MSG), CHECK_EVERY)
        await tx.close()
    report({"total": n})


@aio_main
async def aio_reqrep_server(endpoint: str, duration: float) -> None:
    listener = await aio_listen(endpoint)
    n = 0
    async for msg in await listener.accept():
        ret = msg["ret"]
        await ret.send(REPLY)
        await ret.close()
        n += 1
    report({"total": n})
    await listener.close()


@aio_main
async def aio_reqrep_client(endpoint: str, duration: float) -> None:
    import chan.aio
    async with await chan.aio.connect(endpoint) as session:
        tx = session.open()

        async def call() -> Any:
            rtx, rrx = chan.aio.pipe()
            await tx.send({**MSG, "ret": rtx})
            return await rrx.recv()

        check(await call(), REPLY)
        result = await round_trips_async(duration, call)
        result["total"] += 1
        await tx.close()
    report(result)


@aio_main
async def aio_stream_server(endpoint: str, duration: float) -> None:
    listener = await aio_listen(endpoint)
    stream = (await (await listener.accept()).recv())["stream"]

    async def next_item() -> int | None:
        return len(await stream.read(CHUNK_SIZE)) or None

    report(await drain_async(next_item, CHUNK_SIZE))
    await listener.close()


@aio_main
async def aio_stream_client(endpoint: str, duration: float) -> None:
    import chan.aio
    async with await chan.aio.connect(endpoint) as session:
        tx = session.open()
        ours, theirs = chan.aio.stream_pair()
        await tx.send({**MSG, "stream": theirs})
        n = await timed_loop_async(duration, lambda: ours.write(CHUNK))
        await ours.close_write()
        await tx.close()
    report({"total": n * CHUNK_SIZE})


# ================================================================== zerorpc
class _LogService:
    """What the zerorpc server exposes: ``log`` (the call measured) and ``finish``."""

    def __init__(self) -> None:
        self.calls = 0
        self.server: Any = None

    def log(self, *args: Any) -> dict:
        self.calls += 1
        return REPLY

    def finish(self) -> int:
        import gevent
        gevent.spawn_later(0.05, self.server.stop)
        return self.calls


def zerorpc_reqrep_server(endpoint: str, duration: float) -> None:
    import zerorpc
    service = _LogService()
    server = service.server = zerorpc.Server(service)
    server.bind(zmq_address(endpoint))
    ready(server._events._socket.last_endpoint.decode())  # zerorpc does not expose it
    server.run()
    report({"total": service.calls})
    server.close()


def zerorpc_reqrep_client(endpoint: str, duration: float) -> None:
    import zerorpc
    client = zerorpc.Client(connect_to=endpoint, timeout=30)
    check(client.log(*MSG["args"]), REPLY)
    result = round_trips(duration, lambda: client.log(*MSG["args"]))
    result["total"] += 1
    check(client.finish(), result["total"])
    client.close()
    report(result)


def _roles() -> dict[tuple[str, str], dict[str, Callable[[str, float], None]]]:
    """(test, impl) -> {"server": fn, "client": fn}, from the functions' names."""
    roles: dict = {}
    for name, fn in globals().items():
        parts = name.split("_")
        if len(parts) == 3 and parts[0] in IMPLS and parts[1] in TESTS and callable(fn):
            roles.setdefault((parts[1], parts[0]), {})[parts[2]] = fn
    return roles


ROLES = _roles()


def peer_main(args: argparse.Namespace) -> None:
    ROLES[(args.test, args.impl)][args.peer](args.endpoint, args.duration)


# ================================================================== orchestrator
@dataclass
class Measurement:
    transport: str
    test: str
    impl: str
    total: float = 0
    seconds: float = 0.0
    rate: float = 0.0
    error: str = ""
    details: list[str] = field(default_factory=list)
    profiles: list[Path] = field(default_factory=list)

    @property
    def mbps(self) -> float:
        return self.rate * UNIT_BYTES[self.test] / 1e6


def bind_endpoint(transport: str, tmpdir: str, label: str) -> str:
    """Where a server binds; the only place the transports differ."""
    if transport == "tcp":
        return "tcp://127.0.0.1:0"
    return f"ipc://{tmpdir}/{label}.sock"


def peer_command(role: str, test: str, impl: str, endpoint: str, duration: float,
                 profile: Path | None) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peer", role, "--test", test,
           "--impl", impl, "--endpoint", endpoint, "--duration", str(duration)]
    if profile is None:
        return cmd
    return [py_spy(), "record", "--gil", "--nonblocking", "-r", "499", "-f", "raw", "-o",
            str(profile), "--"] + cmd


def py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


def parse_result(out: str) -> dict:
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError("no RESULT line")


class PeerFailed(Exception):
    """A peer process failed; ``details`` says how (traceback tail, or stacks)."""

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.details = details or []


def finish(proc: subprocess.Popen, role: str, timeout: float, stdin: str | None = None) -> dict:
    """Wait for a peer and return its RESULT; raises PeerFailed."""
    try:
        out, err = proc.communicate(input=stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise PeerFailed(f"{role} did not finish within {timeout:.0f} s (lost messages? "
                         f"stacks below)") from None
    tail = [line for line in err.strip().splitlines() if not line.startswith("py-spy>")]
    if proc.returncode != 0:
        raise PeerFailed(f"{role} exited {proc.returncode}: "
                         f"{tail[-1] if tail else 'no message'}", ["\n".join(tail[-15:])])
    try:
        return parse_result(out)
    except (RuntimeError, ValueError) as exc:
        raise PeerFailed(f"{role}: {exc}", ["\n".join(tail[-15:])]) from None


def wait_ready(server: subprocess.Popen, timeout: float) -> str:
    """The endpoint the server announced; raises PeerFailed if it died first."""
    for line in server.stdout:
        if line.startswith("READY "):
            return line.split()[1]
    finish(server, "server", timeout)
    raise PeerFailed("server exited without announcing its endpoint")


def run_pair(m: Measurement, duration: float, tmpdir: str, profile_dir: Path | None) -> None:
    """Run server and client processes for one measurement; fills ``m`` in."""
    label = f"{m.transport}-{m.test}-{m.impl}"
    profile = {role: profile_dir / f"{label}-{role}.txt"
               for role in ("server", "client")} if profile_dir else {}
    timeout = duration + 20
    procs: dict[str, subprocess.Popen] = {}

    def spawn(role: str, endpoint: str, stdin: int) -> subprocess.Popen:
        procs[role] = subprocess.Popen(
            peer_command(role, m.test, m.impl, endpoint, duration, profile.get(role)),
            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return procs[role]

    try:
        server = spawn("server", bind_endpoint(m.transport, tmpdir, label), subprocess.PIPE)
        client = spawn("client", wait_ready(server, timeout), subprocess.DEVNULL)
        results = {"client": finish(client, "client", timeout)}
        results["server"] = finish(server, "server", timeout, stdin="")
    except PeerFailed as exc:
        m.error = str(exc)
        m.details = exc.details or ([] if profile else
                                    [stacks(proc, role) for role, proc in procs.items()])
        return
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    mine = results[MEASURED_BY[m.test]]
    theirs = results["client" if MEASURED_BY[m.test] == "server" else "server"]
    m.total, m.seconds, m.rate = mine["total"], mine["seconds"], mine["rate"]
    m.profiles = [p for p in profile.values() if p.exists()]
    if mine["total"] != theirs["total"]:
        m.error = (f"LOSS: {MEASURED_BY[m.test]} counted {mine['total']}, "
                   f"the other side {theirs['total']}")


def stacks(proc: subprocess.Popen, role: str) -> str:
    """What a hung peer is doing (py-spy dump), for the report."""
    if proc.poll() is not None:
        return f"{role}: exited {proc.returncode}"
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        return f"{role}: still running (install py-spy to see its stacks)"
    dump = subprocess.run([found, "dump", "--pid", str(proc.pid)], capture_output=True,
                          text=True, timeout=30)
    return f"{role} (pid {proc.pid}):\n{dump.stdout}{dump.stderr}"


def zerorpc_problem() -> str | None:
    """Why zerorpc cannot run here, or None (checked in a child: gevent stays out of here)."""
    proc = subprocess.run([sys.executable, "-c", "import zerorpc, gevent"],
                          capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    lines = proc.stderr.strip().splitlines()
    return (lines[-1] if lines else "import failed") + \
        " (install the bench extra: .venv/bin/pip install zerorpc)"


def selected(only: list[str]) -> list[Measurement]:
    """Every measurement whose transport, test and impl match ``--only`` (per kind)."""
    wanted = {kind: [n for n in names if n in only] or list(names)
              for kind, names in (("transport", TRANSPORTS), ("test", TESTS), ("impl", IMPLS))}
    return [Measurement(transport, test, impl)
            for transport in wanted["transport"] for test in wanted["test"]
            for impl in wanted["impl"] if (test, impl) in ROLES]


# ------------------------------------------------------------------ printing
def machine_lines() -> list[str]:
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [f"machine: nproc={os.cpu_count()} (usable {len(os.sched_getaffinity(0))}), "
             f"{cpu}, {platform.system()} {platform.release()}",
             f"versions: python {platform.python_version()}, pyzmq {zmq.__version__}, "
             f"libzmq {zmq.zmq_version()}, msgpack {'.'.join(map(str, msgpack.version))}, "
             f"zerorpc {dist_version('zerorpc')}, gevent {dist_version('gevent')}"]
    rev = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip()
    if rev:
        lines.append(f"chan: {ROOT} at {rev}")
    return lines


def dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def goals_for(m: Measurement) -> list[tuple[str, float]]:
    return [(base, goal) for test, impl, base, goal in GOALS
            if test == m.test and impl == m.impl]


def verdicts(m: Measurement, by_key: dict) -> list[tuple[str, str, str, str]]:
    """(vs, ratio, goal, PASS/MISS) for each goal of ``m``."""
    out = []
    for base, goal in goals_for(m):
        other = by_key.get((m.transport, m.test, base))
        if m.error or other is None or other.error or not other.rate:
            out.append((IMPL_NAMES.get(base, base), "-", f">={goal:g}", "n/a"))
            continue
        ratio = m.rate / other.rate
        shown = math.floor(ratio * 100) / 100  # never rounds a MISS up to the goal
        out.append((IMPL_NAMES.get(base, base), f"{shown:.2f}", f">={goal:g}",
                    "PASS" if ratio >= goal else "MISS"))
    return out


COLUMNS = ("transport", "test", "impl", "count", "seconds", "rate", "MB/s",
           "vs", "ratio", "goal", "result")
WIDTHS = (9, 6, 8, 11, 7, 17, 8, 8, 6, 6, 6)


def fmt_row(cells: tuple) -> str:
    return "  ".join(str(c).rjust(w) if i >= 3 else str(c).ljust(w)
                     for i, (c, w) in enumerate(zip(cells, WIDTHS))).rstrip()


def table(measurements: list[Measurement]) -> list[str]:
    by_key = {(m.transport, m.test, m.impl): m for m in measurements}
    lines = [fmt_row(COLUMNS), fmt_row(tuple("-" * w for w in WIDTHS))]
    for m in measurements:
        name = IMPL_NAMES.get(m.impl, m.impl)
        if m.error:
            lines.append(fmt_row((m.transport, m.test, name)) + "  " + m.error)
            continue
        count = f"{m.total / CHUNK_SIZE:,.0f}" if m.test == "stream" else f"{m.total:,}"
        head = (m.transport, m.test, name, count, f"{m.seconds:.2f}",
                f"{m.rate:,.0f} {UNITS[m.test]}/s", f"{m.mbps:,.1f}")
        checks = verdicts(m, by_key) or [("", "", "", "")]
        lines.append(fmt_row(head + checks[0]))
        lines += [fmt_row(("",) * len(head) + c) for c in checks[1:]]
    return lines


def summary(measurements: list[Measurement]) -> str:
    by_key = {(m.transport, m.test, m.impl): m for m in measurements}
    results = Counter(v[3] for m in measurements for v in verdicts(m, by_key))
    failed = sum(1 for m in measurements if m.error)
    return (f"goals: {results['PASS']} PASS, {results['MISS']} MISS, {results['n/a']} n/a; "
            f"failed measurements: {failed}")


# ------------------------------------------------------------------ profiles
def frame_name(frame: str) -> str:
    """'fn (/abs/path/file.py:12)' -> 'fn (chan/file.py:12)'."""
    for prefix in (str(ROOT) + "/", "/usr/lib/python3", "lib/python3.11/"):
        if prefix in frame:
            head, _, tail = frame.partition(prefix)
            frame = head + tail
    return frame.replace("site-packages/", "")


def thread_of(stack: list[str]) -> str:
    """py-spy's raw stacks start at the thread's entry point: name the thread by it."""
    if any(f.startswith("Hub._run (") for f in stack):
        return "chan-io"
    if any(f.startswith("Thread._bootstrap (") for f in stack):
        return "other thread"
    return "main"


def summarise_profile(path: Path, top: int = 12) -> list[str]:
    """Samples per thread, and the lines where most samples were taken (own time)."""
    threads: Counter = Counter()
    own: Counter = Counter()
    inclusive: Counter = Counter()
    imports = 0
    for line in path.read_text().splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not stack_text or not count.isdigit():
            continue
        stack = [f for f in stack_text.split(";") if not f.startswith("thread (")]
        if any(f.startswith("_find_and_load (") for f in stack):
            imports += int(count)  # start-up, not the measurement
            continue
        thread, n = thread_of(stack), int(count)
        threads[thread] += n
        own[(thread, frame_name(stack[-1]))] += n
        for fn in {frame_name(f).rsplit(":", 1)[0] for f in stack if "chan/" in f}:
            inclusive[(thread, fn)] += n
    total = sum(threads.values()) or 1
    lines = [f"  {path.name}: {total} samples ({imports} more in imports, left out); " +
             ", ".join(f"{t} {n / total:.0%}" for t, n in threads.most_common())]
    lines.append("    own time:")
    lines += [f"    {n / total:6.1%}  [{t}] {frame}" for (t, frame), n in own.most_common(top)]
    lines.append("    inclusive, chan functions:")
    lines += [f"    {n / total:6.1%}  [{t}] {fn})" for (t, fn), n in inclusive.most_common(top)]
    return lines


# ------------------------------------------------------------------ main
def run_all(measurements: list[Measurement], duration: float, rounds: int,
            profile_dir: Path | None) -> list[Measurement]:
    """Measure each ``rounds`` times (round after round, so that a burst of load elsewhere
    hits several kinds alike) and keep each one's best run; failed runs are kept aside."""
    best = {id(m): m for m in measurements}
    failed: list[Measurement] = []
    tmpdir = tempfile.mkdtemp(prefix="cbx")
    try:
        for _ in range(rounds):
            for m in measurements:
                trial = Measurement(m.transport, m.test, m.impl)
                run_pair(trial, duration, tmpdir,
                         profile_dir if m.impl in ("chan", "aio") else None)
                print(f"  ... {trial.transport} {trial.test} {IMPL_NAMES.get(m.impl, m.impl)}: "
                      f"{trial.error or f'{trial.rate:,.0f} {UNITS[m.test]}/s'}", flush=True)
                if trial.error:
                    failed.append(trial)
                elif best[id(m)] is m or trial.rate > best[id(m)].rate:
                    best[id(m)] = trial
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    for m in measurements:
        if best[id(m)] is m:  # no run succeeded: show the last failure
            m.error = next(f.error for f in reversed(failed) if f.impl == m.impl
                           and f.test == m.test and f.transport == m.transport)
        else:
            m.__dict__.update(best[id(m)].__dict__)
    return failed


class OtherLoad:
    """How much CPU the rest of the machine used while we measured (ours left out).

    From /proc/stat's busy time minus this process's and its waited-for children's.
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / tick  # all but idle and iowait
        ours = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
                   for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        return busy, ours, perf_counter()

    def line(self) -> str:
        busy0, ours0, t0 = self.start
        busy1, ours1, t1 = self._sample()
        share = max(0.0, (busy1 - busy0) - (ours1 - ours0)) / ((t1 - t0) * os.cpu_count())
        warning = " -- WARNING: the figures are unreliable" if share > 0.1 else ""
        return f"other processes used {share:.0%} of the CPUs during the run{warning}"


def orchestrate(args: argparse.Namespace) -> int:
    duration = args.duration or (1.0 if args.quick else 2.0)
    rounds = args.repeat or (1 if args.quick else 2)
    measurements = selected(args.only)
    for line in machine_lines():
        print(line)
    print(f"message: {json.dumps(MSG)[:36]}...\"]}} ({MSG_BYTES} bytes packed); "
          f"chunk {CHUNK_SIZE} bytes; {duration:g} s per measurement, best of {rounds}")
    print(f"load average before the run: {os.getloadavg()[0]:.2f}", flush=True)
    if any(m.impl == "zerorpc" for m in measurements) and (why := zerorpc_problem()):
        print(f"zerorpc is unavailable: {why}")
        measurements = [m for m in measurements if m.impl != "zerorpc"]
    profile_dir = Path(args.profile) if args.profile else None
    if profile_dir:
        py_spy()  # fail now, not halfway
        profile_dir.mkdir(parents=True, exist_ok=True)
    started, others = perf_counter(), OtherLoad()
    failed = run_all(measurements, duration, rounds, profile_dir)
    print()
    print("\n".join(table(measurements)))
    print()
    print(summary(measurements) + f"; failed runs: {len(failed)}; "
          f"took {perf_counter() - started:.0f} s")
    print(others.line())
    for f in failed:
        print(f"\nFAILED run: {f.transport} {f.test} {IMPL_NAMES.get(f.impl, f.impl)}: {f.error}")
        for detail in f.details:
            print(detail)
    for m in measurements:
        for path in m.profiles:
            print("\n".join(summarise_profile(path)))
    return 1 if failed else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 s per measurement, one round")
    p.add_argument("--duration", type=float, help="seconds per measurement (default 2)")
    p.add_argument("--repeat", type=int, help="rounds; each measurement keeps its best "
                   "(default 2)")
    p.add_argument("--only", type=lambda s: [n.replace("chan.aio", "aio") for n in s.split(",")],
                   default=[], help="comma-separated names of tests, impls, transports: "
                   f"{', '.join(TESTS + IMPLS + TRANSPORTS)} (chan.aio is aio)")
    p.add_argument("--profile", metavar="DIR", help="run chan's processes under py-spy")
    p.add_argument("--peer", choices=("server", "client"), help=argparse.SUPPRESS)
    p.add_argument("--test", choices=TESTS, help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = set(args.only) - set(TESTS + IMPLS + TRANSPORTS)
    if unknown:
        p.error(f"--only: unknown {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.peer:
        peer_main(args)
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
