"""What a container offers as services: registrator's naming rules, as pure functions.

One service per published port (or, with ``internal``, per exposed port at the
container's own address).  Metadata comes from the container's environment and its
labels (labels win): ``SERVICE_NAME``, ``SERVICE_TAGS``, ``SERVICE_ID``,
``SERVICE_IGNORE`` and, per port, ``SERVICE_<port>_NAME`` / ``_TAGS`` / ``_ID`` /
``_IGNORE``; any other ``SERVICE_<key>`` becomes an attribute.  The default name is the
image's base name (``registry:5000/team/redis:7`` -> ``redis``), with ``-<port>`` added
when a container offers several ports.  The default id is ``<host>:<container>:<port>``
(``:udp`` added for udp).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

_PORT_KEY = re.compile(r"^SERVICE_(\d+)_(.+)$")


@dataclass(frozen=True)
class Service:
    """One registered endpoint of a container."""

    id: str
    name: str
    ip: str
    port: int
    proto: str
    tags: tuple[str, ...]
    container_id: str
    container_name: str
    host: str
    attrs: dict[str, str] = field(default_factory=dict, hash=False, compare=True)

    def to_json(self) -> str:
        """The value a discovery system stores for this service."""
        d = asdict(self)
        d["tags"] = list(self.tags)
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Service:
        """The inverse of :meth:`to_json`."""
        d = json.loads(text)
        d["tags"] = tuple(d.get("tags", ()))
        return cls(**d)


def _metadata(container: dict[str, Any]) -> dict[str, str]:
    cfg = container.get("Config") or {}
    meta: dict[str, str] = {}
    for item in cfg.get("Env") or []:
        key, sep, value = item.partition("=")
        if sep and key.startswith("SERVICE_"):
            meta[key] = value
    for key, value in (cfg.get("Labels") or {}).items():
        if key.startswith("SERVICE_"):
            meta[key] = value
    return meta


def _ports(container: dict[str, Any], internal: bool, host_ip: str) -> list[tuple[str, int, str, int]]:
    """(ip, port, proto, exposed port) for each port the container offers."""
    ns = container.get("NetworkSettings") or {}
    out = []
    for spec, bindings in sorted((ns.get("Ports") or {}).items()):
        exposed, _, proto = spec.partition("/")
        proto = proto or "tcp"
        if internal:
            if ns.get("IPAddress"):
                out.append((ns["IPAddress"], int(exposed), proto, int(exposed)))
            continue
        for b in bindings or []:
            ip = b.get("HostIp") or ""
            if ip in ("", "0.0.0.0", "::"):
                ip = host_ip
            out.append((ip, int(b["HostPort"]), proto, int(exposed)))
    return out


def services_of(container: dict[str, Any], *, host: str, host_ip: str,
                internal: bool = False, explicit: bool = False) -> list[Service]:
    """The services ``container`` (an engine ``get``/inspect dict) offers, by
    registrator's rules; none for a container that is not running."""
    if not (container.get("State") or {}).get("Running"):
        return []
    meta = _metadata(container)
    if "SERVICE_IGNORE" in meta:
        return []
    ports = _ports(container, internal, host_ip)
    image = (container.get("Config") or {}).get("Image", "")
    base = image.rsplit("/", 1)[-1].split(":", 1)[0] or "container"
    name_of_container = container.get("Name", "").lstrip("/")
    several = len({p[3] for p in ports}) > 1
    out = []
    for ip, port, proto, exposed in ports:
        own = {m.group(2): v for k, v in meta.items()
               if (m := _PORT_KEY.match(k)) and int(m.group(1)) == exposed}
        if "IGNORE" in own:
            continue
        general = {k[len("SERVICE_"):]: v for k, v in meta.items() if not _PORT_KEY.match(k)}
        merged = {**general, **own}
        if explicit and "NAME" not in merged:
            continue
        # registrator: SERVICE_NAME names every port alike (their ids differ); only the
        # image's base name gets "-<port>" when there are several ports
        name = merged.get("NAME") or (f"{base}-{exposed}" if several else base)
        sid = merged.get("ID") or f"{host}:{name_of_container}:{exposed}" + \
            (":udp" if proto == "udp" else "")
        tags = tuple(t for t in (merged.get("TAGS") or "").split(",") if t)
        attrs = {k.lower(): v for k, v in merged.items()
                 if k not in ("NAME", "ID", "TAGS", "IGNORE")}
        out.append(Service(id=sid, name=name, ip=ip, port=port, proto=proto, tags=tags,
                           container_id=container["Id"], container_name=name_of_container,
                           host=host, attrs=attrs))
    return out
