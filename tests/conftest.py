"""Session-wide settings and clean-up.

The default bridge ``cbx0`` is host-wide, like docker0, so no single test owns it.  A
test session that found no ``cbx0`` removes the one its containers made, once nothing
is attached to it any more.
"""

from __future__ import annotations

import os
import time

import pytest

# The bridges' etcd client (aetcd) runs on gRPC, whose fork handlers start threads in a
# forked child and abort it ("pthread_create failed").  The runtime's tests fork
# monitors from this process after the etcd tests ran: they must not inherit that.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from engine.network import ipam  # noqa: E402 -- light: no pyroute2
from engine.network.networks import DEFAULT_BRIDGE as _BRIDGE  # noqa: E402

_HAD_BRIDGE = os.path.exists(f"/sys/class/net/{_BRIDGE}")
_RECORD = os.path.join(ipam.RUN_DIR, _BRIDGE + ".json")
_HAD_RECORD = os.path.exists(_RECORD)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _HAD_BRIDGE or not os.path.exists(f"/sys/class/net/{_BRIDGE}"):
        return
    # the kernel tears dead containers' namespaces (and their veths) down asynchronously
    deadline = time.monotonic() + 15
    while os.listdir(f"/sys/class/net/{_BRIDGE}/brif"):
        if time.monotonic() > deadline:
            return  # something still runs on it (a container a test did not remove)
        time.sleep(0.1)
    from engine.network import bridge

    bridge.remove(_BRIDGE)
    if not _HAD_RECORD and os.path.exists(_RECORD):
        os.unlink(_RECORD)
    lease_dir = ipam.lease_dir(_BRIDGE)
    try:
        if os.listdir(lease_dir) == [".lock"]:  # every address has been given back
            os.unlink(os.path.join(lease_dir, ".lock"))
            os.rmdir(lease_dir)
    except OSError:
        pass
