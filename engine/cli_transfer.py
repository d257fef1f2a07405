"""``chanbox load|save|pull|push``: images in and out (imports only click at load time)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from .cli import _call, _client, _die, main


@main.command()
@click.option("-i", "--input", "path", type=click.Path(exists=True),
              help="A docker-save tarball or an OCI image layout (directory or tar); "
                   "without it, a tarball on stdin.")
@click.pass_context
def load(ctx: click.Context, path: str | None) -> None:
    """Load images from a docker-save or OCI archive."""
    if path is not None:
        names = _call(ctx, "load", path=os.path.abspath(path))["images"]
    elif sys.stdin.isatty():
        _die("requested load from stdin, but stdin is a terminal: give -i FILE or pipe "
             "an archive in (chanbox load < image.tar)")
    else:
        names = _streamed(ctx, "load", _send_stdin)["images"]
    for name in names:
        if name.startswith("sha256:"):
            click.echo(f"Loaded image ID: {name}")
        else:
            click.echo(f"Loaded image: {name}")


@main.command()
@click.option("-o", "--output",
              help="The archive to write (with --format oci, a directory if it ends in /); "
                   "without it, stdout.")
@click.option("--format", "fmt", type=click.Choice(["docker", "oci"]), default="docker",
              show_default=True)
@click.argument("images", nargs=-1, required=True)
@click.pass_context
def save(ctx: click.Context, output: str | None, fmt: str, images: tuple[str, ...]) -> None:
    """Save images to a docker-save or OCI archive."""
    if output is not None:
        path = os.path.abspath(output) + ("/" if output.endswith("/") else "")
        _call(ctx, "save", refs=list(images), path=path, format=fmt)
    elif sys.stdout.isatty():
        _die("cowardly refusing to write an archive to a terminal: give -o FILE or "
             "pipe the output (chanbox save IMAGE | gzip > image.tar.gz)")
    else:
        _streamed(ctx, "save", _receive_stdout, refs=list(images), format=fmt)


@main.command()
@click.option("-o", "--output", help="The tar to write; without it, stdout.")
@click.argument("container")
@click.pass_context
def export(ctx: click.Context, output: str | None, container: str) -> None:
    """Write a container's filesystem as a tar (import makes an image of it again)."""
    if output is not None:
        _call(ctx, "export", id=container, path=os.path.abspath(output))
    elif sys.stdout.isatty():
        _die("cowardly refusing to write a tar to a terminal: give -o FILE or pipe the "
             "output (chanbox export CONTAINER > rootfs.tar)")
    else:
        _streamed(ctx, "export", _receive_stdout, id=container)


def _streamed(ctx: click.Context, verb: str, pump: Any, **args: Any) -> Any:
    """Call ``verb`` with a byte stream for the archive, which ``pump(our_end)`` feeds
    or drains meanwhile; the verb's answer."""
    import chan

    from .client import engine_error
    from .errors import EngineError

    ours, theirs = chan.stream_pair()
    rx = _client(ctx).receiver(verb, stream=theirs, **args)
    try:
        try:
            pump(ours)
        except chan.ChannelError:
            pass  # the engine stopped the transfer: its answer says why
        return rx.recv()
    except chan.RemoteError as exc:
        err = engine_error(exc)
        _die(str(err), err.exit_status)
    except (chan.ChannelError, EngineError) as exc:
        _die(f"{verb}: {exc}")
    finally:
        rx.close()


def _send_stdin(stream: Any) -> None:
    fd = sys.stdin.fileno()
    while data := os.read(fd, 1 << 20):
        stream.write(data)
    stream.close_write()


def _receive_stdout(stream: Any) -> None:
    out = sys.stdout.buffer
    while data := stream.read(1 << 20):
        out.write(data)
    out.flush()


@main.command()
@click.option("--insecure", is_flag=True, help="Plain HTTP (a registry on loopback).")
@click.argument("ref")
@click.pass_context
def pull(ctx: click.Context, ref: str, insecure: bool) -> None:
    """Pull an image from a registry."""
    _transfer(ctx, "pull", ref, insecure)


@main.command()
@click.option("--insecure", is_flag=True, help="Plain HTTP (a registry on loopback).")
@click.argument("ref")
@click.pass_context
def push(ctx: click.Context, ref: str, insecure: bool) -> None:
    """Push an image to a registry."""
    _transfer(ctx, "push", ref, insecure)


def _transfer(ctx: click.Context, verb: str, ref: str, insecure: bool) -> None:
    from .errors import EngineError

    view = _Progress(sys.stdout.isatty())
    final: dict = {}
    try:
        for msg in _client(ctx).stream(verb, ref=ref, insecure=insecure):
            if "layer" in msg:
                view.update(msg)
            else:
                final = msg
    except EngineError as exc:
        view.end()
        _die(str(exc), exc.exit_status)
    view.end()
    done = "Pulled" if verb == "pull" else "Pushed"
    tail = f" digest {final['digest']}" if final.get("digest") else ""
    click.echo(f"{done} {final.get('ref', ref)}: {view.summary(verb)}; image {final.get('id', '?')}{tail}")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class _Progress:
    """Docker-style: one line per layer, redrawn in place on a terminal; elsewhere
    nothing until the one-line summary."""

    _DONE = ("Already exists", "Layer already exists")

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.layers: dict[str, dict] = {}

    def update(self, msg: dict) -> None:
        new = msg["layer"] not in self.layers
        self.layers[msg["layer"]] = msg
        if not self.tty:
            return
        line = self._line(msg)
        if new:
            sys.stdout.write(line + "\n")
        else:
            up = len(self.layers) - list(self.layers).index(msg["layer"])
            sys.stdout.write(f"\x1b[{up}A\r\x1b[2K{line}\x1b[{up}B\r")
        sys.stdout.flush()

    @staticmethod
    def _line(msg: dict) -> str:
        cur, total = msg.get("current") or 0, msg.get("total") or 0
        if msg["status"] in ("Downloading", "Pushing") and total:
            filled = min(30, int(30 * cur / total))
            bar = "[" + "=" * max(filled - 1, 0) + (">" if filled else "") + " " * (30 - filled) + "]"
            return f"{msg['layer']}: {msg['status']:<12} {bar} {_mb(cur)}/{_mb(total)}"
        return f"{msg['layer']}: {msg['status']}"

    def end(self) -> None:
        sys.stdout.flush()

    def summary(self, verb: str) -> str:
        present = sum(1 for m in self.layers.values() if m["status"] in self._DONE)
        moved = [m for m in self.layers.values() if m["status"] not in self._DONE]
        size = sum(m.get("total") or 0 for m in moved)
        word = "downloaded" if verb == "pull" else "uploaded"
        return (f"{len(self.layers)} layers ({len(moved)} {word}, {present} already there), "
                f"{_mb(size)} {word}")


