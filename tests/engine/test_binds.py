"""Bind mounts (``-v /host:/ctr[:ro]``): parsing, what the container sees, and that a
symlink in the container's way never sends a mount outside its rootfs."""

from __future__ import annotations

import os
import tempfile

import pytest

from engine.binds import parse_bind
from engine.engine import Engine
from engine.errors import InvalidArgument
from engine.fsutil import remove_tree

from .conftest import needs_root, run_to_end as _run


def test_the_docker_forms() -> None:
    assert parse_bind("/srv/data:/data") == {"source": "/srv/data", "volume": None, "target": "/data",
                                             "readonly": False}
    assert parse_bind("/srv/data/:/data/./x/:ro") == {"source": "/srv/data", "volume": None,
                                                       "target": "/data/x", "readonly": True}
    assert parse_bind("/a:/b:rw,z")["readonly"] is False
    assert parse_bind("data:/data:ro") == {"source": None, "volume": "data", "target": "/data",
                                           "readonly": True}
    assert parse_bind("/scratch") == {"source": None, "volume": "", "target": "/scratch",
                                      "readonly": False}
    for bad, says in (("d@ta:/data", "neither an absolute host path nor a volume name"),
                      ("x:/data", "neither an absolute"),
                      ("/a:data", "absolute path in the container"), ("/a:/", "other than /"),
                      ("/a:/x/../etc", r"may not contain '\.\.'"), ("/a:/b:rx", "options are ro or rw"),
                      ("/a:/b:ro,rw", "options are ro or rw"), ("/a:/b:ro:x", "use -v")):
        with pytest.raises(InvalidArgument, match=says):
            parse_bind(bad)


@pytest.fixture
def host_dir():
    path = tempfile.mkdtemp(prefix="cbx-vol-")
    yield path
    remove_tree(path)


def _host_mounts() -> str:
    with open("/proc/self/mountinfo") as f:
        return f.read()


@needs_root
def test_read_write_read_only_and_a_single_file(engine: Engine, host_dir: str) -> None:
    with open(f"{host_dir}/from-host", "w") as f:
        f.write("hello")
    before = _host_mounts()
    code, out = _run(engine, "cat /data/from-host; echo hi > /data/from-ctr",
                     binds=[f"{host_dir}:/data"])
    assert (code, out) == (0, "hello")
    with open(f"{host_dir}/from-ctr") as f:
        assert f.read() == "hi\n"
    code, out = _run(engine, "touch /data/x 2>&1", binds=[f"{host_dir}:/data:ro"])
    assert code == 1 and "Read-only file system" in out
    assert not os.path.exists(f"{host_dir}/x")
    code, out = _run(engine, "cat /etc/greeting", binds=[f"{host_dir}/from-host:/etc/greeting:ro"])
    assert (code, out) == (0, "hello")
    assert _host_mounts() == before  # the mounts lived in the containers' namespaces only


@needs_root
def test_read_only_reaches_the_mounts_below_the_host_path(engine: Engine, host_dir: str) -> None:
    import subprocess

    os.makedirs(f"{host_dir}/sub")
    subprocess.run(["mount", "-t", "tmpfs", "cbx-vol-sub", f"{host_dir}/sub"], check=True)
    try:
        code, out = _run(engine, "touch /data/sub/x 2>&1; touch /data/y 2>&1",
                         binds=[f"{host_dir}:/data:ro"])
        assert out.count("Read-only file system") == 2, out
        code, out = _run(engine, "touch /data/sub/x && echo ok", binds=[f"{host_dir}:/data"])
        assert (code, out) == (0, "ok\n")
    finally:
        subprocess.run(["umount", f"{host_dir}/sub"], check=True)


@needs_root
def test_a_missing_host_directory_is_made_and_inspect_shows_the_mounts(engine: Engine,
                                                                      host_dir: str) -> None:
    src = f"{host_dir}/made/by/run"
    cid = engine.create("busybox", ["true"], network="none", binds=[f"{src}:/deep/mount/point:ro"])
    try:
        assert os.path.isdir(src)
        info = engine.inspect(cid)
        assert info["HostConfig"]["Binds"] == [f"{src}:/deep/mount/point:ro"]
        assert info["Mounts"] == [{"Type": "bind", "Source": src, "Destination": "/deep/mount/point",
                                   "Mode": "ro", "RW": False, "Propagation": "rprivate"}]
        engine.start(cid)
        assert engine.wait(cid) == 0
        assert engine.changes(cid) == []  # the mount point is in the init layer
    finally:
        engine.rm(cid, force=True)
    with pytest.raises(InvalidArgument, match="duplicate mount point"):
        engine.create("busybox", ["true"], binds=[f"{host_dir}:/d", f"{host_dir}:/d"])


@needs_root
@pytest.mark.parametrize("link", ["../../../../../../../../..{host}", "{host}"])
def test_a_symlink_the_container_left_resolves_inside_its_rootfs(engine: Engine, host_dir: str,
                                                                  link: str) -> None:
    # The writable layer is the container's: between two runs it may hold anything in
    # place of the mount point's parent.  The mount must land inside the rootfs.
    src, elsewhere = f"{host_dir}/src", f"{host_dir}/elsewhere"
    os.makedirs(src)
    os.makedirs(elsewhere)
    with open(f"{src}/marker", "w") as f:
        f.write("volume")
    cid = engine.create("busybox", ["sh", "-c", f"cat {elsewhere}/b/marker"], network="none",
                        binds=[f"{src}:/a/b"])
    try:
        engine.start(cid)
        engine.wait(cid)
        upper = engine.containers.get(cid).path("upper")
        remove_tree(os.path.join(upper, "a"))
        os.symlink(link.format(host=elsewhere), os.path.join(upper, "a"))
        engine.start(cid)
        assert engine.wait(cid) == 0
        assert "volume" in "".join(e["log"] for e in engine.logs(cid))
        assert os.listdir(elsewhere) == []  # nothing was made (or mounted) on the host's side
    finally:
        engine.rm(cid, force=True)
