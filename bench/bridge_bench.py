"""Bridge latency: a container's ``start`` event to its key being visible to a watcher.

For etcd, ZooKeeper and Serf in turn: a daemon, the real ``chanbox bridge`` process and
a watcher of the discovery system (etcd watch, ZooKeeper child watch, a Serf event
stream); N containers with a published port are started one after another, and for
each the time from the engine's ``start`` event to the watcher seeing the service is
recorded.  Prints p50 and p99 per system (goal: p99 <= 50 ms for etcd and ZooKeeper).

Run as root: ``.venv/bin/python bench/bridge_bench.py [--containers N] [--only etcd]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tests.bridges.servers import Etcd, Serf, ZooKeeper, free_port  # noqa: E402

CHANBOX = os.path.join(os.path.dirname(sys.executable), "chanbox")


class Seen:
    """Service id -> the wall clock (ns) when the watcher saw it."""

    def __init__(self) -> None:
        self.at: dict[str, int] = {}
        self.cond = threading.Condition()

    def add(self, sid: str) -> None:
        with self.cond:
            self.at.setdefault(sid, time.time_ns())
            self.cond.notify_all()

    def wait(self, sid: str, timeout: float = 10) -> int:
        with self.cond:
            if not self.cond.wait_for(lambda: sid in self.at, timeout):
                raise SystemExit(f"the watcher never saw {sid}")
            return self.at[sid]


def watch_etcd(etcd: Etcd, prefix: str, seen: Seen) -> None:
    import aetcd

    async def run() -> None:
        async with aetcd.Client(port=etcd.client_port) as client:
            watch = await client.watch_prefix(f"{prefix}/services/".encode())
            async for ev in watch:
                if ev.kind == aetcd.EventKind.PUT:
                    seen.add(json.loads(ev.kv.value)["id"])

    _background(run)


def _background(run) -> None:
    """Run a watcher coroutine in a thread; it ends quietly when its server stops."""
    def target() -> None:
        try:
            asyncio.run(run())
        except Exception:  # noqa: BLE001 -- the server went away at the end of the run
            pass

    threading.Thread(target=target, daemon=True).start()


def watch_zk(zk: ZooKeeper, prefix: str, seen: Seen) -> None:
    from kazoo.client import KazooClient

    client = KazooClient(hosts=zk.hosts)
    client.start()
    base = f"{prefix}/services/busybox"
    client.ensure_path(base)

    @client.ChildrenWatch(base)
    def children(kids: list[str]) -> None:
        for k in kids:
            seen.add(k)


def watch_serf(agent: Serf, seen: Seen) -> None:
    from bridges.serf import SerfClient

    async def run() -> None:
        c = SerfClient()
        await c.connect(agent.rpc)
        async for ev in c.stream("user"):
            if ev.get("Name") == "chanbox-register":
                seen.add(json.loads(ev["Payload"])["id"])

    _background(run)


def measure(system: str, endpoint: str, bridge_args: list[str], seen: Seen, count: int) -> list[float]:
    from engine.client import connect

    bridge = subprocess.Popen([CHANBOX, "-H", endpoint, "bridge", *bridge_args,
                               "--hostname", "cbx-bench"], stderr=subprocess.PIPE)
    client = connect(endpoint)
    lat = []
    ids = []
    try:
        time.sleep(1.0)  # the bridge's first resync
        for i in range(count):
            name = f"cbx-{system}-{i}"
            cid = client.call("spawn", image="busybox", cmd=["sleep", "600"], name=name,
                              ports=[{"host_ip": "127.0.0.1", "host_port": free_port(),
                                      "container_port": 80, "proto": "tcp"}])["id"]
            ids.append(cid)
            start = next(e for e in client.stream("watch", since=0, follow=False,
                                                  filters=[f"container={cid}", "event=start"]))
            at = seen.wait(f"cbx-bench:{name}:80")
            lat.append((at - start["time"]) / 1e6)
    finally:
        for cid in ids:
            client.call("rm", id=cid, force=True)
        client.close()
        bridge.send_signal(signal.SIGTERM)
        bridge.wait(timeout=30)
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--containers", type=int, default=200)
    ap.add_argument("--only", choices=["etcd", "zookeeper", "serf"])
    opts = ap.parse_args()
    from engine import fsutil

    base = tempfile.mkdtemp(prefix="cbx-bench-")
    daemon = None
    servers = []
    try:
        root = os.path.join(base, "root")
        subprocess.run([CHANBOX, "--root", root, "bootstrap"], check=True,
                       stdout=subprocess.DEVNULL)
        endpoint = f"ipc://{base}/engine.sock"
        daemon = subprocess.Popen([CHANBOX, "--root", root, "daemon", "--listen", endpoint],
                                  stderr=subprocess.DEVNULL)
        while not os.path.exists(f"{base}/engine.sock"):
            time.sleep(0.05)
        results = {}
        for system in ("etcd", "zookeeper", "serf"):
            if opts.only and system != opts.only:
                continue
            seen = Seen()
            if system == "etcd":
                s = Etcd()
                watch_etcd(s, "/cbx-bench", seen)
                args = ["etcd", "--endpoints", s.endpoint, "--prefix", "/cbx-bench"]
            elif system == "zookeeper":
                s = ZooKeeper()
                watch_zk(s, "/cbx-bench", seen)
                args = ["zookeeper", "--hosts", s.hosts, "--prefix", "/cbx-bench"]
            else:
                s = Serf()
                watch_serf(s, seen)
                args = ["serf", "--rpc", s.rpc]
            servers.append(s)
            results[system] = measure(system, endpoint, args, seen, opts.containers)
        for system, lat in results.items():
            lat.sort()
            p50 = statistics.median(lat)
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            goal = "" if system == "serf" else \
                f"  (goal p99 <= 50 ms)  {'PASS' if p99 <= 50 else 'FAIL'}"
            print(f"{system:10s} start -> visible: p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  "
                  f"over {len(lat)}{goal}")
    finally:
        for s in servers:
            s.stop()
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
        fsutil.remove_tree(base)


if __name__ == "__main__":
    main()
