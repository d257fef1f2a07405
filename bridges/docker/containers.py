"""``/containers/...``: create, list, inspect, start, stop, kill, wait, rm, logs, attach.

Two things the docker CLI's ``run`` needs that the engine's verbs do not give directly:

- it attaches and asks to ``wait`` *before* it starts the container.  The engine
  attaches to and waits on running containers only, so :class:`Tracker` holds those
  requests until the container has started (set by our ``start``; a poll covers starts
  made by other clients), and the output is then read from the container's log
  (followed), which holds everything from its first byte;
- ``run --rm`` without ``-d`` waits with ``condition=removed``.  If the engine's
  monitor removed the container at its exit, the log could be gone before the bridge
  read it; so for an attached ``--rm`` container the bridge itself removes it once the
  output is delivered, and answers the wait with the exit code it kept.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from engine import errors
from engine.filters import filter_containers
from engine.timefmt import parse_time_ns

from . import mux, shapes
from .server import bridge_of, body_json, flag, json_ok, send_tar

_POLL = 0.25  # how often a held attach/wait looks whether another client started it


class Tracker:
    """Per-container state the bridge keeps: started signals, bridge-owned removals."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._started: dict[str, asyncio.Event] = {}
        self._owned: dict[str, asyncio.Future] = {}  # attached --rm: exit code after rm
        self._attached: dict[str, int] = {}
        self._detached: dict[str, asyncio.Event] = {}

    def own_removal(self, cid: str) -> None:
        """The bridge removes ``cid`` after its exit (an attached ``--rm``)."""
        self._owned[cid] = asyncio.get_running_loop().create_future()

    def owned(self, cid: str) -> asyncio.Future | None:
        """The future exit code of a bridge-removed container."""
        return self._owned.get(cid)

    def started(self, cid: str) -> None:
        """``cid`` has started: release held attaches and waits; reap if owned."""
        ev = self._started.get(cid)  # only held requests have one (no per-container leak)
        if ev is not None:
            ev.set()
        if cid in self._owned:
            asyncio.ensure_future(self._reap(cid))

    def start_failed(self, cid: str, exc: errors.EngineError) -> None:
        """The start of an owned container failed: remove it, as Docker's ``--rm`` does."""
        if cid in self._owned:
            asyncio.ensure_future(self._remove(cid, exc.exit_status))

    async def until_started(self, cid: str) -> None:
        """Return once ``cid`` is no longer ``created``; NotFound if it is removed."""
        ev = self._started.setdefault(cid, asyncio.Event())
        try:
            while True:
                try:
                    await asyncio.wait_for(ev.wait(), _POLL)
                    return
                except asyncio.TimeoutError:
                    c = await self.client.call("get", id=cid)
                    if c["State"]["Status"] != "created":
                        return
        finally:
            if ev.is_set():
                self._started.pop(cid, None)

    def attach_begin(self, cid: str) -> None:
        """An attach to ``cid`` began (an owned container is removed after the last ends)."""
        self._attached[cid] = self._attached.get(cid, 0) + 1
        if cid in self._owned:
            self._detached.setdefault(cid, asyncio.Event()).clear()

    def attach_end(self, cid: str) -> None:
        """An attach to ``cid`` ended."""
        n = self._attached.get(cid, 1) - 1
        if n > 0:
            self._attached[cid] = n
            return
        self._attached.pop(cid, None)
        ev = self._detached.get(cid)
        if ev is not None:
            ev.set()

    async def _reap(self, cid: str) -> None:
        code = 137
        try:
            code = (await self.client.call("wait", id=cid, condition="not-running"))["exit_code"]
            ev = self._detached.get(cid)
            if cid in self._attached and ev is not None:  # the client reads the whole log first
                try:
                    await asyncio.wait_for(ev.wait(), 30)
                except asyncio.TimeoutError:
                    pass
        except errors.EngineError:
            pass
        await self._remove(cid, code)

    async def _remove(self, cid: str, code: int) -> None:
        try:
            await self.client.call("rm", id=cid, force=True, volumes=True)  # as docker's --rm
        except errors.NotFound:
            pass
        except errors.EngineError as exc:
            print(f"chanbox bridge docker: could not remove {cid[:12]}: {exc}", flush=True)
        fut = self._owned.pop(cid, None)
        self._detached.pop(cid, None)
        if fut is not None and not fut.done():
            fut.set_result(code)


async def _get(request: web.Request) -> dict[str, Any]:
    return await bridge_of(request).client.call("get", id=request.match_info["id"])


async def create(request: web.Request) -> web.StreamResponse:
    """``POST /containers/create?name=``."""
    b = bridge_of(request)
    body = await body_json(request) or {}
    args = shapes.create_args(body, request.query.get("name"))
    attached = any(body.get(k) for k in ("AttachStdin", "AttachStdout", "AttachStderr"))
    owned = args["auto_remove"] and attached
    if owned:
        args["auto_remove"] = False
    try:
        cid = (await b.client.call("create", **args))["id"]
    except errors.NotFound as exc:
        if "image" in str(exc).lower():
            raise errors.NotFound(f"No such image: {_full_ref(args['image'])}") from None
        raise
    if owned:
        b.tracker.own_removal(cid)
    return json_ok({"Id": cid, "Warnings": []}, status=201)


def _full_ref(ref: str) -> str:
    last = ref.rsplit("/", 1)[-1]
    return ref if ":" in last or "@" in ref else ref + ":latest"


async def list_(request: web.Request) -> web.StreamResponse:
    """``GET /containers/json?all=&filters=&limit=``."""
    items = await bridge_of(request).client.call("ls", all=flag(request, "all"))
    out = filter_containers([shapes.container_summary(c) for c in items],
                                   shapes.parse_filters(request.query.get("filters")))
    limit = int(request.query.get("limit") or -1)
    return json_ok(out[:limit] if limit > 0 else out)


async def inspect(request: web.Request) -> web.StreamResponse:
    """``GET /containers/ID/json``."""
    return json_ok(shapes.container_inspect(await _get(request)))


async def start(request: web.Request) -> web.StreamResponse:
    """``POST /containers/ID/start``: 204, or 304 when it runs already."""
    b = bridge_of(request)
    c = await _get(request)
    if c["State"]["Running"]:
        return web.Response(status=304)
    try:
        await b.client.call("start", id=c["Id"])
    except errors.EngineError as exc:
        b.tracker.start_failed(c["Id"], exc)
        raise
    b.tracker.started(c["Id"])
    return web.Response(status=204)


def _timeout(request: web.Request) -> float | None:
    raw = request.query.get("t") or request.query.get("timeout")
    return float(raw) if raw not in (None, "") else None


async def stop(request: web.Request) -> web.StreamResponse:
    """``POST /containers/ID/stop?t=``: 204, or 304 when it is not running."""
    b = bridge_of(request)
    c = await _get(request)
    if not c["State"]["Running"]:
        return web.Response(status=304)
    t = _timeout(request)
    await b.client.call("stop", id=c["Id"], **({"timeout": t} if t is not None else {}))
    return web.Response(status=204)


async def restart(request: web.Request) -> web.StreamResponse:
    """``POST /containers/ID/restart?t=``."""
    b = bridge_of(request)
    c = await _get(request)
    t = _timeout(request)
    if c["State"]["Running"]:
        await b.client.call("stop", id=c["Id"], **({"timeout": t} if t is not None else {}))
    await b.client.call("start", id=c["Id"])
    b.tracker.started(c["Id"])
    return web.Response(status=204)


async def kill(request: web.Request) -> web.StreamResponse:
    """``POST /containers/ID/kill?signal=``."""
    c = await _get(request)
    if not c["State"]["Running"]:
        raise errors.Conflict(f"Cannot kill container: {request.match_info['id']}: "
                              f"container {c['Id'][:12]} is not running")
    await bridge_of(request).client.call("kill", id=c["Id"],
                                         signal=request.query.get("signal") or "KILL")
    return web.Response(status=204)


async def pause(request: web.Request) -> web.StreamResponse:
    """``POST /containers/ID/pause``."""
    await bridge_of(request).client.call("pause", id=request.match_info["id"])
    return web.Response(status=204)


async def unpause(request: web.Request) -> web.StreamResponse:
    """``POST /containers/ID/unpause``."""
    await bridge_of(request).client.call("unpause", id=request.match_info["id"])
    return web.Response(status=204)


async def remove(request: web.Request) -> web.StreamResponse:
    """``DELETE /containers/ID?force=&v=`` (``v``: its anonymous volumes too)."""
    await bridge_of(request).client.call("rm", id=request.match_info["id"],
                                         force=flag(request, "force"), volumes=flag(request, "v"))
    return web.Response(status=204)


async def wait(request: web.Request) -> web.StreamResponse:
    """``POST /containers/ID/wait?condition=``.  The headers go out at once (the CLI
    starts the container only once they arrived); the body when the condition holds."""
    b = bridge_of(request)
    condition = request.query.get("condition") or "not-running"
    if condition not in ("not-running", "next-exit", "removed"):
        raise errors.InvalidArgument(f"invalid condition {condition!r}: use not-running, "
                                     "next-exit or removed")
    c = await _get(request)
    cid = c["Id"]
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    request.writer.send_headers()
    error = None
    try:
        code = await _wait_code(b, cid, c["State"]["Status"], condition)
    except errors.EngineError as exc:
        code, error = -1, {"Message": str(exc)}
    try:
        await resp.write(_json_line({"StatusCode": code, "Error": error}))
        await resp.write_eof()
    except ConnectionError:
        pass  # the client stopped waiting
    return resp


def _json_line(value: Any) -> bytes:
    return (json.dumps(value) + "\n").encode()


async def _wait_code(b: Any, cid: str, status: str, condition: str) -> int:
    owned = b.tracker.owned(cid)
    if owned is not None:
        return await asyncio.shield(owned)
    if status == "created":
        if condition == "not-running":
            return 0
        await b.tracker.until_started(cid)
    try:
        return (await b.client.call("wait", id=cid, condition=condition))["exit_code"]
    except errors.NotFound:
        if condition != "removed":
            raise
    # removed by its monitor before our wait arrived: its exit code is in the journal
    code = 0
    async for ev in b.client.stream("watch", since=0, follow=False,
                                    filters=[f"container={cid}", "event=die"]):
        code = int((ev.get("attributes") or {}).get("exitCode", code))
    return code


async def logs(request: web.Request) -> web.StreamResponse:
    """``GET /containers/ID/logs?follow=&stdout=&stderr=&tail=&timestamps=``."""
    b = bridge_of(request)
    c = await _get(request)
    tty = bool(c["Config"].get("Tty"))
    want = {s for s in ("stdout", "stderr") if flag(request, s)}
    if not want:
        raise errors.InvalidArgument("you must choose at least one stream (stdout=1 or stderr=1)")
    tail_raw = request.query.get("tail") or "all"
    tail = None if tail_raw == "all" else int(tail_raw)
    stamps = flag(request, "timestamps")
    window = {}
    for key in ("since", "until"):  # Unix seconds (.nanoseconds), 0 for none: the CLI's form
        raw = request.query.get(key) or "0"
        try:
            value = parse_time_ns(raw) if re.fullmatch(r"\d+(\.\d+)?", raw) else None
        except ValueError:
            value = None
        if value is None:
            raise errors.InvalidArgument(f"{key} must be Unix seconds, not {raw!r}")
        if value:
            window[key + "_ns"] = value
    resp = web.StreamResponse(headers={"Content-Type": mux.RAW if tty else mux.MULTIPLEXED})
    await resp.prepare(request)
    request.writer.send_headers()
    try:
        async for entry in _log_entries(b, id=c["Id"], follow=flag(request, "follow"),
                                        tail=tail, **window):
            stream = entry.get("stream", "stdout")
            if stream not in want:
                continue
            data = entry["log"].encode("utf-8", "surrogateescape")
            if stamps:
                data = entry.get("time", "").encode() + b" " + data
            await resp.write(data if tty else mux.frame(stream, data))
        await resp.write_eof()
    except ConnectionError:
        pass  # the client stopped following
    return resp


async def attach(request: web.Request) -> web.StreamResponse:
    """``POST /containers/ID/attach?stream=&stdin=&stdout=&stderr=``, hijacked (101)."""
    b = bridge_of(request)
    c = await _get(request)
    cid, status = c["Id"], c["State"]["Status"]
    if status not in ("created", "running", "paused"):
        raise errors.Conflict("You cannot attach to a stopped container, start it first")
    tty = bool(c["Config"].get("Tty"))
    want = {s for s in ("stdout", "stderr") if flag(request, s)}
    stdin = flag(request, "stdin") and bool(c["Config"].get("OpenStdin"))
    conn = await open_stream(request, tty)
    b.tracker.attach_begin(cid)
    try:
        if status == "created":
            await b.tracker.until_started(cid)
            if stdin:
                asyncio.ensure_future(_feed_stdin(b, cid, conn))
            output = _log_entries(b, id=cid, follow=True)
            key = "log"
        else:
            output = b.client.stream("attach", id=cid, stdin=stdin, stdout="stdout" in want,
                                     stderr="stderr" in want)
            key = "data"
        await _copy_output(output, conn, want, tty, key)
    except (errors.EngineError, ConnectionError):
        pass  # the container or the client went away: the connection just ends
    finally:
        b.tracker.attach_end(cid)
        await conn.finish()
    return conn.response


async def _feed_stdin(b: Any, cid: str, conn: Any) -> None:
    """Copy the hijacked connection's input to the container's stdin."""
    replies = b.client.stream("attach", id=cid, stdin=True, stdout=False, stderr=False)
    try:
        first = await replies.__anext__()
        await pump_stdin(conn, first.get("stdin"))
        async for _ in replies:
            pass
    except (errors.EngineError, StopAsyncIteration, ConnectionError):
        pass


async def pump_stdin(conn: Any, stream: Any) -> None:
    """Client bytes into a chan byte stream until the client's EOF, then close it."""
    if stream is None or conn.hijacked is None:
        return
    import chan

    try:
        while data := await conn.hijacked.read():
            await stream.write(data)
    except chan.ChannelError:
        return  # the process ended first
    try:
        await stream.close()
    except chan.ChannelError:
        pass


async def _log_entries(b: Any, **args: Any) -> AsyncIterator[dict[str, Any]]:
    """The ``log`` verb's entries, asked for a read of the log at a time: a chatty
    container's output crosses the daemon's session in a few large messages, not in
    a message per line."""
    async for batch in b.client.stream("log", batch=True, **args):
        for entry in batch if isinstance(batch, list) else [batch]:  # (an older daemon)
            yield entry


async def _copy_output(output: Any, conn: Any, want: set[str], tty: bool, key: str) -> None:
    async for msg in output:
        if "stdin" in msg and key == "data" and msg.get("stdin") is not None:
            asyncio.ensure_future(pump_stdin(conn, msg["stdin"]))
            continue
        if key not in msg:
            continue
        stream = msg.get("stream", "stdout")
        if stream not in want:
            continue
        data = msg[key]
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        await conn.write(data if tty else mux.frame(stream, data))


class _Stream:
    """An attach/exec answer: a hijacked connection (101), or a plain 200 stream."""

    def __init__(self, hijacked: mux.Hijacked | None, response: web.StreamResponse) -> None:
        self.hijacked = hijacked
        self.response = response

    async def write(self, data: bytes) -> None:
        if self.hijacked is not None:
            await self.hijacked.write(data)
        else:
            await self.response.write(data)

    async def finish(self) -> None:
        if self.hijacked is not None:
            self.hijacked.close()
        else:
            try:
                await self.response.write_eof()
            except ConnectionError:
                pass


async def open_stream(request: web.Request, tty: bool) -> _Stream:
    """Answer an attach/exec: 101 and the connection when the client asked to upgrade."""
    content_type = mux.RAW if tty else mux.MULTIPLEXED
    if "upgrade" in request.headers.get("Connection", "").lower():
        hijacked = await mux.Hijacked.upgrade(request, content_type)
        return _Stream(hijacked, hijacked.response)
    resp = web.StreamResponse(headers={"Content-Type": content_type})
    await resp.prepare(request)
    request.writer.send_headers()
    return _Stream(None, resp)


async def rename(request: web.Request) -> web.StreamResponse:
    """``POST /containers/ID/rename?name=``: 204."""
    name = request.query.get("name")
    if not name:
        raise errors.InvalidArgument("name is required")
    await bridge_of(request).client.call("rename", id=request.match_info["id"], name=name)
    return web.Response(status=204)


async def update(request: web.Request) -> web.StreamResponse:
    """``POST /containers/ID/update``: Memory, NanoCpus (or CpuQuota/CpuPeriod) and
    PidsLimit; the other resources this engine does not manage are refused."""
    body = await body_json(request)
    if not isinstance(body, dict):
        raise errors.InvalidArgument("the update must be a JSON object")
    unsupported = [k for k in ("CpuShares", "CpusetCpus", "CpusetMems", "BlkioWeight",
                               "MemoryReservation", "KernelMemory") if body.get(k)]
    if unsupported:
        raise errors.InvalidArgument(f"update: {unsupported[0]} is not supported; memory, cpus "
                                     "and pids-limit are")
    cpus = (body.get("NanoCpus") or 0) / 1e9
    if not cpus and body.get("CpuQuota") and body.get("CpuPeriod"):
        cpus = body["CpuQuota"] / body["CpuPeriod"]
    await bridge_of(request).client.call(
        "update", id=request.match_info["id"], memory=int(body.get("Memory") or 0) or None,
        cpus=cpus or None, pids_limit=int(body.get("PidsLimit") or 0) or None)
    return json_ok({"Warnings": []})


async def prune(request: web.Request) -> web.StreamResponse:
    """``POST /containers/prune``: remove every container that is not running."""
    if shapes.parse_filters(request.query.get("filters")):
        raise errors.InvalidArgument("container prune takes no filters here")
    deleted = (await bridge_of(request).client.call("container_prune"))["deleted"]
    return json_ok({"ContainersDeleted": deleted or None, "SpaceReclaimed": 0})


async def export(request: web.Request) -> web.StreamResponse:
    """``GET /containers/ID/export``: the container's filesystem as a tar."""
    client = bridge_of(request).client
    return await send_tar(request, lambda path: client.call(
        "export", id=request.match_info["id"], path=path))


def _stat_header(info: dict[str, Any]) -> dict[str, str]:
    """Docker's ``X-Docker-Container-Path-Stat``: the path's stat, JSON in base64."""
    return {"X-Docker-Container-Path-Stat": base64.b64encode(json.dumps(info).encode()).decode()}


def _archive_path(request: web.Request) -> str:
    path = request.query.get("path", "")
    if not path:
        raise errors.InvalidArgument("give the path in the container (path=...)")
    return path if path.startswith("/") else "/" + path


async def archive_head(request: web.Request) -> web.StreamResponse:
    """``HEAD /containers/ID/archive?path=``: the path's stat, in a header only."""
    info = await bridge_of(request).client.call(
        "archive_stat", id=request.match_info["id"], path=_archive_path(request))
    return web.Response(status=200, headers=_stat_header(info))


async def archive_get(request: web.Request) -> web.StreamResponse:
    """``GET /containers/ID/archive?path=``: a tar of the path (``docker cp`` out)."""
    import chan
    import chan.aio

    from engine.client import engine_error

    ours, theirs = chan.aio.stream_pair()
    rx = await bridge_of(request).client.receiver(
        "archive_get", id=request.match_info["id"], path=_archive_path(request), stream=theirs)
    try:
        try:
            info = (await rx.recv())["stat"]
        except chan.RemoteError as exc:
            raise engine_error(exc) from None
        resp = web.StreamResponse(headers={"Content-Type": "application/x-tar", **_stat_header(info)})
        await resp.prepare(request)
        try:
            while data := await ours.read(1 << 20):
                await resp.write(data)
            await resp.write_eof()
        except (ConnectionError, chan.ChannelError):
            pass  # the client went away, or the engine failed midway: the tar ends short
        return resp
    finally:
        with contextlib.suppress(chan.ChannelError):
            await ours.close()
        rx.close()


async def archive_put(request: web.Request) -> web.StreamResponse:
    """``PUT /containers/ID/archive?path=&copyUIDGID=``: extract the tar in the body into
    the directory ``path`` (``docker cp`` in)."""
    import chan
    import chan.aio

    from engine.client import engine_error

    ours, theirs = chan.aio.stream_pair()
    rx = await bridge_of(request).client.receiver(
        "archive_put", id=request.match_info["id"], path=_archive_path(request), stream=theirs,
        copy_uid_gid=flag(request, "copyUIDGID"))
    try:
        try:
            async for chunk in request.content.iter_chunked(1 << 20):
                await ours.write(chunk)
            await ours.close_write()
        except chan.ChannelError:
            pass  # the engine stopped reading: its answer says why
        try:
            await rx.recv()
        except chan.RemoteError as exc:
            raise engine_error(exc) from None
        return web.Response(status=200)
    finally:
        with contextlib.suppress(chan.ChannelError):
            await ours.close()
        rx.close()


async def stats(request: web.Request) -> web.StreamResponse:
    """``GET /containers/ID/stats?stream=&one-shot=``: a reading a second while the
    container runs, or one (two readings half a second apart, so that ``docker stats
    --no-stream`` has a CPU figure; ``one-shot``: a single reading)."""
    client = bridge_of(request).client
    cid = request.match_info["id"]
    if not flag(request, "stream", True):
        interval = 0.0 if flag(request, "one-shot") else 0.5
        return json_ok(await client.call("stats", id=cid, interval=interval))
    first = await client.call("stats", id=cid)  # a missing container is a plain 404
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    previous = first
    try:
        while True:
            await asyncio.sleep(1.0)
            try:
                previous = await client.call("stats", id=cid, previous=previous)
            except errors.EngineError:
                break  # it stopped (or went away): the stream ends, as Docker's does
            await resp.write(json.dumps(previous).encode() + b"\n")
        await resp.write_eof()
    except ConnectionError:
        pass  # the client stopped reading
    return resp


async def top(request: web.Request) -> web.StreamResponse:
    """``GET /containers/ID/top``: ``docker top`` (``ps -ef``'s columns; other
    ``ps_args`` are refused, the engine does not run the host's ps)."""
    if request.query.get("ps_args", "-ef") not in ("", "-ef"):
        raise errors.InvalidArgument("only the default ps arguments (-ef) are supported")
    return json_ok(await bridge_of(request).client.call("top", id=request.match_info["id"]))


async def changes(request: web.Request) -> web.StreamResponse:
    """``GET /containers/ID/changes``: ``docker diff``."""
    return json_ok(await bridge_of(request).client.call("changes", id=request.match_info["id"]))


async def resize(request: web.Request) -> web.StreamResponse:
    """``POST /containers/ID/resize?h=&w=``: the size of a ``-t`` container's terminal."""
    c = await _get(request)
    size = shapes.terminal_size(request.query)
    if size is not None and c["Config"].get("Tty"):
        try:
            await bridge_of(request).client.call("resize", id=c["Id"], rows=size[0], cols=size[1])
        except errors.Conflict:
            pass  # not running yet: the CLI sends the size again once it is
    return web.Response(status=200)


ROUTES = [
    ("POST", "/containers/create", create),
    ("GET", "/containers/json", list_),
    ("GET", "/containers/{id}/json", inspect),
    ("POST", "/containers/{id}/start", start),
    ("POST", "/containers/{id}/stop", stop),
    ("POST", "/containers/{id}/restart", restart),
    ("POST", "/containers/{id}/kill", kill),
    ("POST", "/containers/{id}/pause", pause),
    ("POST", "/containers/{id}/unpause", unpause),
    ("POST", "/containers/{id}/wait", wait),
    ("POST", "/containers/{id}/attach", attach),
    ("POST", "/containers/{id}/resize", resize),
    ("GET", "/containers/{id}/changes", changes),
    ("GET", "/containers/{id}/top", top),
    ("GET", "/containers/{id}/stats", stats),
    ("GET", "/containers/{id}/export", export),
    ("HEAD", "/containers/{id}/archive", archive_head),
    ("GET", "/containers/{id}/archive", archive_get),
    ("PUT", "/containers/{id}/archive", archive_put),
    ("POST", "/containers/prune", prune),
    ("POST", "/containers/{id}/update", update),
    ("POST", "/containers/{id}/rename", rename),
    ("GET", "/containers/{id}/logs", logs),
    ("DELETE", "/containers/{id}", remove),
]
