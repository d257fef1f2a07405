"""Engine answers in the Docker Engine API's JSON shapes, and Docker's requests as
engine arguments.  Pure functions: no I/O, so each is tested on its own.

The docker CLI is written in Go: a field of the wrong JSON type (a number where it
wants a string) fails the whole command, so every shape here is built field by field
rather than passed through.
"""

from __future__ import annotations

import datetime
import shlex
from typing import Any

from engine.errors import InvalidArgument

#: the API version this bridge speaks (the CLI then uses min(its own, this))
API_VERSION = "1.47"
MIN_API_VERSION = "1.24"
OS_TYPE = "linux"


def create_args(body: dict[str, Any], name: str | None) -> dict[str, Any]:
    """``POST /containers/create``'s body (a ContainerConfig with HostConfig and
    NetworkingConfig) as the engine's ``create`` args."""
    if not isinstance(body, dict):
        raise InvalidArgument("the container config must be a JSON object")
    hc = body.get("HostConfig") or {}
    image = body.get("Image")
    if not image or not isinstance(image, str):
        raise InvalidArgument("no image given: set \"Image\" in the container config")
    image = short_ref(image)
    args: dict[str, Any] = {
        "image": image, "cmd": _strs(body.get("Cmd"), "Cmd"), "name": name or None,
        "env": _strs(body.get("Env"), "Env") or [],
        "workdir": body.get("WorkingDir") or "", "user": body.get("User") or "",
        "hostname": body.get("Hostname") or "", "labels": body.get("Labels") or {},
        "open_stdin": bool(body.get("OpenStdin")), "tty": bool(body.get("Tty")),
        "read_only": bool(hc.get("ReadonlyRootfs")), "privileged": bool(hc.get("Privileged")),
        "auto_remove": bool(hc.get("AutoRemove")),
    }
    ep = body.get("Entrypoint")
    if ep is not None:
        args["entrypoint"] = _strs(ep, "Entrypoint")
    if hc.get("Memory"):
        args["memory"] = int(hc["Memory"])
    cpus = _cpus(hc)
    if cpus:
        args["cpus"] = cpus
    if hc.get("PidsLimit"):
        args["pids_limit"] = int(hc["PidsLimit"])
    mode = hc.get("NetworkMode") or "default"
    if mode not in ("default", ""):
        args["network"] = mode
    binds = [*(_strs(hc.get("Binds"), "Binds") or []), *_mounts(hc.get("Mounts"))]
    # anonymous volumes (-v /path) come as the keys of Config.Volumes
    volumes = body.get("Volumes") or {}
    if not isinstance(volumes, dict):
        raise InvalidArgument("Volumes must be an object of container paths")
    taken = {b.split(":")[1] if ":" in b else b for b in binds}
    binds += [path for path in volumes if path not in taken]
    if binds:
        args["binds"] = binds
    ports = port_bindings(hc.get("PortBindings") or {})
    if ports:
        args["ports"] = ports
    endpoints = (body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
    aliases = [a for ep_cfg in endpoints.values() for a in ((ep_cfg or {}).get("Aliases") or [])]
    if aliases:
        args["network_aliases"] = aliases
    return args


def _mounts(mounts: Any) -> list[str]:
    """``HostConfig.Mounts`` (``--mount type=bind|volume,source=,target=,readonly``) in
    the ``-v`` form the engine takes."""
    out = []
    for m in mounts or []:
        if not isinstance(m, dict) or m.get("Type") not in ("bind", "volume"):
            raise InvalidArgument("--mount: only type=bind and type=volume are supported")
        target, source = m.get("Target") or "", m.get("Source") or ""
        if m["Type"] == "bind" and not source:
            raise InvalidArgument("--mount type=bind needs a source")
        if m.get("VolumeOptions") and (m["VolumeOptions"].get("NoCopy")
                                       or m["VolumeOptions"].get("DriverConfig")):
            raise InvalidArgument("--mount: volume-nocopy and volume drivers are not supported")
        if not source and m.get("ReadOnly"):
            raise InvalidArgument("--mount: a read-only volume needs a name (source=)")
        text = f"{source}:{target}" if source else target
        out.append(text + (":ro" if m.get("ReadOnly") else ""))
    return out


def _strs(value: Any, field: str) -> list[str] | None:
    """Docker's StrSlice: null, a string (split as a shell would not: one word) or a list."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise InvalidArgument(f"{field} must be a string or a list of strings")


def _cpus(hc: dict[str, Any]) -> float | None:
    if hc.get("NanoCpus"):
        return int(hc["NanoCpus"]) / 1e9
    if hc.get("CpuQuota") and hc.get("CpuPeriod"):
        return int(hc["CpuQuota"]) / int(hc["CpuPeriod"])
    return None


def port_bindings(bindings: dict[str, Any]) -> list[dict[str, Any]]:
    """``{"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}`` as the engine's ``ports``."""
    out = []
    for key, hosts in bindings.items():
        port, _, proto = key.partition("/")
        for h in hosts or [{}]:
            out.append({"host_ip": (h or {}).get("HostIp") or "",
                        "host_port": int((h or {}).get("HostPort") or 0),
                        "container_port": int(port), "proto": proto or "tcp"})
    return out


_HUB_PREFIXES = ("docker.io/library/", "index.docker.io/library/", "docker.io/",
                 "index.docker.io/")


def terminal_size(query: Any) -> tuple[int, int] | None:
    """``?h=&w=`` of a resize request as ``(rows, cols)``; None when either is missing or
    0 (the CLI does not know its size yet: nothing to do)."""
    try:
        rows, cols = int(query.get("h") or 0), int(query.get("w") or 0)
    except ValueError:
        raise InvalidArgument("h and w must be whole numbers of rows and columns") from None
    if not rows or not cols:
        return None
    if not (0 < rows < 1 << 16 and 0 < cols < 1 << 16):
        raise InvalidArgument(f"a terminal of {rows}x{cols} is out of range: rows and columns "
                              "go from 1 to 65535")
    return rows, cols


def short_ref(ref: str) -> str:
    """The CLI's normalized ``docker.io/library/busybox`` as chanbox names it (``busybox``)."""
    for prefix in _HUB_PREFIXES:
        if ref.startswith(prefix):
            return ref[len(prefix):]
    return ref


def arch(machine: str) -> str:
    """``uname -m`` as Go names it (what docker prints)."""
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine)


def container_summary(c: dict[str, Any]) -> dict[str, Any]:
    """An engine ``ls`` entry as ``GET /containers/json`` lists it."""
    return {
        "Id": c["Id"], "Names": c.get("Names") or [], "Image": c.get("Image", ""),
        "ImageID": c.get("ImageID", ""), "Command": c.get("Command", ""),
        "Created": int(c.get("Created") or 0), "State": c.get("State", ""),
        "Status": c.get("Status", ""), "Labels": c.get("Labels") or {},
        "Ports": _summary_ports(c.get("Ports")), "Mounts": c.get("Mounts") or [],
        "HostConfig": {"NetworkMode": c.get("NetworkMode") or "none"},
        "NetworkSettings": {"Networks": c.get("Networks") or {}},
    }


def _summary_ports(ports: Any) -> list[dict[str, Any]]:
    if not isinstance(ports, list):
        return []
    out = []
    for p in ports:
        if isinstance(p, dict) and "PrivatePort" in p:
            out.append(p)
        elif isinstance(p, dict) and "container_port" in p:
            out.append({"IP": p.get("host_ip") or "0.0.0.0", "PrivatePort": p["container_port"],
                        "PublicPort": p.get("host_port") or 0, "Type": p.get("proto", "tcp")})
    return out


def parse_filters(raw: str | None) -> dict[str, list[str]]:
    """The ``filters`` query parameter (JSON map of lists, or of ``{value: true}``)."""
    if not raw:
        return {}
    import json

    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidArgument(f"filters is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidArgument("filters must be a JSON object of lists")
    out: dict[str, list[str]] = {}
    for key, values in data.items():
        if isinstance(values, dict):
            values = [v for v, on in values.items() if on]
        elif isinstance(values, str):
            values = [values]
        out[key] = [str(v) for v in values]
    return out


def container_inspect(c: dict[str, Any]) -> dict[str, Any]:
    """The engine's ``get`` as ``GET /containers/ID/json`` (every field the CLI reads,
    with Docker's types)."""
    out = dict(c)
    cfg = dict(c.get("Config") or {})
    cfg.setdefault("AttachStdin", False)
    cfg.setdefault("AttachStdout", False)
    cfg.setdefault("AttachStderr", False)
    cfg["Entrypoint"] = cfg.get("Entrypoint") or None
    cfg["Cmd"] = cfg.get("Cmd") or None
    cfg["Env"] = cfg.get("Env") or []
    cfg["Labels"] = cfg.get("Labels") or {}
    cfg.setdefault("StdinOnce", False)
    out["Config"] = cfg
    hc = dict(c.get("HostConfig") or {})
    hc.setdefault("NetworkMode", "none")
    hc.setdefault("PortBindings", {})
    hc.setdefault("RestartPolicy", {"Name": "no", "MaximumRetryCount": 0})
    hc.setdefault("LogConfig", {"Type": "json-file", "Config": {}})
    out["HostConfig"] = hc
    ns = dict(c.get("NetworkSettings") or {})
    ns.setdefault("Networks", {})
    ns.setdefault("Ports", {})
    ns.setdefault("IPAddress", "")
    out["NetworkSettings"] = ns
    out.setdefault("Mounts", [])
    out.setdefault("Driver", "overlay2")
    out.setdefault("Platform", OS_TYPE)
    out.setdefault("RestartCount", 0)
    out.setdefault("ResolvConfPath", "")
    out.setdefault("HostnamePath", "")
    out.setdefault("HostsPath", "")
    state = dict(c.get("State") or {})
    state.setdefault("Status", "created")
    out["State"] = state
    return out


def _unix(created: Any) -> int:
    """An image's creation time (RFC 3339 text or a number) as Unix seconds."""
    if isinstance(created, (int, float)):
        return int(created)
    if not created:
        return 0
    text = str(created).replace("Z", "+00:00")
    if "." in text:  # fromisoformat takes at most 6 fraction digits on 3.10
        head, _, rest = text.partition(".")
        digits = "".join(ch for ch in rest if ch.isdigit())
        text = head + "." + digits[:6] + rest[len(digits):]
    try:
        return int(datetime.datetime.fromisoformat(text).timestamp())
    except ValueError:
        return 0


def image_summary(i: dict[str, Any]) -> dict[str, Any]:
    """An engine ``images`` entry as ``GET /images/json`` lists it."""
    size = int(i.get("Size") or 0)
    return {"Id": i["Id"], "ParentId": i.get("ParentId") or "",
            "RepoTags": i.get("RepoTags") or [], "RepoDigests": [],
            "Created": _unix(i.get("Created")), "Size": size, "SharedSize": -1,
            "VirtualSize": size, "Labels": i.get("Labels") or {}, "Containers": -1}


def image_inspect(i: dict[str, Any]) -> dict[str, Any]:
    """The engine's ``image_get`` as ``GET /images/NAME/json``."""
    out = dict(i)
    out.setdefault("RepoDigests", [])
    out["Config"] = i.get("Config") or {}
    out.setdefault("Os", OS_TYPE)
    out.setdefault("Architecture", "amd64")
    out.setdefault("DockerVersion", "")
    out["Size"] = int(i.get("Size") or 0)
    out.setdefault("GraphDriver", {"Name": "overlay2", "Data": {}})
    out.setdefault("Metadata", {"LastTagTime": "0001-01-01T00:00:00Z"})
    return out


def history(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The engine's ``history`` as ``GET /images/NAME/history``."""
    out = []
    for e in entries:
        out.append({"Id": e.get("Id") or e.get("id") or "<missing>",
                    "Created": _unix(e.get("Created") or e.get("created")),
                    "CreatedBy": e.get("CreatedBy") or e.get("created_by") or "",
                    "Tags": e.get("Tags") or [], "Size": int(e.get("Size") or e.get("size") or 0),
                    "Comment": e.get("Comment") or e.get("comment") or ""})
    return out


def info(e: dict[str, Any], version: dict[str, Any]) -> dict[str, Any]:
    """The engine's ``info`` as ``GET /info``."""
    cg = e.get("Cgroups") or {}
    sec = e.get("Security") or {}
    security = ["name=no-new-privileges"] if sec.get("no_new_privileges") else []
    if str(sec.get("seccomp", "")).startswith("enabled"):
        security.insert(0, "name=seccomp,profile=builtin")
    return {
        "ID": "chanbox", "Containers": int(e.get("Containers") or 0),
        "ContainersRunning": int(e.get("ContainersRunning") or 0),
        "ContainersPaused": int(e.get("ContainersPaused") or 0),
        "ContainersStopped": int(e.get("ContainersStopped") or 0),
        "Images": int(e.get("Images") or 0), "Driver": e.get("Driver") or "overlay2",
        "DriverStatus": [], "DockerRootDir": e.get("DockerRootDir") or "",
        "Plugins": {"Volume": [], "Network": ["bridge", "host", "none"], "Log": ["json-file"]},
        "MemoryLimit": True, "SwapLimit": False, "CpuCfsPeriod": True, "CpuCfsQuota": True,
        "PidsLimit": True, "IPv4Forwarding": True, "Debug": False, "NFd": 0,
        "NGoroutines": 0, "SystemTime": datetime.datetime.now(datetime.timezone.utc)
        .isoformat().replace("+00:00", "Z"),
        "LoggingDriver": "json-file", "CgroupDriver": str(cg.get("driver") or "cgroupfs"),
        "CgroupVersion": str(e.get("CgroupVersion") or cg.get("version") or "1"),
        "NEventsListener": 0, "KernelVersion": e.get("KernelVersion") or "",
        "OperatingSystem": e.get("OperatingSystem") or "Linux", "OSVersion": "",
        "OSType": OS_TYPE, "Architecture": arch(e.get("Architecture") or ""),
        "NCPU": int(e.get("NCPU") or 1), "MemTotal": int(e.get("MemTotal") or 0),
        "IndexServerAddress": "https://index.docker.io/v1/", "RegistryConfig": None,
        "GenericResources": None, "HttpProxy": "", "HttpsProxy": "", "NoProxy": "",
        "Name": e.get("Name") or "", "Labels": [], "ExperimentalBuild": False,
        "ServerVersion": version.get("Version") or e.get("ServerVersion") or "",
        "Runtimes": {"chanbox": {"path": "chanbox"}}, "DefaultRuntime": "chanbox",
        "Swarm": {"LocalNodeState": "inactive", "NodeID": "", "NodeAddr": "",
                  "ControlAvailable": False, "Error": "", "RemoteManagers": None},
        "LiveRestoreEnabled": True, "Isolation": "", "InitBinary": "",
        "SecurityOptions": security, "Warnings": [],
    }


def version(v: dict[str, Any]) -> dict[str, Any]:
    """The engine's ``version`` as ``GET /version``."""
    ver = v.get("Version") or "0"
    details = {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
               "PythonVersion": v.get("PythonVersion") or "", "Os": OS_TYPE,
               "Arch": arch(v.get("Arch") or ""), "Experimental": "false",
               "KernelVersion": v.get("KernelVersion") or ""}
    return {
        "Platform": {"Name": "chanbox"},
        "Components": [{"Name": "Engine", "Version": ver, "Details": details}],
        "Version": ver, "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "", "GoVersion": "python" + (v.get("PythonVersion") or ""),
        "Os": OS_TYPE, "Arch": arch(v.get("Arch") or ""), "Experimental": False, "KernelVersion": v.get("KernelVersion") or "",
        "BuildTime": "",
    }


def event(ev: dict[str, Any]) -> dict[str, Any]:
    """A journal event as ``GET /events`` streams it."""
    t = ev.get("time") or 0
    nano = int(t) if isinstance(t, int) and t > 10 ** 12 else int(float(t) * 1e9)
    attrs = {str(k): str(v) for k, v in (ev.get("attributes") or {}).items()}
    out = {"Type": ev.get("type", ""), "Action": ev.get("action", ""),
           "Actor": {"ID": ev.get("id", ""), "Attributes": attrs},
           "scope": "local", "time": nano // 1_000_000_000, "timeNano": nano}
    if ev.get("type") == "container":  # the pre-1.22 fields the CLI still prints from
        out.update({"status": ev.get("action", ""), "id": ev.get("id", ""),
                    "from": ev.get("image", "")})
    return out


def event_filters(filters: dict[str, list[str]]) -> list[str]:
    """``GET /events``'s filters as the ``watch`` verb's ``KEY=VALUE`` items."""
    return [f"{k}={v}" for k, values in filters.items() for v in values]


def command_line(args: list[str]) -> str:
    """A command as ``docker ps`` shows it."""
    return " ".join(shlex.quote(a) for a in args)
