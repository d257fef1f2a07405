"""Engine benchmarks, each a ratio against a baseline measured in the same run.

1. ``chanbox run --rm --network none busybox true``, the whole process, against
   ``runc run`` of the same busybox rootfs (goal: <= 1.5x runc's time).
2. The engine's create+start+wait+rm of ``true`` through the channel API inside one
   process, against runc's whole process (goal: <= 0.5x).
3. 100 detached ``sleep`` containers: the monitors' unique memory (USS), per container
   (goal: <= 2 MiB).

Run as root: ``.venv/bin/python bench/engine_bench.py [--runs N] [--containers N]``.
Everything it makes lives in one ``cbx-bench-*`` directory that it removes at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CHANBOX = os.path.join(os.path.dirname(sys.executable), "chanbox")


def timed(argv: list[str], runs: int, env: dict | None = None) -> float:
    """Median wall time of ``argv`` over ``runs`` runs (after one warm-up)."""
    times = []
    for i in range(runs + 1):
        t = time.perf_counter()
        p = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        dt = time.perf_counter() - t
        if p.returncode != 0:
            raise SystemExit(f"{argv[0]} failed ({p.returncode}): {p.stderr.decode()[-500:]}")
        if i:
            times.append(dt)
    return statistics.median(times)


def runc_bundle(base: str) -> str:
    """A runc bundle whose rootfs is the same busybox tree chanbox bootstraps."""
    from engine.busybox import make_rootfs

    bundle = os.path.join(base, "bundle")
    os.makedirs(os.path.join(bundle, "rootfs"))
    make_rootfs(os.path.join(bundle, "rootfs"))
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["true"]
    with open(path, "w") as f:
        json.dump(cfg, f)
    return bundle


def bench_runc(bundle: str, runs: int) -> float:
    n = [0]

    def once() -> None:
        n[0] += 1
        p = subprocess.run(["runc", "run", "--bundle", bundle, f"cbx-bench-{os.getpid()}-{n[0]}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if p.returncode != 0:
            raise SystemExit(f"runc failed: {p.stderr.decode()[-500:]}")

    once()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_api(root: str, runs: int) -> float:
    from engine.client import embedded

    client, engine = embedded(root)
    times = []
    for i in range(runs + 1):
        t = time.perf_counter()
        cid = client.call("create", image="busybox", cmd=["true"], network="none")["id"]
        client.call("start", id=cid)
        code = client.call("wait", id=cid)["exit_code"]
        client.call("rm", id=cid)
        dt = time.perf_counter() - t
        assert code == 0, code
        if i:
            times.append(dt)
    client.close()
    engine.close()
    return statistics.median(times)


def bench_uss(root: str, count: int) -> float:
    import psutil

    from engine.client import embedded

    client, engine = embedded(root)
    ids = []
    try:
        for _ in range(count):
            ids.append(client.call("spawn", image="busybox", cmd=["sleep", "300"])["id"])
        time.sleep(0.5)
        uss = []
        for cid in ids:
            mon = engine.containers.get(cid).monitor["monitor_pid"]
            uss.append(psutil.Process(mon).memory_full_info().uss)
        return statistics.mean(uss)
    finally:
        for cid in ids:
            client.call("rm", id=cid, force=True)
        client.close()
        engine.close()


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--containers", type=int, default=100)
    opts = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("engine_bench needs root (namespaces, mounts, cgroups)")
    if shutil.which("runc") is None:
        raise SystemExit("runc is not installed (scripts/setup installs it)")

    base = tempfile.mkdtemp(prefix="cbx-bench-")
    try:
        root = os.path.join(base, "root")
        subprocess.run([CHANBOX, "--root", root, "bootstrap"], check=True,
                       stdout=subprocess.DEVNULL)
        bundle = runc_bundle(base)

        runc = bench_runc(bundle, opts.runs)
        cli = timed([CHANBOX, "--root", root, "run", "--rm", "--network", "none",
                     "busybox", "true"], opts.runs)
        py = timed([sys.executable, "-c", "pass"], opts.runs)
        api = bench_api(root, opts.runs)
        print(f"runc run (whole process)            {runc * 1e3:7.1f} ms")
        print(f"python -c pass (for scale)          {py * 1e3:7.1f} ms")
        print(f"chanbox run --rm (whole process)    {cli * 1e3:7.1f} ms   "
              f"{cli / runc:5.2f}x runc  (goal <= 1.5x)  {verdict(cli / runc <= 1.5)}")
        print(f"API create+start+wait+rm (in-proc)  {api * 1e3:7.1f} ms   "
              f"{api / runc:5.2f}x runc  (goal <= 0.5x)  {verdict(api / runc <= 0.5)}")
        uss = bench_uss(root, opts.containers)
        print(f"monitor USS, {opts.containers} detached sleeps   {uss / 2**20:7.2f} MiB each "
              f"(goal <= 2 MiB)  {verdict(uss <= 2 * 2**20)}")
    finally:
        from engine import fsutil

        fsutil.remove_tree(base)


if __name__ == "__main__":
    main()
