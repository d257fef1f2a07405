"""``chanbox cp``: files between a container and the local filesystem, as ``docker cp``.

The engine moves tars (verbs ``archive_get``, ``archive_put``, ``archive_stat``); this
side decides, as the docker CLI does, where a copy lands:

- a directory copied onto an existing directory goes inside it (``SRC/.`` copies its
  contents); onto a path that does not exist, it becomes that path;
- a file copied onto an existing directory goes inside it; onto any other path, it
  becomes (or replaces) that file; a path ending in ``/`` must be an existing directory.

``-`` instead of the local path streams a tar: out to stdout, or in from stdin
(extracted into the container's directory).  A tar from a container is untrusted: its
names are checked to stay inside the destination (tarfile's ``tar`` filter), while
modes are kept.
"""

from __future__ import annotations

import os
import stat
import sys
from typing import Any

import click

from .cli import _client, _die, main
from .errors import EngineError, NotFound

_GO_DIR = 1 << 31  # Go's os.ModeDir, in the path stat the engine gives


def _parse(arg: str) -> tuple[str | None, str]:
    """``(container, path)`` of ``CONTAINER:PATH``; ``(None, arg)`` for a local path
    (one that starts with ``/`` or ``.``, or holds no ``:``, as docker decides)."""
    if arg.startswith(("/", ".")) or ":" not in arg:
        return None, arg
    container, path = arg.split(":", 1)
    if not container:
        _die(f"cp: {arg!r} names no container before ':'")
    return container, path if path.startswith("/") else "/" + path


@main.command()
@click.option("-a", "--archive", is_flag=True,
              help="Keep the owners (uid:gid) of the source; files copied into a container "
                   "otherwise belong to its root.")
@click.option("-L", "--follow-link", is_flag=True,
              help="Copy what a symlink given as the source points to, not the link.")
@click.argument("src")
@click.argument("dest")
@click.pass_context
def cp(ctx: click.Context, archive: bool, follow_link: bool, src: str, dest: str) -> None:
    """Copy files between a container and the local filesystem.

    \b
    chanbox cp CONTAINER:SRC_PATH DEST_PATH|-
    chanbox cp SRC_PATH|- CONTAINER:DEST_PATH
    """
    (sc, spath), (dc, dpath) = _parse(src), _parse(dest)
    if sc is not None and dc is not None:
        _die("cp: copying between containers is not supported; copy to the host first")
    if sc is None and dc is None:
        _die("cp: one of the paths must be CONTAINER:PATH")
    if sc is not None:
        if follow_link:
            info = _stat_in(ctx, sc, spath)
            if info is not None and info.get("linkTarget"):
                spath = info["linkTarget"]  # (resolved inside the container)
        _copy_out(ctx, sc, spath, dpath, archive)
    else:
        assert dc is not None
        if follow_link:
            spath = os.path.realpath(spath)
        _copy_in(ctx, spath, dc, dpath, archive)


# ---------------------------------------------------------------- out of a container

def _copy_out(ctx: click.Context, container: str, path: str, dest: str, archive: bool) -> None:
    import tarfile

    import chan

    from .cli_transfer import _receive_stdout
    from .client import engine_error

    if dest == "-" and sys.stdout.isatty():
        _die("cp: cowardly refusing to write a tar to a terminal; pipe it or give a path")
    ours, theirs = chan.stream_pair()
    rx = _client(ctx).receiver("archive_get", id=container, path=path, stream=theirs)
    try:
        try:
            info = rx.recv()["stat"]
            if dest == "-":
                _receive_stdout(ours)
            else:
                _extract_here(_Reader(ours), info, path, dest, archive)
                while ours.read(1 << 20):  # the tar's end padding
                    pass
        except chan.RemoteError:
            raise
        except chan.ChannelError:
            pass  # the engine stopped the stream: its last word below says why
        try:
            rx.recv()  # the engine's last word: an error while it wrote the tar
        except chan.EndOfChannel:
            pass
    except chan.RemoteError as exc:
        err = engine_error(exc)
        _die(str(err), err.exit_status)
    except (chan.ChannelError, EngineError, OSError, tarfile.TarError) as exc:
        _die(f"cp: {exc}")
    finally:
        ours.close()  # an engine still writing stops (we failed, or were interrupted)
        rx.close()


class _Reader:
    """A ByteStream as the file tarfile reads a stream from."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def read(self, n: int = -1) -> bytes:
        return self._stream.read(n)


def _extract_here(fileobj: Any, info: dict[str, Any], path: str, dest: str, archive: bool) -> None:
    """Extract the tar of the container's ``path`` (stat ``info``) to the local ``dest``."""
    src_dir = bool(info["mode"] & _GO_DIR)
    top = "." if info["name"] == "/" else info["name"]  # the root: its contents
    try:
        st = os.stat(dest)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        into, name = dest, (None if top == "." else top)  # inside it (or its contents)
    elif st is not None and src_dir:
        raise EngineError(f"cannot copy the directory {path} onto the file {dest}")
    elif st is None and dest.endswith("/"):
        raise NotFound(f"the destination directory {dest} does not exist")
    else:
        into, name = os.path.dirname(os.path.abspath(dest)), os.path.basename(dest.rstrip("/"))
        if not os.path.isdir(into):
            raise NotFound(f"the destination directory {into} does not exist")
    with _local_tar(fileobj, archive) as tar:
        def renamed() -> Any:
            for m in tar:
                rel = _rebase(m.name, top, name)
                if rel is not None:
                    m.name = rel
                    yield m

        # (extractall sets directories' modes and times last, once their files are in)
        tar.extractall(into, members=renamed(), filter=_keep_modes_filter)


def _rebase(name: str, top: str, new: str | None) -> str | None:
    """``name`` with its first component ``top`` replaced by ``new`` (None: dropped, the
    ``.`` entry itself then too)."""
    name = name.rstrip("/")
    head, _, rest = name.partition("/")
    if head != top:
        raise EngineError(f"the container sent an unexpected entry {name!r}")
    if new is None:
        return rest or None
    return f"{new}/{rest}" if rest else new


def _keep_modes_filter(member: Any, dest: str) -> Any:
    """tarfile's ``tar`` filter (names and link targets stay inside ``dest``) without its
    cuts to the mode bits: ``cp`` keeps modes, as docker does."""
    import tarfile

    checked = tarfile.tar_filter(member, dest)
    return checked.replace(mode=member.mode, deep=False)


def _local_tar(fileobj: Any, keep_owner: bool) -> Any:
    """A tar read as a stream, extracted with owners kept only when asked (``-a``), as
    docker's.  (tarfile is imported here: every other command starts without it.)"""
    import tarfile

    class LocalTar(tarfile.TarFile):
        def chown(self, tarinfo: tarfile.TarInfo, targetpath: str, numeric_owner: bool) -> None:
            if keep_owner:
                super().chown(tarinfo, targetpath, numeric_owner=True)

    return LocalTar.open(fileobj=fileobj, mode="r|")


# ---------------------------------------------------------------- into a container

def _copy_in(ctx: click.Context, src: str, container: str, path: str, archive: bool) -> None:
    from .cli_transfer import _send_stdin, _streamed

    if src == "-":
        if sys.stdin.isatty():
            _die("cp: requested a tar from stdin, but stdin is a terminal")
        _streamed(ctx, "archive_put", _send_stdin, id=container, path=path, copy_uid_gid=archive)
        return
    try:
        st = os.lstat(src)
    except FileNotFoundError:
        _die(f"cp: no such file or directory: {src}")
    src_dir = stat.S_ISDIR(st.st_mode)
    target = _stat_in(ctx, container, path)
    if target is not None and target.get("linkTarget"):
        path = target["linkTarget"]
        target = _stat_in(ctx, container, path)
    if target is not None and target["mode"] & _GO_DIR:
        into = path
        name = None if src.endswith("/.") else os.path.basename(os.path.abspath(src))
    elif target is not None and src_dir:
        _die(f"cp: cannot copy the directory {src} onto the file {path}")
    elif target is None and path.endswith("/"):
        _die(f"cp: the destination directory {path} does not exist in {container}")
    else:
        into, name = os.path.dirname(path.rstrip("/")) or "/", os.path.basename(path.rstrip("/"))

    def send(stream: Any) -> None:
        import tarfile

        with tarfile.open(fileobj=_Writer(stream), mode="w|", format=tarfile.PAX_FORMAT) as tar:
            if name is None:  # the directory's contents
                for child in sorted(os.listdir(src)):
                    tar.add(os.path.join(src, child), arcname=child)
            else:
                tar.add(src, arcname=name)
        stream.close_write()

    _streamed(ctx, "archive_put", send, id=container, path=into, copy_uid_gid=archive)


def _stat_in(ctx: click.Context, container: str, path: str) -> dict[str, Any] | None:
    """The stat of ``path`` in the container; None if it is not there."""
    try:
        return _client(ctx).call("archive_stat", id=container, path=path)
    except NotFound:
        return None
    except EngineError as exc:
        _die(str(exc), exc.exit_status)


class _Writer:
    """A ByteStream as the file tarfile writes a stream to."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, data: bytes) -> int:
        return self._stream.write(data)
