"""Image transfer verbs: ``load``, ``save``, ``pull``, ``push``.

- ``load`` (path) -> ``{"images": [name:tag or image id, ...]}``: a docker-save tarball
  or an OCI image layout (directory or tar) on the engine's host.
- ``save`` (refs, path, format ``docker``|``oci``) -> ``{}``.
- ``pull`` (ref, insecure) and ``push`` (ref, insecure) -> a stream of progress messages
  ``{"layer", "status", "current", "total"}``, then ``{"id", "ref"}`` (push adds the
  manifest's ``digest``).
"""

from __future__ import annotations

from typing import Any

from .engine import Engine
from .errors import InvalidArgument
from .service import STREAMED, _Args, verb


@verb("load")
def _v_load(engine: Engine, a: _Args, ret: Any) -> Any:
    from .archive import load

    names = load(engine.images, a.get("path", str, required=True))
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
    save(engine.images, names, a.get("path", str, required=True), fmt)
    for name in names:
        engine._image_event("save", engine.images.get(name).id, name)
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
