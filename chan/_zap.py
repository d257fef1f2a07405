"""CurveZMQ authentication: a ZAP handler that admits the client keys of each listener.

ZeroMQ asks the handler bound at ``inproc://zeromq.zap.01`` in the socket's context
about every CURVE handshake (RFC 27).  Each listener gets a ZAP domain of its own whose
allowed public keys are checked here; everything else is refused (status 400).  The
I/O thread answers, so no extra thread is needed.
"""

from __future__ import annotations

import itertools

import zmq

ZAP_ENDPOINT = "inproc://zeromq.zap.01"


class ZapHandler:
    """The context's ZAP REP socket and the allowed keys per domain."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.sock = ctx.socket(zmq.REP)
        self.sock.linger = 0
        self.sock.bind(ZAP_ENDPOINT)
        self.domains: dict[str, set[bytes]] = {}
        self._ids = itertools.count(1)

    def domain_for(self, allowed: set[bytes]) -> str:
        """A new domain admitting the raw (32-byte) public keys in ``allowed``."""
        domain = f"chan-{next(self._ids)}"
        self.domains[domain] = allowed
        return domain

    def answer(self) -> None:
        """Answer every pending request."""
        while True:
            try:
                req = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            version, request_id, domain, _address, _identity, mechanism = req[:6]
            allowed = self.domains.get(domain.decode(errors="replace"), set())
            key = req[6] if len(req) > 6 else b""
            if mechanism == b"CURVE" and key in allowed:
                reply = [version, request_id, b"200", b"OK", b"", b""]
            else:
                reply = [version, request_id, b"400", b"client key not allowed", b"", b""]
            self.sock.send_multipart(reply)

    def close(self) -> None:
        self.sock.close(linger=0)
