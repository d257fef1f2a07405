"""Interop with tools chanbox did not write: umoci makes and unpacks images, skopeo copies
and inspects them, the distribution registry stores them; chanbox loads, pulls, runs,
saves and pushes them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess

import pytest

from engine import fsutil

from .conftest import cli
from .test_registry import Registry, registry  # noqa: F401 (the fixture)

TOOLS = [t for t in ("umoci", "skopeo", "docker-registry") if shutil.which(t) is None]
pytestmark = [
    pytest.mark.skipif(bool(TOOLS), reason=f"needs {', '.join(TOOLS)} (apt-get install umoci skopeo docker-registry)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="containers and umoci unpack need root"),
]





def run(*args: str) -> str:
    p = subprocess.run(args, capture_output=True, timeout=120)
    assert p.returncode == 0, (args, p.stderr.decode())
    return p.stdout.decode()


def ok(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout.decode()


def tree(root: str) -> dict[str, tuple]:
    """Every path under ``root``: type, mode, owner and content (or link target)."""
    out: dict[str, tuple] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                what: object = os.readlink(full)
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    what = hashlib.sha256(f.read()).hexdigest()
                if st.st_nlink > 1:
                    what = (what, inodes.setdefault(st.st_ino, rel))
            else:
                what = None
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, what)
    return out


def umoci_image(tmp: str) -> str:
    """An OCI layout made by umoci: busybox plus /hello, Cmd set; ``layout:base``."""
    layout, bundle = f"{tmp}/layout", f"{tmp}/bundle"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:base")
    run("umoci", "unpack", "--image", f"{layout}:base", bundle)
    rootfs = f"{bundle}/rootfs"
    os.makedirs(f"{rootfs}/bin", exist_ok=True)
    shutil.copy2("/bin/busybox", f"{rootfs}/bin/busybox")
    for tool in ("sh", "cat", "ls"):
        os.symlink("busybox", f"{rootfs}/bin/{tool}")
    with open(f"{rootfs}/hello", "w") as f:
        f.write("made by umoci\n")
    run("umoci", "repack", "--image", f"{layout}:base", bundle)
    run("umoci", "config", "--image", f"{layout}:base", "--config.cmd", "/bin/cat", "--config.cmd", "/hello")
    fsutil.remove_tree(bundle)
    return layout


def test_umoci_images_copied_by_skopeo_load_pull_and_run(tmp: str, empty_root: str, registry: Registry) -> None:
    layout = umoci_image(tmp)
    # the OCI layout itself, named after its directory
    assert ok(cli(empty_root, "load", "-i", layout)) == "Loaded image: layout:base\n"
    assert ok(cli(empty_root, "run", "--rm", "layout:base")) == "made by umoci\n"
    # skopeo: a docker-archive, and a push to the registry
    run("skopeo", "copy", f"oci:{layout}:base", f"docker-archive:{tmp}/umoci.tar:umoci/img:1")
    assert ok(cli(empty_root, "load", "-i", f"{tmp}/umoci.tar")) == "Loaded image: umoci/img:1\n"
    assert ok(cli(empty_root, "run", "--rm", "umoci/img:1", "cat", "/hello")) == "made by umoci\n"
    ref = f"{registry.host}/umoci/pushed:v1"
    run("skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:base", f"docker://{ref}")
    assert "(0 downloaded, 1 already there)" in ok(cli(empty_root, "pull", "--insecure", ref))
    assert "(1 downloaded, 0 already there)" in ok(cli(f"{tmp}/pulled", "pull", "--insecure", ref))
    assert ok(cli(f"{tmp}/pulled", "run", "--rm", ref)) == "made by umoci\n"


def _commit_chain(root: str) -> None:
    steps = [
        ("busybox", "mkdir -p /data/dir /data/opq && echo one > /data/a && echo two > /data/dir/b && "
                    "ln -s a /data/sym && ln /data/a /data/hard && echo o > /data/opq/old && "
                    "chmod 0750 /data/dir && rm /bin/ls", "chain:1"),
        ("chain:1", "rm /data/dir/b && rm -rf /data/opq && mkdir /data/opq && echo n > /data/opq/new && "
                    "echo three > /data/c", "chain:2"),
    ]
    for image, script, ref in steps:
        name = "cbx-chain-" + ref.replace(":", "-")
        ok(cli(root, "run", "--name", name, image, "sh", "-c", script))
        ok(cli(root, "commit", name, ref))
        ok(cli(root, "rm", name))


EXPECTED_DATA = {"a", "hard", "sym", "dir", "opq", "opq/new", "c"}


def test_a_commit_chain_saved_loads_on_an_empty_root_and_runs_with_deletions(
        tmp: str, image_root: str, empty_root: str) -> None:
    src = f"{tmp}/src"
    ok(cli(src, "bootstrap"))
    _commit_chain(src)
    listing = "find /data | sort; cat /data/a /data/hard /data/opq/new; ls /bin/ls 2>&1; true"
    want = ok(cli(src, "run", "--rm", "chain:2", "sh", "-c", listing))
    assert "/data/dir/b" not in want and "/data/opq/old" not in want and "/data/c" in want
    for fmt in ("docker", "oci"):
        ok(cli(src, "save", "-o", f"{tmp}/chain-{fmt}.tar", "--format", fmt, "chain:2"))
        dst = f"{tmp}/dst-{fmt}"
        assert ok(cli(dst, "load", "-i", f"{tmp}/chain-{fmt}.tar")) == "Loaded image: chain:2\n"
        assert ok(cli(dst, "run", "--rm", "chain:2", "sh", "-c", listing)) == want
        for line in ok(cli(dst, "ps", "-a", "-q")).split():
            cli(dst, "rm", "-f", line)
    # umoci unpacks chanbox's OCI archive to the same tree
    os.makedirs(f"{tmp}/oci")
    run("tar", "-xf", f"{tmp}/chain-oci.tar", "-C", f"{tmp}/oci")
    run("umoci", "unpack", "--image", f"{tmp}/oci:2", f"{tmp}/bundle")
    got = tree(f"{tmp}/bundle/rootfs/data")
    assert set(got) == EXPECTED_DATA
    assert got["dir"][1] == 0o750 and got["sym"][4] == "a" and got["hard"][4][1] == got["a"][4][1]
    assert not os.path.lexists(f"{tmp}/bundle/rootfs/bin/ls")
    assert os.path.exists(f"{tmp}/bundle/rootfs/bin/busybox")


def test_what_chanbox_saves_and_pushes_skopeo_reads_and_umoci_unpacks_identically(
        tmp: str, registry: Registry) -> None:
    # a rootfs with modes, owners, links and a setuid file, imported as an image
    src = f"{tmp}/rootfs"
    os.makedirs(f"{src}/etc/deep/er")
    with open(f"{src}/etc/file", "w") as f:
        f.write("content\n")
    os.chmod(f"{src}/etc/file", 0o4711)
    os.chown(f"{src}/etc/file", 123, 456)
    os.link(f"{src}/etc/file", f"{src}/etc/hardlink")
    os.symlink("../etc/file", f"{src}/etc/deep/sym")
    with open(f"{src}/etc/deep/er/big", "wb") as f:
        f.write(os.urandom(300_000))
    root = f"{tmp}/root"
    ref = f"{registry.host}/cbx/interop:v1"
    ok(cli(root, "import", src, ref))
    ok(cli(root, "save", "-o", f"{tmp}/out.tar", ref))
    info = json.loads(run("skopeo", "inspect", f"docker-archive:{tmp}/out.tar"))
    assert len(info["Layers"]) == 1 and info["Os"] == "linux"
    ok(cli(root, "save", "--format", "oci", "-o", f"{tmp}/ocidir/", ref))
    run("umoci", "unpack", "--image", f"{tmp}/ocidir:v1", f"{tmp}/b1")
    assert tree(f"{tmp}/b1/rootfs") == tree(src)
    # pushed: skopeo inspects it and copies it to an OCI layout that umoci unpacks
    assert "1 uploaded" in ok(cli(root, "push", "--insecure", ref))
    remote = json.loads(run("skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"))
    assert remote["Name"] == f"{registry.host}/cbx/interop" and remote["RepoTags"] == ["v1"]
    run("skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{tmp}/copied:v1")
    run("umoci", "unpack", "--image", f"{tmp}/copied:v1", f"{tmp}/b2")
    assert tree(f"{tmp}/b2/rootfs") == tree(src)
    # and the copied layout loads back with the same layers
    assert ok(cli(f"{tmp}/again", "load", "-i", f"{tmp}/copied")) == "Loaded image: copied:v1\n"
