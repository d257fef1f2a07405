"""Discovery URLs (``chanbox hosts --discovery URL``) to registries.

``etcd://HOST:PORT[,HOST:PORT]/PREFIX``, ``zk://HOST:PORT[,...]/PREFIX``,
``serf://HOST:PORT`` (the agent's RPC address).
"""

from __future__ import annotations

from typing import Any

from .errors import BridgeError


def open_registry(url: str) -> Any:
    """A registry for ``url``, connected, offering ``hosts()`` and ``close()``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise BridgeError(f"bad discovery URL {url!r}: use etcd://, zk:// or serf://")
    where, _, prefix = rest.partition("/")
    prefix = "/" + prefix if prefix else "/chanbox"
    if scheme == "etcd":
        from .etcd import EtcdRegistry

        return EtcdRegistry(",".join(f"http://{h}" for h in where.split(",")), prefix=prefix)
    if scheme in ("zk", "zookeeper"):
        from .zookeeper import ZooKeeperRegistry

        reg = ZooKeeperRegistry(where, prefix=prefix)
        try:
            reg.wait_connected()
        except BridgeError:
            reg.close()
            raise
        return reg
    if scheme == "serf":
        from .serf import SerfRegistry

        return SerfRegistry(where)
    raise BridgeError(f"unknown discovery system {scheme!r}: use etcd://, zk:// or serf://")
