"""bridges.etcd: services and hosts in etcd (the v3 API, through aetcd).

Key layout (values are JSON)::

    <prefix>/services/<service name>/<service id>   a Service (address, port, tags, ...)
    <prefix>/hosts/<host id>                          a HostInfo (endpoint, labels, capacity)

Every key this bridge writes is attached to one lease (``ttl`` seconds) that a
background task keeps alive; a bridge that dies takes its entries with it within the
TTL.  Several endpoints may be given: the bridge moves to the next one when its
current member stops answering (a killed leader, a partition).

aetcd is asyncio; this registry runs it on a private event loop thread and offers the
blocking :class:`~bridges.sync.Registry` interface.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit

from .errors import BridgeError, RegistryUnavailable, SessionExpired
from .loopthread import LoopThread
from .services import Service
from .sync import HostInfo, Registry


def parse_endpoints(endpoints: str | list[str]) -> list[tuple[str, int]]:
    """``http://h1:2379,http://h2:2379`` (or a list) -> [(host, port), ...]."""
    items = endpoints.split(",") if isinstance(endpoints, str) else endpoints
    out = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        u = urlsplit(item if "://" in item else "http://" + item)
        if not u.hostname:
            raise BridgeError(f"bad etcd endpoint {item!r}: use http://HOST:PORT")
        out.append((u.hostname, u.port or 2379))
    if not out:
        raise BridgeError("no etcd endpoint given")
    return out


class EtcdRegistry(Registry):
    """A host's services and host record in etcd, under one lease."""

    def __init__(self, endpoints: str | list[str], *, prefix: str = "/chanbox",
                 ttl: int = 10, timeout: float = 2.0) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.prefix = "/" + prefix.strip("/")
        self.ttl = ttl
        self.timeout = timeout
        self._loop = LoopThread("cbx-etcd-loop")
        self._client: Any = None
        self._lease: Any = None
        self._next = 0
        self._lost: BaseException | None = None
        self._keepalive: asyncio.Task | None = None

    # -- Registry --------------------------------------------------------------------

    def register(self, service: Service) -> None:
        key = f"{self.prefix}/services/{service.name}/{service.id}"
        self._call(self._put(key, service.to_json()))

    def deregister(self, service: Service) -> None:
        self._call(self._delete(f"{self.prefix}/services/{service.name}/{service.id}"))

    def registered(self) -> list[Service]:
        return [Service.from_json(v) for v in self._call(self._values(f"{self.prefix}/services/"))]

    def register_host(self, host: HostInfo) -> None:
        import json

        self._call(self._put(f"{self.prefix}/hosts/{host.id}", json.dumps(host.to_dict())))

    def hosts(self) -> list[dict[str, Any]]:
        """Every engine registered under the prefix (``chanbox hosts``)."""
        import json

        return [json.loads(v) for v in self._call(self._values(f"{self.prefix}/hosts/"))]

    def check(self) -> None:
        lost, self._lost = self._lost, None
        if lost is not None:
            raise SessionExpired(f"etcd lease lost ({lost}); registering everything again")

    def close(self) -> None:
        """Stop the keep-alive and disconnect (the lease then runs out: entries expire)."""
        async def shut() -> None:
            if self._keepalive is not None:
                self._keepalive.cancel()
            if self._client is not None:
                await self._client.close()

        self._loop.close(shut(), self.timeout)

    # -- the loop thread -------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self._loop.run(coro, self.timeout * (len(self.endpoints) + 2))

    async def _connected(self) -> Any:
        """The current client with a live lease, connecting (or failing over) if needed."""
        import aetcd

        if self._client is not None:
            return self._client
        errors = []
        for _ in range(len(self.endpoints)):
            host, port = self.endpoints[self._next % len(self.endpoints)]
            self._next += 1
            client = aetcd.Client(host=host, port=port, timeout=self.timeout)
            try:
                await client.connect()
                lease = await client.lease(self.ttl)
            except (aetcd.ClientError, OSError, asyncio.TimeoutError) as exc:
                errors.append(f"{host}:{port}: {exc}")
                await _close_quietly(client)
                continue
            self._client, self._lease = client, lease
            self._keepalive = asyncio.ensure_future(self._keep_alive(client, lease))
            return client
        raise RegistryUnavailable("no etcd endpoint answers: " + "; ".join(errors))

    async def _keep_alive(self, client: Any, lease: Any) -> None:
        import aetcd

        while True:
            await asyncio.sleep(max(self.ttl / 3, 0.2))
            try:
                reply = await client.refresh_lease(lease.id)
                if reply is None or reply.TTL <= 0:
                    raise SessionExpired("the lease expired before it was refreshed")
            except (aetcd.ClientError, OSError, asyncio.TimeoutError, BridgeError) as exc:
                await self._drop(client, exc)
                return

    async def _drop(self, client: Any, exc: BaseException) -> None:
        """Forget a failed client; the next call fails over and the bridge resyncs."""
        if self._client is client:
            self._client, self._lease, self._lost = None, None, exc
        await _close_quietly(client)

    async def _op(self, fn: Any) -> Any:
        import aetcd

        client = await self._connected()
        try:
            return await fn(client)
        except (aetcd.ClientError, OSError, asyncio.TimeoutError) as exc:
            await self._drop(client, exc)
            raise RegistryUnavailable(f"etcd: {exc}") from exc

    async def _put(self, key: str, value: str) -> None:
        await self._op(lambda c: c.put(key.encode(), value.encode(), lease=self._lease))

    async def _delete(self, key: str) -> None:
        await self._op(lambda c: c.delete(key.encode()))

    async def _values(self, prefix: str) -> list[bytes]:
        result = await self._op(lambda c: c.get_prefix(prefix.encode()))
        return [kv.value for kv in result]


async def _close_quietly(client: Any) -> None:
    try:
        await client.close()
    except Exception:  # noqa: BLE001 -- it is broken already; closing must not add to it
        pass
