"""Named and anonymous volumes (docker volume, -v NAME:/path, -v /path)."""

from __future__ import annotations

import json
import os
import time

import pytest

from engine.engine import Engine
from engine.errors import Conflict, InvalidArgument, NotFound

from .conftest import cli, needs_root, run_to_end as _run

pytestmark = needs_root


@pytest.fixture
def vol(engine: Engine):  # type: ignore[no-untyped-def]
    """A fresh volume name; every volume the test left is removed after it."""
    volumes = {v["Name"] for v in engine.volume_ls()}
    containers = {c.id for c in engine.containers.list()}
    yield f"cbx-vol-{os.getpid()}-{time.monotonic_ns()}"
    for c in engine.containers.list():  # the users first (the engine fixture's cleanup is later)
        if c.id not in containers:
            engine.rm(c.id, force=True)
    for v in engine.volume_ls():
        if v["Name"] not in volumes:
            engine.volume_rm(v["Name"])


def test_create_inspect_list_and_remove(engine: Engine, vol: str) -> None:
    v = engine.volume_create(vol, labels={"team": "web"})
    assert (v["Name"], v["Driver"], v["Labels"], v["Anonymous"]) == (vol, "local", {"team": "web"}, False)
    assert os.path.isdir(v["Mountpoint"]) and v["Mountpoint"].startswith(engine.root)
    assert engine.volume_create(vol) == v  # an existing name is returned as it is
    assert vol in [x["Name"] for x in engine.volume_ls()]
    assert engine.volume_inspect(vol) == v
    engine.volume_rm(vol)
    assert not os.path.exists(os.path.dirname(v["Mountpoint"]))
    with pytest.raises(NotFound, match=f"no such volume: {vol}"):
        engine.volume_inspect(vol)
    with pytest.raises(NotFound):
        engine.volume_rm(vol)
    engine.volume_rm(vol, force=True)  # -f: no error for a missing one
    for bad in ("a", "-x", "x/y", "../up", "white space"):
        with pytest.raises(InvalidArgument, match="invalid volume name"):
            engine.volume_create(bad)


def test_data_outlives_its_containers_and_ro_is_read_only(engine: Engine, vol: str) -> None:
    assert _run(engine, "echo kept > /data/f", binds=[f"{vol}:/data"]) == (0, "")
    code, out = _run(engine, "cat /data/f; touch /data/g", binds=[f"{vol}:/data:ro"])
    assert code != 0 and out.startswith("kept\n") and "Read-only file system" in out
    cid = engine.create("busybox", ["true"], network="none", binds=[f"{vol}:/data"])
    mounts = engine.inspect(cid)["Mounts"]
    assert mounts == [{"Type": "volume", "Name": vol, "Source": engine.volumes.path(vol),
                       "Destination": "/data", "Driver": "local", "Mode": "z", "RW": True,
                       "Propagation": ""}]
    with pytest.raises(Conflict, match=f"in use by container {cid[:12]}"):
        engine.volume_rm(vol)
    from engine.filters import filter_containers

    rows = engine.ps(all=True)
    assert [c["Id"] for c in filter_containers(rows, {"volume": [vol]})] == [cid]
    assert cid in [c["Id"] for c in filter_containers(rows, {"volume": ["/data"]})]
    assert filter_containers(rows, {"volume": ["cbx-no-such-volume"]}) == []
    engine.rm(cid, volumes=True)  # a named volume stays
    assert engine.volume_inspect(vol)["Name"] == vol


def test_an_empty_volume_gets_what_the_image_holds_there(engine: Engine, vol: str) -> None:
    code, out = _run(engine, "ls /etc; stat -c '%a %u' /etc", binds=[f"{vol}:/etc"])
    assert code == 0 and {"group", "hosts", "passwd"} <= set(out.split())
    assert out.split("\n")[-2] == "755 0"  # the directory's own mode and owner too
    _run(engine, "rm /etc/passwd; echo mine > /etc/mine", binds=[f"{vol}:/etc"])
    # not again once it holds something: the container's changes stay
    assert _run(engine, "ls /etc", binds=[f"{vol}:/etc"])[1].split() == ["group", "hosts", "mine"]


def test_anonymous_volumes_go_with_rm_v_and_run_rm(engine: Engine, vol: str) -> None:
    cid = engine.create("busybox", ["true"], network="none", binds=["/scratch"])
    anon = engine.inspect(cid)["Mounts"][0]["Name"]
    assert len(anon) == 64 and engine.volume_inspect(anon)["Anonymous"] is True
    engine.rm(cid)
    assert engine.volume_inspect(anon)  # rm without -v keeps it (dangling)
    assert anon in engine.volume_prune()  # prune takes the anonymous ones
    cid = engine.create("busybox", ["true"], network="none", binds=["/scratch"])
    anon = engine.inspect(cid)["Mounts"][0]["Name"]
    engine.rm(cid, volumes=True)
    with pytest.raises(NotFound):
        engine.volume_inspect(anon)
    # a detached --rm container is removed by its monitor, its anonymous volume with it
    cid = engine.create("busybox", ["true"], network="none", binds=["/scratch"], auto_remove=True)
    anon = engine.inspect(cid)["Mounts"][0]["Name"]
    engine.start(cid)
    deadline = time.monotonic() + 10
    while any(v["Name"] == anon for v in engine.volume_ls()):
        assert time.monotonic() < deadline, "the --rm container's anonymous volume stayed"
        time.sleep(0.05)
    engine.volume_create(vol)
    assert vol not in engine.volume_prune() and vol in engine.volume_prune(all=True)


def test_the_cli(image_root: str, engine: Engine, vol: str) -> None:
    assert cli(image_root, "volume", "create", vol).stdout.decode() == f"{vol}\n"
    p = cli(image_root, "run", "--rm", "--network", "none", "-v", f"{vol}:/v", "busybox",
            "sh", "-c", "echo hi > /v/x; cat /v/x")
    assert (p.returncode, p.stdout) == (0, b"hi\n")
    assert vol in cli(image_root, "volume", "ls", "-q").stdout.decode().split()
    assert vol in cli(image_root, "volume", "ls").stdout.decode()
    info = json.loads(cli(image_root, "volume", "inspect", vol).stdout)
    assert info[0]["Name"] == vol and os.path.isfile(os.path.join(info[0]["Mountpoint"], "x"))
    p = cli(image_root, "volume", "rm", vol, "cbx-no-such-volume")
    assert p.returncode == 125 and "no such volume: cbx-no-such-volume" in p.stderr.decode()
    assert p.stdout.decode() == f"{vol}\n"  # the first went
    p = cli(image_root, "volume", "create", "x/y")
    assert p.returncode == 125 and "invalid volume name" in p.stderr.decode()
    p = cli(image_root, "volume", "create", "-d", "nfs", vol)
    assert p.returncode == 125 and "driver 'nfs' is not supported" in p.stderr.decode()
    assert vol not in cli(image_root, "volume", "ls", "-q").stdout.decode().split()
