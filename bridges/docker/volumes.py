"""``/volumes/...``: Docker's volume endpoints, over the engine's volume verbs."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from engine import errors

from . import shapes
from .server import bridge_of, body_json, flag, json_ok


def _shape(v: dict[str, Any]) -> dict[str, Any]:
    """The engine's volume as the API's (``Anonymous`` is chanbox's own)."""
    return {k: v[k] for k in ("Name", "Driver", "Mountpoint", "CreatedAt", "Labels", "Scope", "Options")}


async def list_(request: web.Request) -> web.StreamResponse:
    """``GET /volumes?filters=`` (name, label, dangling)."""
    client = bridge_of(request).client
    filters = shapes.parse_filters(request.query.get("filters"))
    unknown = set(filters) - {"name", "label", "dangling", "driver"}
    if unknown:
        raise errors.InvalidArgument(f"invalid filter {sorted(unknown)[0]!r}: use name, label, "
                                     "dangling or driver")
    vols = await client.call("volume_ls")
    if "dangling" in filters:
        used = {m.get("Name") for c in await client.call("ls", all=True) for m in c["Mounts"]}
        want = filters["dangling"][0].lower() in ("1", "true")
        vols = [v for v in vols if (v["Name"] not in used) == want]
    for name in filters.get("name", []):
        vols = [v for v in vols if name in v["Name"]]
    for label in filters.get("label", []):
        key, eq, value = label.partition("=")
        vols = [v for v in vols if key in (v["Labels"] or {})
                and (not eq or (v["Labels"] or {})[key] == value)]
    for driver in filters.get("driver", []):
        vols = [v for v in vols if v["Driver"] == driver]
    return json_ok({"Volumes": [_shape(v) for v in vols], "Warnings": []})


async def create(request: web.Request) -> web.StreamResponse:
    """``POST /volumes/create`` (``{"Name", "Driver", "DriverOpts", "Labels"}``)."""
    body = await body_json(request) or {}
    if not isinstance(body, dict):
        raise errors.InvalidArgument("the volume config must be a JSON object")
    if body.get("Driver") not in (None, "", "local"):
        raise errors.InvalidArgument(f"volume driver {body['Driver']!r} is not supported; only local is")
    if body.get("DriverOpts"):
        raise errors.InvalidArgument("volume driver options are not supported")
    v = await bridge_of(request).client.call("volume_create", name=body.get("Name") or None,
                                             labels=body.get("Labels") or {})
    return json_ok(_shape(v), status=201)


async def inspect(request: web.Request) -> web.StreamResponse:
    """``GET /volumes/NAME``."""
    return json_ok(_shape(await bridge_of(request).client.call(
        "volume_get", name=request.match_info["name"])))


async def remove(request: web.Request) -> web.StreamResponse:
    """``DELETE /volumes/NAME?force=``."""
    await bridge_of(request).client.call("volume_rm", name=request.match_info["name"],
                                         force=flag(request, "force"))
    return web.Response(status=204)


async def prune(request: web.Request) -> web.StreamResponse:
    """``POST /volumes/prune?filters=`` (``all=true``: named volumes too, as API 1.42+)."""
    filters = shapes.parse_filters(request.query.get("filters"))
    unknown = set(filters) - {"all"}
    if unknown:
        raise errors.InvalidArgument(f"volume prune takes only the 'all' filter here, not "
                                     f"{sorted(unknown)[0]!r}")
    everything = any(v.lower() in ("1", "true") for v in filters.get("all", []))
    deleted = (await bridge_of(request).client.call("volume_prune", all=everything))["deleted"]
    return json_ok({"VolumesDeleted": deleted or None, "SpaceReclaimed": 0})


ROUTES = [
    ("GET", "/volumes", list_),
    ("POST", "/volumes/create", create),
    ("POST", "/volumes/prune", prune),
    ("GET", "/volumes/{name}", inspect),
    ("DELETE", "/volumes/{name}", remove),
]
