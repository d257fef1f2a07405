"""``chanbox bridge docker``: serve the Docker Engine API for the docker CLI and docker-py.

Only click is imported here (the ``chanbox`` CLI loads this module at start-up); the
server and aiohttp load when the command runs.
"""

from __future__ import annotations

import sys

import click

from bridges.cli import bridge

DEFAULT_SOCKET = "/run/chanbox/docker.sock"


@bridge.command("docker")
@click.option("--socket", "socket_path", default=DEFAULT_SOCKET, show_default=True,
              help="Unix socket to serve the Docker API on (mode 0660).")
@click.option("--tcp", default=None, metavar="127.0.0.1:PORT",
              help="Also serve on this loopback TCP address (no TLS: loopback only).")
@click.option("--no-pull", is_flag=True,
              help="Never pull: a missing image is a 404 (air-gapped hosts, tests).")
@click.pass_context
def docker(ctx: click.Context, socket_path: str, tcp: str | None, no_pull: bool) -> None:
    """Serve the Docker Engine API over a chanbox daemon (DOCKER_HOST=unix://SOCKET).

    Uses the daemon given with -H (or the default one); without a daemon, one is
    started in this process on the engine root (--root).
    """
    import asyncio

    from engine.errors import EngineError

    st = ctx.find_root().obj
    daemon = tmp = None
    try:
        endpoint = st.host
        if endpoint is None:
            daemon, tmp, endpoint = _own_daemon(st.root)

        def ready() -> None:
            where = f"unix://{socket_path}" + (f" and tcp://{tcp}" if tcp else "")
            click.echo(f"chanbox bridge docker: serving the Docker API on {where} "
                       f"(engine {endpoint})", err=True)

        from .server import serve

        asyncio.run(serve(endpoint, socket_path, tcp, ready=ready, key_file=st.key,
                          server_key_file=st.server_key, allow_pull=not no_pull))
    except EngineError as exc:
        click.echo(f"chanbox: {exc}", err=True)
        sys.exit(exc.exit_status)
    except OSError as exc:
        click.echo(f"chanbox: cannot serve the Docker API on {socket_path}: {exc}", err=True)
        sys.exit(125)
    finally:
        if daemon is not None:
            daemon.close()
        if tmp is not None:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def _own_daemon(root: str | None) -> tuple[object, str, str]:
    """A daemon in this process on a private ipc socket: (daemon, its dir, endpoint)."""
    import os
    import tempfile

    from engine.daemon import Daemon

    tmp = tempfile.mkdtemp(prefix="cbx-bridge-")
    endpoint = "ipc://" + os.path.join(tmp, "engine.sock")
    try:
        daemon = Daemon(root, [endpoint], log=lambda msg: None)
    except BaseException:
        os.rmdir(tmp)
        raise
    return daemon, tmp, endpoint
