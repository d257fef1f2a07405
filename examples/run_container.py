"""Run a container through the engine's channel API, on the embedded default.

No daemon and no network: the engine is served in this process over an in-memory
channel, and the first image is made from the host's static busybox.  Every step is a
verb sent on a channel, with a reply channel inside the request (DESIGN.md,
engine.service):

    .venv/bin/python examples/run_container.py [--root DIR] [CMD...]
"""

from __future__ import annotations

import argparse
import sys

from engine.client import embedded
from engine.errors import NotFound


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", help="engine root (default $CHANBOX_ROOT or /var/lib/chanbox)")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="the command (default: a greeting)")
    opts = ap.parse_args()
    cmd = opts.cmd or ["sh", "-c", 'echo "hello from $(hostname), pid $$, as $(id -un)"; '
                                   'echo "processes I can see:"; ps -o pid,comm']

    client, _ = embedded(opts.root)  # forks the fork server, then serves the engine
    try:
        client.call("image_get", ref="busybox")
    except NotFound:
        print("making the busybox image from the host's /bin/busybox", file=sys.stderr)
        client.call("bootstrap", ref="busybox:latest")

    cid = client.call("create", image="busybox", cmd=cmd, network="none",
                      memory=64 * 1024 * 1024, pids_limit=64)["id"]
    try:
        client.call("start", id=cid)
        for entry in client.stream("log", id=cid, follow=True):
            out = sys.stdout if entry["stream"] == "stdout" else sys.stderr
            out.write(entry["log"])
        code = client.call("wait", id=cid)["exit_code"]
    finally:
        client.call("rm", id=cid, force=True)
    print(f"container {cid[:12]} exited with {code}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
