"""bridges.zookeeper: services and hosts as ephemeral ZooKeeper nodes (through kazoo).

Node layout (data is JSON)::

    <prefix>/services/<service name>/<service id>   a Service
    <prefix>/hosts/<host id>                          a HostInfo

Every node is ephemeral: it lives as long as this bridge's session.  When the session
is lost (the bridge was cut off longer than the session timeout) ZooKeeper has removed
them; kazoo makes a new session and :meth:`check` tells the bridge to resync, which
creates them again.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from .errors import RegistryUnavailable, SessionExpired
from .services import Service
from .sync import HostInfo, Registry


class ZooKeeperRegistry(Registry):
    """A host's services and host record as ephemeral nodes of one session."""

    def __init__(self, hosts: str, *, prefix: str = "/chanbox", timeout: float = 10.0) -> None:
        import logging

        from kazoo.client import KazooClient
        from kazoo.retry import KazooRetry

        # kazoo logs every failed connection attempt; without a handler of the
        # application's, Python would print each to stderr. We report failures ourselves.
        logging.getLogger("kazoo").addHandler(logging.NullHandler())
        self.hosts_spec = hosts
        self.prefix = "/" + prefix.strip("/")
        self._lost = threading.Event()
        # kazoo reconnects forever in the background; a server that is down is retried
        self.zk = KazooClient(hosts=hosts, timeout=timeout,
                              connection_retry=KazooRetry(max_tries=-1, max_delay=2))
        self.zk.add_listener(self._state)
        self.zk.start_async()

    def wait_connected(self, timeout: float = 10.0) -> None:
        """Block until the session is up (for one-shot readers such as ``hosts``)."""
        event = threading.Event()

        def ready(state: str) -> bool:
            if self.zk.connected:
                event.set()
                return True
            return False

        if not ready(""):
            self.zk.add_listener(ready)
            if not event.wait(timeout):
                raise RegistryUnavailable(f"no ZooKeeper server answers at {self.hosts_spec}")

    def _state(self, state: str) -> None:
        from kazoo.client import KazooState

        if state == KazooState.LOST:
            self._lost.set()  # the session and its ephemeral nodes are gone

    def _write(self, path: str, data: bytes) -> None:
        from kazoo.exceptions import KazooException, NodeExistsError

        try:
            try:
                self.zk.create(path, data, ephemeral=True, makepath=True)
            except NodeExistsError:
                self.zk.set(path, data)
        except KazooException as exc:
            raise RegistryUnavailable(f"zookeeper: write {path}: {exc!r}") from exc

    def register(self, service: Service) -> None:
        self._write(f"{self.prefix}/services/{service.name}/{service.id}",
                    service.to_json().encode())

    def deregister(self, service: Service) -> None:
        from kazoo.exceptions import KazooException, NoNodeError

        try:
            self.zk.delete(f"{self.prefix}/services/{service.name}/{service.id}")
        except NoNodeError:
            pass
        except KazooException as exc:
            raise RegistryUnavailable(f"zookeeper: {exc!r}") from exc

    def _children_data(self, path: str) -> list[bytes]:
        from kazoo.exceptions import KazooException, NoNodeError

        try:
            return [self.zk.get(f"{path}/{c}")[0] for c in self.zk.get_children(path)]
        except NoNodeError:
            return []
        except KazooException as exc:
            raise RegistryUnavailable(f"zookeeper: {exc!r}") from exc

    def registered(self) -> list[Service]:
        from kazoo.exceptions import NoNodeError

        out = []
        base = f"{self.prefix}/services"
        try:
            names = self.zk.get_children(base)
        except NoNodeError:
            return []
        for name in names:
            out += [Service.from_json(d) for d in self._children_data(f"{base}/{name}") if d]
        return out

    def register_host(self, host: HostInfo) -> None:
        self._write(f"{self.prefix}/hosts/{host.id}", json.dumps(host.to_dict()).encode())

    def hosts(self) -> list[dict[str, Any]]:
        """Every engine registered under the prefix (``chanbox hosts``)."""
        return [json.loads(d) for d in self._children_data(f"{self.prefix}/hosts") if d]

    def check(self) -> None:
        if self._lost.is_set():
            self._lost.clear()
            raise SessionExpired("the ZooKeeper session expired; creating the nodes again")

    def close(self) -> None:
        """End the session: ZooKeeper removes the ephemeral nodes at once."""
        try:
            self.zk.stop()
            self.zk.close()
        except Exception:  # noqa: BLE001 -- closing a broken client: nothing to add
            pass
