"""Transfer verbs: ``load``, ``save``, ``pull``, ``push`` (images), ``export``
(a container's filesystem).

- ``load`` (path, or stream) -> ``{"images": [name:tag or image id, ...]}``: a
  docker-save tarball or an OCI image layout (directory or tar) on the engine's host,
  or a tarball read from the ByteStream ``stream`` (``chanbox load < x.tar``).
- ``save`` (refs, path or stream, format ``docker``|``oci``) -> ``{}``: with ``stream``
  (a ByteStream) the tarball is written there (``chanbox save img | gzip``).
- ``export`` (id, path or stream) -> ``{}``: the container's filesystem as a tar, written
  to ``path`` on the engine's host or into the ByteStream ``stream``.
- ``archive_stat`` (id, path) -> a path in the container as Docker's path stat
  ``{"name", "size", "mode", "mtime", "linkTarget"}``.
- ``archive_get`` (id, path, stream) -> ``{"stat": ...}`` first, then a tar of the path
  written into the ByteStream ``stream`` (``docker cp CONTAINER:PATH ...``).
- ``archive_put`` (id, path, stream, copy_uid_gid) -> ``{}``: the tar read from
  ``stream`` extracted into the directory ``path`` in the container.
- ``pull`` (ref, insecure) and ``push`` (ref, insecure) -> a stream of progress messages
  ``{"layer", "status", "current", "total"}``, then ``{"id", "ref"}`` (push adds the
  manifest's ``digest``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Any

import chan

from . import fsutil
from .engine import Engine
from .errors import EngineError, InvalidArgument
from .service import STREAMED, _Args, verb

_COPY = 1 << 20


def _path_or_stream(a: _Args) -> tuple[str | None, Any]:
    path, stream = a.get("path", str), a.get("stream", chan.ByteStream)
    if (path is None) == (stream is None):
        raise InvalidArgument(f"{a.verb}: give either 'path' or 'stream'")
    return path, stream


@verb("load")
def _v_load(engine: Engine, a: _Args, ret: Any) -> Any:
    from .archive import load

    path, stream = _path_or_stream(a)
    if stream is None:
        names = load(engine.images, path)
    else:
        # an archive is read at random (manifest.json may come last): spool it first
        stage = fsutil.staging_dir(engine.root, "load-in")
        try:
            spooled = os.path.join(stage, "archive.tar")
            with open(spooled, "wb") as f:
                while chunk := stream.read(_COPY):
                    f.write(chunk)
            if not os.path.getsize(spooled):
                raise InvalidArgument("load: no archive came (the stream was empty); send "
                                      "a docker-save or OCI tarball")
            try:
                names = load(engine.images, spooled)
            except EngineError as exc:  # name what the user sent, not our spool file
                raise type(exc)(str(exc).replace(spooled, "the streamed archive")) from None
        finally:
            fsutil.remove_tree(stage)
    for name in names:
        engine._image_event("load", engine.images.get(name).id, "" if name.startswith("sha256:") else name)
    return {"images": names}


@verb("save")
def _v_save(engine: Engine, a: _Args, ret: Any) -> Any:
    from .archive import save

    names = a.strings("refs", []) or []
    fmt = a.get("format", str, "docker")
    if fmt not in ("docker", "oci"):
        raise InvalidArgument(f"save: format must be docker or oci, not {fmt!r}")
    path, stream = _path_or_stream(a)
    if stream is None:
        save(engine.images, names, path, fmt)
    else:
        stage = fsutil.staging_dir(engine.root, "save-out")
        try:
            written = os.path.join(stage, "archive.tar")
            save(engine.images, names, written, fmt)
            with open(written, "rb") as f:
                shutil.copyfileobj(f, stream, _COPY)  # (service.handle closes the stream)
        finally:
            fsutil.remove_tree(stage)
    for name in names:
        engine._image_event("save", engine.images.get(name).id, name)
    return {}


@verb("export")
def _v_export(engine: Engine, a: _Args, ret: Any) -> Any:
    path, stream = _path_or_stream(a)
    if stream is not None:
        engine.export(a.id(), stream)  # (service.handle closes the stream)
        return {}
    # written beside the target and renamed in: a failed export leaves no half tar there
    partial = f"{path}.cbx-partial-{os.getpid()}"
    try:
        with open(partial, "wb") as f:
            engine.export(a.id(), f)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    return {}


@verb("archive_stat")
def _v_archive_stat(engine: Engine, a: _Args, ret: Any) -> Any:
    return engine.archive_stat(a.id(), a.get("path", str, required=True))


@verb("archive_get")
def _v_archive_get(engine: Engine, a: _Args, ret: Any) -> Any:
    stream = a.get("stream", chan.ByteStream, required=True)
    engine.archive_get(a.id(), a.get("path", str, required=True), stream,
                       on_stat=lambda info: ret.send({"stat": info}))
    return STREAMED  # (service.handle closes the stream)


@verb("archive_put")
def _v_archive_put(engine: Engine, a: _Args, ret: Any) -> Any:
    stream = a.get("stream", chan.ByteStream, required=True)
    engine.archive_put(a.id(), a.get("path", str, required=True), stream,
                       copy_uid_gid=a.get("copy_uid_gid", bool, False))
    return {}


@verb("pull")
def _v_pull(engine: Engine, a: _Args, ret: Any) -> Any:
    from .distribution import pull

    image_id, ref = pull(engine.images, a.get("ref", str, required=True),
                         insecure=a.get("insecure", bool, False), progress=ret.send)
    engine._image_event("pull", image_id, ref)
    ret.send({"id": image_id, "ref": ref})
    return STREAMED


@verb("push")
def _v_push(engine: Engine, a: _Args, ret: Any) -> Any:
    from .distribution import push

    image_id, ref, digest = push(engine.images, a.get("ref", str, required=True),
                                 insecure=a.get("insecure", bool, False), progress=ret.send)
    engine._image_event("push", image_id, ref)
    ret.send({"id": image_id, "ref": ref, "digest": digest})
    return STREAMED
