"""``chanbox bridge ...`` and ``chanbox hosts``: the bridges' commands.

Each bridge is a long-running channel client of a daemon (``-H``, or the default
socket) and a client of one discovery system.  This module imports only click at
load time; the discovery clients (aetcd, kazoo, msgpack) load when a command runs.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import click

from engine.cli import _die, main


@main.group()
def bridge() -> None:
    """Carry the engine's lifecycle into outside systems (etcd, Serf, ZooKeeper, Docker API)."""


def _bridge_options(f: Any) -> Any:
    opts = [
        click.option("--ip", "host_ip", default="127.0.0.1",
                     help="Address to register for ports published on all addresses."),
        click.option("--hostname", "host", default=None,
                     help="This host's name in the registry (default: the system's)."),
        click.option("--internal", is_flag=True,
                     help="Register exposed ports at the container's own address."),
        click.option("--explicit", is_flag=True,
                     help="Register only containers that name a service (SERVICE_NAME)."),
        click.option("-l", "--label", "labels", multiple=True,
                     help="A label of this host, KEY=VALUE (repeatable)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _run(ctx: click.Context, make_registry: Callable[[], Any], *, host_ip: str,
         host: str | None, internal: bool, explicit: bool, labels: tuple[str, ...]) -> None:
    from engine.client import connect
    from engine.errors import EngineError

    from .sync import Bridge, Options

    st = ctx.find_root().obj
    if st.host is None:
        _die("a bridge follows a daemon: give -H ENDPOINT (or start `chanbox daemon` on "
             "the default socket)")
    options = Options(host_ip=host_ip, internal=internal, explicit=explicit,
                      labels=dict(item.partition("=")[::2] for item in labels))
    if host:
        options.host = host
    from .errors import BridgeError

    try:
        registry = make_registry()
    except (BridgeError, EngineError) as exc:
        _die(str(exc))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())

    def log(msg: str) -> None:
        print(f"chanbox bridge: {msg}", file=sys.stderr, flush=True)

    b = Bridge(registry, lambda: connect(st.host, key_file=st.key,
                                         server_key_file=st.server_key),
               st.host, options, log=log)
    try:
        b.run(stop)
    finally:
        registry.close()


@bridge.command()
@click.option("--endpoints", default="http://127.0.0.1:2379", show_default=True,
              help="etcd client URLs, comma-separated.")
@click.option("--prefix", default="/chanbox", show_default=True)
@click.option("--ttl", type=int, default=10, show_default=True,
              help="Seconds the entries outlive a bridge that died.")
@_bridge_options
@click.pass_context
def etcd(ctx: click.Context, endpoints: str, prefix: str, ttl: int, **kw: Any) -> None:
    """Register containers' services and this host in etcd (v3, one lease)."""
    from .etcd import EtcdRegistry

    _run(ctx, lambda: EtcdRegistry(endpoints, prefix=prefix, ttl=ttl), **kw)


@bridge.command()
@click.option("--hosts", default="127.0.0.1:2181", show_default=True,
              help="ZooKeeper servers, comma-separated HOST:PORT.")
@click.option("--prefix", default="/chanbox", show_default=True)
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="Session timeout: how long entries outlive a bridge that died.")
@_bridge_options
@click.pass_context
def zookeeper(ctx: click.Context, hosts: str, prefix: str, timeout: float, **kw: Any) -> None:
    """Register containers' services and this host in ZooKeeper (ephemeral nodes)."""
    from .zookeeper import ZooKeeperRegistry

    _run(ctx, lambda: ZooKeeperRegistry(hosts, prefix=prefix, timeout=timeout), **kw)


@bridge.command()
@click.option("--rpc", default="127.0.0.1:7373", show_default=True,
              help="The Serf agent's RPC address.")
@_bridge_options
@click.pass_context
def serf(ctx: click.Context, rpc: str, **kw: Any) -> None:
    """Announce containers' services as Serf user events and this host in its tags."""
    from .serf import SerfRegistry

    _run(ctx, lambda: SerfRegistry(rpc), **kw)


@main.command()
@click.option("--discovery", required=True,
              help="etcd://HOST:PORT[,HOST:PORT]/PREFIX, zk://HOST:PORT/PREFIX or "
                   "serf://HOST:PORT.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def hosts(discovery: str, fmt: str) -> None:
    """List the engines registered in a discovery system."""
    from engine.errors import EngineError

    from .discovery import open_registry
    from .errors import BridgeError

    try:
        registry = open_registry(discovery)
        try:
            rows = registry.hosts()
        finally:
            registry.close()
    except (BridgeError, EngineError) as exc:
        _die(str(exc))
    if fmt == "json":
        for r in rows:
            click.echo(json.dumps(r))
        return
    from engine.cli import _table

    _table([[r["id"], r["endpoint"], str(r.get("ncpu", "")), str(r.get("memory", "")),
             ",".join(f"{k}={v}" for k, v in sorted(r.get("labels", {}).items()))]
            for r in rows], ["HOST", "ENDPOINT", "CPUS", "MEMORY", "LABELS"])


from bridges.docker import cli as _docker_cli  # noqa: E402,F401  (registers bridge docker)
