"""Network verbs: ``network_create`` (name, subnet) -> ``{"id"}``; ``network_ls`` -> list
of ``{"Id", "Name", "Driver", "IPAM": {"Config": [{"Subnet", "Gateway"}]}, ...}``;
``network_get`` (name) -> that plus ``"Containers"``; ``network_rm`` (name)."""

from __future__ import annotations

from typing import Any

from .engine import Engine
from .errors import Conflict
from .service import _Args, verb


def _public(rec: dict[str, Any]) -> dict[str, Any]:
    ipam = {"Driver": "default",
            "Config": [{"Subnet": rec["Subnet"], "Gateway": rec["Gateway"]}]
            if rec["Subnet"] else []}
    return {"Id": rec["Id"], "Name": rec["Name"], "Driver": rec["Driver"],
            "Scope": rec.get("Scope", "local"), "IPAM": ipam,
            "Options": {"com.chanbox.bridge.name": rec["Bridge"]} if rec["Bridge"] else {}}


def _members(engine: Engine, name: str) -> dict[str, Any]:
    """The running containers of this engine on network ``name``."""
    out = {}
    for c in engine.containers.list():
        if c.config["HostConfig"]["NetworkMode"] != name:
            continue
        if engine.status(c) not in ("running", "paused"):
            continue
        ns = engine.inspect(c.id)["NetworkSettings"]
        out[c.id] = {"Name": c.name, "MacAddress": ns["MacAddress"],
                     "IPv4Address": f"{ns['IPAddress']}/{ns['IPPrefixLen']}"
                     if ns["IPAddress"] else ""}
    return out


@verb("network_create")
def _v_network_create(engine: Engine, a: _Args, ret: Any) -> Any:
    from .network import networks

    rec = networks.create(engine.root, a.get("name", str, required=True),
                          a.get("subnet", str))
    return {"id": rec["Id"]}


@verb("network_ls")
def _v_network_ls(engine: Engine, a: _Args, ret: Any) -> Any:
    from .network import networks

    recs = [networks.get(engine.root, n) for n in networks.BUILTIN]
    return [_public(r) for r in recs + networks.user_networks(engine.root)]


@verb("network_get")
def _v_network_get(engine: Engine, a: _Args, ret: Any) -> Any:
    from .network import networks

    rec = networks.get(engine.root, a.get("name", str, required=True))
    return {**_public(rec), "Created": rec["Created"],
            "Containers": _members(engine, rec["Name"])}


@verb("network_rm")
def _v_network_rm(engine: Engine, a: _Args, ret: Any) -> Any:
    from .network import networks

    rec = networks.get(engine.root, a.get("name", str, required=True))
    users = [c for c in engine.containers.list()
             if c.config["HostConfig"]["NetworkMode"] == rec["Name"]]
    if users and rec["Name"] not in networks.BUILTIN:
        raise Conflict(f"network {rec['Name']} has containers "
                       f"({', '.join(c.name for c in users[:5])}); remove them first")
    networks.remove(engine.root, rec["Name"])
    return {}
