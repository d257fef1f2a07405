"""``chanbox container prune`` and ``chanbox image prune``: remove what nothing uses."""

from __future__ import annotations

import click

from .cli import _call, main


def _confirmed(force: bool, what: str) -> bool:
    return force or click.confirm(f"WARNING! This will remove {what}.\nAre you sure you want "
                                  "to continue?", default=False, err=True)


@main.group()
def container() -> None:
    """Manage containers (the rest are top-level commands: ps, rm, ...)."""


@container.command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not ask.")
@click.pass_context
def container_prune(ctx: click.Context, force: bool) -> None:
    """Remove every container that is not running."""
    if not _confirmed(force, "all stopped containers"):
        return
    deleted = _call(ctx, "container_prune")["deleted"]
    if deleted:
        click.echo("Deleted Containers:")
        for cid in deleted:
            click.echo(cid)


@main.group()
def image() -> None:
    """Manage images (the rest are top-level commands: images, rmi, ...)."""


@image.command("prune")
@click.option("-a", "--all", "all_images", is_flag=True,
              help="Every image no container uses, not only untagged ones.")
@click.option("-f", "--force", is_flag=True, help="Do not ask.")
@click.pass_context
def image_prune(ctx: click.Context, all_images: bool, force: bool) -> None:
    """Remove images no container uses: untagged ones (all of them with -a)."""
    what = "all images without at least one container associated to them" if all_images \
        else "all dangling images"
    if not _confirmed(force, what):
        return
    lines = _call(ctx, "image_prune", all=all_images)["lines"]
    if lines:
        click.echo("Deleted Images:")
        for line in lines:  # as docker prints them: "untagged: x:1", "deleted: sha256:..."
            what, _, rest = line.partition(": ")
            click.echo(f"{what.lower()}: {rest}")
