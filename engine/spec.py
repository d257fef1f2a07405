"""What the runtime is asked to run: plain data shared by the engine, the monitor and
the runtime (the analogue of an OCI runtime spec, cut to what chanbox uses).

The engine builds a :class:`ContainerSpec` from the container's config and its image;
the monitor process hands it to :func:`engine.runtime.start` to make the container's
first process, and a :class:`ProcessSpec` to :func:`engine.runtime.exec_in` for
``exec``.  Everything here is msgpack-friendly (``to_dict``/``from_dict``) so it can be
stored in the container's directory and sent to the fork server.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ProcessSpec:
    """One process to execute inside a container."""

    args: list[str]
    #: ``KEY=VALUE`` strings, in order; ``PATH`` is used to look ``args[0]`` up
    env: list[str] = field(default_factory=list)
    cwd: str = "/"
    #: ``""`` (root), ``"uid"``, ``"uid:gid"``, ``"name"`` or ``"name:group"``; names
    #: are resolved in the container's own ``/etc/passwd`` and ``/etc/group``
    user: str = ""
    #: give the process a pseudo-terminal instead of pipes (``-t``)
    terminal: bool = False


@dataclass
class Limits:
    """cgroup limits; ``None`` means unlimited."""

    memory: int | None = None  # bytes (``-m``)
    cpus: float | None = None  # CPUs (``--cpus``), as a CFS quota over a 100 ms period
    pids: int | None = None  # ``--pids-limit``


@dataclass
class ContainerSpec:
    """Everything the runtime needs to make a container and run its first process."""

    id: str
    hostname: str
    #: overlayfs lower directories, top-most first (the ``lowerdir=`` order); the
    #: runtime mounts them from inside the container's own mount namespace, so the
    #: union mount never appears in the host's and dies with the container
    lowerdirs: list[str]
    #: the directory that relative ``lowerdirs`` are relative to: the runtime chdirs
    #: there before mounting, so the ``lowerdir=`` option stays short (overlay2's trick:
    #: short link names under ``<root>/l``) and fits in one page
    layer_root: str
    upperdir: str
    workdir: str  # overlayfs's work directory (same filesystem as upperdir)
    rootfs: str  # an empty directory: the mount point of the union
    process: ProcessSpec
    #: absolute cgroup directories to join, one per hierarchy (v1: memory, cpu, pids,
    #: freezer, ...; v2: one), made by :mod:`engine.cgroups` before start
    cgroups: list[str] = field(default_factory=list)
    #: "none" (loopback only), "host", "bridge" or a user network's name
    network: str = "none"
    #: a bridge network's set-up, made by :mod:`engine.network.attach` (None for none and
    #: host): ``plan`` (:class:`engine.network.netlink.Plan` as a dict), ``lease`` (the
    #: address lease's path, held by the monitor), ``ip``, ``ports`` (bindings to
    #: publish) and ``files`` ([host path, container path] pairs bind-mounted: hosts...)
    net: dict[str, Any] | None = None
    #: host paths bind-mounted into the container (``-v SRC:DST[:ro]``):
    #: ``{"source", "target", "readonly"}``, in order
    binds: list[dict[str, Any]] = field(default_factory=list)
    readonly: bool = False  # ``--read-only``: the union is mounted read-only
    privileged: bool = False  # ``--privileged``: all capabilities, no seccomp, no masks

    def to_dict(self) -> dict[str, Any]:
        """A msgpack-able dict of this spec."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ContainerSpec:
        """The inverse of :meth:`to_dict`."""
        d = dict(d)
        d["process"] = ProcessSpec(**d["process"])
        return cls(**d)
