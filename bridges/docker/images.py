"""``/images/...``, ``/commit`` and ``/networks/...``.

Pulling goes through the engine's ``pull`` verb; a bridge started with ``--no-pull``
(tests, air-gapped hosts) answers a pull of a missing image with Docker's 404, so
``docker run`` of an unknown image fails at once instead of reaching a registry.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from aiohttp import web

from engine import errors

from . import shapes
from .server import bridge_of, body_json, flag, json_ok, send_tar


async def list_(request: web.Request) -> web.StreamResponse:
    """``GET /images/json``."""
    items = await bridge_of(request).client.call("images")
    out = [shapes.image_summary(i) for i in items]
    filters = shapes.parse_filters(request.query.get("filters"))
    for ref in filters.get("reference", []):
        out = [i for i in out if any(_matches(t, ref) for t in i["RepoTags"])]
    return json_ok(out)


def _matches(tag: str, ref: str) -> bool:
    import fnmatch

    return fnmatch.fnmatch(tag, ref) or fnmatch.fnmatch(tag.rsplit(":", 1)[0], ref)


async def inspect(request: web.Request) -> web.StreamResponse:
    """``GET /images/NAME/json``."""
    ref = shapes.short_ref(request.match_info["name"])
    try:
        i = await bridge_of(request).client.call("image_get", ref=ref)
    except errors.NotFound:
        raise errors.NotFound(f"No such image: {ref}") from None
    return json_ok(shapes.image_inspect(i))


async def history(request: web.Request) -> web.StreamResponse:
    """``GET /images/NAME/history``."""
    entries = await bridge_of(request).client.call(
        "history", ref=shapes.short_ref(request.match_info["name"]))
    return json_ok(shapes.history(entries))


async def remove(request: web.Request) -> web.StreamResponse:
    """``DELETE /images/NAME?force=``: ``[{"Untagged"}, {"Deleted"}]``."""
    ref = shapes.short_ref(request.match_info["name"])
    try:
        lines = await bridge_of(request).client.call("rmi", ref=ref, force=flag(request, "force"))
    except errors.NotFound:
        raise errors.NotFound(f"No such image: {ref}") from None
    return json_ok(_rmi_shape(lines))


def _rmi_shape(lines: list) -> list[dict[str, str]]:
    """rmi's lines (``Untagged: x``, ``Deleted: sha256:...``) as Docker's list of maps."""
    out = []
    for line in lines:
        what, _, name = str(line).partition(": ")
        out.append({what: name})
    return out


async def prune(request: web.Request) -> web.StreamResponse:
    """``POST /images/prune?filters={"dangling":["false"]}``: the images no container
    uses, untagged ones (``dangling=false``, as ``docker image prune -a`` sends: all)."""
    filters = shapes.parse_filters(request.query.get("filters"))
    unknown = set(filters) - {"dangling"}
    if unknown:
        raise errors.InvalidArgument(f"image prune: unsupported filter {sorted(unknown)[0]!r}")
    all_images = "false" in [v.lower() for v in filters.get("dangling", [])]
    lines = (await bridge_of(request).client.call("image_prune", all=all_images))["lines"]
    return json_ok({"ImagesDeleted": _rmi_shape(lines) or None, "SpaceReclaimed": 0})


async def tag(request: web.Request) -> web.StreamResponse:
    """``POST /images/NAME/tag?repo=&tag=``: 201."""
    repo = request.query.get("repo")
    if not repo:
        raise errors.InvalidArgument("repository name (repo) must have at least one character")
    target = f"{shapes.short_ref(repo)}:{request.query.get('tag') or 'latest'}"
    await bridge_of(request).client.call("tag", source=shapes.short_ref(request.match_info["name"]),
                                         ref=target)
    return web.Response(status=201)


async def pull(request: web.Request) -> web.StreamResponse:
    """``POST /images/create?fromImage=&tag=``: the engine's ``pull``, as Docker's
    JSON progress stream."""
    b = bridge_of(request)
    image = shapes.short_ref(request.query.get("fromImage") or "")
    if not image:
        raise errors.InvalidArgument("fromImage is required (importing with fromSrc is not "
                                     "supported by this bridge: use chanbox import)")
    t = request.query.get("tag") or ""
    ref = image if ("@" in image or not t) else f"{image}:{t}"
    ref = _default_tag(ref)
    if not b.allow_pull:
        try:
            await b.client.call("image_get", ref=ref)
        except errors.NotFound:
            raise errors.NotFound(f"pull access denied for {image}, repository does not "
                                  "exist (this bridge does not pull: it was started with "
                                  "--no-pull; load or import the image)") from None
        return _progress_response([{"status": f"Status: Image is up to date for {ref}"}])
    stream = b.client.stream("pull", ref=ref, insecure=_insecure_by_default(ref))
    try:
        first = await stream.__anext__()
    except StopAsyncIteration:
        first = None
    except errors.InvalidArgument as exc:
        if "unknown verb" in str(exc):
            raise errors.NotFound(f"cannot pull {ref}: this engine has no pull verb; load "
                                  "or import the image") from None
        raise
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    try:
        msg = first
        while msg is not None:
            await resp.write(_line(_progress(msg, ref)))
            try:
                msg = await stream.__anext__()
            except StopAsyncIteration:
                msg = None
    except errors.EngineError as exc:
        await resp.write(_line({"errorDetail": {"message": str(exc)}, "error": str(exc)}))
    await resp.write_eof()
    return resp


def _insecure_by_default(ref: str) -> bool:
    """Docker's rule: a registry on loopback (127.0.0.0/8, ::1, localhost) is plain http."""
    import ipaddress

    first, sep, _ = ref.partition("/")
    if not sep or not ("." in first or ":" in first or first == "localhost"):
        return False  # no registry host in the name: Docker Hub
    host = first.rsplit(":", 1)[0].strip("[]") if first.count(":") <= 1 else first.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _default_tag(ref: str) -> str:
    last = ref.rsplit("/", 1)[-1]
    return ref if (":" in last or "@" in ref) else ref + ":latest"


def _progress(msg: dict[str, Any], ref: str) -> dict[str, Any]:
    if "layer" in msg:
        out: dict[str, Any] = {"status": msg.get("status", ""), "id": str(msg["layer"])[-12:]}
        if msg.get("total"):
            out["progressDetail"] = {"current": msg.get("current", 0), "total": msg["total"]}
        return out
    if "id" in msg:
        return {"status": f"Digest: {msg['id']}\nStatus: Downloaded newer image for "
                          f"{msg.get('ref') or ref}"}
    return {"status": str(msg.get("status", ""))}


def _line(value: Any) -> bytes:
    return (json.dumps(value) + "\r\n").encode()


def _progress_response(items: list[dict[str, Any]]) -> web.Response:
    return web.Response(body=b"".join(_line(i) for i in items), content_type="application/json")


async def load(request: web.Request) -> web.StreamResponse:
    """``POST /images/load``: the tar in the body, through the engine's ``load``."""
    tmp = tempfile.mkdtemp(prefix="cbx-load-")
    path = os.path.join(tmp, "images.tar")
    try:
        with open(path, "wb") as f:
            async for chunk in request.content.iter_chunked(1 << 20):
                f.write(chunk)
        result = await bridge_of(request).client.call("load", path=path)
    finally:
        _remove(tmp, path)
    refs = _loaded_refs(result)
    return _progress_response([{"stream": f"Loaded image: {r}\n"} for r in refs])


def _loaded_refs(result: Any) -> list[str]:
    if isinstance(result, dict):
        for key in ("refs", "tags", "images", "loaded", "ids", "id", "ref"):
            if key in result:
                return _loaded_refs(result[key])
        return []
    if isinstance(result, (list, tuple)):
        return [r for item in result for r in _loaded_refs(item)]
    return [str(result)] if result else []


def _remove(tmp: str, *files: str) -> None:
    for f in files:
        try:
            os.unlink(f)
        except FileNotFoundError:
            pass
    os.rmdir(tmp)


async def save(request: web.Request) -> web.StreamResponse:
    """``GET /images/get?names=`` and ``GET /images/NAME/get``: a tar of the images."""
    names = request.query.getall("names", []) or [request.match_info.get("name", "")]
    names = [shapes.short_ref(n) for n in names if n]
    if not names:
        raise errors.InvalidArgument("give the images to save (names=...)")
    client = bridge_of(request).client
    return await send_tar(request, lambda path: client.call("save", refs=names, path=path,
                                                            format="docker"))


async def commit(request: web.Request) -> web.StreamResponse:
    """``POST /commit?container=&repo=&tag=&comment=&author=&pause=``: 201 ``{"Id"}``."""
    q = request.query
    container = q.get("container")
    if not container:
        raise errors.InvalidArgument("container is required")
    body = await body_json(request) or {}
    changes = {k: body[k] for k in ("Cmd", "Entrypoint", "Env", "WorkingDir", "User",
                                    "Labels", "ExposedPorts") if body.get(k)}
    ref = None
    if q.get("repo"):
        ref = f"{shapes.short_ref(q['repo'])}:{q.get('tag') or 'latest'}"
    args: dict[str, Any] = {"id": container, "ref": ref, "comment": q.get("comment") or "",
                            "author": q.get("author") or "", "pause": flag(request, "pause", True)}
    if changes:
        args["changes"] = changes
    result = await bridge_of(request).client.call("commit", **args)
    iid = result["id"]
    return json_ok({"Id": iid if iid.startswith("sha256:") else "sha256:" + iid}, status=201)


# -- networks -----------------------------------------------------------------------------

def _network(n: dict[str, Any]) -> dict[str, Any]:
    created = n.get("Created")
    if isinstance(created, int):  # the engine keeps times as ns; Docker's clients want RFC 3339
        from engine.timefmt import rfc3339

        created = rfc3339(created)
    out = {"Name": n.get("Name") or n.get("name", ""), "Id": n.get("Id") or n.get("id", ""),
           "Created": created or "0001-01-01T00:00:00Z", "Scope": "local",
           "Driver": n.get("Driver") or n.get("driver") or "bridge", "EnableIPv6": False,
           "Internal": bool(n.get("Internal")), "Attachable": False, "Ingress": False,
           "IPAM": n.get("IPAM") or {"Driver": "default", "Options": None, "Config": []},
           "Containers": n.get("Containers") or {}, "Options": n.get("Options") or {},
           "Labels": n.get("Labels") or {}}
    if not out["Id"]:
        out["Id"] = out["Name"]
    return out


async def networks(request: web.Request) -> web.StreamResponse:
    """``GET /networks``."""
    items = await bridge_of(request).client.call("network_ls")
    return json_ok([_network(n) for n in items])


async def network_inspect(request: web.Request) -> web.StreamResponse:
    """``GET /networks/ID``."""
    n = await bridge_of(request).client.call("network_get", name=request.match_info["id"])
    return json_ok(_network(n))


async def network_create(request: web.Request) -> web.StreamResponse:
    """``POST /networks/create``: 201 ``{"Id", "Warning"}``."""
    body = await body_json(request) or {}
    name = body.get("Name")
    if not name:
        raise errors.InvalidArgument("network name is required (Name)")
    if (body.get("Driver") or "bridge") != "bridge":
        raise errors.InvalidArgument(f"network driver {body['Driver']!r} is not supported; "
                                     "chanbox makes bridge networks")
    args: dict[str, Any] = {"name": name}
    cfg = ((body.get("IPAM") or {}).get("Config") or [{}])[0] or {}
    if cfg.get("Subnet"):
        args["subnet"] = cfg["Subnet"]
    result = await bridge_of(request).client.call("network_create", **args)
    return json_ok({"Id": result["id"], "Warning": ""}, status=201)


async def network_remove(request: web.Request) -> web.StreamResponse:
    """``DELETE /networks/ID``."""
    await bridge_of(request).client.call("network_rm", name=request.match_info["id"])
    return web.Response(status=204)


ROUTES = [
    ("GET", "/images/json", list_),
    ("POST", "/images/create", pull),
    ("POST", "/images/load", load),
    ("GET", "/images/get", save),
    ("POST", "/images/prune", prune),
    ("GET", "/images/{name:.+}/json", inspect),
    ("GET", "/images/{name:.+}/history", history),
    ("GET", "/images/{name:.+}/get", save),
    ("POST", "/images/{name:.+}/tag", tag),
    ("DELETE", "/images/{name:.+}", remove),
    ("POST", "/commit", commit),
    ("GET", "/networks", networks),
    ("POST", "/networks/create", network_create),
    ("GET", "/networks/{id}", network_inspect),
    ("DELETE", "/networks/{id}", network_remove),
]
