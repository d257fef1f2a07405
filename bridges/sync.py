"""The bridge loop: the engine's lifecycle carried into a discovery system, registrator done right.

A :class:`Registry` is one discovery system (etcd, ZooKeeper, Serf) seen as a set of
services this host owns plus one host record.  :class:`Bridge` keeps it equal to what
runs on the engine:

1. connect to the daemon (forever, with backoff) and subscribe to its events first,
   resuming after the last event handled (``since``), so nothing falls between;
2. resync: register every service of every running container, deregister what this
   host registered that no longer runs (after a crash, or events missed while the
   bridge was down), and (re)register the host itself;
3. apply events as they come: ``start`` registers, ``die``/``destroy``/``pause``...
   deregister.

Registration is idempotent, so a replayed event or a second resync changes nothing.
Any failure of either side ends the round; the next round starts at 1.
"""

from __future__ import annotations

import abc
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.errors import EngineError

from .errors import BridgeError
from .services import Service, services_of

_GONE = frozenset({"die", "destroy", "pause", "oom"})
_BACKOFF_MIN, _BACKOFF_MAX = 0.1, 5.0
_POLL = 0.25  # how often an idle bridge checks its registry's health and ``stop``


@dataclass(frozen=True)
class HostInfo:
    """An engine, as a discovery system lists it (``chanbox hosts``)."""

    id: str
    endpoint: str
    labels: dict[str, str] = field(default_factory=dict)
    ncpu: int = 0
    memory: int = 0
    version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "endpoint": self.endpoint, "labels": self.labels,
                "ncpu": self.ncpu, "memory": self.memory, "version": self.version}


class Registry(abc.ABC):
    """One discovery system, from the point of view of one host."""

    @abc.abstractmethod
    def register(self, service: Service) -> None:
        """Make ``service`` visible (idempotent)."""

    @abc.abstractmethod
    def deregister(self, service: Service) -> None:
        """Remove ``service`` (a service that is not there is fine)."""

    @abc.abstractmethod
    def registered(self) -> list[Service]:
        """The services this host has registered (what resync compares against)."""

    @abc.abstractmethod
    def register_host(self, host: HostInfo) -> None:
        """Make this engine visible to ``chanbox hosts``."""

    def check(self) -> None:
        """Raise a :class:`BridgeError` if entries may have been lost since the last
        call (an expired lease, a new session): the bridge then resyncs."""

    def close(self) -> None:
        """Let go of the connection (entries with a TTL then expire)."""


@dataclass
class Options:
    """How a bridge names and places services."""

    host: str = field(default_factory=socket.gethostname)
    host_ip: str = "127.0.0.1"
    internal: bool = False
    explicit: bool = False
    labels: dict[str, str] = field(default_factory=dict)


class Bridge:
    """Keeps a :class:`Registry` in step with one engine daemon."""

    def __init__(self, registry: Registry, connect: Callable[[], Any], endpoint: str,
                 options: Options | None = None,
                 log: Callable[[str], None] = lambda msg: None) -> None:
        self.registry = registry
        self.connect = connect
        self.endpoint = endpoint
        self.options = options or Options()
        self.log = log
        self.since: int | None = None  # the last event handled
        self._by_container: dict[str, list[Service]] = {}
        #: set once the first resync is done (tests and benchmarks wait on it)
        self.synced = threading.Event()

    def run(self, stop: threading.Event) -> None:
        """Bridge until ``stop`` is set, reconnecting to both sides with backoff."""
        delay = _BACKOFF_MIN
        while not stop.is_set():
            started = time.monotonic()
            try:
                self._round(stop)
            except (EngineError, BridgeError, OSError) as exc:
                self.log(f"lost: {exc}; reconnecting")
            except Exception as exc:  # noqa: BLE001 -- chan's errors and any client bug:
                self.log(f"lost: {exc!r}; reconnecting")  # the bridge must outlive them
            self.synced.clear()
            if time.monotonic() - started > 10:
                delay = _BACKOFF_MIN  # it ran for a while: start the backoff over
            stop.wait(delay)
            delay = min(delay * 2, _BACKOFF_MAX)

    def _round(self, stop: threading.Event) -> None:
        import chan

        from engine.client import engine_error

        client = self.connect()
        try:
            events = client.receiver("watch", since=self.since, filters=["type=container"])
            self.resync(client)
            self.synced.set()
            self.log(f"in sync with {self.endpoint}")
            while not stop.is_set():
                self.registry.check()  # a lost lease or session ends the round: resync
                try:
                    event = events.recv(timeout=_POLL)
                except chan.Timeout:
                    continue
                except chan.RemoteError as exc:
                    raise engine_error(exc) from None
                self.apply(client, event)
                self.since = event["seq"]
        finally:
            client.close()

    def resync(self, client: Any) -> None:
        """Register what runs; deregister what this host registered that does not."""
        info = client.call("info")
        o = self.options
        self.registry.register_host(HostInfo(
            id=o.host, endpoint=self.endpoint, labels=o.labels, ncpu=info.get("NCPU", 0),
            memory=info.get("MemTotal", 0), version=info.get("ServerVersion", "")))
        wanted: dict[str, Service] = {}
        by_container: dict[str, list[Service]] = {}
        for row in client.call("ls"):
            try:
                container = client.call("get", id=row["Id"])
            except EngineError:
                continue  # removed meanwhile
            found = self._services(container)
            by_container[container["Id"]] = found
            wanted.update((s.id, s) for s in found)
        for old in self.registry.registered():
            if old.host == o.host and old.id not in wanted:
                self.registry.deregister(old)
                self.log(f"removed stale {old.name} ({old.id})")
        for s in wanted.values():
            self.registry.register(s)
        self._by_container = by_container

    def apply(self, client: Any, event: dict[str, Any]) -> None:
        """Carry one engine event into the registry."""
        if event.get("type") == "journal":  # a gap: events lost to rotation
            self.resync(client)
            return
        cid, action = event.get("id", ""), event.get("action", "")
        if action in ("start", "unpause", "rename"):  # (a service's id holds the name)
            try:
                container = client.call("get", id=cid)
            except EngineError:
                return  # gone already; its destroy event follows
            found = self._services(container)
            for s in set(self._by_container.get(cid, [])) - set(found):
                self.registry.deregister(s)
            for s in found:
                self.registry.register(s)
            self._by_container[cid] = found
        elif action in _GONE:
            for s in self._by_container.pop(cid, []):
                self.registry.deregister(s)

    def _services(self, container: dict[str, Any]) -> list[Service]:
        o = self.options
        return services_of(container, host=o.host, host_ip=o.host_ip, internal=o.internal,
                           explicit=o.explicit)
