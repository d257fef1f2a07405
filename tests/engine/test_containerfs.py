"""cp (docker cp): files into and out of running and stopped containers, never outside them."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import time

import pytest

from engine.containerfs import go_mode
from engine.engine import Engine
from engine.errors import InvalidArgument, NotFound

from .conftest import CHANBOX, cli, copy_helper, make_tar, needs_root

pytestmark = needs_root

SETUP = "mkdir -p /d/sub; echo a > /d/a; echo b > /d/sub/b; ln -s / /escape; ln -s /d /dlink"


def _members(engine: Engine, cid: str, path: str) -> dict[str, bytes | None]:
    out = io.BytesIO()
    engine.archive_get(cid, path, out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as t:
        return {m.name: (t.extractfile(m).read() if m.isreg() else None)  # type: ignore[union-attr]
                for m in t.getmembers()}


def _running(engine: Engine, cmd: str) -> str:
    cid = engine.create("busybox", ["sh", "-c", f"{cmd}; sleep 60"], network="none")
    engine.start(cid)
    deadline = time.monotonic() + 10
    while not _exists(engine, cid, "/dlink"):  # the last thing SETUP makes
        assert time.monotonic() < deadline, "the container did not set itself up"
        time.sleep(0.05)
    return cid


def _exists(engine: Engine, cid: str, path: str) -> bool:
    try:
        engine.archive_stat(cid, path)
        return True
    except NotFound:
        return False


def _mounts() -> int:
    with open("/proc/self/mountinfo") as f:
        return f.read().count("overlay")


def test_out_of_a_running_container(engine: Engine) -> None:
    cid = _running(engine, SETUP)
    assert _members(engine, cid, "/d") == {"d": None, "d/a": b"a\n", "d/sub": None, "d/sub/b": b"b\n"}
    assert _members(engine, cid, "/d/.") == {".": None, "./a": b"a\n", "./sub": None, "./sub/b": b"b\n"}
    assert _members(engine, cid, "/d/sub/b") == {"b": b"b\n"}
    assert list(_members(engine, cid, "/dlink")) == ["dlink"]  # a symlink stays one
    # through the container's own /escape -> /: its passwd, not the host's
    with open("/etc/passwd", "rb") as f:
        assert _members(engine, cid, "/escape/etc/passwd")["passwd"] != f.read()
    st = engine.archive_stat(cid, "/dlink")
    assert (st["name"], st["linkTarget"], st["mode"] & (1 << 27)) == ("dlink", "/d", 1 << 27)
    assert engine.archive_stat(cid, "/d")["mode"] == go_mode(0o40755)
    with pytest.raises(NotFound, match="/nope"):
        engine.archive_get(cid, "/nope", io.BytesIO())
    with pytest.raises(InvalidArgument, match="absolute"):
        engine.archive_stat(cid, "d")
    # the kernel's file systems come as empty directories
    names = _members(engine, cid, "/")
    assert "./proc" in names and not any(n.startswith("./proc/") for n in names)


def test_into_a_running_container(engine: Engine) -> None:
    cid = _running(engine, SETUP)
    marker = f"/cbx-cp-{os.getpid()}"
    engine.archive_put(cid, "/escape/d", make_tar({"new": b"x\n", "sub2/deep": b"y\n"}))
    engine.archive_put(cid, "/escape/tmp", make_tar({marker[1:]: b"in the container\n"}))
    assert not os.path.exists(marker)  # /escape is the container's root, not the host's
    assert _members(engine, cid, f"/tmp{marker}") == {marker[1:]: b"in the container\n"}
    got = io.BytesIO()
    engine.archive_get(cid, "/d/new", got)
    with tarfile.open(fileobj=io.BytesIO(got.getvalue())) as t:
        m = t.getmember("new")
        assert (m.uid, m.gid, m.mode) == (0, 0, 0o640)  # the container's root owns it
    engine.archive_put(cid, "/d", make_tar({"kept": b"k"}), copy_uid_gid=True)
    got = io.BytesIO()
    engine.archive_get(cid, "/d/kept", got)
    with tarfile.open(fileobj=io.BytesIO(got.getvalue())) as t:
        assert (t.getmember("kept").uid, t.getmember("kept").gid) == (1234, 1234)
    with pytest.raises(InvalidArgument, match="not a directory"):
        engine.archive_put(cid, "/d/a", make_tar({"x": b""}))
    with pytest.raises(NotFound, match="no such directory"):
        engine.archive_put(cid, "/nope", make_tar({"x": b""}))
    with pytest.raises(InvalidArgument, match="cannot overwrite the directory"):
        engine.archive_put(cid, "/d", make_tar({"sub": b"a file over a directory"}))
    with pytest.raises(InvalidArgument, match=r"\.\."):
        engine.archive_put(cid, "/d", make_tar({"../../etc/evil": b""}))
    with pytest.raises(InvalidArgument, match="tar to copy has a header with a bad checksum"):
        engine.archive_put(cid, "/d", io.BytesIO(b"this is not a tar" * 100))
    assert _members(engine, cid, "/d/sub") == {"sub": None, "sub/b": b"b\n"}  # untouched


def test_a_stopped_container_is_read_and_written_through_its_layers(engine: Engine) -> None:
    cid = engine.create("busybox", ["sh", "-c", "rm /bin/vi; cat /d/a /etc/added"], network="none")
    engine.start(cid)
    engine.wait(cid)
    mounts = _mounts()
    with pytest.raises(NotFound):  # its writable layer's whiteout hides the image's file
        engine.archive_stat(cid, "/bin/vi")
    engine.archive_put(cid, "/", make_tar({"d/a": b"from cp\n", "etc/added": b"too\n"}))
    assert _members(engine, cid, "/d") == {"d": None, "d/a": b"from cp\n"}
    assert _members(engine, cid, "/bin/busybox")["busybox"]  # from the image's layer
    assert _mounts() == mounts  # the helper's mount went with its namespace
    upper = engine.containers.get(cid).path("upper")
    assert os.path.exists(os.path.join(upper, "etc/added"))
    engine.start(cid)
    assert engine.wait(cid) == 0
    assert "".join(e["log"] for e in engine.logs(cid)).endswith("from cp\ntoo\n")


def test_the_cli_copies_as_docker_cp_does(image_root: str, tmp_path) -> None:
    cid = cli(image_root, "run", "-d", "--network", "none", "busybox", "sh", "-c",
              f"{SETUP}; sleep 60").stdout.decode().strip()
    try:
        def cp(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
            return subprocess.run([CHANBOX, "--root", image_root, "cp", *args], input=input,
                                  capture_output=True, timeout=60, cwd=tmp_path)

        deadline = time.monotonic() + 10
        while cp(f"{cid}:/dlink", "probe").returncode != 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert cp(f"{cid}:/d", "new").returncode == 0  # a new path: the directory itself
        assert sorted(os.listdir(tmp_path / "new")) == ["a", "sub"]
        (tmp_path / "there").mkdir()
        assert cp(f"{cid}:/d", "there").returncode == 0  # an existing one: inside it
        assert (tmp_path / "there" / "d" / "sub" / "b").read_text() == "b\n"
        (tmp_path / "contents").mkdir()
        assert cp(f"{cid}:/d/.", "contents").returncode == 0
        assert sorted(os.listdir(tmp_path / "contents")) == ["a", "sub"]
        assert cp(f"{cid}:/d/a", "renamed").returncode == 0
        assert (tmp_path / "renamed").read_text() == "a\n"
        assert cp(f"{cid}:/dlink", "link").returncode == 0  # the link itself
        assert os.readlink(tmp_path / "link") == "/d"
        assert cp("-L", f"{cid}:/dlink", "followed").returncode == 0  # what it points to
        assert sorted(os.listdir(tmp_path / "followed")) == ["a", "sub"]
        p = cp(f"{cid}:/d", "renamed")
        assert p.returncode == 125 and "onto the file" in p.stderr.decode()
        p = cp(f"{cid}:/d/a", "missing/")
        assert p.returncode == 125 and "does not exist" in p.stderr.decode()
        p = cp(f"{cid}:/d", "-")
        with tarfile.open(fileobj=io.BytesIO(p.stdout)) as t:
            assert sorted(t.getnames()) == ["d", "d/a", "d/sub", "d/sub/b"]
        # in: a directory into an existing one, a file to a new name, a tar on stdin
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / "f").write_text("f\n")
        assert cp("src", f"{cid}:/d").returncode == 0
        assert cp("src/f", f"{cid}:/d/g").returncode == 0
        assert cp("-", f"{cid}:/d", input=make_tar({"h": b"h\n"}).getvalue()).returncode == 0
        p = cp(f"{cid}:/d", "-")
        with tarfile.open(fileobj=io.BytesIO(p.stdout)) as t:
            assert {"d/src/f", "d/g", "d/h"} <= set(t.getnames())
            assert t.extractfile("d/g").read() == b"f\n"  # type: ignore[union-attr]
        p = cp("src", f"{cid}:/d/a")
        assert p.returncode == 125 and "onto the file" in p.stderr.decode()
        p = cp("src/f", "cbx-no-such-container:/tmp")
        assert p.returncode != 0 and "no such container" in p.stderr.decode()
        p = cp("src/f", "src/g")
        assert p.returncode == 125 and "CONTAINER:PATH" in p.stderr.decode()
    finally:
        cli(image_root, "rm", "-f", cid)


def test_a_stopped_containers_volumes_are_where_it_sees_them(engine: Engine) -> None:
    name = f"cbx-cpvol-{os.getpid()}"
    cid = engine.create("busybox", ["cat", "/data/in"], network="none", binds=[f"{name}:/data"])
    try:
        engine.archive_put(cid, "/data", make_tar({"in": b"into the volume\n"}))
        assert os.path.isfile(os.path.join(engine.volumes.path(name), "in"))
        assert _members(engine, cid, "/data/in") == {"in": b"into the volume\n"}
        engine.start(cid)
        assert engine.wait(cid) == 0
        assert "".join(e["log"] for e in engine.logs(cid)) == "into the volume\n"
        assert _members(engine, cid, "/data/in") == {"in": b"into the volume\n"}  # stopped, read-only
    finally:
        engine.rm(cid, force=True)
        engine.volume_rm(name)


def test_a_pid_that_is_not_the_containers_is_refused() -> None:
    # the engine names the container's PID and cgroup; a PID recycled by another
    # process (here: this test's own) must not lead the helper into that one's root
    from engine.containerfs import run_helper

    with pytest.raises(NotFound, match="process is gone"):
        run_helper({"pid": os.getpid(), "cgroup": "/cbx/" + "0" * 64}, "stat", "/")
    with pytest.raises(NotFound, match="process is gone"):
        run_helper({"pid": 2 ** 22 + 1, "cgroup": "/cbx/" + "0" * 64}, "stat", "/")  # none


BIG = 64 << 20


def test_a_copy_out_whose_helper_dies_fails_and_says_so(engine: Engine, image_root: str) -> None:
    cid = _running(engine, f"head -c {BIG} /dev/zero > /big; {SETUP}")
    # nobody reads the CLI's output yet: flow control holds the helper mid-copy
    cp = subprocess.Popen([CHANBOX, "--root", image_root, "cp", f"{cid}:/big", "-"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    copy_helper(cp.pid).kill()
    out, err = cp.communicate(timeout=60)
    assert cp.returncode == 125
    assert b"killed (signal 9) part of the way, so the copy is incomplete" in err, err
    assert len(out) < BIG  # what came before the end is there, and is called incomplete


def test_a_copy_in_whose_helper_dies_fails_and_says_so(engine: Engine, image_root: str) -> None:
    cid = _running(engine, SETUP)
    cp = subprocess.Popen([CHANBOX, "--root", image_root, "cp", "-", f"{cid}:/d"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    assert cp.stdin is not None
    tar = make_tar({"big": b"\0" * BIG}).getvalue()
    cp.stdin.write(tar[:1 << 20])  # a part: the helper waits for the rest
    cp.stdin.flush()
    copy_helper(cp.pid).kill()
    try:
        cp.stdin.write(tar[1 << 20:])
    except BrokenPipeError:
        pass  # the CLI may have given up reading already
    out, err = cp.communicate(timeout=60)
    assert cp.returncode == 125
    assert b"killed (signal 9) part of the way, so the copy is incomplete" in err, err
    assert _exists(engine, cid, "/d/a")  # the container is as it was, plus what came
