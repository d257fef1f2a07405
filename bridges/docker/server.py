"""The Docker Engine API server: an aiohttp app over a chanbox daemon.

:func:`make_app` builds the app (every route both unversioned and under ``/v1.NN``);
:func:`serve` runs it on a unix socket (and optionally loopback tcp) until stopped.
Failures become Docker's JSON errors (``{"message": ...}`` with 400/404/409/500), so
the CLI prints ``Error response from daemon: ...``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from engine import errors

from . import shapes
from .aioclient import AsyncClient

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATUS = {"not_found": 404, "conflict": 409, "not_running": 409, "invalid_argument": 400,
           "command_not_found": 400, "command_not_invokable": 400}

PING_HEADERS = {"Api-Version": shapes.API_VERSION, "Ostype": shapes.OS_TYPE,
                "Docker-Experimental": "false", "Builder-Version": "1",
                "Swarm": "inactive", "Cache-Control": "no-cache, no-store, must-revalidate",
                "Pragma": "no-cache"}


class Bridge:
    """What every handler shares: the engine client and the bridge's own state."""

    def __init__(self, client: AsyncClient, *, allow_pull: bool = True) -> None:
        self.client = client
        self.allow_pull = allow_pull
        from .containers import Tracker
        from .execs import ExecStore

        self.tracker = Tracker(client)
        self.execs = ExecStore()


def bridge_of(request: web.Request) -> Bridge:
    """The :class:`Bridge` of the app serving ``request``."""
    return request.app["bridge"]


def error_response(status: int, message: str) -> web.Response:
    """Docker's error body."""
    # exactly application/json (no charset): the Go client compares the header as is
    return web.Response(body=_dumps({"message": message}).encode(), status=status,
                        content_type="application/json", headers=_SERVER)


_SERVER = {"Server": f"chanbox-docker-bridge/{shapes.API_VERSION}",
           "Api-Version": shapes.API_VERSION, "Ostype": shapes.OS_TYPE}


def status_of(exc: errors.EngineError) -> int:
    """The HTTP status Docker uses for an engine error."""
    return _STATUS.get(exc.code, 500)


def docker_message(exc: errors.EngineError) -> str:
    """The error text, with the words the docker CLI looks for to pick 126/127."""
    msg = str(exc)
    if exc.code == "command_not_found" and "executable file not found" not in msg:
        msg += " (executable file not found in $PATH)"
    if exc.code == "command_not_invokable" and "permission denied" not in msg:
        msg += " (permission denied)"
    return msg


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        resp = await handler(request)
    except errors.EngineError as exc:
        return error_response(status_of(exc), docker_message(exc))
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error_response(exc.status, exc.text or exc.reason)
        raise
    except json.JSONDecodeError as exc:
        return error_response(400, f"the request body is not valid JSON: {exc}")
    if not resp.prepared:
        for k, v in _SERVER.items():
            resp.headers.setdefault(k, v)
    return resp


async def send_tar(request: web.Request, write: Callable[[str], Awaitable[Any]]) -> web.StreamResponse:
    """Answer with the tar that ``write(path)`` (an engine verb given a path: the
    daemon runs on this host) makes, from a temp dir of its own that goes after."""
    import tempfile

    tmp = tempfile.mkdtemp(prefix="cbx-tar-")
    path = os.path.join(tmp, "out.tar")
    try:
        await write(path)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-tar"})
        await resp.prepare(request)
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                await resp.write(chunk)
        await resp.write_eof()
        return resp
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.rmdir(tmp)


def json_ok(value: Any, status: int = 200) -> web.Response:
    """A JSON answer with Docker's headers."""
    return web.Response(body=_dumps(value).encode(), status=status,
                        content_type="application/json")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


async def body_json(request: web.Request) -> Any:
    """The request's JSON body (``None`` when empty)."""
    raw = await request.read()
    return json.loads(raw) if raw.strip() else None


def flag(request: web.Request, name: str, default: bool = False) -> bool:
    """A boolean query parameter as Docker reads it (``1``/``true``/``True``)."""
    v = request.query.get(name)
    if v is None or v == "":
        return default
    return v.lower() not in ("0", "false", "no")


def add_routes(app: web.Application, routes: list[tuple[str, str, Handler]]) -> None:
    """Register each route both as is and under Docker's ``/v1.NN`` prefix."""
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, r"/v{_version:[0-9]+\.[0-9]+}" + path, handler)


# -- system -----------------------------------------------------------------------------

async def ping(request: web.Request) -> web.StreamResponse:
    """``GET|HEAD /_ping``: what the CLI asks before every command."""
    body = b"" if request.method == "HEAD" else b"OK"
    return web.Response(body=body, content_type="text/plain", headers=PING_HEADERS)


async def version(request: web.Request) -> web.StreamResponse:
    """``GET /version``."""
    return json_ok(shapes.version(await bridge_of(request).client.call("version")))


async def info(request: web.Request) -> web.StreamResponse:
    """``GET /info``."""
    client = bridge_of(request).client
    e, v = await asyncio.gather(client.call("info"), client.call("version"))
    return json_ok(shapes.info(e, v))


async def events(request: web.Request) -> web.StreamResponse:
    """``GET /events``: the journal, from now on (``since`` replays from a time,
    ``until`` ends the stream)."""
    client = bridge_of(request).client
    filters = shapes.event_filters(shapes.parse_filters(request.query.get("filters")))
    since = _timestamp(request.query.get("since"))
    until = _timestamp(request.query.get("until"))
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)

    async def pump(follow: bool, seen: set[int]) -> None:
        args: dict[str, Any] = {"filters": filters, "follow": follow}
        if since is not None:
            args["since"] = 0
        async for ev in client.stream("watch", **args):
            if ev.get("seq") in seen or ev.get("type") == "gap":
                continue
            seen.add(ev.get("seq"))
            t = ev.get("time", 0) / 1e9
            if since is not None and t < since:
                continue
            if until is not None and t > until:
                return
            await resp.write((_dumps(shapes.event(ev)) + "\n").encode())

    seen: set[int] = set()
    try:
        if until is not None and until <= time.time():
            await pump(False, seen)
        else:
            timeout = None if until is None else max(0.0, until - time.time())
            try:
                await asyncio.wait_for(pump(True, seen), timeout)
            except asyncio.TimeoutError:
                pass  # ``until`` has come
        await resp.write_eof()
    except ConnectionError:
        pass  # the client stopped listening
    return resp


def _timestamp(raw: str | None) -> float | None:
    """Docker's ``since``/``until``: Unix seconds (with a fraction)."""
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise errors.InvalidArgument(f"invalid timestamp {raw!r}: give Unix seconds "
                                     "(the CLI converts durations and dates)") from None


def make_app(bridge: Bridge) -> web.Application:
    """The Docker Engine API app over ``bridge``."""
    from . import containers, execs, images, volumes

    app = web.Application(middlewares=[_errors], client_max_size=1 << 40)
    app["bridge"] = bridge
    add_routes(app, [
        ("GET", "/_ping", ping), ("HEAD", "/_ping", ping),
        ("GET", "/version", version), ("GET", "/info", info), ("GET", "/events", events),
    ])
    add_routes(app, containers.ROUTES)
    add_routes(app, execs.ROUTES)
    add_routes(app, images.ROUTES)
    add_routes(app, volumes.ROUTES)
    return app


async def start(endpoint: str, socket_path: str | None, tcp: str | None = None, *,
                key_file: str | None = None, server_key_file: str | None = None,
                allow_pull: bool = True) -> tuple[web.AppRunner, Bridge]:
    """Connect to the daemon at ``endpoint`` and serve the API on ``socket_path``
    (mode 0660) and on ``tcp`` (``HOST:PORT``, loopback only); the runner to clean up."""
    from .aioclient import connect

    client = await connect(endpoint, key_file=key_file, server_key_file=server_key_file)
    bridge = Bridge(client, allow_pull=allow_pull)
    runner = web.AppRunner(make_app(bridge), access_log=None, handle_signals=False,
                           shutdown_timeout=1.0)
    await runner.setup()
    try:
        if socket_path:
            _clear_stale(socket_path)
            old = os.umask(0o117)
            try:
                await web.UnixSite(runner, socket_path).start()
            finally:
                os.umask(old)
        if tcp:
            host, _, port = tcp.rpartition(":")
            if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
                raise errors.InvalidArgument(f"--tcp {tcp}: this bridge has no TLS, so it "
                                             "listens on loopback only (127.0.0.1:PORT)")
            await web.TCPSite(runner, host.strip("[]"), int(port)).start()
    except BaseException:
        await runner.cleanup()
        await client.close()
        raise
    return runner, bridge


def _clear_stale(path: str) -> None:
    import socket

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if not os.path.exists(path):
        return
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        os.unlink(path)  # a socket left by a bridge that was killed
        return
    finally:
        s.close()
    raise errors.Conflict(f"something already listens on {path}; stop it or give "
                          "another --socket")


async def serve(endpoint: str, socket_path: str | None, tcp: str | None = None, *,
                ready: Callable[[], None] | None = None, **kwargs: Any) -> None:
    """Serve until SIGTERM/SIGINT."""
    import signal

    runner, bridge = await start(endpoint, socket_path, tcp, **kwargs)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await bridge.client.close()
        if socket_path and os.path.exists(socket_path):
            os.unlink(socket_path)
