"""Each registry against its real server: register, list, deregister, hosts, and what
happens to the entries when a bridge goes away."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from bridges.services import Service
from bridges.sync import HostInfo

from .servers import Etcd, Serf, ZooKeeper


def svc(n: int, host: str = "h1") -> Service:
    return Service(id=f"{host}:c{n}:80", name=f"web{n % 2}", ip="127.0.0.1", port=8000 + n,
                   proto="tcp", tags=("t",), container_id=f"{n:064x}",
                   container_name=f"c{n}", host=host, attrs={"zone": "z"})


@pytest.fixture(scope="module")
def etcd() -> Iterator[Etcd]:
    e = Etcd()
    yield e
    e.stop()


@pytest.fixture(scope="module")
def zk() -> Iterator[ZooKeeper]:
    z = ZooKeeper()
    yield z
    z.stop()


def _registries(etcd: Etcd, zk: ZooKeeper, prefix: str, ttl: int = 2):
    from bridges.etcd import EtcdRegistry
    from bridges.zookeeper import ZooKeeperRegistry

    return [EtcdRegistry(etcd.endpoint, prefix=prefix, ttl=ttl),
            ZooKeeperRegistry(zk.hosts, prefix=prefix, timeout=2.0)]


def test_register_list_deregister_and_hosts(etcd: Etcd, zk: ZooKeeper) -> None:
    for reg in _registries(etcd, zk, "/cbx-t1"):
        try:
            for n in range(4):
                reg.register(svc(n))
            reg.register(svc(1))  # idempotent
            assert sorted(s.id for s in reg.registered()) == [f"h1:c{n}:80" for n in range(4)]
            assert svc(2) in reg.registered()
            reg.deregister(svc(2))
            reg.deregister(svc(2))  # gone already: fine
            assert sorted(s.id for s in reg.registered()) == ["h1:c0:80", "h1:c1:80", "h1:c3:80"]
            reg.register_host(HostInfo(id="h1", endpoint="ipc:///x", labels={"dc": "a"},
                                       ncpu=2, memory=1 << 30, version="0.1.0"))
            (h,) = reg.hosts()
            assert (h["id"], h["endpoint"], h["labels"], h["ncpu"]) == ("h1", "ipc:///x",
                                                                         {"dc": "a"}, 2)
        finally:
            reg.close()


def test_entries_of_a_dead_bridge_expire(etcd: Etcd, zk: ZooKeeper) -> None:
    from bridges.etcd import EtcdRegistry
    from bridges.zookeeper import ZooKeeperRegistry

    regs = _registries(etcd, zk, "/cbx-t2", ttl=2)
    for reg in regs:
        reg.register(svc(1))
        reg.register_host(HostInfo(id="h1", endpoint="e"))
    # a bridge that dies without a word: its keep-alive stops (etcd), its session is
    # dropped (ZooKeeper closes it at once on a clean close; the timeout covers a kill)
    regs[0]._loop.call_soon(regs[0]._keepalive.cancel)
    regs[1].close()
    readers = [EtcdRegistry(etcd.endpoint, prefix="/cbx-t2"),
               ZooKeeperRegistry(zk.hosts, prefix="/cbx-t2")]
    try:
        readers[1].wait_connected()
        assert readers[1].registered() == []
        deadline = time.monotonic() + 6
        while readers[0].registered():
            assert time.monotonic() < deadline, "etcd entries outlived their lease"
            time.sleep(0.2)
        assert readers[0].hosts() == []
    finally:
        for r in readers + regs[:1]:
            r.close()


def test_etcd_cluster_keeps_registering_after_the_leader_dies() -> None:
    from bridges.etcd import EtcdRegistry
    from tests.bridges.servers import free_port

    peers = [(f"cbx{i}", free_port(), free_port()) for i in range(3)]
    cluster = ",".join(f"{n}=http://127.0.0.1:{p}" for n, _, p in peers)
    members: list[Etcd] = []
    import threading

    threads = []

    def start(n: str, c: int, p: int) -> None:
        members.append(Etcd(n, c, p, cluster, fast=True))

    for n, c, p in peers:
        t = threading.Thread(target=start, args=(n, c, p))
        t.start()
        threads.append(t)
    for t in threads:
        t.join(60)
    try:
        assert len(members) == 3
        reg = EtcdRegistry(",".join(m.endpoint for m in members), prefix="/cbx-t3", ttl=5)
        reg.register(svc(1))
        leader = _leader(members)
        leader.kill()
        t0 = time.monotonic()
        while True:
            try:
                reg.register(svc(2))
                break
            except Exception:  # noqa: BLE001 -- retried until the new leader answers
                assert time.monotonic() - t0 < 15, "no write went through after re-election"
                time.sleep(0.05)
        assert {s.id for s in reg.registered()} >= {"h1:c2:80"}
        reg.close()
    finally:
        for m in members:
            m.stop()


def _leader(members: list[Etcd]) -> Etcd:
    import json
    import urllib.request

    for _ in range(100):
        for m in members:
            try:
                with urllib.request.urlopen(m.endpoint + "/v3/maintenance/status", data=b"{}",
                                            timeout=1) as r:
                    st = json.load(r)
                if st.get("leader") and st["leader"] == st["header"]["member_id"]:
                    return m
            except OSError:
                pass
        time.sleep(0.1)
    raise AssertionError("no etcd leader")


def test_serf_announces_services_and_tags_the_host() -> None:
    import asyncio

    from bridges.serf import SerfClient, SerfRegistry

    agent = Serf()
    try:
        got: list[dict] = []

        async def watch(ready: asyncio.Event) -> None:
            c = SerfClient()
            await c.connect(agent.rpc)
            it = c.stream("user").__aiter__()
            first = asyncio.ensure_future(it.__anext__())
            await asyncio.sleep(0.2)
            ready.set()
            got.append(await first)
            for _ in range(2):
                got.append(await asyncio.wait_for(it.__anext__(), 5))
            await c.close()

        loop = asyncio.new_event_loop()
        ready = asyncio.Event()
        task = loop.create_task(watch(ready))
        loop.run_until_complete(asyncio.wait_for(ready.wait(), 5))
        reg = SerfRegistry(agent.rpc)
        reg.register_host(HostInfo(id="h1", endpoint="ipc:///e", labels={"dc": "a"}, ncpu=2))
        reg.register(svc(1))
        reg.deregister(svc(1))
        loop.run_until_complete(asyncio.wait_for(task, 10))
        loop.close()
        assert [e["Name"] for e in got] == ["chanbox-reset", "chanbox-register",
                                            "chanbox-deregister"]
        import json

        assert json.loads(got[1]["Payload"])["id"] == "h1:c1:80"
        (h,) = reg.hosts()
        assert (h["id"], h["endpoint"], h["labels"]) == ("h1", "ipc:///e", {"dc": "a"})
        reg.close()
    finally:
        agent.stop()


@pytest.mark.parametrize("url, message", [
    ("zk://127.0.0.1:1/x", "no ZooKeeper server answers"),
    ("etcd://127.0.0.1:1/x", "no etcd endpoint answers"),
    ("serf://127.0.0.1:1", "no Serf agent answers"),
    ("consul://127.0.0.1:8500", "unknown discovery system"),
    ("127.0.0.1:2379", "bad discovery URL"),
])
def test_hosts_says_what_is_wrong(url: str, message: str) -> None:
    import subprocess

    from tests.engine.conftest import CHANBOX

    p = subprocess.run([CHANBOX, "hosts", "--discovery", url], capture_output=True, timeout=60)
    assert p.returncode == 125
    assert message in p.stderr.decode() and "Traceback" not in p.stderr.decode()
