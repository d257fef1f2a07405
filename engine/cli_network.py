"""``chanbox network create|ls|inspect|rm``: user-defined bridge networks."""

from __future__ import annotations

from typing import Any

import click

from .cli import _call, _die, _print_json, _table, main


@main.group()
def network() -> None:
    """Manage networks (bridge networks of this host)."""


@network.command("create")
@click.option("--subnet", default=None, help="Subnet in CIDR form, e.g. 10.89.7.0/24.")
@click.option("-d", "--driver", default="bridge", help="Only bridge is supported.")
@click.argument("name")
@click.pass_context
def create(ctx: click.Context, name: str, subnet: str | None, driver: str) -> None:
    """Create a bridge network; print its id."""
    if driver != "bridge":
        _die(f"driver {driver!r} is not supported; only bridge is")
    click.echo(_call(ctx, "network_create", name=name, subnet=subnet)["id"])


@network.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only show network ids.")
@click.pass_context
def ls(ctx: click.Context, quiet: bool) -> None:
    """List networks."""
    rows: list[Any] = _call(ctx, "network_ls")
    if quiet:
        for r in rows:
            click.echo(r["Id"][:12])
        return
    _table([[r["Id"][:12], r["Name"], r["Driver"],
             ",".join(c["Subnet"] for c in r["IPAM"]["Config"]), r["Scope"]] for r in rows],
           ["NETWORK ID", "NAME", "DRIVER", "SUBNET", "SCOPE"])


@network.command("inspect")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def inspect(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Show networks as JSON (with their running containers)."""
    _print_json([_call(ctx, "network_get", name=n) for n in names])


@network.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def rm(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Remove networks (no container may use them)."""
    for n in names:
        _call(ctx, "network_rm", name=n)
        click.echo(n)
