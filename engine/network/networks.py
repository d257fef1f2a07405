"""Network records: the built-in ``bridge``, ``host`` and ``none``, and user networks.

``bridge`` is the host's ``cbx0`` (shared by every engine root on the host, like
docker0; its subnet is picked once, or taken from ``CHANBOX_BRIDGE_SUBNET``, and kept
in ``<RUN>/cbx0.json``).  A user network is a record ``<root>/networks/<name>.json`` and
a bridge ``cbxb<id>`` made when the network is created (again on first use after a
reboot).  Containers on one user network find each other by name and alias; different
bridges do not forward to each other.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
from typing import Any

from engine import fsutil
from engine.errors import Conflict, InvalidArgument, NotFound

from . import bridge, ipam

DEFAULT = "bridge"
DEFAULT_BRIDGE = "cbx0"
BUILTIN = ("bridge", "host", "none")
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
# where subnets are picked from: Docker's default pools
_DEFAULT_POOL = [f"172.{n}.0.0/16" for n in range(17, 32)]
_USER_POOL = [f"10.89.{n}.0/24" for n in range(256)]


def _dir(root: str) -> str:
    return os.path.join(root, "networks")


def _record(name: str, net_id: str, dev: str, subnet: str, created: int) -> dict[str, Any]:
    gateway = str(next(ipaddress.IPv4Network(subnet).hosts()))
    return {"Id": net_id, "Name": name, "Driver": "bridge", "Scope": "local",
            "Bridge": dev, "Created": created, "Subnet": subnet, "Gateway": gateway}


def default_network() -> dict[str, Any]:
    """The ``bridge`` network's record (its bridge made on first use)."""
    info = fsutil.read_json(os.path.join(ipam.RUN_DIR, DEFAULT_BRIDGE + ".json"))
    if info is not None and bridge.exists(DEFAULT_BRIDGE):
        return info
    with bridge._host_lock():
        return _make_default()


def _make_default() -> dict[str, Any]:
    path = os.path.join(ipam.RUN_DIR, DEFAULT_BRIDGE + ".json")
    info = fsutil.read_json(path)
    if info is None:
        found = bridge.gateway_of(DEFAULT_BRIDGE) if bridge.exists(DEFAULT_BRIDGE) else None
        if found:
            subnet = str(ipaddress.IPv4Network(f"{found[0]}/{found[1]}", strict=False))
        else:
            subnet = os.environ.get("CHANBOX_BRIDGE_SUBNET") or _pick(_DEFAULT_POOL, set())
            bridge.check_subnet(subnet)
        info = _record(DEFAULT, os.urandom(32).hex(), DEFAULT_BRIDGE, subnet, time.time_ns())
    return info


def ensure_default() -> dict[str, Any]:
    """The ``bridge`` network's record, its bridge made and up."""
    path = os.path.join(ipam.RUN_DIR, DEFAULT_BRIDGE + ".json")
    info = fsutil.read_json(path)
    if info is not None and bridge.exists(DEFAULT_BRIDGE):
        bridge.ensure(DEFAULT_BRIDGE, info["Subnet"], info["Gateway"])  # up? (cheap)
        return info
    os.makedirs(ipam.RUN_DIR, mode=0o700, exist_ok=True)
    info = _make_default()
    bridge.ensure(DEFAULT_BRIDGE, info["Subnet"], info["Gateway"])
    fsutil.write_json(path, info, sync=False)
    return info


def _pick(pool: list[str], used: set[str]) -> str:
    from pyroute2 import IPRoute  # only when a subnet has to be picked

    with IPRoute() as ipr:
        for subnet in pool:
            net = ipaddress.IPv4Network(subnet)
            if any(net.overlaps(ipaddress.IPv4Network(u)) for u in used):
                continue
            if bridge.overlapping_route(subnet, ipr) is None:
                return subnet
    raise Conflict("no free subnet left for a network; remove networks or give --subnet")


def get(root: str, name: str) -> dict[str, Any]:
    """The record of network ``name`` (or of a unique id prefix)."""
    if name == DEFAULT:
        return default_network()
    if name in ("host", "none"):
        return {"Id": name * 8, "Name": name, "Driver": "host" if name == "host" else "null",
                "Scope": "local", "Bridge": "", "Subnet": "", "Gateway": "", "Created": 0}
    if _NAME.match(name):
        rec = fsutil.read_json(os.path.join(_dir(root), name + ".json"))
        if rec is not None:
            return rec
    matches = [r for r in user_networks(root) if r["Id"].startswith(name)]
    if len(matches) == 1:
        return matches[0]
    raise NotFound(f"network {name} not found; list them with `chanbox network ls`")


def user_networks(root: str) -> list[dict[str, Any]]:
    """Every user network of ``root``, oldest first."""
    try:
        names = os.listdir(_dir(root))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        if n.endswith(".json"):
            rec = fsutil.read_json(os.path.join(_dir(root), n))
            if rec is not None:
                out.append(rec)
    out.sort(key=lambda r: r["Created"])
    return out


def create(root: str, name: str, subnet: str | None = None) -> dict[str, Any]:
    """Make user network ``name`` (its bridge too); its record."""
    if not _NAME.match(name or ""):
        raise InvalidArgument(f"invalid network name {name!r}: only [a-zA-Z0-9]"
                              "[a-zA-Z0-9_.-] are allowed")
    if name in BUILTIN:
        raise Conflict(f"network {name} is built in; choose another name")
    os.makedirs(_dir(root), mode=0o700, exist_ok=True)
    with fsutil.root_lock(root):
        path = os.path.join(_dir(root), name + ".json")
        if os.path.exists(path):
            raise Conflict(f"network with name {name} already exists; remove it first "
                           "or choose another name")
        used = {r["Subnet"] for r in user_networks(root)}
        if subnet:
            net = bridge.check_subnet(subnet)
            subnet = str(net)
            if any(net.overlaps(ipaddress.IPv4Network(u)) for u in used):
                raise Conflict(f"subnet {subnet} overlaps another network of this engine")
        else:
            subnet = _pick(_USER_POOL, used)
        net_id = os.urandom(32).hex()
        rec = _record(name, net_id, "cbxb" + net_id[:11], subnet, time.time_ns())
        bridge.ensure(rec["Bridge"], rec["Subnet"], rec["Gateway"])
        fsutil.write_json(path, rec)
    return rec


def remove(root: str, name: str) -> None:
    """Delete user network ``name`` and its bridge (callers check it is unused)."""
    rec = get(root, name)
    if rec["Name"] in BUILTIN:
        raise Conflict(f"network {rec['Name']} is built in and cannot be removed")
    bridge.remove(rec["Bridge"])
    try:
        os.unlink(os.path.join(_dir(root), rec["Name"] + ".json"))
    except FileNotFoundError:
        pass
    fsutil.remove_tree(ipam.lease_dir(rec["Bridge"]))


def for_container(root: str, mode: str) -> dict[str, Any] | None:
    """The bridge network a container in network mode ``mode`` joins (made and up),
    or None for ``host`` and ``none``."""
    if mode in ("host", "none"):
        return None
    if mode == DEFAULT:
        return ensure_default()
    rec = get(root, mode)
    bridge.ensure(rec["Bridge"], rec["Subnet"], rec["Gateway"])
    return rec
