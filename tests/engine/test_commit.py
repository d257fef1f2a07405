"""commit: a container's changes become a new layer on top of its image (parent chain)."""

from __future__ import annotations

import os
import stat

import pytest

from engine.client import Client
from engine.errors import Conflict

from .conftest import needs_root
from .test_lifecycle import output, run

pytestmark = needs_root


def test_commit_chain_keeps_files_deletions_and_parents(client: Client) -> None:
    _, _, _, c1 = run(client, "sh", "-c",
                      "echo one > /one.txt; rm /etc/group; mkdir -p /data; echo keep > /data/k")
    upper = client.call("get", id=c1)["GraphDriver"]["Data"]["UpperDir"]
    # the deletion is an overlayfs whiteout in the writable layer
    assert stat.S_ISCHR(os.lstat(f"{upper}/etc/group").st_mode)
    img1 = client.call("commit", id=c1, ref="cbx-commit:1", comment="first")["id"]

    cid = client.call("create", image="cbx-commit:1",
                      cmd=["sh", "-c", "rm /one.txt; rm -r /data; mkdir /data; echo new > /data/n"])["id"]
    client.call("start", id=cid)
    assert client.call("wait", id=cid)["exit_code"] == 0
    img2 = client.call("commit", id=cid, ref="cbx-commit:2")["id"]
    cid3 = cid
    try:
        cid3 = client.call("create", image="cbx-commit:2",
                           cmd=["sh", "-c", "ls /one.txt /etc/group 2>&1; ls /data; cat /data/n"])["id"]
        client.call("start", id=cid3)
        client.call("wait", id=cid3)
        text = "".join(e["log"] for e in client.stream("log", id=cid3))
        assert "/one.txt: No such file" in text and "/etc/group: No such file" in text
        assert text.strip().endswith("n\nnew")  # opaque /data: only the new file
        i2 = client.call("image_get", ref="cbx-commit:2")
        i1 = client.call("image_get", ref="cbx-commit:1")
        base = client.call("image_get", ref="busybox")
        assert i2["Parent"] == i1["Id"] and i1["Parent"] == base["Id"]
        assert i2["RootFS"]["Layers"][:-1] == i1["RootFS"]["Layers"]
        assert len(i2["RootFS"]["Layers"]) == len(base["RootFS"]["Layers"]) + 2
        hist = client.call("history", ref="cbx-commit:2")
        assert len(hist) == 3 and hist[1]["comment"] == "first"
        assert hist[0]["created_by"] == "sh -c rm /one.txt; rm -r /data; mkdir /data; echo new > /data/n"
        # the parent is in use by its child image and by containers: refused
        with pytest.raises(Conflict):
            client.call("rmi", ref=img1)
    finally:
        for c in (c1, cid, cid3):
            client.call("rm", id=c, force=True)
        for ref in ("cbx-commit:2", "cbx-commit:1"):
            try:
                client.call("rmi", ref=ref)
            except Conflict:
                pass
    assert img2 != img1


def test_rmi_is_refused_while_a_container_uses_the_image(client: Client) -> None:
    _, _, _, src = run(client, "touch", "/cbx-inuse")
    img = client.call("commit", id=src, ref="cbx-inuse:1")["id"]
    client.call("tag", source="cbx-inuse:1", ref="cbx-inuse:2")
    cid = client.call("create", image="cbx-inuse:1", cmd=["true"])["id"]
    # untagging is fine: the image stays under its other name
    assert client.call("rmi", ref="cbx-inuse:1") == ["Untagged: cbx-inuse:1"]
    with pytest.raises(Conflict, match=cid[:12]):
        client.call("rmi", ref="cbx-inuse:2")
    assert client.call("image_get", ref="cbx-inuse:2")["Id"].endswith(img)
    client.call("rm", id=cid)
    lines = client.call("rmi", ref="cbx-inuse:2")
    assert "Untagged: cbx-inuse:2" in lines and any(x.startswith("Deleted:") for x in lines)


def test_commit_of_a_running_container(client: Client) -> None:
    cid = client.call("spawn", image="busybox",
                      cmd=["sh", "-c", "echo live > /live; sleep 30"])["id"]
    import time
    time.sleep(0.3)
    img = client.call("commit", id=cid, ref="cbx-live:1")["id"]
    assert client.call("get", id=cid)["State"]["Status"] == "running"
    try:
        assert output(client, "cat", "/live", image="cbx-live:1") == "live\n"
    finally:
        client.call("rm", id=cid, force=True)
        for c in client.call("ls", all=True):
            if c["Image"] == "cbx-live:1":
                client.call("rm", id=c["Id"], force=True)
        client.call("rmi", ref=img)
