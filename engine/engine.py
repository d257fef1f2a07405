"""The engine: every container and image operation, as one Python object.

:class:`Engine` ties the stores (:mod:`engine.images`, :mod:`engine.containers`) to the
runtime (monitors forked by :mod:`engine.forkserver`, cgroups).  It is what
:mod:`engine.service` serves as channel verbs; nothing here knows about channels.
"""

from __future__ import annotations

import os
import signal as _signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from . import cgroups, failpoints, fsutil, logs, monitor_client
from .binds import bind_text, parse_bind
from .containers import Container, ContainerStore
from .errors import Cancelled, Conflict, EngineError, InvalidArgument, NotFound, NotRunning
from .images import Image, ImageStore
from .spec import ContainerSpec, Limits, ProcessSpec
from .timefmt import ago, human_duration, rfc3339
from .volumes import VolumeStore

DEFAULT_ROOT = "/var/lib/chanbox"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NETWORKS = ("bridge", "none", "host")  # and user networks (``network create``)
MIN_MEMORY = 6 * 1024 * 1024  # Docker's floor: below it a container cannot start
VERSION = "0.1.0"


def default_root() -> str:
    """The engine root: ``$CHANBOX_ROOT`` or ``/var/lib/chanbox``."""
    return os.environ.get("CHANBOX_ROOT") or DEFAULT_ROOT


class Engine:
    """The container engine over one root directory.

    Build it while the process is still single-threaded if it will start containers:
    :meth:`prepare_spawn` forks the fork server that later forks the monitors.
    """

    def __init__(self, root: str | None = None, *, forker: Any = None) -> None:
        """``forker``: a :class:`engine.forkserver.ForkServer` to share (tests and
        daemons that made one early); else :meth:`prepare_spawn` makes one."""
        self.root = os.path.abspath(root or default_root())
        os.makedirs(self.root, mode=0o711, exist_ok=True)
        self.images = ImageStore(self.root)
        self.containers = ContainerStore(self.root)
        self.volumes = VolumeStore(self.root)
        self._forker: Any = forker
        self._own_forker = forker is None
        self._journal: Any = None
        fsutil.clean_staging(self.root)

    # -- set-up ----------------------------------------------------------------------

    def prepare_spawn(self) -> None:
        """Fork the fork server now (call before this process starts any thread)."""
        if self._forker is None:
            from .forkserver import ForkServer

            self._forker = ForkServer()
            self._own_forker = True

    def close(self) -> None:
        """End the fork server (if this engine made it); containers go on under their
        monitors."""
        if self._forker is not None and self._own_forker:
            self._forker.close()
        self._forker = None

    @property
    def journal(self) -> Any:
        """The event journal (:class:`engine.events.Journal`), opened on first use."""
        if self._journal is None:
            from .events import Journal

            self._journal = Journal(self.root)
        return self._journal

    def _emit(self, type: str, action: str, id: str, name: str, image: str,
              attributes: dict[str, str]) -> None:
        # the operation has happened: a journal that cannot be written (disk full) is
        # reported, and must not turn a done operation into a failed one
        try:
            self.journal.emit(type, action, id, name=name, image=image, attributes=attributes)
        except OSError as exc:
            print(f"chanbox: could not record the event {type} {action} {id[:12]}: {exc}",
                  file=sys.stderr)

    def _container_event(self, action: str, c: Container, **attributes: str) -> None:
        cfg = c.config["Config"]
        self._emit("container", action, c.id, c.name, cfg["Image"],
                   {**cfg["Labels"], "name": c.name, "image": cfg["Image"], **attributes})

    def _image_event(self, action: str, image_id: str, name: str = "") -> None:
        self._emit("image", action, _sha(image_id), name, "", {"name": name} if name else {})

    def recover(self) -> None:
        """Repair what a killed engine process left: staging dirs, half-made layers."""
        fsutil.clean_staging(self.root)
        self.images.gc()

    # -- images ----------------------------------------------------------------------

    def image_list(self) -> list[dict[str, Any]]:
        """Every image, newest first."""
        return [_image_summary(i) for i in self.images.list()]

    def image_inspect(self, ref: str) -> dict[str, Any]:
        """An image in Docker's ``image inspect`` shape."""
        i = self.images.get(ref)
        return {"Id": _sha(i.id), "RepoTags": i.tags, "Parent": _sha(i.parent) if i.parent else "",
                "Created": i.created, "Comment": i.comment, "Author": i.author,
                "Config": i.config, "Size": i.size,
                "RootFS": {"Type": "layers", "Layers": [_sha(d) for d in i.layers]}}

    def import_image(self, path: str, ref: str | None, *, changes: dict | None = None,
                     comment: str = "") -> str:
        """Import a rootfs directory or tarball as a base image; its id."""
        if not os.path.exists(path):
            raise NotFound(f"no such file or directory: {path}")
        image_id = self.images.import_path(path, ref, config=changes, comment=comment).id
        self._image_event("import", image_id, ref or "")
        return image_id

    def bootstrap(self, ref: str = "busybox:latest", busybox: str = "/bin/busybox") -> str:
        """Make a busybox base image from the host's static busybox (no network)."""
        from .busybox import import_busybox

        image_id = import_busybox(self.images, ref, busybox=busybox).id
        self._image_event("import", image_id, ref)
        return image_id

    def history(self, ref: str) -> list[dict[str, Any]]:
        """One entry per layer of the image, newest first."""
        return self.images.history(ref)

    def tag(self, source: str, ref: str) -> None:
        """Give the image ``source`` the name ``ref``."""
        self.images.tag(source, ref)
        self._image_event("tag", self.images.get(ref).id, ref)

    def rmi(self, ref: str, *, force: bool = False) -> list[str]:
        """Untag or delete an image (Docker's ``rmi``); refused while a container uses it."""
        def users(image_id: str) -> list[str]:
            return [c.id for c in self.containers.list() if c.config["Image"] == image_id]

        lines = self.images.remove(ref, force=force, in_use_by=users)
        for line in lines:
            what, _, name = line.partition(": ")
            if what == "Untagged":
                self._image_event("untag", "", name)
            elif what == "Deleted":
                self._image_event("delete", name)
        return lines

    def prune_images(self, *, all_images: bool = False) -> list[str]:
        """Remove the images no container uses: untagged ones (``docker image prune``),
        or with ``all_images`` every one (``-a``).  A parent of an image that stays
        stays too.  Returns ``rmi``'s lines."""
        lines: list[str] = []
        progress = True
        while progress:  # a child goes first; its parent may go on the next round
            progress = False
            used = {c.config["Image"] for c in self.containers.list()}
            for img in self.images.list():
                if img.id in used or (img.tags and not all_images):
                    continue
                try:
                    lines += self.rmi(img.id, force=bool(img.tags))
                    progress = True
                except (Conflict, NotFound):
                    continue  # the parent of an image that stays, or gone meanwhile
        return lines

    # -- containers: making ------------------------------------------------------------

    def create(self, image: str, cmd: list[str] | None = None, *,
               entrypoint: list[str] | None = None, env: list[str] | None = None,
               workdir: str = "", user: str = "", name: str | None = None,
               hostname: str = "", labels: dict[str, str] | None = None,
               memory: int | None = None, cpus: float | None = None,
               pids_limit: int | None = None, network: str = "bridge",
               read_only: bool = False, privileged: bool = False,
               open_stdin: bool = False, tty: bool = False,
               auto_remove: bool = False, ports: list[dict[str, Any]] | None = None,
               network_aliases: list[str] | None = None, binds: list[str] | None = None) -> str:
        """Create a container from ``image``; its id.  Nothing runs until :meth:`start`."""
        img = self.images.get(image)
        icfg = img.config or {}
        if entrypoint is None:
            entrypoint = icfg.get("Entrypoint") or []
            if cmd is None:
                cmd = icfg.get("Cmd") or []
        cmd = cmd or []
        if not entrypoint and not cmd:
            raise InvalidArgument(f"no command specified: image {image} has no Cmd; "
                                  "give one after the image name")
        network, bindings = self._check_network(network, ports, network_aliases)
        limits = _check_limits(memory, cpus, pids_limit)
        mounts = self._check_binds(binds or [], img)
        config = {
            "Image": img.id,
            "Config": {
                "Image": image, "Cmd": list(cmd), "Entrypoint": list(entrypoint),
                "Env": _merge_env(icfg.get("Env") or [], env or []),
                "WorkingDir": workdir or icfg.get("WorkingDir") or "",
                "User": user or icfg.get("User") or "",
                "Hostname": hostname,
                "Labels": {**(icfg.get("Labels") or {}), **(labels or {})},
                "OpenStdin": open_stdin, "Tty": tty,
            },
            "HostConfig": {
                "Memory": limits.memory or 0,
                "NanoCpus": int((limits.cpus or 0) * 1e9),
                "PidsLimit": limits.pids or 0,
                "NetworkMode": network, "ReadonlyRootfs": read_only,
                "Privileged": privileged, "AutoRemove": auto_remove,
                "PortBindings": _port_bindings(bindings),
                "Binds": [bind_text(b) for b in mounts],
            },
            "NetworkingConfig": {"EndpointsConfig": {network: {
                "Aliases": list(network_aliases or [])}}},
            "Ports": bindings,
        }
        c = self.containers.create(config, name)
        self._container_event("create", c)
        return c.id

    def _check_network(self, network: str, ports: list[dict[str, Any]] | None,
                       aliases: list[str] | None) -> tuple[str, list[dict[str, Any]]]:
        if network not in NETWORKS:
            from .network import networks

            try:
                network = networks.get(self.root, network)["Name"]
            except NotFound:
                raise InvalidArgument(
                    f"network {network!r} not found; use bridge, none, host or a network "
                    "made with `chanbox network create`") from None
        bindings: list[dict[str, Any]] = []
        if ports:
            from .network import proxy

            bindings = proxy.check(ports)
        if (bindings or aliases) and network in ("none", "host"):
            what = "publish ports" if bindings else "take network aliases"
            raise InvalidArgument(f"containers on network {network} cannot {what}; use "
                                  "the default bridge network or a user network")
        if aliases and network == "bridge":
            raise InvalidArgument("network aliases work only on user networks "
                                  "(`chanbox network create`)")
        return network, bindings

    def start(self, ref: str) -> None:
        """Start a created or stopped container; returns once its command has exec'd.

        A command that cannot run raises :class:`CommandNotFound` (127) or
        :class:`CommandNotInvokable` (126); the container is then left stopped with
        that exit code, as Docker does.  Starts of one container, from any process,
        take turns: the later ones find it running.
        """
        with self.containers.locked(self.containers.get(ref)) as c:
            self._start(c)

    def _start(self, c: Container) -> None:
        status = self.status(c)
        if status in ("running", "paused"):
            return
        if status == "dead":
            raise Conflict(f"container {c.short_id} is dead (its monitor was killed); "
                           "remove it with rm -f")
        cgroups.prime()  # overlaps the kernel's slow first migration with our set-up
        if self._forker is None:
            if threading.active_count() > 1:
                raise EngineError("this engine was not prepared to start containers "
                                  "(call Engine.prepare_spawn before starting threads)")
            self.prepare_spawn()
        cgroups.remove(c.cgroups)  # the previous run's, if this is a restart
        self.containers.reset_run(c)
        spec = self._spec(c)
        hc = c.config["HostConfig"]
        limits = Limits(memory=hc["Memory"] or None, cpus=(hc["NanoCpus"] / 1e9) or None,
                        pids=hc["PidsLimit"] or None)
        paths = cgroups.create(c.id, limits)
        fsutil.write_json(c.path("cgroups.json"), paths, sync=False)
        failpoints.hit("start:cgroups")
        spec.cgroups = paths
        on_exit = ("engine.engine:autoremove", [self.root, c.id]) if hc["AutoRemove"] else None
        att = None
        try:
            att = self._join_network(c, spec)
            targets = [(dst, False) for _, dst in (spec.net or {}).get("files", ())]
            targets += [(b["target"], os.path.isdir(b["source"])) for b in spec.binds]
            if targets:
                from .layerview import LayerView

                view = LayerView([os.path.join(self.root, d) for d in spec.lowerdirs])
                spec.lowerdirs = [self.containers.init_layer(c, targets, view), *spec.lowerdirs]
            result = self._forker.spawn(spec, c.dir,
                                        open_stdin=c.config["Config"]["OpenStdin"],
                                        on_exit=on_exit)
            if att is not None:
                att.lease.close()  # the monitor holds the address now
                if result.get("ports"):
                    att.settings["Ports"] = result["ports"]
                    fsutil.write_json(c.path("network.json"), att.settings, sync=False)
            failpoints.hit("start:spawned")
            self._container_event("start", c)
        except EngineError as exc:
            if att is not None:
                att.lease.release()
            cgroups.remove(paths)
            fsutil.write_json(c.path("exit.json"), {
                "exit_code": exc.exit_status, "signal": None, "oom_killed": False,
                "finished_at": time.time_ns(), "error": str(exc)})
            if hc["AutoRemove"]:
                self._delete(c)
            raise

    def _join_network(self, c: Container, spec: ContainerSpec) -> Any:
        """Lease an address and plan the container's interface (bridge networks)."""
        mode = c.config["HostConfig"]["NetworkMode"]
        if mode in ("none", "host"):
            return None
        from .network import attach

        aliases = c.config.get("NetworkingConfig", {}).get("EndpointsConfig", {}) \
            .get(mode, {}).get("Aliases") or []
        att = attach.prepare(self.root, c.dir, c.id, c.name, spec.hostname, mode, aliases,
                             c.config.get("Ports") or [])
        failpoints.hit("start:leased")
        try:
            fsutil.write_json(c.path("network.json"), att.settings, sync=False)
        except BaseException:
            att.lease.release()
            raise
        att.spec_net["ports"] = c.config.get("Ports") or []
        spec.net = att.spec_net
        return att

    def _spec(self, c: Container) -> ContainerSpec:
        cfg = c.config["Config"]
        hc = c.config["HostConfig"]
        img = self.images.get(c.config["Image"])
        env = cfg["Env"]
        if not any(e.startswith("PATH=") for e in env):
            env = [DEFAULT_PATH, *env]
        return ContainerSpec(
            id=c.id, hostname=cfg["Hostname"] or c.short_id,
            lowerdirs=self.images.lowerdirs(img), layer_root=self.root,
            upperdir=c.path("upper"), workdir=c.path("work"), rootfs=c.path("rootfs"),
            process=ProcessSpec(args=cfg["Entrypoint"] + cfg["Cmd"], env=env,
                                cwd=cfg["WorkingDir"] or "/", user=cfg["User"],
                                terminal=cfg["Tty"]),
            network=hc["NetworkMode"], readonly=hc["ReadonlyRootfs"],
            privileged=hc["Privileged"], binds=self._binds(c))

    # -- containers: state -------------------------------------------------------------

    def status(self, c: Container) -> str:
        """created, running, paused, exited, or dead (its monitor died but may not be
        gone yet: a moment later it is exited, see :meth:`_monitor_died`)."""
        if c.exit is not None:
            return "exited"
        if c.monitor is None:
            return "created"
        if monitor_client.alive(c.id):
            return "paused" if cgroups.is_frozen(c.cgroups) else "running"
        c.exit = fsutil.read_json(c.path("exit.json"))
        if c.exit is None:
            c.exit = self._monitor_died(c)
        return "exited" if c.exit is not None else "dead"

    def _monitor_died(self, c: Container) -> dict[str, Any] | None:
        """The exit record of a container whose monitor died without writing one
        (SIGKILL, the OOM killer), or None while the monitor still lives.

        The container died with it (the parent-death signal, see engine.runtime), so
        this records exit 137 and journals ``die``, as containerd does for a task whose
        shim died.  Exactly one process does: the record is linked in, not renamed.
        """
        mon = c.monitor.get("monitor_pid") if c.monitor else None
        if not mon or fsutil.pid_alive(mon):
            return None
        record = {"exit_code": 137, "signal": _signal.SIGKILL, "oom_killed": False,
                  "finished_at": time.time_ns(), "error": "the container's monitor was killed"}
        if not fsutil.create_json(c.path("exit.json"), record):
            return fsutil.read_json(c.path("exit.json"))  # another process recorded it
        self._container_event("die", c, exitCode="137")
        return record

    def ps(self, *, all: bool = False) -> list[dict[str, Any]]:
        """Containers in ``docker ps`` shape (running ones, or ``all``)."""
        out = []
        for c in self.containers.list():
            st = self.status(c)
            if not all and st not in ("running", "paused"):
                continue
            cfg = c.config["Config"]
            out.append({"Id": c.id, "Names": ["/" + c.name], "Image": cfg["Image"],
                        "ImageID": _sha(c.config["Image"]),
                        "Command": " ".join(cfg["Entrypoint"] + cfg["Cmd"]),
                        "Created": c.config["Created"] // 1_000_000_000, "State": st,
                        "Status": _status_line(st, c), "Labels": cfg["Labels"],
                        "Mounts": [_mount_shape(b) for b in self._binds(c)]})
        return out

    def inspect(self, ref: str) -> dict[str, Any]:
        """A container in Docker's ``inspect`` shape."""
        c = self.containers.get(ref)
        st = self.status(c)
        cfg = c.config["Config"]
        mon = c.monitor or {}
        ex = c.exit or {}
        args = cfg["Entrypoint"] + cfg["Cmd"]
        running = st in ("running", "paused")
        return {
            "Id": c.id, "Name": "/" + c.name, "Created": rfc3339(c.config["Created"]),
            "Path": args[0] if args else "", "Args": args[1:],
            "State": {
                "Status": st, "Running": running, "Paused": st == "paused",
                "Restarting": False, "OOMKilled": bool(ex.get("oom_killed")),
                "Dead": st == "dead", "Pid": mon.get("pid", 0) if running else 0,
                "ExitCode": ex.get("exit_code", 0), "Error": ex.get("error", ""),
                "StartedAt": rfc3339(mon.get("started_at")),
                "FinishedAt": rfc3339(ex.get("finished_at")),
            },
            "Image": _sha(c.config["Image"]),
            "LogPath": c.path("container.log"),
            "Config": {**cfg, "Hostname": cfg["Hostname"] or c.short_id},
            "HostConfig": {"Binds": [], **c.config["HostConfig"]},
            "Mounts": [_mount_shape(b) for b in self._binds(c)],
            "NetworkSettings": self._network_settings(c, running),
            "GraphDriver": {"Name": "overlay2", "Data": {
                "UpperDir": c.path("upper"), "WorkDir": c.path("work"),
                "MergedDir": c.path("rootfs")}},
        }

    def _network_settings(self, c: Container, running: bool) -> dict[str, Any]:
        """Docker's ``NetworkSettings``: the addresses of the current run (empty when
        the container is not running) and the published ports."""
        mode = c.config["HostConfig"]["NetworkMode"]
        net = None
        if running and mode not in ("none", "host"):
            from .network import attach

            net = attach.load_settings(c.dir)
        net = net or {}
        ports: dict[str, Any] = {}
        for b in (net.get("Ports") if net else None) or c.config.get("Ports") or []:
            ports.setdefault(f"{b['container_port']}/{b['proto']}", []).append(
                {"HostIp": b["host_ip"] or "0.0.0.0",
                 "HostPort": str(b["host_port"]) if b["host_port"] or net else ""})
        endpoint = {"IPAddress": net.get("IPAddress", ""), "Gateway": net.get("Gateway", ""),
                    "MacAddress": net.get("MacAddress", ""),
                    "IPPrefixLen": net.get("IPPrefixLen", 0),
                    "Aliases": net.get("Aliases"), "NetworkID": net.get("NetworkID", "")}
        return {"IPAddress": endpoint["IPAddress"], "Gateway": endpoint["Gateway"],
                "MacAddress": endpoint["MacAddress"], "IPPrefixLen": endpoint["IPPrefixLen"],
                "Ports": ports if running else {}, "Networks": {mode: endpoint}}

    # -- containers: control -----------------------------------------------------------

    def _running(self, ref: str) -> Container:
        c = self.containers.get(ref)
        if self.status(c) not in ("running", "paused"):
            raise NotRunning(f"container {c.short_id} is not running")
        return c

    def kill(self, ref: str, signal: str | int = "KILL") -> None:
        """Send ``signal`` (a name like ``TERM``/``SIGTERM`` or a number) to the container."""
        c = self._running(ref)
        signum = parse_signal(signal)
        monitor_client.signal(c.id, signum)
        self._container_event("kill", c, signal=str(signum))

    def resize(self, ref: str, rows: int, cols: int) -> None:
        """Set the terminal size of a container started with ``tty`` (``docker`` sends
        the user's window size at attach and on every change)."""
        if not (0 < rows < 1 << 16 and 0 < cols < 1 << 16):
            raise InvalidArgument(f"a terminal of {rows}x{cols} is out of range: rows and "
                                  "columns go from 1 to 65535")
        c = self._running(ref)
        if not c.config["Config"].get("Tty"):
            raise Conflict(f"container {c.short_id} has no terminal (create it with -t)")
        monitor_client.resize(c.id, rows, cols)

    def stop(self, ref: str, timeout: float = 10) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; the exit code."""
        c = self.containers.get(ref)
        if self.status(c) not in ("running", "paused"):
            return (c.exit or {}).get("exit_code", 0)
        try:
            monitor_client.signal(c.id, _signal.SIGTERM)
            cgroups.thaw(c.cgroups)  # a frozen process cannot act on SIGTERM
            return self._wait_exit(c, timeout)["exit_code"]
        except TimeoutError:
            pass
        except NotRunning:
            return self.wait(c.id)
        try:
            monitor_client.signal(c.id, _signal.SIGKILL)
        except NotRunning:
            pass
        return self.wait(c.id)

    def _wait_exit(self, c: Container, timeout: float | None = None,
                   cancelled: Callable[[], bool] | None = None) -> dict[str, Any]:
        """The exit record of ``c``, waiting up to ``timeout`` (TimeoutError after)."""
        try:
            return monitor_client.wait(c.id, timeout=timeout, cancelled=cancelled)
        except NotRunning:
            pass
        rec = fsutil.read_json(c.path("exit.json"))
        if rec is not None:
            return rec
        if c.monitor is None:
            raise NotRunning(f"container {c.short_id} was never started")
        # recorded (and journaled) once, as status() does; until the monitor is gone
        return self._monitor_died(c) or {
            "exit_code": 137, "signal": None, "oom_killed": False,
            "error": "the container's monitor was killed"}

    def wait(self, ref: str, condition: str = "not-running", *,
             cancelled: Callable[[], bool] | None = None) -> int:
        """Block until the container stops (or, with ``removed``, is removed); its code.

        :class:`Cancelled` once ``cancelled()`` (asked about twice a second) says that
        the caller no longer wants to know."""
        c = self.containers.get(ref)
        if condition not in ("not-running", "next-exit", "removed"):
            raise InvalidArgument(f"unknown wait condition {condition!r}")
        st = self.status(c)
        if st in ("running", "paused") or condition == "next-exit":
            code = self._wait_exit(c, cancelled=cancelled)["exit_code"]
        elif st == "created":
            raise Conflict(f"container {c.short_id} has not been started")
        else:
            code = (c.exit or {}).get("exit_code", 137)
        if condition == "removed":
            while os.path.exists(c.dir):
                if cancelled is not None and cancelled():
                    raise Cancelled(f"stopped waiting for container {c.short_id}")
                time.sleep(0.01)
        return code

    def rm(self, ref: str, *, force: bool = False, volumes: bool = False) -> None:
        """Remove a container; a running one only with ``force`` (killed first); with
        ``volumes``, its anonymous volumes too (``rm -v``)."""
        with self.containers.locked(self.containers.get(ref)) as c:
            st = self.status(c)
            if st in ("running", "paused"):
                if not force:
                    raise Conflict(f"you cannot remove a {st} container {c.short_id}; "
                                   "stop it first, or use rm -f")
                try:
                    monitor_client.signal(c.id, _signal.SIGKILL)
                    cgroups.thaw(c.cgroups)
                    self._wait_exit(c)
                except NotRunning:
                    pass
            self._delete(c)
        if volumes:
            self._remove_anonymous_volumes(c)

    def _remove_anonymous_volumes(self, c: Container) -> None:
        """Remove the anonymous volumes of a removed container (no other can use them)."""
        for b in self._binds(c):
            if not b["volume"]:
                continue
            try:
                if self.volumes.get(b["volume"])["Anonymous"]:
                    self.volume_rm(b["volume"])
            except (NotFound, Conflict):
                continue

    def _delete(self, c: Container) -> None:
        cgroups.remove(c.cgroups)  # also kills what a dead monitor left running
        failpoints.hit("rm:cgroups")
        if os.path.exists(c.path("network.json")):
            from .network import attach

            attach.release(attach.load_settings(c.dir))
        if self.containers.delete(c):  # (not when a concurrent rm got there first)
            self._container_event("destroy", c)

    def prune_containers(self) -> list[str]:
        """Remove every container that is not running or paused (``docker container
        prune``); their ids."""
        gone = []
        for c in self.containers.list():
            if self.status(c) in ("running", "paused"):
                continue
            try:
                self.rm(c.id, force=True)  # (force: a dead one)
            except NotFound:
                continue  # removed meanwhile
            gone.append(c.id)
        return gone

    def rename(self, ref: str, name: str) -> None:
        """Give the container another name (``docker rename``).  Refused while it runs on
        a user network: the other containers there know it by its name (their
        /etc/hosts), which only a new run updates."""
        c = self.containers.get(ref)
        mode = c.config["HostConfig"]["NetworkMode"]
        if (mode not in NETWORKS and self.status(c) in ("running", "paused")):
            raise Conflict(f"container {c.short_id} runs on network {mode}, where the others "
                           "know it by its name: stop it before renaming it")
        old = c.name
        c = self.containers.rename(c, name)
        self._container_event("rename", c, oldName="/" + old)

    def update(self, ref: str, *, memory: int | None = None, cpus: float | None = None,
               pids_limit: int | None = None) -> None:
        """Change a container's limits (``docker update``): at once in its cgroups when it
        runs, and in its record for the runs to come.  A limit left None stays."""
        limits = Limits(memory=memory or None, cpus=cpus or None, pids=pids_limit or None)
        if limits == Limits():
            raise InvalidArgument("update: give at least one of memory, cpus, pids_limit")
        cgroups.validate(limits)
        c = self.containers.get(ref)
        if self.status(c) in ("running", "paused"):
            cgroups.set_limits(c.cgroups, limits)
        changes: dict[str, Any] = {}
        if limits.memory is not None:
            changes["Memory"] = limits.memory
        if limits.cpus is not None:
            changes["NanoCpus"] = int(limits.cpus * 1e9)
        if limits.pids is not None:
            changes["PidsLimit"] = limits.pids
        self.containers.update_host_config(c, changes)
        self._container_event("update", c)

    def pause(self, ref: str) -> None:
        """Freeze every process of the container (cgroup freezer)."""
        c = self._running(ref)
        if cgroups.is_frozen(c.cgroups):
            raise Conflict(f"container {c.short_id} is already paused")
        cgroups.freeze(c.cgroups)
        self._container_event("pause", c)

    def unpause(self, ref: str) -> None:
        """Thaw a paused container."""
        c = self._running(ref)
        if not cgroups.is_frozen(c.cgroups):
            raise Conflict(f"container {c.short_id} is not paused")
        cgroups.thaw(c.cgroups)
        self._container_event("unpause", c)

    def commit(self, ref: str, repo_tag: str | None = None, *, comment: str = "",
               author: str = "", changes: dict | None = None, pause: bool = True) -> str:
        """Make a new image from the container's writable layer; its id.

        A running container is paused meanwhile (as Docker does) so the layer is taken
        at one instant.
        """
        c = self.containers.get(ref)
        parent = self.images.get(c.config["Image"])
        cfg = c.config["Config"]
        config = {"Cmd": cfg["Cmd"], "Entrypoint": cfg["Entrypoint"] or None,
                  "Env": cfg["Env"], "WorkingDir": cfg["WorkingDir"], "User": cfg["User"],
                  "Labels": cfg["Labels"], **(changes or {})}
        frozen = False
        if pause and self.status(c) == "running":
            cgroups.freeze(c.cgroups)
            frozen = True
        try:
            # as Docker's history shows it: the command the container ran
            img = self.images.commit(c.path("upper"), parent, repo_tag, config=config,
                                     comment=comment, author=author,
                                     created_by=" ".join(cfg["Entrypoint"] + cfg["Cmd"]))
        finally:
            if frozen:
                cgroups.thaw(c.cgroups)
        self._container_event("commit", c, imageID=_sha(img.id))
        return img.id

    def changes(self, ref: str) -> list[dict[str, Any]]:
        """What the container changed in its filesystem (``docker diff``): entries
        ``{"Path", "Kind"}`` (0 changed, 1 added, 2 deleted), sorted by path."""
        from .changes import changes

        c = self.containers.get(ref)
        lowers = self._image_layers(self.images.get(c.config["Image"]))
        if os.path.isdir(c.path("init")):
            lowers.insert(0, c.path("init"))
        return changes(c.path("upper"), lowers)

    def export(self, ref: str, out: Any) -> None:
        """Write the container's filesystem (its writable layer over its image) to the
        binary file ``out`` as a tar (``docker export``)."""
        from .export import export_tar

        c = self.containers.get(ref)
        export_tar([c.path("upper"), *self._image_layers(self.images.get(c.config["Image"]))],
                   out)
        self._container_event("export", c)

    # -- volumes and bind mounts --------------------------------------------------------

    def _check_binds(self, binds: list[str], image: Any) -> list[dict[str, Any]]:
        """Parse ``-v`` values for a new container: a host directory that does not exist
        yet is made, a volume that does not exist is created (an anonymous one named),
        and an empty volume gets what the image holds at its mount point, as with
        ``docker run -v``.  Two mounts on one target are refused."""
        out = [parse_bind(b) for b in binds]
        targets = [b["target"] for b in out]
        for t in targets:
            if targets.count(t) > 1:
                raise InvalidArgument(f"duplicate mount point: {t}")
        for b in out:
            if b["volume"] is not None:
                record, _ = self.volumes.create(b["volume"] or None)
                b["volume"] = record["Name"]
                self._seed_volume(record["Name"], image, b["target"])
            elif not os.path.lexists(b["source"]):
                try:
                    os.makedirs(b["source"], 0o755)
                except OSError as exc:
                    raise InvalidArgument(f"cannot make the host directory {b['source']} for a "
                                          f"volume: {exc.strerror}") from None
        return out

    def _seed_volume(self, name: str, image: Any, target: str) -> None:
        """Copy what the image holds at ``target`` into the volume, if the volume is
        empty (Docker's copy on first mount)."""
        data = self.volumes.path(name)
        if os.listdir(data):
            return
        from .export import export_tar
        from .layerview import LayerView
        from .tarlayer import apply_tar

        layers = self._image_layers(image)
        found = LayerView(layers).locate(target.lstrip("/"))
        if found is None or not os.path.isdir(found[0]) or os.path.islink(found[0]):
            return
        stage = fsutil.staging_dir(self.root, "volume-seed")
        try:
            spool = os.path.join(stage, "seed.tar")
            with open(spool, "wb") as f:
                export_tar(layers, f, top=target.lstrip("/"))
            with open(spool, "rb") as f:
                apply_tar(f, data, layer=False)
        finally:
            fsutil.remove_tree(stage)

    def _binds(self, c: Container) -> list[dict[str, Any]]:
        """The container's mounts with each volume's directory as its source."""
        out = []
        for b in map(parse_bind, c.config["HostConfig"].get("Binds") or []):
            if b["volume"]:
                b["source"] = self.volumes.path(b["volume"])
            out.append(b)
        return out

    def _volume_users(self) -> dict[str, Container]:
        """Each volume some container mounts, with one of those containers."""
        return {b["volume"]: c for c in self.containers.list() for b in self._binds(c) if b["volume"]}

    def volume_create(self, name: str | None = None, *,
                      labels: dict[str, str] | None = None) -> dict[str, Any]:
        """Create a volume (``docker volume create``); an existing name is returned."""
        record, made = self.volumes.create(name, labels=labels)
        if made:
            self._emit("volume", "create", record["Name"], record["Name"], "", {"driver": "local"})
        return record

    def volume_inspect(self, name: str) -> dict[str, Any]:
        """A volume in ``docker volume inspect`` shape."""
        return self.volumes.get(name)

    def volume_ls(self) -> list[dict[str, Any]]:
        """Every volume."""
        return self.volumes.list()

    def volume_rm(self, name: str, *, force: bool = False) -> None:
        """Remove a volume and its files; refused while a container uses it (``force``
        only makes a missing volume no error, as ``docker volume rm -f``)."""
        try:
            self.volumes.get(name)
        except NotFound:
            if force:
                return
            raise
        user = self._volume_users().get(name)
        if user is not None:
            raise Conflict(f"volume {name} is in use by container {user.short_id}; "
                           "remove the container first")
        self.volumes.remove(name)
        self._emit("volume", "destroy", name, name, "", {"driver": "local"})

    def volume_prune(self, *, all: bool = False) -> list[str]:
        """Remove the volumes no container uses: the anonymous ones, or with ``all``
        every one (``docker volume prune [-a]``); their names."""
        used = self._volume_users()
        gone = []
        for v in self.volumes.list():
            if v["Name"] in used or not (all or v["Anonymous"]):
                continue
            try:
                self.volume_rm(v["Name"])
            except (NotFound, Conflict):
                continue  # removed, or taken, meanwhile
            gone.append(v["Name"])
        return gone

    @contextmanager
    def _container_root(self, ref: str, write: bool = False) -> Iterator[
            tuple[Container, dict[str, Any]]]:
        """The container and its root's spec (see :meth:`_root_spec`).  A stopped one
        stays locked meanwhile, its layers being mounted in the helper: a start or rm
        waits for the copy.  A running one is reached through its process: no wait."""
        with ExitStack() as held:
            c = held.enter_context(self.containers.locked(self.containers.get(ref)))
            spec = self._root_spec(c, write)
            if "pid" in spec:
                held.close()
            yield c, spec

    def _root_spec(self, c: Container, write: bool = False) -> dict[str, Any]:
        """Where :mod:`engine.containerfs` finds the container's root: its init process's
        while it runs, else its layers (mounted in a namespace of the helper's own; to
        read only, the writable layer is the top lower one and its workdir stays
        untouched)."""
        if self.status(c) in ("running", "paused"):
            pid = (c.monitor or {}).get("pid")
            if pid:
                return {"pid": pid, "cgroup": f"/cbx/{c.id}"}
        lowers = self.images.lowerdirs(self.images.get(c.config["Image"]))
        if os.path.isdir(c.path("init")):
            lowers = [os.path.relpath(c.path("init"), self.root), *lowers]
        spec = {"layer_root": self.root, "lowerdirs": lowers, "mountpoint": c.path("rootfs"),
                "binds": [[b["source"], b["target"], b["readonly"]] for b in self._binds(c)]}
        if write:
            spec.update(upper=c.path("upper"), work=c.path("work"))
        else:
            spec["lowerdirs"] = [os.path.relpath(c.path("upper"), self.root), *lowers]
        return spec

    def archive_stat(self, ref: str, path: str) -> dict[str, Any]:
        """A path in the container as Docker's path stat: ``{"name", "size", "mode"
        (Go's FileMode bits), "mtime", "linkTarget"}``; NotFound if it is not there."""
        from .containerfs import run_helper

        with self._container_root(ref) as (_, spec):
            return run_helper(spec, "stat", path)

    def archive_get(self, ref: str, path: str, out: Any,
                    on_stat: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Write a tar of ``path`` in the container to the binary file ``out`` (``docker
        cp`` out of it); the path's stat, also given to ``on_stat`` before the tar.  The
        tar's top entry is named after the path's last component; a path ending in
        ``/.`` gives the directory's contents as ``.``."""
        from .containerfs import run_helper

        with self._container_root(ref) as (c, spec):
            info = run_helper(spec, "get", path, stdout=out, on_stat=on_stat)
        self._container_event("archive-path", c)
        return info

    def archive_put(self, ref: str, path: str, tar: Any, *, copy_uid_gid: bool = False) -> None:
        """Extract the tar read from the binary file ``tar`` into the directory ``path`` in
        the container (``docker cp`` into it).  Files belong to the container's root
        unless ``copy_uid_gid`` keeps the tar's owners; a directory is never replaced by a
        file or the reverse."""
        from .containerfs import run_helper

        with self._container_root(ref, write=True) as (c, spec):
            run_helper(spec, "put", path, stdin=tar, owner=None if copy_uid_gid else (0, 0))
        self._container_event("extract-to-dir", c)

    def _image_layers(self, image: Image) -> list[str]:
        """The image's layer directories, top-most first, absolute."""
        return [os.path.join(self.root, d) for d in self.images.lowerdirs(image)]

    def top(self, ref: str) -> dict[str, Any]:
        """The running container's processes as ``ps -ef`` shows them (``docker top``):
        ``{"Titles": [...], "Processes": [[...], ...]}`` with the host's PIDs."""
        from .processes import table

        c = self._running(ref)
        return table(cgroups.procs(c.cgroups))

    def stats(self, ref: str, *, interval: float = 0.0,
              previous: dict[str, Any] | None = None) -> dict[str, Any]:
        """One reading of the running container's resource use, in the Docker API's
        stats shape.  With ``interval``, two readings that far apart (the second is
        returned, the first as its ``precpu_stats``); else ``previous`` is the earlier."""
        from .stats import sample

        c = self._running(ref)
        pid = (c.monitor or {}).get("pid", 0)
        first = sample(c.id, c.name, c.cgroups, pid, previous)
        if interval <= 0:
            return first
        time.sleep(min(interval, 10.0))
        return sample(c.id, c.name, c.cgroups, pid, first)

    # -- containers: I/O ---------------------------------------------------------------

    def logs(self, ref: str, *, follow: bool = False, tail: int | None = None,
             cancelled: Callable[[], bool] | None = None) -> Iterator[dict[str, Any]]:
        """The container's log entries (``{"log", "stream", "time"}``), optionally
        followed until the container stops or ``cancelled()`` says to stop."""
        batches = self.log_batches(ref, follow=follow, tail=tail, cancelled=cancelled)
        return (entry for batch in batches for entry in batch)

    def log_batches(self, ref: str, *, follow: bool = False, tail: int | None = None,
                    cancelled: Callable[[], bool] | None = None, since_ns: int | None = None,
                    until_ns: int | None = None) -> Iterator[list[dict[str, Any]]]:
        """:meth:`logs`, a list of entries at a time (those of one read of the log);
        with ``since_ns``/``until_ns`` (nanoseconds since the epoch) only the entries
        written between them, both ends included."""
        batches = self._log_batches(ref, follow, tail, cancelled)
        if since_ns is None and until_ns is None:
            return batches
        # the log's times are fixed-width RFC 3339 in UTC: they compare as strings
        low = rfc3339(since_ns) if since_ns else ""
        high = rfc3339(until_ns) if until_ns else "~"
        return ([e for e in batch if low <= e.get("time", "") <= high] for batch in batches)

    def _log_batches(self, ref: str, follow: bool, tail: int | None,
                     cancelled: Callable[[], bool] | None) -> Iterator[list[dict[str, Any]]]:
        c = self.containers.get(ref)
        if follow and self.status(c) in ("running", "paused"):
            def ended(wait: float) -> bool:
                return _ended(c.id, wait) or (cancelled is not None and cancelled())

            return logs.read_batches(c.path("container.log"), tail=tail, follow=True,
                                     ended=ended)
        return logs.read_batches(c.path("container.log"), tail=tail)

    def attach(self, ref: str, *, stdin: bool = False, stdout: bool = True,
               stderr: bool = True) -> monitor_client.Attachment:
        """Live stdio of a running container (see :mod:`engine.monitor_client`)."""
        c = self._running(ref)
        if stdin and not c.config["Config"]["OpenStdin"]:
            raise Conflict(f"container {c.short_id} was not created with -i: its stdin "
                           "is closed")
        return monitor_client.attach(c.id, stdin=stdin, stdout=stdout, stderr=stderr)

    def exec(self, ref: str, cmd: list[str], *, env: list[str] | None = None,
             workdir: str = "", user: str = "", open_stdin: bool = False,
             tty: bool = False) -> monitor_client.Attachment:
        """Run ``cmd`` inside a running container; read its output and exit from the result."""
        if not cmd:
            raise InvalidArgument("exec needs a command")
        c = self._running(ref)
        cfg = c.config["Config"]
        base_env = cfg["Env"] if any(e.startswith("PATH=") for e in cfg["Env"]) \
            else [DEFAULT_PATH, *cfg["Env"]]
        process = ProcessSpec(args=list(cmd), env=_merge_env(base_env, env or []),
                              cwd=workdir or cfg["WorkingDir"] or "/",
                              user=user or cfg["User"], terminal=tty)
        return monitor_client.exec(c.id, process, open_stdin=open_stdin)

    # -- the host ----------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What ``chanbox info`` prints: counts, drivers, kernel and security features."""
        from . import security
        from .stats import host_memory

        states = [self.status(c) for c in self.containers.list()]
        cg = cgroups.info()
        sec = security.info()
        return {
            "Containers": len(states), "ContainersRunning": states.count("running"),
            "ContainersPaused": states.count("paused"),
            "ContainersStopped": len(states) - states.count("running") - states.count("paused"),
            "Images": len(self.images.list()), "Driver": "overlay2",
            "DockerRootDir": self.root, "CgroupDriver": cg.get("driver", "cgroupfs"),
            "CgroupVersion": cg.get("version"), "Cgroups": cg,
            "KernelVersion": os.uname().release, "OperatingSystem": _os_name(),
            "OSType": "linux", "Architecture": os.uname().machine,
            "NCPU": os.cpu_count(), "MemTotal": host_memory(), "Name": os.uname().nodename,
            "Security": sec, "ServerVersion": VERSION,
        }

    def version(self) -> dict[str, Any]:
        """Versions of chanbox and of what it runs on."""
        return {"Version": VERSION, "PythonVersion": sys.version.split()[0],
                "Os": "linux", "Arch": os.uname().machine,
                "KernelVersion": os.uname().release}


def autoremove(root: str, container_id: str) -> None:
    """Remove a ``--rm`` container once it has exited (called by its monitor)."""
    eng = Engine.__new__(Engine)  # only the parts removal needs: no image store, no gc
    eng.root = root
    eng.containers = ContainerStore(root)
    eng.volumes = VolumeStore(root)
    eng._journal = None
    try:
        with eng.containers.locked(eng.containers.get(container_id)) as c:
            eng._delete(c)
    except NotFound:
        return  # removed already (rm -f, or the CLI's run --rm)
    eng._remove_anonymous_volumes(c)  # as docker run --rm does


def parse_signal(sig: str | int) -> int:
    """A signal number from ``9``, ``"9"``, ``"KILL"`` or ``"SIGKILL"``."""
    if isinstance(sig, int) or (isinstance(sig, str) and sig.isdigit()):
        n = int(sig)
        if 0 < n < _signal.NSIG:
            return n
    elif isinstance(sig, str):
        name = sig.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        try:
            return int(_signal.Signals[name])
        except KeyError:
            pass
    raise InvalidArgument(f"invalid signal: {sig!r}")


def _ended(container_id: str, wait: float) -> bool:
    try:
        monitor_client.wait(container_id, timeout=wait)
    except TimeoutError:
        return False
    except NotRunning:
        pass
    return True


def _mount_shape(b: dict[str, Any]) -> dict[str, Any]:
    """A mount as Docker's ``inspect`` shows it."""
    shape = {"Type": "bind", "Source": b["source"], "Destination": b["target"],
             "Mode": "ro" if b["readonly"] else "", "RW": not b["readonly"],
             "Propagation": "rprivate"}
    if b["volume"] is not None:
        shape.update(Type="volume", Name=b["volume"], Driver="local", Mode="z", Propagation="")
    return shape


def _check_limits(memory: int | None, cpus: float | None, pids: int | None) -> Limits:
    if memory is not None and memory != 0:
        if memory < MIN_MEMORY:
            raise InvalidArgument(f"minimum memory limit allowed is 6MB (got {memory} bytes)")
    if cpus is not None and cpus != 0:
        ncpu = os.cpu_count() or 1
        if not 0 < cpus <= ncpu:
            raise InvalidArgument(f"range of CPUs is from 0.01 to {ncpu}.00, as there are "
                                  f"only {ncpu} CPUs available (got {cpus})")
    if pids is not None and pids < 0 and pids != -1:
        raise InvalidArgument(f"invalid pids limit {pids}: give a positive number or -1")
    return Limits(memory=memory or None, cpus=cpus or None,
                  pids=pids if pids and pids > 0 else None)


def _port_bindings(bindings: list[dict[str, Any]]) -> dict[str, Any]:
    """Bindings in Docker's ``HostConfig.PortBindings`` shape."""
    out: dict[str, Any] = {}
    for b in bindings:
        out.setdefault(f"{b['container_port']}/{b['proto']}", []).append(
            {"HostIp": b["host_ip"], "HostPort": str(b["host_port"]) if b["host_port"] else ""})
    return out


def _merge_env(base: list[str], extra: list[str]) -> list[str]:
    out: dict[str, str] = {}
    for item in [*base, *extra]:
        if "=" not in item:
            val = os.environ.get(item)
            if val is None:
                continue  # docker run -e NAME with NAME unset: not passed
            item = f"{item}={val}"
        key = item.split("=", 1)[0]
        out.pop(key, None)
        out[key] = item
    return list(out.values())


def _sha(image_id: str | None) -> str:
    if not image_id:
        return ""
    return image_id if image_id.startswith("sha256:") else "sha256:" + image_id


def _image_summary(i: Image) -> dict[str, Any]:
    return {"Id": _sha(i.id), "RepoTags": i.tags, "ParentId": _sha(i.parent),
            "Created": i.created, "Size": i.size, "Labels": (i.config or {}).get("Labels") or {}}


def _status_line(st: str, c: Container) -> str:
    """The container's state as ``docker ps`` says it ("Up 5 minutes", "Exited (0) 2
    seconds ago")."""
    if st == "exited":
        ex = c.exit or {}
        return f"Exited ({ex.get('exit_code', 0)}) {ago(ex.get('finished_at'))}".rstrip()
    if st in ("running", "paused"):
        started = (c.monitor or {}).get("started_at")
        up = f"Up {human_duration(time.time() - started / 1e9)}" if started else "Up"
        return up + " (Paused)" if st == "paused" else up
    return st.capitalize()


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"

