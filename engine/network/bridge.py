"""Host bridges, through pyroute2 (imported here only, and only when a bridge has to be
made, removed or checked against the host's routes: ~150 ms).

A bridge is made under a temporary name (``cbxt<pid>``), given its gateway address,
then renamed into place and brought up: a bridge with its final name is always
addressed.  A temporary one left by a killed engine is removed by the next
:func:`ensure`.  Packets are never forwarded from a bridge (its ``forwarding`` sysctl
is 0): containers reach their own network and the host, nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
from collections.abc import Iterator
from typing import Any

from engine.errors import Conflict, InvalidArgument, RuntimeFailure

from . import ipam

IFF_UP = 0x1


def exists(name: str) -> bool:
    """Whether the host has a network device called ``name``."""
    return os.path.exists(f"/sys/class/net/{name}")


def _is_up(name: str) -> bool:
    try:
        with open(f"/sys/class/net/{name}/flags") as f:
            return bool(int(f.read(), 16) & IFF_UP)
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _host_lock() -> Iterator[None]:
    os.makedirs(ipam.RUN_DIR, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(ipam.RUN_DIR, ".bridges.lock"),
                 os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _ipr() -> Iterator[Any]:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            yield ipr
    except NetlinkError as exc:
        raise RuntimeFailure(f"netlink refused a bridge operation: {exc}; "
                             "check that chanbox runs as root") from exc


def ensure(name: str, subnet: str, gateway: str) -> None:
    """Make sure bridge ``name`` exists with ``gateway``/prefix and is up (cheap when it
    does: a stat and a sysfs read)."""
    if exists(name) and _is_up(name):
        return
    with _host_lock(), _ipr() as ipr:
        _remove_stale_temporaries(ipr)
        if not exists(name):
            clash = overlapping_route(subnet, ipr)
            if clash:
                raise Conflict(f"subnet {subnet} overlaps the host's route {clash}; choose "
                               "another subnet (--subnet, or CHANBOX_BRIDGE_SUBNET for the "
                               "default bridge)")
            tmp = f"cbxt{os.getpid():x}"[:15]
            ipr.link("add", ifname=tmp, kind="bridge")
            idx = ipr.link_lookup(ifname=tmp)[0]
            ipr.addr("add", index=idx, address=gateway,
                     prefixlen=ipaddress.IPv4Network(subnet).prefixlen)
            _sysctl(tmp, "forwarding", "0")
            ipr.link("set", index=idx, ifname=name)
        idx = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=idx, state="up")


def remove(name: str) -> None:
    """Delete bridge ``name`` (gone already is fine)."""
    if not exists(name):
        return
    with _host_lock(), _ipr() as ipr:
        found = ipr.link_lookup(ifname=name)
        if found:
            ipr.link("del", index=found[0])


def overlapping_route(subnet: str, ipr: Any = None) -> str | None:
    """The first IPv4 route of the host that overlaps ``subnet`` (our bridges' own
    routes included), as text; None if there is none."""
    if ipr is None:
        with _ipr() as ipr2:
            return overlapping_route(subnet, ipr2)
    net = ipaddress.IPv4Network(subnet)
    for r in ipr.get_routes(family=2):
        plen = r["dst_len"]
        if plen == 0:
            continue  # the default route overlaps everything and means nothing here
        dst = r.get_attr("RTA_DST")
        if dst and net.overlaps(ipaddress.IPv4Network(f"{dst}/{plen}", strict=False)):
            return f"{dst}/{plen}"
    return None


def gateway_of(name: str) -> tuple[str, int] | None:
    """The (address, prefix length) of bridge ``name``, read from the kernel."""
    with _ipr() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return None
        for a in ipr.get_addr(family=2, index=found[0]):
            return a.get_attr("IFA_ADDRESS"), a["prefixlen"]
    return None


def _remove_stale_temporaries(ipr: Any) -> None:
    for link in ipr.get_links():
        ifname = link.get_attr("IFLA_IFNAME") or ""
        if not ifname.startswith("cbxt"):
            continue
        try:
            pid = int(ifname[4:], 16)
        except ValueError:
            continue
        if pid == os.getpid() or not ipam._alive(pid):
            ipr.link("del", index=link["index"])


def _sysctl(dev: str, key: str, value: str) -> None:
    try:
        with open(f"/proc/sys/net/ipv4/conf/{dev}/{key}", "w") as f:
            f.write(value)
    except OSError as exc:
        raise RuntimeFailure(f"set net.ipv4.conf.{dev}.{key}: {exc}") from exc


def check_subnet(subnet: str) -> ipaddress.IPv4Network:
    """``subnet`` parsed; :class:`InvalidArgument` when it is not a usable IPv4 subnet."""
    try:
        net = ipaddress.IPv4Network(subnet)
    except ValueError as exc:
        raise InvalidArgument(f"invalid subnet {subnet!r}: {exc}; give one like "
                              "10.89.0.0/24") from exc
    if net.prefixlen > 29:
        raise InvalidArgument(f"subnet {subnet} is too small: use a prefix of /29 or shorter")
    return net
