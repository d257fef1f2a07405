"""The bridges end to end: a real daemon, real containers with published ports, the
real ``chanbox bridge`` process, and the real etcd, ZooKeeper and Serf.

What registrator's users complain of is what is checked: stale entries after a crash,
events lost while the bridge was down, a loop that never reconnects.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

from tests.engine.conftest import CHANBOX, FORKER, needs_root, remove_root, stop_process
from tests.engine.test_daemon import DaemonProc

from .servers import Etcd, Serf, ZooKeeper, free_port

pytestmark = needs_root


@pytest.fixture(scope="module")
def root() -> Iterator[str]:
    from engine.engine import Engine

    r = tempfile.mkdtemp(prefix="cbx-broot-")
    Engine(r, forker=FORKER).bootstrap("busybox:latest")
    yield r
    remove_root(r)


@pytest.fixture(scope="module")
def sock_dir() -> Iterator[str]:
    from engine import fsutil

    d = tempfile.mkdtemp(prefix="cbx-bsock-")
    yield d
    fsutil.remove_tree(d)


@pytest.fixture(scope="module")
def daemon(root: str, sock_dir: str) -> Iterator[DaemonProc]:
    d = DaemonProc(root, sock_dir)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def etcd() -> Iterator[Etcd]:
    e = Etcd()
    yield e
    e.stop()


class BridgeProc:
    """A ``chanbox bridge <system>`` process following ``daemon``."""

    def __init__(self, daemon: DaemonProc, *args: str) -> None:
        self.args = args
        self.daemon = daemon
        self.logs: list[str] = []
        self.start()

    def start(self) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="cbx-bridge-", suffix=".log", delete=False)
        self.logs.append(self.log.name)
        self.proc = subprocess.Popen([CHANBOX, "-H", self.daemon.endpoint, "bridge", *self.args],
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        with open(self.log.name) as f:
            return f.read()

    def wait_synced(self, n: int = 1, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while self.output().count("in sync with") < n:
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.proc, sig)
        self.log.close()

    def close(self) -> None:
        self.stop()
        for name in self.logs:
            os.unlink(name)


def run_server(daemon: DaemonProc, *extra: str, port: int | None = None,
               cmd: tuple[str, ...] = ("sleep", "60")) -> tuple[str, int]:
    port = port or free_port()
    p = daemon.cli("run", "-d", "-p", f"127.0.0.1:{port}:80", *extra, "busybox", *cmd)
    assert p.returncode == 0, p.stderr
    return p.stdout.decode().strip(), port


def until(pred: Callable[[], object], timeout: float = 10, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def etcd_services(etcd: Etcd, prefix: str) -> dict[str, dict]:
    from bridges.etcd import EtcdRegistry

    reg = EtcdRegistry(etcd.endpoint, prefix=prefix)
    try:
        return {s.id: json.loads(s.to_json()) for s in reg.registered()}
    finally:
        reg.close()


def test_etcd_registration_lifecycle_and_crash_recovery(daemon: DaemonProc, etcd: Etcd) -> None:
    prefix = "/cbx-e2e"
    b = BridgeProc(daemon, "etcd", "--endpoints", etcd.endpoint, "--prefix", prefix,
                   "--ttl", "2", "--hostname", "cbx-h1")
    started: list[str] = []
    try:
        b.wait_synced()
        cid, port = run_server(daemon, "--name", "cbx-web", "-e", "SERVICE_TAGS=blue")
        started.append(cid)
        sid = "cbx-h1:cbx-web:80"
        s = until(lambda: etcd_services(etcd, prefix).get(sid), what="registration")
        assert (s["name"], s["ip"], s["port"], s["tags"], s["container_id"]) == \
            ("busybox", "127.0.0.1", port, ["blue"], cid)
        # rename: the service's id follows the name
        daemon.cli("rename", cid, "cbx-site")
        sid = "cbx-h1:cbx-site:80"
        until(lambda: set(etcd_services(etcd, prefix)) == {sid}, what="the id after a rename")
        # stop: deregistered
        daemon.cli("kill", cid)
        until(lambda: sid not in etcd_services(etcd, prefix), what="deregistration")

        # the bridge dies: its lease runs out, its entries with it
        cid2, _ = run_server(daemon, "--name", "cbx-web2")
        started.append(cid2)
        until(lambda: "cbx-h1:cbx-web2:80" in etcd_services(etcd, prefix), what="web2")
        b.stop(signal.SIGKILL)
        until(lambda: not etcd_services(etcd, prefix), timeout=8, what="lease expiry")

        # while it is down: web2 dies, web3 starts; a new bridge sets all right
        daemon.cli("kill", cid2)
        cid3, _ = run_server(daemon, "--name", "cbx-web3")
        started.append(cid3)
        b.start()
        b.wait_synced()
        until(lambda: set(etcd_services(etcd, prefix)) == {"cbx-h1:cbx-web3:80"},
              what="resync after restart")

        # the daemon restarts under the bridge: it reconnects, nothing missed or doubled
        daemon.stop(signal.SIGKILL)
        cid4 = None
        d2 = DaemonProc(daemon.root, os.path.dirname(daemon.path))
        daemon.proc = d2.proc  # the module fixture stops whichever runs
        b.wait_synced(2)
        cid4, _ = run_server(daemon, "--name", "cbx-web4")
        started.append(cid4)
        until(lambda: set(etcd_services(etcd, prefix)) == {"cbx-h1:cbx-web3:80",
                                                            "cbx-h1:cbx-web4:80"},
              what="registration after the daemon restart")
        from bridges.etcd import EtcdRegistry

        reg = EtcdRegistry(etcd.endpoint, prefix=prefix)
        (h,) = reg.hosts()
        reg.close()
        assert h["id"] == "cbx-h1" and h["endpoint"] == daemon.endpoint
        p = subprocess.run([CHANBOX, "hosts", "--discovery",
                            f"etcd://127.0.0.1:{etcd.client_port}{prefix}", "--format", "json"],
                           capture_output=True, timeout=30)
        assert json.loads(p.stdout.decode().splitlines()[0])["id"] == "cbx-h1"
    finally:
        for cid in started:
            daemon.cli("rm", "-f", cid)
        b.close()


def test_internal_explicit_and_ignore(daemon: DaemonProc, etcd: Etcd) -> None:
    prefix = "/cbx-e2e2"
    b = BridgeProc(daemon, "etcd", "--endpoints", etcd.endpoint, "--prefix", prefix,
                   "--hostname", "cbx-h2", "--explicit")
    ids = []
    try:
        b.wait_synced()
        ids.append(run_server(daemon, "--name", "cbx-anon")[0])
        ids.append(run_server(daemon, "--name", "cbx-named", "-l", "SERVICE_NAME=api")[0])
        ids.append(run_server(daemon, "--name", "cbx-ign", "-l", "SERVICE_NAME=x",
                              "-l", "SERVICE_IGNORE=1")[0])
        got = until(lambda: etcd_services(etcd, prefix), what="explicit registration")
        time.sleep(0.5)
        got = etcd_services(etcd, prefix)
        assert [s["name"] for s in got.values()] == ["api"]
    finally:
        b.close()
    b = BridgeProc(daemon, "etcd", "--endpoints", etcd.endpoint, "--prefix", prefix + "i",
                   "--hostname", "cbx-h2", "--internal")
    try:
        b.wait_synced()
        got = until(lambda: etcd_services(etcd, prefix + "i"), what="internal registration")
        info = json.loads(daemon.cli("inspect", ids[0]).stdout)[0]
        ip = info["NetworkSettings"]["IPAddress"]
        anon = got["cbx-h2:cbx-anon:80"]
        assert (anon["ip"], anon["port"]) == (ip, 80)
    finally:
        for cid in ids:
            daemon.cli("rm", "-f", cid)
        b.close()


def test_zookeeper_bridge(daemon: DaemonProc) -> None:
    from bridges.zookeeper import ZooKeeperRegistry

    zk = ZooKeeper()
    reader = ZooKeeperRegistry(zk.hosts, prefix="/cbx-zk")
    b = BridgeProc(daemon, "zookeeper", "--hosts", zk.hosts, "--prefix", "/cbx-zk",
                   "--timeout", "2", "--hostname", "cbx-h3")
    cid = None
    try:
        reader.wait_connected()
        b.wait_synced()
        cid, port = run_server(daemon, "--name", "cbx-zweb")
        s = until(lambda: {x.id: x for x in reader.registered()}.get("cbx-h3:cbx-zweb:80"),
                  what="zk registration")
        assert s.port == port
        b.stop(signal.SIGKILL)  # its session times out: the ephemeral nodes go
        until(lambda: not reader.registered(), timeout=10, what="zk session expiry")
        b.start()
        b.wait_synced()
        until(lambda: reader.registered(), what="zk re-registration")
        daemon.cli("rm", "-f", cid)
        cid = None
        until(lambda: not reader.registered(), what="zk deregistration")
    finally:
        if cid:
            daemon.cli("rm", "-f", cid)
        b.close()
        reader.close()
        zk.stop()


def test_serf_bridge_survives_an_agent_restart(daemon: DaemonProc) -> None:
    from bridges.serf import SerfRegistry

    agent = Serf()
    b = BridgeProc(daemon, "serf", "--rpc", agent.rpc, "--hostname", "cbx-h4")
    try:
        b.wait_synced()
        reader = SerfRegistry(agent.rpc)
        until(lambda: [h for h in reader.hosts() if h["id"] == "cbx-h4"], what="serf host tags")
        reader.close()
        agent.kill()
        agent.start()  # same ports: the bridge must find it again
        reader = SerfRegistry(agent.rpc)
        until(lambda: [h for h in reader.hosts() if h["id"] == "cbx-h4"], timeout=20,
              what="serf host tags after the agent restart")
        reader.close()
        assert b.proc.poll() is None
    finally:
        b.close()
        agent.stop()
