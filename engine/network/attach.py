"""One container's place on a network: what the engine does at start and at removal.

At start (:func:`prepare`): make sure the bridge is up, lease an address, write the
container's ``hosts``, ``hostname`` and ``resolv.conf`` (bind-mounted over its /etc
files), add it to the ``hosts`` of the other members of a user network, and hand the
runtime a ready-made :class:`netlink.Plan`.  The container's init plugs itself in; its
monitor holds the lease and serves published ports; nothing is torn down explicitly.
"""

from __future__ import annotations

import ipaddress
import json
import os
from typing import Any

from . import ipam, netlink, networks

RESOLV_FALLBACK = "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"


def mac_of(ip: str) -> str:
    """Docker's MAC for an address: 02:42 then the four bytes of the IPv4 address."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


class Attachment:
    """The result of :func:`prepare`: the spec's ``net``, inspect's settings, the lease."""

    def __init__(self, spec_net: dict[str, Any], settings: dict[str, Any],
                 lease: ipam.Lease) -> None:
        self.spec_net = spec_net
        self.settings = settings
        self.lease = lease


def prepare(root: str, container_dir: str, cid: str, name: str, hostname: str,
            mode: str, aliases: list[str], ports: list[dict[str, Any]]) -> Attachment | None:
    """Join the container to network ``mode``; None for ``host`` and ``none``."""
    net = networks.for_container(root, mode)
    if net is None:
        return None
    dev = net["Bridge"]
    prefixlen = ipaddress.IPv4Network(net["Subnet"]).prefixlen
    user = net["Name"] != networks.DEFAULT
    names = [name, cid[:12], *aliases] if user else []
    hosts_path = os.path.join(container_dir, "hosts")
    holder = {"id": cid, "name": name, "names": names, "hosts": hosts_path}
    lease = ipam.allocate(dev, net["Subnet"], holder)
    try:
        ip = lease.ip
        _write(os.path.join(container_dir, "hostname"), hostname + "\n")
        _write(os.path.join(container_dir, "resolv.conf"), _resolv())
        if user:
            with ipam.dir_lock(dev):
                members = {m_ip: m for m_ip, m in ipam.holders(dev).items() if m_ip != ip}
                _write(hosts_path, _hosts_text(ip, hostname, names, members))
                line = _line(ip, names)
                for m_ip, m in members.items():
                    _add_line(m.get("hosts", ""), ip, line)
        else:
            _write(hosts_path, _hosts_text(ip, hostname, [], {}))
        veth = "cbxv" + cid[:5] + os.urandom(3).hex()
        mac = mac_of(ip)
        plan = netlink.Plan(dev, veth, ip, prefixlen, net["Gateway"], mac)
        spec_net = {
            "plan": plan.to_dict(), "lease": lease.path, "ip": ip, "ports": ports,
            "files": [[hosts_path, "/etc/hosts"], [os.path.join(container_dir, "hostname"),
                      "/etc/hostname"], [os.path.join(container_dir, "resolv.conf"),
                                         "/etc/resolv.conf"]],
        }
        settings = {"NetworkID": net["Id"], "Name": net["Name"], "IPAddress": ip,
                    "IPPrefixLen": prefixlen, "Gateway": net["Gateway"], "MacAddress": mac,
                    "Aliases": names or None, "Lease": lease.path, "Veth": veth}
    except BaseException:
        lease.release()
        raise
    return Attachment(spec_net, settings, lease)


def release(settings: dict[str, Any] | None) -> None:
    """Give back a removed container's address if nobody holds it any more."""
    if settings and settings.get("Lease"):
        ipam.release_if_unheld(settings["Lease"])


def _resolv() -> str:
    # the host's, without loopback name servers (unreachable from the container)
    try:
        with open("/etc/resolv.conf") as f:
            lines = [ln for ln in f if not (ln.startswith("nameserver") and
                                             ln.split()[1:2] and
                                             ln.split()[1].startswith(("127.", "::1")))]
    except OSError:
        lines = []
    text = "".join(lines)
    return text if "nameserver" in text else text + RESOLV_FALLBACK


def _line(ip: str, names: list[str]) -> str:
    return f"{ip}\t{' '.join(names)}\n"


def _hosts_text(ip: str, hostname: str, names: list[str],
                members: dict[str, dict[str, Any]]) -> str:
    text = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"{ip}\t{' '.join(dict.fromkeys([hostname, *names]))}\n")
    for m_ip, m in sorted(members.items()):
        if m.get("names"):
            text += _line(m_ip, m["names"])
    return text


def _add_line(path: str, ip: str, line: str) -> None:
    """Put ``line`` in another member's hosts file, in place (it is bind-mounted: the
    inode must stay), replacing a stale line for the same address."""
    try:
        with open(path, "r+") as f:
            kept = [ln for ln in f.read().splitlines(keepends=True)
                    if ln.split("\t", 1)[0] != ip]
            f.seek(0)
            f.write("".join(kept) + line)
            f.truncate()
    except OSError:
        pass  # that container is gone


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def load_settings(container_dir: str) -> dict[str, Any] | None:
    """The settings the engine recorded at the container's last start."""
    try:
        with open(os.path.join(container_dir, "network.json")) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None
