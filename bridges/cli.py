"""``chanbox bridge ...`` and ``chanbox hosts``: the bridges' commands (issue 7 and 8)."""

from __future__ import annotations

import click

from engine.cli import main


@main.group()
def bridge() -> None:
    """Carry the engine's lifecycle into outside systems (etcd, Serf, ZooKeeper, Docker API)."""


from bridges.docker import cli as _docker_cli  # noqa: E402,F401  (registers bridge docker)
