"""Published ports: a userland proxy inside the container's monitor.

Chosen over nftables DNAT: it needs no host firewall change (nothing to leak when an
engine dies: the listening sockets close with the monitor), it answers on the host's
loopback (DNAT to a bridge address does not apply to locally originated loopback
traffic without route_localnet), and it costs no process of its own: its sockets sit in
the monitor's ``selectors`` loop.  The price is docker-proxy's: the container sees
connections come from its gateway, not from the client.

The listening sockets are bound before the container starts, so a host port that is
taken refuses the start with a clear error.
"""

from __future__ import annotations

import errno
import selectors
import socket
from typing import Any, Callable

from engine.errors import Conflict, InvalidArgument

_CHUNK = 65536
_UDP_FLOWS = 1024


def parse(spec: str) -> dict[str, Any]:
    """``[IP:][HOSTPORT:]CONTAINERPORT[/tcp|udp]`` (``docker run -p``) as a binding."""
    body, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise InvalidArgument(f"invalid protocol {proto!r} in -p {spec}: use tcp or udp")
    parts = body.rsplit(":", 2) if body.count(":") <= 2 else None
    if body.startswith("["):  # [::1]:8080:80
        host, _, rest = body[1:].partition("]:")
        parts = [host, *rest.split(":")]
    if not parts:
        raise InvalidArgument(f"invalid -p {spec}: use [IP:]HOSTPORT:CONTAINERPORT[/proto]")
    if len(parts) == 1:
        host_ip, host_port, cport = "", "", parts[0]
    elif len(parts) == 2:
        host_ip, host_port, cport = "", parts[0], parts[1]
    else:
        host_ip, host_port, cport = parts
    try:
        hp = int(host_port) if host_port else 0
        cp = int(cport)
        if not (0 <= hp < 65536 and 0 < cp < 65536):
            raise ValueError
        if host_ip:
            socket.inet_pton(socket.AF_INET6 if ":" in host_ip else socket.AF_INET, host_ip)
    except (ValueError, OSError) as exc:
        raise InvalidArgument(f"invalid -p {spec}: ports are 1-65535 and the host IP "
                              "an address") from exc
    return {"host_ip": host_ip, "host_port": hp, "container_port": cp, "proto": proto}


def check(ports: list[Any]) -> list[dict[str, Any]]:
    """The ``ports`` argument of create, validated and normalised."""
    out = []
    for p in ports or []:
        if not isinstance(p, dict):
            raise InvalidArgument("ports: each entry is a map with host_ip, host_port, "
                                  "container_port, proto")
        b = parse(f"{p.get('host_ip') or ''}:{int(p.get('host_port') or 0)}:"
                  f"{int(p.get('container_port') or 0)}/{p.get('proto') or 'tcp'}"
                  if ":" not in (p.get("host_ip") or "") else
                  f"[{p['host_ip']}]:{int(p.get('host_port') or 0)}:"
                  f"{int(p.get('container_port') or 0)}/{p.get('proto') or 'tcp'}")
        out.append(b)
    return out


class Proxy:
    """Every published port of one container, served from a selector's loop.

    Register with :meth:`bind` (raises :class:`Conflict` for a taken port) before the
    container starts; the loop calls ``data[1](key, events)`` for keys whose data is
    ``("proxy", callback)``; :meth:`close` ends everything."""

    def __init__(self, sel: selectors.BaseSelector, target_ip: str) -> None:
        self.sel = sel
        self.target = target_ip
        self.socks: set[socket.socket] = set()
        self.bound: list[dict[str, Any]] = []

    def bind(self, ports: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Open every listening socket; the bindings with real host ports."""
        try:
            for p in ports:
                self.bound.append(self._bind_one(p))
        except BaseException:
            self.close()
            raise
        return self.bound

    def _bind_one(self, p: dict[str, Any]) -> dict[str, Any]:
        host_ip = p["host_ip"] or "0.0.0.0"
        fam = socket.AF_INET6 if ":" in host_ip else socket.AF_INET
        udp = p["proto"] == "udp"
        s = socket.socket(fam, (socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
                          | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        if not udp:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host_ip, p["host_port"]))
        except OSError as exc:
            s.close()
            what = f"{host_ip}:{p['host_port']}/{p['proto']}"
            if exc.errno == errno.EADDRINUSE:
                raise Conflict(f"cannot publish port {what}: the host port is already in "
                               "use; choose another host port (or 0 for any)") from exc
            raise Conflict(f"cannot publish port {what}: {exc.strerror}") from exc
        cport = p["container_port"]
        if udp:
            flows: dict[Any, socket.socket] = {}
            self._add(s, lambda ev: self._udp_in(s, cport, flows))
        else:
            s.listen(128)
            self._add(s, lambda ev: self._accept(s, cport))
        return {**p, "host_port": s.getsockname()[1]}

    def _add(self, s: socket.socket, fn: Callable[[int], None],
             events: int = selectors.EVENT_READ) -> None:
        self.socks.add(s)
        self.sel.register(s, events, ("proxy", lambda key, ev: fn(ev)))

    def _drop(self, *socks: socket.socket) -> None:
        for s in socks:
            if s in self.socks:
                self.socks.discard(s)
                try:
                    self.sel.unregister(s)
                except (KeyError, ValueError):
                    pass  # a connection's socket parked with no events
                s.close()

    def close(self) -> None:
        """Close every socket (the container exited)."""
        self._drop(*list(self.socks))

    # -- tcp ---------------------------------------------------------------------------
    def _accept(self, listener: socket.socket, cport: int) -> None:
        try:
            client, _ = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        client.setblocking(False)
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC
                                 | socket.SOCK_NONBLOCK)
        err = upstream.connect_ex((self.target, cport))
        if err not in (0, errno.EINPROGRESS):
            client.close()
            upstream.close()
            return
        _Pipe(self, client, upstream)

    # -- udp ---------------------------------------------------------------------------
    def _udp_in(self, listener: socket.socket, cport: int,
                flows: dict[Any, socket.socket]) -> None:
        try:
            data, addr = listener.recvfrom(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        up = flows.get(addr)
        if up is None:
            if len(flows) >= _UDP_FLOWS:
                old = next(iter(flows))
                self._drop(flows.pop(old))
            up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                               | socket.SOCK_NONBLOCK)
            up.connect((self.target, cport))
            flows[addr] = up

            def back(ev: int, up: socket.socket = up, addr: Any = addr) -> None:
                try:
                    reply = up.recv(_CHUNK)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    flows.pop(addr, None)
                    self._drop(up)
                    return
                try:
                    listener.sendto(reply, addr)
                except OSError:
                    pass
            self._add(up, back)
        try:
            up.send(data)
        except OSError:
            pass


class _Pipe:
    """One proxied TCP connection: two sockets, a bounded buffer each way (a side is
    not read while the other side's buffer is not drained)."""

    def __init__(self, proxy: Proxy, a: socket.socket, b: socket.socket) -> None:
        self.proxy = proxy
        self.b = b
        self.bufs = {a: bytearray(), b: bytearray()}  # what waits to be written to key
        self.peer = {a: b, b: a}
        self.eof = {a: False, b: False}  # key has sent us EOF
        self.connected = False
        self.events = {a: 0, b: 0}
        self.closed = False
        proxy.socks.update((a, b))
        self._update()

    def _wanted(self, s: socket.socket) -> int:
        if not self.connected:
            return selectors.EVENT_WRITE if s is self.b else 0
        ev = selectors.EVENT_WRITE if self.bufs[s] else 0
        if not self.eof[s] and not self.bufs[self.peer[s]]:
            ev |= selectors.EVENT_READ
        return ev

    def _update(self) -> None:
        sel = self.proxy.sel
        for s in self.peer:
            ev = self._wanted(s)
            old = self.events[s]
            if ev == old:
                continue
            if old == 0:
                sel.register(s, ev, ("proxy", lambda key, e, s=s: self._event(s, e)))
            elif ev == 0:
                sel.unregister(s)
            else:
                sel.modify(s, ev, sel.get_key(s).data)
            self.events[s] = ev

    def _event(self, s: socket.socket, ev: int) -> None:
        if self.closed:
            return
        try:
            self._step(s, ev)
        except OSError:
            self._close()
            return
        if self.eof[s] and self.eof[self.peer[s]] and not any(self.bufs.values()):
            self._close()
            return
        self._update()

    def _step(self, s: socket.socket, ev: int) -> None:
        if not self.connected:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, "connect")
            self.connected = True
            return
        if ev & selectors.EVENT_WRITE and self.bufs[s]:
            try:
                del self.bufs[s][:s.send(self.bufs[s])]
            except BlockingIOError:
                pass
            if not self.bufs[s] and self.eof[self.peer[s]]:
                s.shutdown(socket.SHUT_WR)
        if ev & selectors.EVENT_READ and not self.eof[s]:
            try:
                data = s.recv(_CHUNK)
            except BlockingIOError:
                return
            if data:
                self.bufs[self.peer[s]] += data
            else:
                self.eof[s] = True
                if not self.bufs[self.peer[s]]:
                    self.peer[s].shutdown(socket.SHUT_WR)

    def _close(self) -> None:
        self.closed = True
        for s in self.peer:
            if self.events[s]:
                self.proxy.sel.unregister(s)
                self.events[s] = 0
            self.proxy.socks.discard(s)
            s.close()
