"""The rtnetlink messages a container's init sends to plug itself into a bridge.

Built in the parent with :mod:`struct` (pyroute2 costs ~150 ms to import, and the
child between fork and exec must import nothing); the child only patches in the two
numbers it learns late (its own pid, interface indexes) and sends them.  The sequence,
in the child (see :func:`engine.runtime._build_container`)::

    host = socket(NETLINK_ROUTE)              # opened in the host's network namespace
    unshare(CLONE_NEWNET | ...)
    host.send(NEWLINK veth cbxv… master=bridge up, peer eth0 -> netns of pid 1 (us))
    own = socket(NETLINK_ROUTE)               # in the container's namespace
    own.send(NEWADDR eth0, NEWLINK eth0 up, NEWROUTE default via gateway)

Nothing has to be torn down: when the container's last process exits its network
namespace dies, and with it eth0 and (a veth pair never outlives one end) cbxv….
"""

from __future__ import annotations

import errno
import os
import socket
import struct

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 20, 24
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLMSG_ERROR = 2
IFF_UP = 0x1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_PID = 1, 3, 10, 18, 19
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_GATEWAY, RTA_OIF = 5, 4
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_IFI = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFA = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefixlen, flags, scope, index
_RTM = struct.Struct("=BBBBBBBBI")  # rtmsg


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n & 3)


def _msg(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return _HDR.pack(16 + len(body), kind, flags | NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


class Plan:
    """The messages for one container: ``veth`` for the host socket and ``inside`` for
    the container's own, with the offsets of the numbers the child fills in."""

    __slots__ = ("bridge", "veth", "inside", "pid_at", "master_at", "index_at", "count")

    def __init__(self, bridge: str, veth: str, ip: str, prefixlen: int, gateway: str,
                 mac: str) -> None:
        self.bridge = bridge
        peer = _IFI.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, b"eth0\0") + \
            _attr(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", ""))) + \
            _attr(IFLA_NET_NS_PID, struct.pack("=I", 0))
        linkinfo = _attr(IFLA_INFO_KIND, b"veth") + \
            _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer))
        head = _IFI.pack(0, 0, 0, IFF_UP, IFF_UP) + _attr(IFLA_IFNAME, veth.encode() + b"\0")
        master = _attr(IFLA_MASTER, struct.pack("=I", 0))
        body = head + master + _attr(IFLA_LINKINFO, linkinfo)
        msg = _msg(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, 1, body)
        self.veth = bytearray(msg)
        self.master_at = 16 + len(head) + 4
        self.pid_at = len(msg) - 4
        ip_b = socket.inet_aton(ip)
        addr = _msg(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, 2,
                    _IFA.pack(socket.AF_INET, prefixlen, 0, 0, 0)
                    + _attr(IFA_LOCAL, ip_b) + _attr(IFA_ADDRESS, ip_b))
        up = _msg(RTM_NEWLINK, 0, 3, _IFI.pack(0, 0, 0, IFF_UP, IFF_UP))
        route = _msg(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, 4,
                     _RTM.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT,
                               RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
                     + _attr(RTA_GATEWAY, socket.inet_aton(gateway)))
        self.inside = bytearray(addr + up + route)
        # eth0's index goes into the address message and the link message
        self.index_at = (16 + 4, len(addr) + 16 + 4)
        self.count = 3

    def to_dict(self) -> dict:
        """Msgpack-able form (it travels in the spec to the fork server)."""
        return {"bridge": self.bridge, "veth": bytes(self.veth), "inside": bytes(self.inside),
                "pid_at": self.pid_at, "master_at": self.master_at,
                "index_at": list(self.index_at), "count": self.count}


def socket_route() -> socket.socket:
    """A NETLINK_ROUTE socket in the caller's current network namespace."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         NETLINK_ROUTE)


def open_host(plan: dict) -> tuple[socket.socket, int]:
    """Before unshare(CLONE_NEWNET), in the host's namespace: a netlink socket that stays
    there, and the bridge's interface index."""
    try:
        master = socket.if_nametoindex(plan["bridge"])
    except OSError:
        raise NetlinkFailed(errno.ENODEV, f"find bridge {plan['bridge']}") from None
    return socket_route(), master


def plug_in(host: socket.socket, master: int, plan: dict) -> None:
    """Run in the container's init, after unshare(CLONE_NEWNET): make the veth pair
    from ``host`` (see :func:`open_host`), then configure eth0 from inside.  Raises
    :class:`NetlinkFailed` naming the step."""
    veth = bytearray(plan["veth"])
    struct.pack_into("=I", veth, plan["master_at"], master)
    struct.pack_into("=I", veth, plan["pid_at"], os.getpid())
    _talk(host, bytes(veth), 1, "create the veth pair on bridge " + plan["bridge"])
    own = socket_route()
    try:
        inside = bytearray(plan["inside"])
        index = socket.if_nametoindex("eth0")
        for at in plan["index_at"]:
            struct.pack_into("=i", inside, at, index)
        _talk(own, bytes(inside), plan["count"], "configure eth0")
    finally:
        own.close()


class NetlinkFailed(OSError):
    """The kernel refused a message: ``stage`` names it."""

    def __init__(self, err: int, stage: str) -> None:
        super().__init__(err, os.strerror(err))
        self.stage = stage


def _talk(sock: socket.socket, data: bytes, acks: int, stage: str) -> None:
    sock.send(data)
    while acks:
        buf = sock.recv(65536)
        off = 0
        while off + 16 <= len(buf) and acks:
            n, kind, _, _, _ = _HDR.unpack_from(buf, off)
            if kind == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", buf, off + 16)
                if err:
                    raise NetlinkFailed(-err, stage)
                acks -= 1
            off += (n + 3) & ~3
            if n < 16:
                raise NetlinkFailed(errno.EPROTO, stage)
