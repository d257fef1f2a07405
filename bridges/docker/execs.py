"""``/containers/ID/exec`` and ``/exec/EID/...``: Docker's two-step exec.

Docker creates an exec instance first and starts it later; the engine's ``exec`` verb
does both at once, so the bridge keeps the instances (config, then running state and
exit code) until they have been inspected after their end or there are too many.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from typing import Any

import chan
from aiohttp import web

from engine import errors

from . import mux, shapes
from .server import bridge_of, body_json, docker_message, json_ok

_KEEP = 1000  # finished exec instances kept for inspection


class ExecStore:
    """Exec instances by id (oldest finished ones forgotten first)."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def add(self, item: dict[str, Any]) -> str:
        eid = secrets.token_hex(32)
        item["ID"] = eid
        self._items[eid] = item
        if len(self._items) > _KEEP:
            for old in [k for k, v in self._items.items() if v["done"]][: len(self._items) - _KEEP]:
                del self._items[old]
        return eid

    def get(self, eid: str) -> dict[str, Any]:
        item = self._items.get(eid)
        if item is None:
            raise errors.NotFound(f"No such exec instance: {eid}")
        return item


async def create(request: web.Request) -> web.StreamResponse:
    """``POST /containers/ID/exec``: 201 ``{"Id"}``."""
    b = bridge_of(request)
    body = await body_json(request) or {}
    cmd = body.get("Cmd")
    if isinstance(cmd, str):
        cmd = [cmd]
    if not cmd:
        raise errors.InvalidArgument("No exec command specified")
    c = await b.client.call("get", id=request.match_info["id"])
    if not c["State"]["Running"]:
        raise errors.Conflict(f"container {c['Id']} is not running")
    eid = b.execs.add({
        "container": c["Id"], "cmd": list(cmd), "env": body.get("Env") or [],
        "workdir": body.get("WorkingDir") or "", "user": body.get("User") or "",
        "tty": bool(body.get("Tty")), "stdin": bool(body.get("AttachStdin")),
        "stdout": body.get("AttachStdout", True), "stderr": body.get("AttachStderr", True),
        "privileged": bool(body.get("Privileged")),
        "running": False, "done": False, "exit_code": None, "pid": 0,
        # the resize Sender of a started -t exec, once its first answer came
        "resize": None, "resizable": asyncio.Event()})
    return json_ok({"Id": eid}, status=201)


async def start(request: web.Request) -> web.StreamResponse:
    """``POST /exec/EID/start``: hijacked (101) unless ``Detach``."""
    from .containers import open_stream, pump_stdin

    b = bridge_of(request)
    item = b.execs.get(request.match_info["id"])
    body = await body_json(request) or {}
    if item["running"] or item["done"]:
        raise errors.Conflict(f"exec instance {item['ID']} has already been started")
    tty = bool(body.get("Tty", item["tty"]))
    replies = b.client.stream("exec", id=item["container"], cmd=item["cmd"], env=item["env"],
                              workdir=item["workdir"], user=item["user"],
                              open_stdin=item["stdin"], tty=tty)
    item["running"] = True
    if body.get("Detach"):
        asyncio.ensure_future(_drain(item, replies))
        return web.Response(status=200)
    # 101 first, then start the process: docker-py reads the output from the raw socket
    # after parsing the headers, so output sent along with them would be lost
    conn = await open_stream(request, tty)
    want = {s for s in ("stdout", "stderr") if item[s]}
    try:
        async for msg in replies:
            if "stdin" in msg:
                if item["stdin"]:
                    asyncio.ensure_future(pump_stdin(conn, msg.get("stdin")))
                item["resize"] = msg.get("resize")
                item["resizable"].set()
            elif "data" in msg:
                if msg.get("stream", "stdout") in want:
                    await conn.write(msg["data"] if tty else mux.frame(msg["stream"], msg["data"]))
            elif "exit_code" in msg:
                _ended(item, msg["exit_code"])
    except errors.EngineError as exc:
        # as Docker: the failure is the exec's stderr, its status 126/127
        text = f"chanbox exec failed: {docker_message(exc)}\r\n".encode()
        try:
            await conn.write(text if tty else mux.frame("stderr", text))
        except ConnectionError:
            pass
        _ended(item, exc.exit_status if exc.exit_status in (126, 127) else 126)
    except ConnectionError:
        pass
    finally:
        if not item["done"]:
            _ended(item, 126 if item["exit_code"] is None else item["exit_code"])
        await conn.finish()
    return conn.response


async def _drain(item: dict[str, Any], replies: Any) -> None:
    try:
        async for msg in replies:
            if "exit_code" in msg:
                _ended(item, msg["exit_code"])
    except errors.EngineError:
        pass
    if not item["done"]:
        _ended(item, 126)


def _ended(item: dict[str, Any], code: int) -> None:
    item.update(running=False, done=True, exit_code=code)


async def inspect(request: web.Request) -> web.StreamResponse:
    """``GET /exec/EID/json``."""
    item = bridge_of(request).execs.get(request.match_info["id"])
    return json_ok({
        "ID": item["ID"], "Running": item["running"], "ExitCode": item["exit_code"],
        "ProcessConfig": {"entrypoint": item["cmd"][0], "arguments": item["cmd"][1:],
                          "tty": item["tty"], "user": item["user"],
                          "privileged": item["privileged"]},
        "OpenStdin": item["stdin"], "OpenStdout": bool(item["stdout"]),
        "OpenStderr": bool(item["stderr"]), "ContainerID": item["container"],
        "Pid": item["pid"], "CanRemove": False, "DetachKeys": ""})


async def resize(request: web.Request) -> web.StreamResponse:
    """``POST /exec/EID/resize?h=&w=``: the size of a ``-t`` exec's terminal."""
    item = bridge_of(request).execs.get(request.match_info["id"])
    size = shapes.terminal_size(request.query)
    if size is not None and item["tty"] and item["running"]:
        try:  # the CLI sends it right after the start, maybe before the first answer
            await asyncio.wait_for(item["resizable"].wait(), 5)
        except asyncio.TimeoutError:
            return web.Response(status=200)
        if item["resize"] is not None:
            try:
                await item["resize"].send({"rows": size[0], "cols": size[1]})
            except chan.ChannelError:
                pass  # the process has ended
    return web.Response(status=200)


ROUTES = [
    ("POST", "/containers/{id}/exec", create),
    ("POST", "/exec/{id}/start", start),
    ("GET", "/exec/{id}/json", inspect),
    ("POST", "/exec/{id}/resize", resize),
]
