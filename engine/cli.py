"""The ``chanbox`` command line: a channel client of the engine, nothing more.

Every command sends verbs through :class:`engine.client.Client`.  Without a daemon
(the default) the engine is served in this process over an in-memory channel.  Start-up
is part of the product: this module imports only click at load time; the engine's
modules load when a command needs them.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

import click

# Commands that start processes need the fork server, forked before any thread.
_SPAWNING = {"run", "start", "restart"}


class _State:
    def __init__(self, root: str | None, host: str | None, key: str | None,
                 server_key: str | None, spawn: bool, local: bool = False) -> None:
        global _state
        _state = self
        self.root = root
        self.key, self.server_key = key, server_key
        self._client: Any = None
        self.forker: Any = None
        self.host = host
        if host is None and root is None and not local:
            self.host = _default_daemon()
        if spawn and self.host is None:
            # Forked first thing: the server imports the runtime and the monitor while
            # this process imports the engine (two cores, one wait).
            from .forkserver import ForkServer

            self.forker = ForkServer(many=False)  # one container: no heap to share

    def client(self) -> Any:
        if self._client is None and self.host is not None:
            from .client import connect
            from .errors import EngineError

            try:
                self._client = connect(self.host, key_file=self.key,
                                       server_key_file=self.server_key)
            except EngineError as exc:
                _die(str(exc), exc.exit_status)
        if self._client is None:
            from .client import embedded

            try:
                self._client, _ = embedded(self.root, spawn=self.forker is not None,
                                           forker=self.forker)
            except PermissionError as exc:
                _die(f"cannot use the engine root {exc.filename}: {exc.strerror} "
                     "(run as root, or give --root)")
        return self._client

    def close(self) -> None:
        """End the client: the embedded service stops, a daemon session says goodbye."""
        if self._client is not None:
            self._client.close()
            self._client = None


_state: _State | None = None  # this process's command's, for console()


def _default_daemon() -> str | None:
    """The default daemon's endpoint when one answers there (else: the embedded engine)."""
    from .daemon import DEFAULT_ENDPOINT, DEFAULT_SOCKET, answers

    return DEFAULT_ENDPOINT if os.path.exists(DEFAULT_SOCKET) and answers(DEFAULT_SOCKET) \
        else None


def _die(msg: str, code: int = 125) -> NoReturn:
    _OUT.flush()  # the container's output first
    click.echo(f"chanbox: {msg}", err=True)
    sys.exit(code)


def _call(ctx: click.Context, verb: str, **args: Any) -> Any:
    from .errors import EngineError

    try:
        return _client(ctx).call(verb, **args)
    except EngineError as exc:
        _die(str(exc), exc.exit_status)


def _client(ctx: click.Context) -> Any:
    st: _State = ctx.find_root().obj
    return st.client()


def _each(ctx: click.Context, verb: str, containers: tuple[str, ...], **args: Any) -> None:
    """Apply ``verb`` to each container in turn, printing each name as docker does."""
    for c in containers:
        _call(ctx, verb, id=c, **args)
        click.echo(c)


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=4))


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("   ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def parse_bytes(value: str) -> int:
    """``64m``, ``1g``, ``512k``, ``1048576`` -> bytes (as Docker's ``-m``)."""
    units = {"b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
    v = value.strip().lower()
    if v.endswith("b") and len(v) > 1 and v[-2] in units:
        v = v[:-1]
    mult = units.get(v[-1:], None)
    num = v[:-1] if mult else v
    try:
        n = float(num) if mult else int(num)
    except ValueError:
        raise click.BadParameter(f"invalid size {value!r}: use a number with an optional "
                                 "unit b, k, m or g (e.g. 64m)") from None
    return int(n * (mult or 1))


def _labels(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        k, _, v = item.partition("=")
        if not k:
            raise click.BadParameter(f"invalid label {item!r}: use KEY=VALUE")
        out[k] = v
    return out


class _Group(click.Group):
    """Bad flags exit with 125 as ``docker`` does (click's default is 2)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("standalone_mode", None)
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as exc:
            exc.show()
            sys.exit(125)
        except click.ClickException as exc:
            exc.show()
            sys.exit(125)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(130)


@click.group(cls=_Group)
@click.option("--root", envvar="CHANBOX_ROOT", type=click.Path(file_okay=False),
              help="Engine root for the embedded engine and the daemon "
                   "(default $CHANBOX_ROOT or /var/lib/chanbox).")
@click.option("-H", "--host", envvar="CHANBOX_HOST", default=None,
              help="A daemon's endpoint (ipc://PATH, tcp://HOST:PORT). Default: the "
                   "daemon at ipc:///run/chanbox/engine.sock if one answers and no --root "
                   "is given, else the engine embedded in this process.")
@click.option("--key", envvar="CHANBOX_KEY", default=None,
              help="This client's CurveZMQ key pair file (tcp:// daemons).")
@click.option("--server-key", envvar="CHANBOX_SERVER_KEY", default=None,
              help="The daemon's public key file (tcp:// daemons).")
@click.pass_context
def main(ctx: click.Context, root: str | None, host: str | None, key: str | None,
         server_key: str | None) -> None:
    """chanbox: containers driven over channels."""
    local = ctx.invoked_subcommand in ("daemon", "keys")
    ctx.obj = _State(root, None if local else host, key, server_key,
                     spawn=ctx.invoked_subcommand in _SPAWNING, local=local)


def console() -> NoReturn:
    """The ``chanbox`` program: :func:`main`, then a quick exit.

    Tearing the interpreter down (every module, thread and object) takes about 12 ms
    here, a tenth of a ``chanbox run``.  Once the command has returned, its client is
    closed (a daemon's session ends with an acknowledged goodbye), the exit handlers
    have run and stdio is flushed, nothing needs that teardown, so the process ends
    with ``os._exit``.  A program that embeds the CLI calls :func:`main`, which
    returns or raises SystemExit as usual.
    """
    try:
        rv = main()
        code = rv if isinstance(rv, int) else 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    if _state is not None:
        _state.close()
    # what a normal exit runs first: exit handlers (chan's tells the peers of a
    # daemon's sessions that it is going and waits for that to leave)
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            pass  # `chanbox ... | head`: the reader has what it wanted
        except OSError as exc:
            os.write(2, f"chanbox: cannot write the output: {exc.strerror}\n".encode())
            code = code or 1
    os._exit(code)


# -- containers --------------------------------------------------------------------------

def _container_options(f: Any) -> Any:
    opts = [
        click.option("--name", help="Name the container."),
        click.option("-e", "--env", multiple=True, help="Set an environment variable."),
        click.option("-w", "--workdir", default="", help="Working directory inside."),
        click.option("-u", "--user", default="", help="User (name|uid[:group|gid])."),
        click.option("-h", "--hostname", default="", help="Container host name."),
        click.option("-l", "--label", multiple=True, help="Set a label KEY=VALUE."),
        click.option("-i", "--interactive", is_flag=True, help="Keep stdin open."),
        click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-terminal."),
        click.option("--entrypoint", default=None, help="Override the image's entrypoint."),
        click.option("-m", "--memory", default=None, help="Memory limit (e.g. 64m)."),
        click.option("--cpus", type=float, default=None, help="Number of CPUs (e.g. 0.5)."),
        click.option("--pids-limit", type=int, default=None, help="Limit the number of processes."),
        click.option("--network", default="bridge",
                     help="Network: bridge (default), none, host or a user network."),
        click.option("-p", "--publish", multiple=True,
                     help="Publish a port: [IP:]HOSTPORT:CONTAINERPORT[/tcp|udp]."),
        click.option("--network-alias", multiple=True,
                     help="Another name for the container on its user network."),
        click.option("-v", "--volume", multiple=True,
                     help="Mount a host path or a volume: /HOST/PATH|NAME:/CONTAINER/PATH[:ro]; "
                          "/CONTAINER/PATH alone makes an anonymous volume."),
        click.option("--read-only", is_flag=True, help="Mount the root filesystem read-only."),
        click.option("--privileged", is_flag=True, help="Give all capabilities, no seccomp."),
        click.option("--rm", "auto_remove", is_flag=True, help="Remove the container when it exits."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _create_args(image: str, cmd: tuple[str, ...], kw: dict[str, Any]) -> dict[str, Any]:
    ports: list[dict[str, Any]] = []
    if kw["publish"]:
        from .errors import EngineError
        from .network.proxy import parse  # light: the CLI's load path stays click only

        try:
            ports = [parse(spec) for spec in kw["publish"]]
        except EngineError as exc:
            _die(str(exc), exc.exit_status)
    return {
        "image": image, "cmd": list(cmd) or None,
        "entrypoint": [kw["entrypoint"]] if kw["entrypoint"] else
        ([] if kw["entrypoint"] == "" else None),
        "env": list(kw["env"]), "workdir": kw["workdir"], "user": kw["user"],
        "name": kw["name"], "hostname": kw["hostname"], "labels": _labels(kw["label"]),
        "memory": parse_bytes(kw["memory"]) if kw["memory"] else None,
        "cpus": kw["cpus"], "pids_limit": kw["pids_limit"], "network": kw["network"],
        "read_only": kw["read_only"], "privileged": kw["privileged"],
        "open_stdin": kw["interactive"], "tty": kw["tty"], "auto_remove": kw["auto_remove"],
        "ports": ports, "network_aliases": list(kw["network_alias"]),
        # a relative host path means the directory here, as the docker CLI takes it
        "binds": [_absolute_source(v) for v in kw["volume"]],
    }


def _absolute_source(volume: str) -> str:
    src, sep, rest = volume.partition(":")
    if sep and src.startswith((".", "~")):
        src = os.path.abspath(os.path.expanduser(src))
    return f"{src}{sep}{rest}"


# Options end at the image name: what follows is the container's command.
_CMD_AFTER_IMAGE = {"allow_interspersed_args": False}


@main.command(context_settings=_CMD_AFTER_IMAGE)
@_container_options
@click.argument("image")
@click.argument("cmd", nargs=-1)
@click.pass_context
def create(ctx: click.Context, image: str, cmd: tuple[str, ...], **kw: Any) -> None:
    """Create a container (it does not run until `start`)."""
    click.echo(_call(ctx, "create", **_create_args(image, cmd, kw))["id"])


def _detach_keys_option(f: Any) -> Any:
    def parse(ctx: click.Context, param: click.Parameter, value: str) -> bytes:
        from .detachkeys import parse_detach_keys

        try:
            return parse_detach_keys(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return click.option("--detach-keys", default="", callback=parse, metavar="KEYS",
                        help="Keys that detach from a -t process (default ctrl-p,ctrl-q).")(f)


@main.command(context_settings=_CMD_AFTER_IMAGE)
@_container_options
@click.option("-d", "--detach", is_flag=True, help="Run in the background; print the id.")
@_detach_keys_option
@click.argument("image")
@click.argument("cmd", nargs=-1)
@click.pass_context
def run(ctx: click.Context, image: str, cmd: tuple[str, ...], detach: bool, detach_keys: bytes,
        **kw: Any) -> None:
    """Create and start a container, follow its output, exit with its code."""
    from .errors import EngineError

    client = _client(ctx)
    args = _create_args(image, cmd, kw)
    # An attached --rm is removed by us once we have its exit code (the monitor's own
    # removal would race with our wait); a detached one by its monitor.
    remove = args["auto_remove"] and not detach
    args["auto_remove"] = args["auto_remove"] and detach
    cid = _call(ctx, "create", **args)["id"]
    try:
        client.call("start", id=cid)
    except EngineError as exc:
        if remove:
            client.call("rm", id=cid, force=True, volumes=True)
        _die(str(exc), exc.exit_status)
    if detach:
        click.echo(cid)
        return
    if kw["tty"] and kw["interactive"]:
        from .cli_terminal import Detached, container_resizer, lent_to

        try:
            # (no detaching from an attached --rm: we remove it once it exits)
            with lent_to(container_resizer(client, cid), detach_keys=None if remove else detach_keys):
                code = _follow(client, cid, stdin=True)
        except Detached:
            click.echo("read escape sequence", err=True)
            return  # it runs on
    else:
        code = _follow(client, cid, stdin=kw["interactive"])
    if remove:
        _call(ctx, "rm", id=cid, force=True, volumes=True)  # its anonymous volumes too, as docker's
    sys.exit(code)


def _follow(client: Any, cid: str, *, stdin: bool) -> int:
    """Copy the container's output here (and our stdin there); its exit code."""
    from .errors import EngineError

    if stdin:
        _forward_stdin(client, cid)
    _proxy_signals(client, cid)
    try:
        if _print_log(client, id=cid, follow=True):
            return 0  # the user detached (cli_terminal)
        return client.call("wait", id=cid)["exit_code"]
    except EngineError as exc:
        _die(str(exc), exc.exit_status)


def _proxy_signals(client: Any, cid: str) -> None:
    """^C and SIGTERM go to the container, as ``docker run``'s sig-proxy does; we
    keep following until it exits."""
    import signal

    def forward(signum: int, frame: Any) -> None:
        # a thread, not here: the main thread may be inside a channel call
        _background(_kill_quietly, client, cid, signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)


def _kill_quietly(client: Any, cid: str, signum: int) -> None:
    from .errors import EngineError

    try:
        client.call("kill", id=cid, signal=signum)
    except EngineError:
        pass  # it has exited already


def _forward_stdin(client: Any, cid: str) -> None:
    """Copy our stdin to the container's (``run -i``), in the background."""
    def attach_and_pump() -> None:
        replies = client.stream("attach", id=cid, stdin=True, stdout=False, stderr=False)
        _pump_stdin(next(replies)["stdin"])
        for _ in replies:
            pass

    _background(_quietly(attach_and_pump))


def _pump_stdin(stream: Any) -> None:
    """Copy our stdin into a chan byte stream until EOF, then close it (not when the
    user detached: the process keeps its stdin)."""
    from .cli_terminal import filter_input

    fd = sys.stdin.fileno()
    while data := os.read(fd, 65536):
        data = filter_input(data)
        if data is None:
            return
        if data:
            stream.write(data)
    stream.close()


def _background(fn: Any, *args: Any) -> None:
    import threading

    threading.Thread(target=fn, args=args, daemon=True).start()


@main.command()
@click.option("-a", "--attach", is_flag=True, help="Follow the output and exit with the code.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def start(ctx: click.Context, containers: tuple[str, ...], attach: bool) -> None:
    """Start one or more stopped containers."""
    for c in containers:
        _call(ctx, "start", id=c)
        if attach:
            sys.exit(_follow(_client(ctx), c, stdin=False))
        click.echo(c)


@main.command()
@click.option("-t", "--time", "timeout", type=float, default=10,
              help="Seconds to wait before killing it.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def stop(ctx: click.Context, containers: tuple[str, ...], timeout: float) -> None:
    """Stop containers: SIGTERM, then SIGKILL after the grace time."""
    _each(ctx, "stop", containers, timeout=timeout)


@main.command()
@click.option("-t", "--time", "timeout", type=float, default=10)
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def restart(ctx: click.Context, containers: tuple[str, ...], timeout: float) -> None:
    """Stop then start containers."""
    for c in containers:
        _call(ctx, "stop", id=c, timeout=timeout)
        _call(ctx, "start", id=c)
        click.echo(c)


@main.command()
@click.option("-s", "--signal", "sig", default="KILL", help="Signal to send (name or number).")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def kill(ctx: click.Context, containers: tuple[str, ...], sig: str) -> None:
    """Send a signal to containers."""
    _each(ctx, "kill", containers, signal=sig)


@main.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def wait(ctx: click.Context, containers: tuple[str, ...]) -> None:
    """Block until containers stop; print their exit codes."""
    for c in containers:
        click.echo(_call(ctx, "wait", id=c)["exit_code"])


@main.command()
@click.option("-f", "--force", is_flag=True, help="Kill a running container first.")
@click.option("-v", "--volumes", is_flag=True, help="Remove its anonymous volumes too.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def rm(ctx: click.Context, containers: tuple[str, ...], force: bool, volumes: bool) -> None:
    """Remove containers."""
    _each(ctx, "rm", containers, force=force, volumes=volumes)


@main.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def pause(ctx: click.Context, containers: tuple[str, ...]) -> None:
    """Freeze all processes of containers."""
    _each(ctx, "pause", containers)


@main.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def unpause(ctx: click.Context, containers: tuple[str, ...]) -> None:
    """Thaw paused containers."""
    _each(ctx, "unpause", containers)


@main.command()
@click.option("-a", "--all", "all_", is_flag=True, help="Show stopped containers too.")
@click.option("-q", "--quiet", is_flag=True, help="Only ids.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--no-trunc", is_flag=True, help="Do not shorten ids.")
@click.option("-f", "--filter", "filters", multiple=True,
              help="KEY=VALUE: id, name, status, label, ancestor, volume (repeatable).")
@click.pass_context
def ps(ctx: click.Context, all_: bool, quiet: bool, fmt: str, no_trunc: bool,
       filters: tuple[str, ...]) -> None:
    """List containers."""
    rows = _call(ctx, "ls", all=all_, filters=list(filters))
    if quiet:
        for r in rows:
            click.echo(r["Id"] if no_trunc else r["Id"][:12])
    elif fmt == "json":
        for r in rows:
            click.echo(json.dumps(r))
    else:
        from .timefmt import ago

        _table([[r["Id"] if no_trunc else r["Id"][:12], r["Image"], r["Command"][:30],
                 ago(r["Created"]), r["Status"], r["Names"][0].lstrip("/")] for r in rows],
               ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"])


@main.command()
@click.option("--type", "kind", type=click.Choice(["container", "image"]), default=None)
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def inspect(ctx: click.Context, names: tuple[str, ...], kind: str | None) -> None:
    """Show containers or images as JSON."""
    from .errors import EngineError

    client = _client(ctx)
    out = []
    for n in names:
        try:
            if kind != "image":
                try:
                    out.append(client.call("get", id=n))
                    continue
                except EngineError as exc:
                    if kind == "container" or exc.code != "not_found":
                        raise
            out.append(client.call("image_get", ref=n))
        except EngineError as exc:
            _print_json(out)
            _die(f"no such object: {n}" if exc.code == "not_found" else str(exc),
                 1 if exc.code == "not_found" else exc.exit_status)
    _print_json(out)


@main.command()
@click.option("-f", "--follow", is_flag=True, help="Keep following the output.")
@click.option("-n", "--tail", default="all", help="Lines from the end (or 'all').")
@click.option("-t", "--timestamps", is_flag=True)
@click.option("--since", default=None, help="Only output written since (10m, 1h, an RFC 3339 time, "
              "Unix seconds).")
@click.option("--until", default=None, help="Only output written before (the same forms).")
@click.argument("container")
@click.pass_context
def logs(ctx: click.Context, container: str, follow: bool, tail: str, timestamps: bool,
         since: str | None, until: str | None) -> None:
    """Print a container's output (stdout and stderr kept apart)."""
    from .errors import EngineError
    from .timefmt import parse_time_ns

    n = None if tail == "all" else int(tail)
    window = {}
    try:
        for key, value in (("since_ns", since), ("until_ns", until)):
            if value is not None:
                window[key] = parse_time_ns(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    try:
        _print_log(_client(ctx), timestamps=timestamps, id=container, follow=follow, tail=n,
                   **window)
    except EngineError as exc:
        _die(str(exc), exc.exit_status)


def _run_attachment(replies: Any, stdin: bool, resize: Any = None, *, detach_keys: bytes) -> int:
    """Print an attach/exec answer's output, feed it our stdin; the exit code.

    With stdin and a terminal on the other side (``resize``, or the ``resize`` Sender
    of an ``exec -t`` answer), our terminal is lent to it (engine.cli_terminal)."""
    first = next(replies)
    if stdin and first.get("stdin") is not None:
        _background(_quietly(_pump_stdin), first["stdin"])
    if stdin and resize is None and first.get("resize") is not None:
        from .cli_terminal import exec_resizer

        resize = exec_resizer(first["resize"])
    if stdin and resize is not None:
        from .cli_terminal import Detached, lent_to

        try:
            with lent_to(resize, detach_keys=detach_keys):
                return _print_attachment(replies)
        except Detached:
            click.echo("read escape sequence", err=True)
            return 0  # it runs on
    return _print_attachment(replies)


def _print_attachment(replies: Any) -> int:
    code = 0
    for msg in replies:
        if "data" in msg:
            _OUT.write(msg["stream"], msg["data"])
        elif "exit_code" in msg:
            code = msg["exit_code"]
    _OUT.flush()
    return code


def _quietly(fn: Any) -> Any:
    def run(*args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 -- stdin forwarding ends quietly with the process
            pass
    return run


class _Output:
    """A container's output on our stdout and stderr, in the order it came.

    Not flushed piece by piece: a log of short lines then cost a write(2) per line
    (16 s to print 50 MB of 40-byte lines here).  Flushed when the stream changes, so
    stdout and stderr keep their order, and when no more output is waiting
    (:meth:`flush` is the ``on_idle`` of the streams we print)."""

    def __init__(self) -> None:
        self._pending: Any = None

    def write(self, stream: str, data: bytes) -> None:
        f = sys.stderr.buffer if stream == "stderr" else sys.stdout.buffer
        if self._pending is not None and self._pending is not f:
            self._pending.flush()
        f.write(data)
        self._pending = f

    def flush(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.flush()


_OUT = _Output()


def _print_log(client: Any, *, timestamps: bool = False, **args: Any) -> bool:
    """Print what the ``log`` verb answers, asked for in batches (a message per read
    of the log, not per line); each run of lines of one stream is one write.  Whether
    the user detached (then it stops early)."""
    from .cli_terminal import detached

    for batch in client.stream("log", batch=True, on_idle=_OUT.flush, stop=detached,
                               **args):
        if not isinstance(batch, list):
            batch = [batch]  # an older daemon: an entry per message
        run: list[bytes] = []
        stream = None
        for entry in batch:
            line = entry["log"].encode("utf-8", "surrogateescape")
            if timestamps:
                line = entry.get("time", "").encode() + b" " + line
            this = entry.get("stream", "stdout")
            if this != stream and run:
                _OUT.write(stream, b"".join(run))
                run = []
            stream = this
            run.append(line)
        if run:
            _OUT.write(stream, b"".join(run))
    _OUT.flush()
    return detached()


@main.command()
@click.option("--no-stdin", is_flag=True, help="Do not attach stdin.")
@_detach_keys_option
@click.argument("container")
@click.pass_context
def attach(ctx: click.Context, container: str, no_stdin: bool, detach_keys: bytes) -> None:
    """Attach to a running container's stdio; exit with its code."""
    from .errors import EngineError

    client = _client(ctx)
    try:
        info = client.call("get", id=container)
        stdin = info["Config"]["OpenStdin"] and not no_stdin
        from .cli_terminal import detached

        replies = client.stream("attach", id=container, stdin=stdin, on_idle=_OUT.flush,
                                stop=detached)
        resize = None
        if info["Config"]["Tty"]:
            from .cli_terminal import container_resizer

            resize = container_resizer(client, info["Id"])
        code = _run_attachment(replies, stdin, resize, detach_keys=detach_keys)
    except EngineError as exc:
        _die(str(exc), exc.exit_status)
    sys.exit(code)


@main.command(name="exec", context_settings=_CMD_AFTER_IMAGE)
@click.option("-i", "--interactive", is_flag=True)
@click.option("-t", "--tty", is_flag=True)
@click.option("-e", "--env", multiple=True)
@click.option("-w", "--workdir", default="")
@click.option("-u", "--user", default="")
@_detach_keys_option
@click.argument("container")
@click.argument("cmd", nargs=-1, required=True)
@click.pass_context
def exec_(ctx: click.Context, container: str, cmd: tuple[str, ...], interactive: bool,
          tty: bool, env: tuple[str, ...], workdir: str, user: str, detach_keys: bytes) -> None:
    """Run a command in a running container."""
    from .errors import EngineError

    from .cli_terminal import detached

    try:
        code = _run_attachment(_client(ctx).stream(
            "exec", id=container, cmd=list(cmd), env=list(env), workdir=workdir, user=user,
            open_stdin=interactive, tty=tty, on_idle=_OUT.flush, stop=detached), interactive,
            detach_keys=detach_keys)
    except EngineError as exc:
        _die(str(exc), exc.exit_status)
    sys.exit(code)


@main.command()
@click.argument("container")
@click.argument("name")
@click.pass_context
def rename(ctx: click.Context, container: str, name: str) -> None:
    """Give a container another name."""
    _call(ctx, "rename", id=container, name=name)


@main.command()
@click.option("-m", "--memory", default=None, help="Memory limit (e.g. 128m).")
@click.option("--cpus", type=float, default=None, help="Number of CPUs (e.g. 1.5).")
@click.option("--pids-limit", type=int, default=None, help="Limit the number of processes.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def update(ctx: click.Context, containers: tuple[str, ...], memory: str | None,
           cpus: float | None, pids_limit: int | None) -> None:
    """Change containers' limits, at once if they run and for their next runs."""
    mem = parse_bytes(memory) if memory else None
    for c in containers:
        _call(ctx, "update", id=c, memory=mem, cpus=cpus, pids_limit=pids_limit)
        click.echo(c)


@main.command()
@click.option("--no-stream", is_flag=True, help="One table, then exit.")
@click.argument("containers", nargs=-1)
@click.pass_context
def stats(ctx: click.Context, containers: tuple[str, ...], no_stream: bool) -> None:
    """Show running containers' CPU, memory, network and process counts (all running
    ones when none is named); a new table every second until interrupted."""
    import time

    from .errors import EngineError
    from .stats import cpu_percent, memory_use

    client = _client(ctx)
    ids = list(containers) or [r["Id"] for r in _call(ctx, "ls")]
    try:
        readings = {i: client.call("stats", id=i) for i in ids}
        while True:
            time.sleep(0.5 if no_stream else 1.0)
            readings = {i: client.call("stats", id=i, previous=r) for i, r in readings.items()}
            rows = []
            for r in readings.values():
                mem, limit = memory_use(r), r["memory_stats"]["limit"]
                rx = sum(n["rx_bytes"] for n in r["networks"].values())
                tx = sum(n["tx_bytes"] for n in r["networks"].values())
                rows.append([r["id"][:12], r["name"].lstrip("/"), f"{cpu_percent(r):.2f}%",
                             f"{_size(mem, binary=True)} / {_size(limit, binary=True)}",
                             f"{mem / limit * 100:.2f}%",
                             f"{_size(rx)} / {_size(tx)}", str(r["pids_stats"]["current"])])
            if not no_stream and sys.stdout.isatty():
                click.echo("\x1b[2J\x1b[H", nl=False)
            _table(rows, ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %",
                          "NET I/O", "PIDS"])
            if no_stream:
                return
    except EngineError as exc:
        _die(str(exc), exc.exit_status)
    except KeyboardInterrupt:
        pass


@main.command()
@click.argument("container")
@click.argument("port", required=False)
@click.pass_context
def port(ctx: click.Context, container: str, port: str | None) -> None:
    """Show a running container's published ports (or where one PORT[/PROTO] is)."""
    published = _call(ctx, "get", id=container)["NetworkSettings"]["Ports"]
    if port is not None:
        key = port if "/" in port else f"{port}/tcp"
        if not published.get(key):
            _die(f"no public port '{key}' published for {container}", 1)
        for b in published[key]:
            click.echo(f"{b['HostIp']}:{b['HostPort']}")
        return
    for key, bindings in sorted(published.items(), key=lambda kv: int(kv[0].split("/")[0])):
        for b in bindings or []:
            click.echo(f"{key} -> {b['HostIp']}:{b['HostPort']}")


@main.command()
@click.argument("container")
@click.pass_context
def top(ctx: click.Context, container: str) -> None:
    """Show a running container's processes (ps -ef's columns, the host's PIDs)."""
    t = _call(ctx, "top", id=container)
    _table(t["Processes"], t["Titles"])


@main.command()
@click.argument("container")
@click.pass_context
def diff(ctx: click.Context, container: str) -> None:
    """Show what a container changed in its filesystem (C changed, A added, D deleted)."""
    for change in _call(ctx, "changes", id=container):
        click.echo(f"{'CAD'[change['Kind']]} {change['Path']}")


@main.command()
@click.option("-m", "--message", default="", help="Commit message.")
@click.option("-a", "--author", default="")
@click.option("-p/--no-pause", "pause", default=True, help="Pause the container meanwhile.")
@click.argument("container")
@click.argument("ref", required=False)
@click.pass_context
def commit(ctx: click.Context, container: str, ref: str | None, message: str, author: str,
           pause: bool) -> None:
    """Make an image from a container's changes."""
    click.echo("sha256:" + _call(ctx, "commit", id=container, ref=ref, comment=message,
                                 author=author, pause=pause)["id"].removeprefix("sha256:"))


# -- images ------------------------------------------------------------------------------

@main.command(name="import")
@click.option("-m", "--message", default="")
@click.argument("path")
@click.argument("ref", required=False)
@click.pass_context
def import_(ctx: click.Context, path: str, ref: str | None, message: str) -> None:
    """Make a base image from a rootfs directory or tarball (plain or gzip)."""
    click.echo(_call(ctx, "import", path=os.path.abspath(path), ref=ref, comment=message)["id"])


@main.command()
@click.argument("ref", default="busybox:latest")
@click.pass_context
def bootstrap(ctx: click.Context, ref: str) -> None:
    """Make a busybox image from the host's static busybox (no network needed)."""
    click.echo(_call(ctx, "bootstrap", ref=ref)["id"])


@main.command()
@click.option("-q", "--quiet", is_flag=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def images(ctx: click.Context, quiet: bool, fmt: str) -> None:
    """List images."""
    rows = _call(ctx, "images")
    if quiet:
        for r in rows:
            click.echo(r["Id"].removeprefix("sha256:")[:12])
        return
    if fmt == "json":
        for r in rows:
            click.echo(json.dumps(r))
        return
    from .timefmt import ago

    table = []
    for r in rows:
        for t in r["RepoTags"] or ["<none>:<none>"]:
            repo, _, tag = t.rpartition(":")
            table.append([repo, tag, r["Id"].removeprefix("sha256:")[:12], ago(r["Created"]),
                          _size(r["Size"])])
    _table(table, ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"])


def _size(n: float, *, binary: bool = False) -> str:
    """Bytes as docker prints them: ``1.98MB`` (images, net I/O), or with ``binary`` as
    docker stats shows memory, ``12.5MiB``."""
    step, units, digits = (1024, ("B", "KiB", "MiB", "GiB"), 4) if binary else \
        (1000, ("B", "kB", "MB", "GB"), 3)
    for unit in units:
        if n < step or unit == units[-1]:
            return f"{n:.{digits}g}{unit}"
        n /= step
    return str(n)


@main.command()
@click.option("-q", "--quiet", is_flag=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.argument("image")
@click.pass_context
def history(ctx: click.Context, image: str, quiet: bool, fmt: str) -> None:
    """Show an image's layers, newest first."""
    rows = _call(ctx, "history", ref=image)
    if fmt == "json":
        for r in rows:
            click.echo(json.dumps(r))
    elif quiet:
        for r in rows:
            click.echo(str(r.get("id", "<missing>"))[:19])
    else:
        from .timefmt import ago

        _table([[str(r.get("id") or "<missing>").removeprefix("sha256:")[:12],
                 ago(r.get("created")), (r.get("created_by") or "")[:45],
                 _size(r.get("size", 0)), r.get("comment", "")] for r in rows],
               ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"])


@main.command()
@click.argument("source")
@click.argument("target")
@click.pass_context
def tag(ctx: click.Context, source: str, target: str) -> None:
    """Give an image another name."""
    _call(ctx, "tag", source=source, ref=target)


@main.command()
@click.option("-f", "--force", is_flag=True)
@click.argument("images", nargs=-1, required=True)
@click.pass_context
def rmi(ctx: click.Context, images: tuple[str, ...], force: bool) -> None:
    """Remove images."""
    for i in images:
        for line in _call(ctx, "rmi", ref=i, force=force):
            click.echo(line)


# -- host --------------------------------------------------------------------------------

@main.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.pass_context
def info(ctx: click.Context, fmt: str) -> None:
    """Show what the engine and the host offer."""
    i = _call(ctx, "info")
    if fmt == "json":
        _print_json(i)
        return
    for key in ("ServerVersion", "DockerRootDir", "Containers", "ContainersRunning",
                "ContainersPaused", "ContainersStopped", "Images", "Driver",
                "CgroupDriver", "CgroupVersion", "KernelVersion", "OperatingSystem",
                "Architecture", "NCPU", "MemTotal", "Name"):
        click.echo(f"{key}: {i.get(key)}")
    click.echo("Security:")
    for k, v in (i.get("Security") or {}).items():
        click.echo(f"  {k}: {v}")


@main.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.pass_context
def version(ctx: click.Context, fmt: str) -> None:
    """Show chanbox's version."""
    v = _call(ctx, "version")
    if fmt == "json":
        _print_json(v)
    else:
        for k, val in v.items():
            click.echo(f"{k}: {val}")


# -- events, the daemon, keys ------------------------------------------------------------

@main.command()
@click.option("--since", type=int, default=None,
              help="Replay every event after this sequence number the journal still holds.")
@click.option("-f", "--filter", "filters", multiple=True,
              help="type=, event=, container=, image=, label=KEY[=VALUE] (repeatable).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.option("--no-follow", is_flag=True, help="Print what the journal holds and stop.")
@click.pass_context
def events(ctx: click.Context, since: int | None, filters: tuple[str, ...], fmt: str,
           no_follow: bool) -> None:
    """Stream the engine's lifecycle events (until interrupted)."""
    from .errors import EngineError

    try:
        for ev in _client(ctx).stream("watch", since=since, filters=list(filters),
                                      follow=not no_follow):
            if fmt == "json":
                click.echo(json.dumps(ev))
            else:
                from .timefmt import rfc3339

                attrs = ", ".join(f"{k}={v}" for k, v in sorted(ev["attributes"].items()))
                click.echo(f"{rfc3339(ev['time'])} #{ev['seq']} {ev['type']} {ev['action']} "
                           f"{ev['id']}" + (f" ({attrs})" if attrs else ""))
    except EngineError as exc:
        _die(str(exc), exc.exit_status)
    except KeyboardInterrupt:
        pass


@main.command()
@click.option("-l", "--listen", "endpoints", multiple=True,
              help="Endpoint to serve (repeatable): ipc://PATH or tcp://HOST:PORT. "
                   "Default: ipc:///run/chanbox/engine.sock.")
@click.option("--key", "key_file", default=None,
              help="The daemon's CurveZMQ key pair file (needed for tcp://).")
@click.option("--allow", "allow_dir", default=None,
              help="Directory of the .pub files of the clients allowed over tcp://.")
@click.option("--insecure", is_flag=True, help="Allow plain-text tcp:// with no keys.")
@click.pass_context
def daemon(ctx: click.Context, endpoints: tuple[str, ...], key_file: str | None,
           allow_dir: str | None, insecure: bool) -> None:
    """Serve the engine's verbs to other processes and hosts."""
    from . import daemon as daemon_
    from .errors import EngineError

    try:
        sys.exit(daemon_.run(ctx.obj.root, list(endpoints) or [daemon_.DEFAULT_ENDPOINT],
                             key_file=key_file, allow_dir=allow_dir, insecure=insecure))
    except EngineError as exc:
        _die(str(exc), exc.exit_status)


@main.group()
def keys() -> None:
    """CurveZMQ keys for tcp:// daemons and their clients."""


@keys.command()
@click.argument("name")
def generate(name: str) -> None:
    """Write a key pair: NAME.key (secret, 0600) and NAME.pub (to hand out)."""
    from . import keys as keys_
    from .errors import EngineError

    try:
        for path in keys_.generate(name):
            click.echo(path)
    except EngineError as exc:
        _die(str(exc), exc.exit_status)


# More commands, each family in its own module (they import only click at load time).
from . import cli_copy, cli_network, cli_prune, cli_transfer, cli_volume  # noqa: E402,F401  (cp, network, prune, load/save/..., volume)
from bridges import cli as _bridges_cli  # noqa: E402,F401  (registers bridge, hosts)
