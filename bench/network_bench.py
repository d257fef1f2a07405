"""Network benchmarks, each a ratio against a baseline measured in the same run.

1. Setup per container: the init plugging itself in (one netlink socket kept in the
   host's namespace, veth made with its peer straight in the new namespace, eth0
   configured from inside: :mod:`engine.network.netlink`), against the naive pyroute2
   way (a named netns, a veth made on the host, moved, configured from outside).
   Goal: <= 8 ms median.
2. Teardown for the caller: letting the namespace die (the init exits) against an
   explicit ``link del`` plus ``netns del``.  Goal: <= 2 ms.
3. ``chanbox run --rm busybox true`` on the default bridge against ``--network none``
   and against ``runc run`` (runc's default spec has a network namespace).

Run as root: ``.venv/bin/python bench/network_bench.py [--runs N]``.  Everything it makes
is named cbx*: a bridge cbxbench0 (removed at the end), an engine root cbx-bench-*.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine import syscalls  # noqa: E402
from engine.network import netlink  # noqa: E402

BRIDGE = "cbxbench0"


def ours(i: int) -> tuple[float, float]:
    """(setup ms in the child, teardown ms for the caller) of our way."""
    plan = netlink.Plan(BRIDGE, f"cbxvbench{i % 100000}", f"10.231.{i // 250 % 250}."
                        f"{i % 250 + 2}", 16, "10.231.0.1", "02:42:0a:e7:00:02").to_dict()
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            t = time.perf_counter()
            host, master = netlink.open_host(plan)
            syscalls.unshare(syscalls.CLONE_NEWNET)
            netlink.plug_in(host, master, plan)
            host.close()
            syscalls.loopback_up()
            os.write(w, b"%f" % (time.perf_counter() - t))
            os.read(go_r, 1)
            code = 0
        finally:
            os._exit(code)
    setup = float(os.read(r, 64)) * 1000
    t = time.perf_counter()
    os.write(go_w, b"x")
    os.waitpid(pid, 0)
    teardown = (time.perf_counter() - t) * 1000
    for fd in (r, w, go_r, go_w):
        os.close(fd)
    return setup, teardown


def naive(ipr, i: int) -> tuple[float, float]:  # noqa: ANN001
    """(setup ms, teardown ms) the naive pyroute2 way."""
    from pyroute2 import NetNS, netns

    name = f"cbx-bench-{os.getpid()}-{i}"
    t = time.perf_counter()
    netns.create(name)
    veth, peer = f"cbxvn{i % 100000}", f"cbxpn{i % 100000}"
    ipr.link("add", ifname=veth, kind="veth", peer=peer)
    vi, pi = ipr.link_lookup(ifname=veth)[0], ipr.link_lookup(ifname=peer)[0]
    ipr.link("set", index=vi, master=ipr.link_lookup(ifname=BRIDGE)[0], state="up")
    ipr.link("set", index=pi, net_ns_fd=name)
    with NetNS(name) as ns:
        idx = ns.link_lookup(ifname=peer)[0]
        ns.link("set", index=idx, ifname="eth0")
        ns.addr("add", index=idx, address=f"10.232.0.{i % 250 + 2}", prefixlen=16)
        ns.link("set", index=idx, state="up")
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        ns.route("add", dst="default", gateway="10.232.0.1")
    setup = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    ipr.link("del", index=vi)
    netns.remove(name)
    return setup, (time.perf_counter() - t) * 1000


def run_times(root: str, args: list[str], runs: int) -> float:
    import subprocess

    chanbox = os.path.join(os.path.dirname(sys.executable), "chanbox")
    times = []
    for i in range(runs + 1):
        t = time.perf_counter()
        p = subprocess.run([chanbox, "--root", root, "run", "--rm", *args, "busybox", "true"],
                           capture_output=True)
        if p.returncode:
            raise SystemExit(p.stderr.decode())
        if i:
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    opts = ap.parse_args()
    from pyroute2 import IPRoute

    ipr = IPRoute()
    ipr.link("add", ifname=BRIDGE, kind="bridge")
    bi = ipr.link_lookup(ifname=BRIDGE)[0]
    ipr.addr("add", index=bi, address="10.231.0.1", prefixlen=16)
    ipr.addr("add", index=bi, address="10.232.0.1", prefixlen=16)
    ipr.link("set", index=bi, state="up")
    root = tempfile.mkdtemp(prefix="cbx-bench-")
    try:
        o = [ours(i) for i in range(opts.runs)]
        n = [naive(ipr, i) for i in range(opts.runs)]
        os_, ot = statistics.median(x[0] for x in o), statistics.median(x[1] for x in o)
        ns_, nt = statistics.median(x[0] for x in n), statistics.median(x[1] for x in n)
        print(f"setup per container:  ours {os_:6.2f} ms   naive pyroute2 {ns_:6.2f} ms   "
              f"ratio {os_ / ns_:.2f}  (goal <= 8 ms)")
        print(f"teardown for caller:  ours {ot:6.2f} ms   explicit link del {nt:6.2f} ms   "
              f"ratio {ot / nt:.2f}  (goal <= 2 ms)")
        from engine.engine import Engine

        Engine(root).bootstrap()
        runs = max(5, opts.runs // 5)
        bridge = run_times(root, [], runs)
        none = run_times(root, ["--network", "none"], runs)
        line = (f"chanbox run --rm true: bridge {bridge:6.1f} ms   none {none:6.1f} ms   "
                f"ratio {bridge / none:.2f}")
        if shutil.which("runc"):
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from engine_bench import bench_runc, runc_bundle

            runc = bench_runc(runc_bundle(root), runs) * 1000
            line += f"   runc (netns) {runc:6.1f} ms   ratio {bridge / runc:.2f}"
        print(line)
    finally:
        ipr.link("del", index=bi)
        ipr.close()
        from engine.fsutil import remove_tree

        remove_tree(root)


if __name__ == "__main__":
    main()
