"""Address leases: crash-safe IPAM shared by every engine process on the host.

A lease is a file ``<RUN>/<bridge>/<ip>`` whose content names its holder (JSON: the
container's id, name, aliases, hosts file).  Whoever is responsible for the address
holds a shared ``flock`` on it: the engine while it starts the container, then the
container's monitor for as long as the container runs.  So:

- a lease is made whole and locked under a temporary name, then ``link()``-ed to its
  address: the link fails if the address is taken, so no address is handed out twice,
  and a lease is never visible unlocked while its maker lives;
- when the holders die (the monitor exits; an engine is killed mid-start) the kernel
  drops their locks; the monitor unlinks its lease at exit, and any leftover lease is
  one an exclusive ``flock`` can take: :func:`reclaim` removes it (reclaimers take the
  directory's lock, so two never race over one name).

The directory lives in ``/run`` (tmpfs): leases, veths and bridges all end at reboot.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator
from typing import Any

from engine import fsutil
from engine.errors import Conflict

RUN_DIR = os.environ.get("CHANBOX_NET_RUN") or "/run/chanbox/net"


class Lease:
    """An address held by this process (the shared lock lives as long as ``fd``)."""

    def __init__(self, path: str, ip: str, fd: int) -> None:
        self.path = path
        self.ip = ip
        self.fd = fd

    def close(self) -> None:
        """Drop this process's lock (the monitor holds its own by now)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def release(self) -> None:
        """Give the address back (unlink, then unlock)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.close()


def lease_dir(bridge: str) -> str:
    """The directory of ``bridge``'s leases."""
    return os.path.join(RUN_DIR, bridge)


@contextlib.contextmanager
def dir_lock(bridge: str) -> Iterator[str]:
    """Exclusive lock of ``bridge``'s lease directory (reclaim, hosts files); yields it."""
    d = lease_dir(bridge)
    os.makedirs(d, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(d, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield d
    finally:
        os.close(fd)


def allocate(bridge: str, subnet: str, holder: dict[str, Any]) -> Lease:
    """Lease the lowest free address of ``subnet`` (the first is the gateway's).

    Raises :class:`Conflict` when every address is taken by a live holder."""
    net = ipaddress.IPv4Network(subnet)
    d = lease_dir(bridge)
    os.makedirs(d, mode=0o700, exist_ok=True)
    tmp = os.path.join(d, f".new-{os.getpid()}-{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.write(fd, json.dumps(holder).encode())
        for attempt in range(2):
            taken = set(os.listdir(d))
            for host in _hosts(net):
                ip = str(host)
                if ip in taken:
                    continue
                try:
                    os.link(tmp, os.path.join(d, ip))
                except FileExistsError:
                    continue
                os.unlink(tmp)
                return Lease(os.path.join(d, ip), ip, fd)
            if attempt == 0 and not reclaim(bridge):
                break
        raise Conflict(f"no free address left in {subnet} (network bridge {bridge}): "
                       "remove containers, or create a network with a larger --subnet")
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _hosts(net: ipaddress.IPv4Network) -> Iterator[ipaddress.IPv4Address]:
    hosts = net.hosts()
    next(hosts, None)  # the gateway's
    return hosts


def hold(path: str) -> int:
    """Take a shared lock on the lease at ``path`` (the monitor, for the container's
    life); the fd to keep open, or -1 if the lease is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return -1
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def reclaim(bridge: str) -> int:
    """Remove the leases nobody holds (left by killed engines or monitors); how many."""
    freed = 0
    with dir_lock(bridge) as d:
        for name in os.listdir(d):
            if name.startswith(".lock"):
                continue
            path = os.path.join(d, name)
            if name.startswith(".new-"):
                pid = name.split("-")[1]
                if pid.isdigit() and fsutil.pid_alive(int(pid)):
                    continue
            if _free(path):
                freed += 1
    return freed


def release_if_unheld(path: str) -> None:
    """Unlink the lease at ``path`` unless someone holds it (the engine's rm)."""
    if os.path.exists(path):
        with dir_lock(os.path.basename(os.path.dirname(path))):
            _free(path)


def _free(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False
        if same:
            os.unlink(path)
        return same
    finally:
        os.close(fd)


def holders(bridge: str) -> dict[str, dict[str, Any]]:
    """ip -> holder record of every lease of ``bridge`` (held or not)."""
    d = lease_dir(bridge)
    out = {}
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return {}
    for name in names:
        if name.startswith("."):
            continue
        try:
            with open(os.path.join(d, name)) as f:
                out[name] = json.load(f)
        except (FileNotFoundError, ValueError):
            continue
    return out
