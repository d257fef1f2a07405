"""``chanbox volume create|ls|inspect|rm|prune``: named volumes (``-v NAME:/path``)."""

from __future__ import annotations

import click

from .cli import _call, _print_json, _table, main


@main.group()
def volume() -> None:
    """Manage volumes (directories kept apart from containers)."""


@volume.command("create")
@click.option("--label", "labels", multiple=True, help="KEY=VALUE to set on the volume.")
@click.option("-d", "--driver", default="local", help="Only local is supported.")
@click.argument("name", required=False)
@click.pass_context
def create(ctx: click.Context, name: str | None, labels: tuple[str, ...], driver: str) -> None:
    """Create a volume (a random name without NAME); print its name."""
    from .cli import _die

    if driver != "local":
        _die(f"volume driver {driver!r} is not supported; only local is")
    pairs = dict(label.partition("=")[::2] for label in labels)
    click.echo(_call(ctx, "volume_create", name=name, labels=pairs)["Name"])


@volume.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only show volume names.")
@click.pass_context
def ls(ctx: click.Context, quiet: bool) -> None:
    """List volumes."""
    rows = _call(ctx, "volume_ls")
    if quiet:
        for r in rows:
            click.echo(r["Name"])
        return
    _table([[r["Driver"], r["Name"]] for r in rows], ["DRIVER", "VOLUME NAME"])


@volume.command("inspect")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def inspect(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Show volumes as JSON."""
    _print_json([_call(ctx, "volume_get", name=n) for n in names])


@volume.command("rm")
@click.option("-f", "--force", is_flag=True, help="No error for a volume that is not there.")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def rm(ctx: click.Context, names: tuple[str, ...], force: bool) -> None:
    """Remove volumes (no container may use them)."""
    for n in names:
        _call(ctx, "volume_rm", name=n, force=force)
        click.echo(n)


@volume.command("prune")
@click.option("-a", "--all", "all_", is_flag=True, help="Named volumes too, not only anonymous ones.")
@click.option("-f", "--force", is_flag=True, help="Do not ask first.")
@click.pass_context
def prune(ctx: click.Context, all_: bool, force: bool) -> None:
    """Remove the volumes no container uses."""
    if not force and not click.confirm("This removes the volumes no container uses. Continue?"):
        return
    deleted = _call(ctx, "volume_prune", all=all_)["deleted"]
    if deleted:
        click.echo("Deleted Volumes:")
        for n in deleted:
            click.echo(n)
