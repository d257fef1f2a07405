"""container prune and image prune: remove what nothing uses, keep what something does."""

from __future__ import annotations

import subprocess
import tempfile

from engine.engine import Engine

from .conftest import CHANBOX, FORKER, cli, needs_root, remove_root

pytestmark = needs_root


def test_prune_keeps_what_runs_and_what_is_used() -> None:
    root = tempfile.mkdtemp(prefix="cbx-root-")
    try:
        Engine(root, forker=FORKER).bootstrap("busybox:latest")

        def run(*args: str) -> str:
            p = cli(root, *args)
            assert p.returncode == 0, p.stderr
            return p.stdout.decode()

        up = run("run", "-d", "--network", "none", "busybox", "sleep", "30").strip()
        done = run("run", "-d", "--network", "none", "busybox", "sh", "-c", "echo x > /f").strip()
        run("wait", done)
        dangling = run("commit", done).strip()  # no name: an untagged image
        other = run("run", "-d", "--network", "none", "busybox", "sh", "-c", "echo y > /g").strip()
        run("wait", other)
        run("commit", other, "cbx-kept:1")
        run("rm", other)
        # asked, and answered no: nothing goes
        p = subprocess.run([CHANBOX, "--root", root, "container", "prune"], input=b"n\n",
                           capture_output=True, timeout=60)
        assert p.returncode == 0 and done[:12] in run("ps", "-a", "-q")
        assert run("container", "prune", "-f").split() == ["Deleted", "Containers:", done]
        assert run("ps", "-a", "-q", "--no-trunc").split() == [up]
        out = run("image", "prune", "-f")
        assert f"deleted: {dangling}" in out and "cbx-kept" not in out
        tags = run("images", "--format", "json")
        assert "cbx-kept:1" in tags and "busybox:latest" in tags
        # -a: every image no container uses; busybox stays for the running one
        out = run("image", "prune", "-a", "-f")
        assert "untagged: cbx-kept:1" in out and "busybox" not in out
        assert "busybox:latest" in run("images", "--format", "json")
        run("rm", "-f", up)
    finally:
        remove_root(root)
