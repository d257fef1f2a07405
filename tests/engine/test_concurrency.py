"""Two callers at once on one container: starts, removals and copies take turns.

The CLI is one process per command, so these races are what two users (or a script
running ``chanbox start`` in parallel) meet.  Every test checks the end state a user
would look at: what runs, what is left on the host, what the container sees.
"""

from __future__ import annotations

import os
import subprocess
import threading

import psutil
import pytest

from engine import cgroups
from engine.engine import Engine
from engine.errors import NotFound

from .conftest import CHANBOX, copy_helper, make_tar, needs_root

pytestmark = needs_root


def at_once(root: str, *commands: list[str]) -> list[subprocess.CompletedProcess]:
    """Run several ``chanbox --root ROOT ...`` commands at the same time; their results."""
    procs = [subprocess.Popen([CHANBOX, "--root", root, *cmd], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for cmd in commands]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


def test_starts_at_once_start_the_container_once(engine: Engine, image_root: str) -> None:
    for _ in range(3):  # (a race: a few rounds make a regression show every time)
        cid = engine.create("busybox", ["sleep", "60"], network="none")
        results = at_once(image_root, *[["start", cid]] * 4)
        assert [r.returncode for r in results] == [0] * 4, [r.stderr for r in results]
        c = engine.containers.get(cid)
        assert engine.status(c) == "running"
        # one container process, in the cgroup the record names (a second start used
        # to remove the first one's cgroups, killing it, and then failed itself)
        assert len(cgroups.procs(c.cgroups)) == 1
        engine.kill(cid)
        assert engine.wait(cid) == 137


def test_rm_during_a_start_leaves_nothing_behind(engine: Engine, image_root: str) -> None:
    for _ in range(3):
        cid = engine.create("busybox", ["sleep", "60"], network="none")
        paths = os.path.join(image_root, "containers", cid)
        start, rm = at_once(image_root, ["start", cid], ["rm", "-f", cid])
        assert rm.returncode == 0, rm.stderr
        # the start either came first (and rm -f killed it) or found no container
        assert start.returncode == 0 or "no such container" in start.stderr, start.stderr
        with pytest.raises(NotFound):
            engine.containers.get(cid)
        assert not os.path.exists(paths)
        assert not [p for p in psutil.process_iter(["cmdline"])
                    if cid in " ".join(p.info["cmdline"] or ())], "a monitor was left"
        for top in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
            assert not os.path.exists(os.path.join(top, "cbx", cid))


def test_a_start_waits_for_a_copy_into_the_stopped_container(engine: Engine) -> None:
    cid = engine.create("busybox", ["cat", "/cbx-copied"], network="none")
    tar = make_tar({"cbx-copied": b"copied before the start\n"}).getvalue()
    r, w = os.pipe()
    errors: list[BaseException] = []

    def run(fn, *args, **kw) -> threading.Thread:
        def body() -> None:
            try:
                fn(*args, **kw)
            except BaseException as exc:  # noqa: BLE001 -- checked by the test
                errors.append(exc)
        t = threading.Thread(target=body)
        t.start()
        return t

    with open(r, "rb") as source:
        copy = run(engine.archive_put, cid, "/", source)
        try:
            os.write(w, tar[:512])  # the header: the helper is at work, waiting for more
            copy_helper(os.getpid())
            start = run(engine.start, cid)
            start.join(1.0)
            assert start.is_alive(), "the start did not wait for the copy"
            os.write(w, tar[512:])
        finally:
            os.close(w)
        copy.join(30)
        start.join(30)
    assert not errors, errors
    assert engine.wait(cid) == 0
    assert "".join(e["log"] for e in engine.logs(cid)) == "copied before the start\n"
