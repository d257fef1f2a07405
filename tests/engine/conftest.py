"""Fixtures for the engine's tests: a root with a busybox image, an engine, a client.

The fork server is forked when this file is imported, during collection, before any
test has started a thread (chan's tests start ZeroMQ's): the engine may only fork
from a single-threaded process.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import psutil
import pytest

from engine import fsutil
from engine.forkserver import ForkServer
from tests.procs import stop_process  # noqa: F401 (for the tests that import it from here)

if TYPE_CHECKING:
    from engine.client import Client
    from engine.engine import Engine

FORKER = ForkServer()
CHANBOX = os.path.join(os.path.dirname(sys.executable), "chanbox")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")


def pytest_sessionfinish(session: pytest.Session) -> None:
    FORKER.close()


@pytest.fixture(scope="session")
def image_root() -> Iterator[str]:
    """An engine root shared by the session, holding ``busybox:latest``."""
    from engine.engine import Engine

    root = tempfile.mkdtemp(prefix="cbx-root-")
    Engine(root, forker=FORKER).bootstrap("busybox:latest")
    yield root
    remove_root(root)


def remove_root(root: str) -> None:
    """Remove every container and user network of ``root`` (the CLI tests' too), then
    the root itself."""
    from engine.engine import Engine

    from engine.network import networks

    eng = Engine(root, forker=FORKER)
    for c in eng.containers.list():
        try:
            eng.rm(c.id, force=True)
        except Exception as exc:  # noqa: BLE001 -- report, then go on cleaning
            print(f"cleanup of container {c.id[:12]} failed: {exc!r}", file=sys.stderr)
    for net in networks.user_networks(root):  # their bridges are host devices
        try:
            networks.remove(root, net["Name"])
        except Exception as exc:  # noqa: BLE001
            print(f"cleanup of network {net['Name']} failed: {exc!r}", file=sys.stderr)
    fsutil.remove_tree(root)


@pytest.fixture
def engine(image_root: str) -> Iterator[Engine]:
    """An engine on the shared root; the containers a test made are removed after it."""
    from engine.engine import Engine

    eng = Engine(image_root, forker=FORKER)
    before = {c.id for c in eng.containers.list()}
    yield eng
    for c in eng.containers.list():
        if c.id not in before:
            try:
                eng.rm(c.id, force=True)
            except Exception as exc:  # noqa: BLE001 -- report, then go on cleaning
                print(f"cleanup of container {c.id[:12]} failed: {exc!r}", file=sys.stderr)


@pytest.fixture
def tmp() -> Iterator[str]:
    """A fresh ``cbx-`` temporary directory, removed after the test."""
    path = tempfile.mkdtemp(prefix="cbx-")
    yield path
    fsutil.remove_tree(path)


@pytest.fixture
def empty_root() -> Iterator[str]:
    """A fresh engine root of its own (removed afterwards)."""
    root = tempfile.mkdtemp(prefix="cbx-root-")
    yield root
    remove_root(root)


@pytest.fixture
def client(engine: Engine) -> Iterator[Client]:
    """A channel client of ``engine``, served in this process over an in-memory pipe."""
    import chan
    from engine.client import Client
    from engine.service import serve_in_thread

    tx, rx = chan.pipe()
    serve_in_thread(engine, rx)
    cl = Client(tx)
    yield cl
    cl.close()


def run_to_end(engine: Engine, cmd: str, **kw: object) -> tuple[int, str]:
    """Run ``sh -c cmd`` in a busybox container (no network, ``kw`` as create's) to its
    end; ``(exit code, its output)``.  The container is removed whatever happens."""
    cid = engine.create("busybox", ["sh", "-c", cmd], network="none", **kw)  # type: ignore[arg-type]
    try:
        engine.start(cid)
        code = engine.wait(cid)
        return code, "".join(e["log"] for e in engine.logs(cid))
    finally:
        engine.rm(cid, force=True)


def make_tar(files: dict[str, bytes], uid: int = 1234) -> io.BytesIO:
    """A tar of regular files (mode 0640, owned by ``uid``), to copy into containers."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.uid, ti.gid = len(data), 0o640, uid, uid
            t.addfile(ti, io.BytesIO(data))
    buf.seek(0)
    return buf


def copy_helper(pid: int) -> psutil.Process:
    """The cp helper (``engine.containerfs``) that process ``pid`` started; waits for it."""
    deadline = time.monotonic() + 30
    while True:
        for p in psutil.Process(pid).children(recursive=True):
            try:
                if "engine.containerfs" in " ".join(p.cmdline()):
                    return p
            except psutil.NoSuchProcess:
                continue
        assert time.monotonic() < deadline, "the copy's helper never started"
        time.sleep(0.02)


def cli(root: str, *args: str, input: bytes | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the ``chanbox`` CLI on ``root``; its completed process (output as text)."""
    return subprocess.run([CHANBOX, "--root", root, *args], input=input,
                          capture_output=True, timeout=timeout)
