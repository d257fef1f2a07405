"""The Docker API bridge's benchmark: ``docker run --rm busybox true``, whole process,
through ``chanbox bridge docker``, against two baselines measured in the same run:

1. ``chanbox -H <the same daemon> run --rm busybox true`` (goal: docker <= 2x this);
2. ``runc run`` of the same busybox rootfs.

Also prints the embedded ``chanbox --root run --rm`` for reference.

Run as root: ``.venv/bin/python bench/docker_bench.py [--runs N]``.  Needs the docker
CLI (client only) and runc.  Everything lives in one ``cbx-bench-*`` directory, removed
at the end; the daemon and the bridge it starts are stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.engine_bench import CHANBOX, bench_runc, runc_bundle, timed  # noqa: E402


def _start(argv: list[str], log: str, ready: str) -> subprocess.Popen:
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        with open(log) as f:
            if ready in f.read():
                return proc
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            with open(log) as f:
                raise SystemExit(f"{argv[1:4]} did not start: {f.read()[-500:]}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    opts = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("docker_bench needs root (namespaces, mounts, cgroups)")
    docker = shutil.which("docker")
    if docker is None or shutil.which("runc") is None:
        raise SystemExit("docker_bench needs the docker CLI and runc")

    base = tempfile.mkdtemp(prefix="cbx-bench-")
    procs: list[subprocess.Popen] = []
    try:
        root = os.path.join(base, "root")
        subprocess.run([CHANBOX, "--root", root, "bootstrap"], check=True,
                       stdout=subprocess.DEVNULL)
        endpoint = "ipc://" + os.path.join(base, "engine.sock")
        sock = os.path.join(base, "docker.sock")
        procs.append(_start([CHANBOX, "--root", root, "daemon", "--listen", endpoint],
                            os.path.join(base, "daemon.log"), "serving root"))
        procs.append(_start([CHANBOX, "-H", endpoint, "bridge", "docker", "--socket", sock,
                             "--no-pull"], os.path.join(base, "bridge.log"),
                            "serving the Docker API"))
        os.makedirs(os.path.join(base, "docker-config"))
        env = {**os.environ, "DOCKER_HOST": "unix://" + sock,
               "DOCKER_CONFIG": os.path.join(base, "docker-config")}

        runc = bench_runc(runc_bundle(base), opts.runs)
        via_daemon = timed([CHANBOX, "-H", endpoint, "run", "--rm", "busybox", "true"],
                           opts.runs)
        embedded = timed([CHANBOX, "--root", root, "run", "--rm", "busybox", "true"],
                         opts.runs)
        dock = timed([docker, "run", "--rm", "busybox", "true"], opts.runs, env=env)
        ps = timed([docker, "ps", "-a", "-q"], opts.runs, env=env)

        print(f"runc run (whole process)                    {runc * 1e3:7.1f} ms")
        print(f"chanbox --root run --rm (embedded engine)   {embedded * 1e3:7.1f} ms")
        print(f"chanbox -H daemon run --rm busybox true     {via_daemon * 1e3:7.1f} ms")
        print(f"docker run --rm busybox true (this bridge)  {dock * 1e3:7.1f} ms")
        print(f"docker ps -a -q (this bridge)               {ps * 1e3:7.1f} ms")
        ratio = dock / via_daemon
        print(f"docker run / chanbox run: {ratio:.2f}x (goal <= 2x) "
              f"{'PASS' if ratio <= 2 else 'FAIL'}")
        print(f"docker run / chanbox run (embedded): {dock / embedded:.2f}x")
        print(f"docker run / runc run:    {dock / runc:.2f}x")
    finally:
        for proc in reversed(procs):
            _stop(proc)
        from engine.fsutil import remove_tree

        remove_tree(base)


if __name__ == "__main__":
    main()
