"""bridges.serf: a small asyncio client of Serf's RPC, and the Serf registry.

Serf's RPC is msgpack over TCP: a request is a header ``{"Command", "Seq"}`` followed
by a body for the commands that take one; a response is a header ``{"Seq", "Error"}``
followed by a body for the commands that return one.  A ``stream`` request is answered
by an ack, then one header+body per event, until ``stop``.

Serf keeps no key-value state, so the registry is made of what Serf does have:
- the host: tags on the local agent (``cbx-host``, ``cbx-endpoint``, ``cbx-cpus``,
  ``cbx-mem``), visible to every member through ``members``;
- services: user events ``chanbox-register`` / ``chanbox-deregister`` (the service's
  JSON as payload), and ``chanbox-reset`` (``{"host"}``) when a bridge (re)starts:
  consumers forget that host's services, then the resync registers what runs.

The Debian agent panics when a stream client disconnects while events flow, so a
consumer keeps one long-lived stream per agent (:meth:`SerfClient.stream`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

from .errors import BridgeError, RegistryUnavailable, SessionExpired
from .loopthread import LoopThread
from .services import Service
from .sync import HostInfo, Registry

# commands whose response header is followed by a body
_WITH_BODY = frozenset({"members", "members-filtered", "stats", "get-coordinate", "query"})


class SerfError(BridgeError):
    """The agent answered with an error, or the connection failed."""


class SerfClient:
    """One RPC connection to a Serf agent."""

    def __init__(self) -> None:
        self._seq = itertools.count(1)
        self._waiting: dict[int, tuple[asyncio.Future, bool]] = {}
        self._streams: dict[int, asyncio.Queue] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None
        self.closed = asyncio.Event()

    async def connect(self, addr: str, timeout: float = 3.0) -> None:
        """Connect and handshake (RPC version 1)."""
        host, _, port = addr.rpartition(":")
        try:
            reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(host or "127.0.0.1", int(port)), timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise RegistryUnavailable(f"no Serf agent answers at {addr}: {exc}") from exc
        self._task = asyncio.ensure_future(self._read(reader))
        await self.call("handshake", {"Version": 1})

    async def call(self, command: str, body: dict[str, Any] | None = None) -> Any:
        """Send one command; its response body (or None)."""
        import msgpack

        if self._writer is None or self.closed.is_set():
            raise SerfError("the Serf connection is closed")
        seq = next(self._seq)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[seq] = (fut, command in _WITH_BODY)
        data = msgpack.packb({"Command": command, "Seq": seq})
        if body is not None:
            data += msgpack.packb(body)
        self._writer.write(data)
        await self._writer.drain()
        return await fut

    async def stream(self, kind: str = "user") -> AsyncIterator[dict[str, Any]]:
        """Every event of ``kind`` from now on (one long-lived stream per agent)."""
        import msgpack

        seq = next(self._seq)
        q: asyncio.Queue = asyncio.Queue()
        fut = asyncio.get_running_loop().create_future()
        self._waiting[seq] = (fut, False)
        self._streams[seq] = q
        assert self._writer is not None
        self._writer.write(msgpack.packb({"Command": "stream", "Seq": seq}) +
                           msgpack.packb({"Type": kind}))
        await self._writer.drain()
        await fut
        while True:
            item = await q.get()
            if item is None:
                raise SerfError("the Serf agent closed the stream")
            yield item

    async def _read(self, reader: asyncio.StreamReader) -> None:
        import msgpack

        unpacker = msgpack.Unpacker(raw=False)
        body_for: int | None = None
        try:
            while data := await reader.read(65536):
                unpacker.feed(data)
                for obj in unpacker:
                    if body_for is not None:
                        self._deliver(body_for, obj)
                        body_for = None
                        continue
                    body_for = self._header(obj)
        except (OSError, ValueError) as exc:
            self._fail(SerfError(f"Serf connection failed: {exc}"))
            return
        self._fail(SerfError("the Serf agent closed the connection"))

    def _header(self, header: dict[str, Any]) -> int | None:
        """Handle a response header; the seq whose body follows, if one does."""
        seq = header.get("Seq")
        if seq in self._waiting:
            fut, with_body = self._waiting[seq]
            if header.get("Error"):
                self._waiting.pop(seq)
                if not fut.done():
                    fut.set_exception(SerfError(f"serf: {header['Error']}"))
                return None
            if with_body:
                return seq
            self._waiting.pop(seq)
            if not fut.done():
                fut.set_result(None)
            return None
        if seq in self._streams:
            return seq  # an event of a stream: its body follows
        return None

    def _deliver(self, seq: int, body: Any) -> None:
        if seq in self._waiting:
            fut, _ = self._waiting.pop(seq)
            if not fut.done():
                fut.set_result(body)
        elif seq in self._streams:
            self._streams[seq].put_nowait(body)

    def _fail(self, exc: BaseException) -> None:
        self.closed.set()
        for fut, _ in self._waiting.values():
            if not fut.done():
                fut.set_exception(exc)
        self._waiting.clear()
        for q in self._streams.values():
            q.put_nowait(None)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
        self.closed.set()


class SerfRegistry(Registry):
    """This host in a Serf cluster: agent tags, and services as user events."""

    def __init__(self, rpc: str, *, timeout: float = 3.0) -> None:
        self.rpc = rpc
        self.timeout = timeout
        self._loop = LoopThread("cbx-serf-loop")
        self._client: SerfClient | None = None
        self._announced: dict[str, Service] = {}
        self._reset_sent = False  # connects on first use: an agent that is down is retried

    def _call(self, coro: Any) -> Any:
        return self._loop.run(coro, self.timeout * 3)

    async def _connected(self) -> SerfClient:
        if self._client is None or self._client.closed.is_set():
            client = SerfClient()
            await client.connect(self.rpc, self.timeout)
            self._client = client
        return self._client

    async def _request(self, command: str, body: dict[str, Any] | None = None) -> Any:
        client = await self._connected()
        try:
            return await asyncio.wait_for(client.call(command, body), self.timeout)
        except (SerfError, asyncio.TimeoutError, OSError) as exc:
            await client.close()
            raise RegistryUnavailable(f"serf at {self.rpc}: {exc}") from exc

    async def _event(self, name: str, payload: dict[str, Any]) -> None:
        await self._request("event", {"Name": name, "Coalesce": False,
                                      "Payload": json.dumps(payload).encode()})

    def register(self, service: Service) -> None:
        self._call(self._event("chanbox-register", json.loads(service.to_json())))
        self._announced[service.id] = service

    def deregister(self, service: Service) -> None:
        self._call(self._event("chanbox-deregister", json.loads(service.to_json())))
        self._announced.pop(service.id, None)

    def registered(self) -> list[Service]:
        return list(self._announced.values())

    def register_host(self, host: HostInfo) -> None:
        if not self._reset_sent:
            # a (re)started bridge: whatever this host announced before is void
            self._call(self._event("chanbox-reset", {"host": host.id}))
            self._reset_sent = True
        self._call(self._request("tags", {"Tags": {
            "cbx-host": host.id, "cbx-endpoint": host.endpoint, "cbx-cpus": str(host.ncpu),
            "cbx-mem": str(host.memory),
            **{f"cbx-label-{k}": v for k, v in host.labels.items()}}, "DeleteTags": []}))

    def hosts(self) -> list[dict[str, Any]]:
        """The engines among the cluster's live members (``chanbox hosts``)."""
        body = self._call(self._request("members"))
        out = []
        for m in body.get("Members", []):
            tags = m.get("Tags") or {}
            if "cbx-host" in tags and m.get("Status") == "alive":
                out.append({"id": tags["cbx-host"], "endpoint": tags.get("cbx-endpoint", ""),
                            "ncpu": int(tags.get("cbx-cpus", 0) or 0),
                            "memory": int(tags.get("cbx-mem", 0) or 0),
                            "labels": {k[len("cbx-label-"):]: v for k, v in tags.items()
                                       if k.startswith("cbx-label-")},
                            "member": m.get("Name", "")})
        return out

    def check(self) -> None:
        if self._client is not None and self._client.closed.is_set():
            self._client = None
            self._reset_sent = False
            self._announced.clear()
            raise SessionExpired(f"lost the Serf agent at {self.rpc}; announcing again")

    def close(self) -> None:
        async def shut() -> None:
            if self._client is not None:
                await self._client.close()

        self._loop.close(shut(), self.timeout)
