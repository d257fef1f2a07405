"""export (docker export): a container's filesystem as one tar, its changes applied."""

from __future__ import annotations

import io
import os
import tarfile
import tempfile

from engine.engine import Engine
from engine.fsutil import remove_tree

from .conftest import CHANBOX, cli, needs_root

pytestmark = needs_root

CHANGES = ("echo new > /etc/motd; rm /bin/vi; rm -rf /usr/bin; mkdir /usr/bin; "
           "echo x > /usr/bin/mine; ln /etc/motd /etc/motd-link")


def test_the_tar_is_the_merged_tree_and_imports_again(engine: Engine) -> None:
    cid = engine.create("busybox", ["sh", "-c", CHANGES], network="none")
    tmp = tempfile.mkdtemp(prefix="cbx-export-")
    image = None
    try:
        engine.start(cid)
        assert engine.wait(cid) == 0
        path = os.path.join(tmp, "rootfs.tar")
        with open(path, "wb") as f:
            engine.export(cid, f)
        with tarfile.open(path) as t:
            members = {m.name: m for m in t.getmembers()}
            assert t.extractfile("etc/motd").read() == b"new\n"  # type: ignore[union-attr]
            assert members["etc/motd-link"].islnk() and members["etc/motd-link"].linkname == "etc/motd"
        assert "bin/vi" not in members and "bin/sh" in members and members["bin/sh"].issym()
        assert sorted(n for n in members if n.startswith("usr/bin")) == ["usr/bin", "usr/bin/mine"]
        busybox = members["bin/busybox"]
        assert (busybox.size, busybox.mode) == (os.path.getsize("/bin/busybox"), 0o755)
        assert not any(n.startswith(("proc/", "dev/null")) for n in members)
        image = engine.import_image(path, "cbx-exported:1")
        code = None
        out_cid = engine.create("cbx-exported:1", ["sh", "-c", "cat /etc/motd; ls /usr/bin"],
                                network="none")
        try:
            engine.start(out_cid)
            code = engine.wait(out_cid)
            text = "".join(e["log"] for e in engine.logs(out_cid))
        finally:
            engine.rm(out_cid, force=True)
        assert (code, text) == (0, "new\nmine\n")
    finally:
        engine.rm(cid, force=True)
        if image is not None:
            engine.rmi("cbx-exported:1")
        remove_tree(tmp)


def test_the_cli_writes_it_to_a_file_or_to_stdout(image_root: str) -> None:
    cid = cli(image_root, "create", "--network", "none", "busybox", "true").stdout.decode().strip()
    tmp = tempfile.mkdtemp(prefix="cbx-export-")
    try:
        assert cli(image_root, "export", "-o", f"{tmp}/a.tar", cid).returncode == 0
        import subprocess

        p = subprocess.run([CHANBOX, "--root", image_root, "export", cid], capture_output=True,
                           timeout=60)
        assert p.returncode == 0
        with open(f"{tmp}/a.tar", "rb") as f:
            assert f.read() == p.stdout  # the same tree, the same bytes
        with tarfile.open(fileobj=io.BytesIO(p.stdout)) as t:
            assert "bin/busybox" in t.getnames()
        p = cli(image_root, "export", "-o", f"{tmp}/b.tar", "cbx-no-such-container")
        assert p.returncode != 0 and "no such container" in p.stderr.decode()
        assert sorted(os.listdir(tmp)) == ["a.tar"]  # no half tar left behind
    finally:
        cli(image_root, "rm", "-f", cid)
        remove_tree(tmp)
