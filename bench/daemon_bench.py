"""Daemon benchmarks, against baselines measured in the same run.

1. ``chanbox -H ipc://... run --rm --network none busybox true``, the whole CLI process
   talking to a daemon, against ``runc run`` of the same busybox rootfs (goal: <= 2x).
2. ``ls`` (the verb behind ``ps``) requests per second from 8 concurrent client
   processes, each on its own session, against one client alone.

Run as root: ``.venv/bin/python bench/daemon_bench.py [--runs N] [--seconds S]``.
Everything it makes lives in one ``cbx-bench-*`` directory that it removes at the end.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine_bench import CHANBOX, bench_runc, runc_bundle, timed  # noqa: E402


def _client_loop(endpoint: str, seconds: float, out: "multiprocessing.Queue[int]") -> None:
    from engine.client import connect

    client = connect(endpoint)
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        client.call("ls", all=True)
        n += 1
    client.close()
    out.put(n)


def requests_per_second(endpoint: str, clients: int, seconds: float) -> float:
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_client_loop, args=(endpoint, seconds, q)) for _ in range(clients)]
    for p in procs:
        p.start()
    total = sum(q.get(timeout=seconds + 60) for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=3.0)
    opts = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("daemon_bench needs root (namespaces, mounts, cgroups)")

    from engine import fsutil

    base = tempfile.mkdtemp(prefix="cbx-bench-")
    daemon = None
    try:
        root = os.path.join(base, "root")
        subprocess.run([CHANBOX, "--root", root, "bootstrap"], check=True,
                       stdout=subprocess.DEVNULL)
        for i in range(5):  # a few stopped containers for ls to list
            subprocess.run([CHANBOX, "--root", root, "create", "busybox", "true"], check=True,
                           stdout=subprocess.DEVNULL)
        endpoint = f"ipc://{base}/engine.sock"
        daemon = subprocess.Popen([CHANBOX, "--root", root, "daemon", "--listen", endpoint],
                                  stderr=subprocess.PIPE)
        while not os.path.exists(f"{base}/engine.sock"):
            if daemon.poll() is not None:
                raise SystemExit(f"the daemon did not start: {daemon.stderr.read().decode()}")
            time.sleep(0.05)
        bundle = runc_bundle(base)

        runc = bench_runc(bundle, opts.runs)
        cli = timed([CHANBOX, "-H", endpoint, "run", "--rm", "--network", "none",
                     "busybox", "true"], opts.runs)
        one = requests_per_second(endpoint, 1, opts.seconds)
        eight = requests_per_second(endpoint, 8, opts.seconds)
        verdict = "PASS" if cli / runc <= 2 else "FAIL"
        print(f"runc run (whole process)                 {runc * 1e3:7.1f} ms")
        print(f"chanbox -H ipc run --rm (whole process)  {cli * 1e3:7.1f} ms   "
              f"{cli / runc:5.2f}x runc  (goal <= 2x)  {verdict}")
        print(f"ls requests/s, 1 client                  {one:7.0f}")
        print(f"ls requests/s, 8 clients                 {eight:7.0f}   {eight / one:5.2f}x one client")
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
        fsutil.remove_tree(base)


if __name__ == "__main__":
    main()
