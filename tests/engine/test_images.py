"""engine.images (with engine.layers, engine.refs, engine.busybox): the image store."""

from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from engine import refs
from engine.busybox import import_busybox, make_rootfs
from engine.errors import Conflict, InvalidArgument, NotFound
from engine.images import ImageStore
from engine.tarlayer import diff_tar

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))



@pytest.fixture
def store(tmp):
    return ImageStore(os.path.join(tmp, "root"))


def _rootfs(path: str, marker: str = "one") -> str:
    os.makedirs(f"{path}/etc", exist_ok=True)
    with open(f"{path}/etc/marker", "w") as f:
        f.write(marker)
    with open(f"{path}/etc/keep", "w") as f:
        f.write("keep")
    return path


def test_import_dir_and_tar_gz_and_get_by_every_name(store, tmp):
    a = store.import_path(_rootfs(f"{tmp}/a"), "app", config={"Cmd": ["sh"]})
    assert a.tags == ["app:latest"] and a.parent is None and len(a.layers) == 1
    assert a.config["Cmd"] == ["sh"] and a.size == len("one") + len("keep")
    buf = io.BytesIO()
    diff_tar(_rootfs(f"{tmp}/b", "two"), buf)
    with open(f"{tmp}/b.tar.gz", "wb") as f:
        f.write(gzip.compress(buf.getvalue()))
    b = store.import_path(f"{tmp}/b.tar.gz", "example.com:5000/team/app:v1.0")
    for name in ("app", "app:latest", a.id, a.id[7:], a.id[7:11], f"sha256:{a.id[7:19]}"):
        assert store.get(name).id == a.id
    assert store.get("example.com:5000/team/app:v1.0").id == b.id
    assert [i.id for i in store.list()] == [b.id, a.id]  # newest first
    layer_dir = os.path.join(store.root, store.lowerdirs(b)[0])
    with open(f"{layer_dir}/etc/marker") as f:
        assert f.read() == "two"


def test_same_content_same_image_id(store, tmp):
    a = store.import_path(_rootfs(f"{tmp}/a"), "x:1")
    b = store.import_path(_rootfs(f"{tmp}/a"), "x:2")
    assert a.id == b.id and store.get("x:1").tags == ["x:1", "x:2"]


def test_not_found_and_invalid_messages(store):
    with pytest.raises(NotFound, match="no such image: foo:1"):
        store.get("foo:1")
    with pytest.raises(NotFound, match="no such image: foo:latest"):
        store.get("foo")
    with pytest.raises(InvalidArgument, match='invalid reference format: "Foo": repository name must be lowercase'):
        store.get("Foo")
    with pytest.raises(InvalidArgument, match="invalid reference format"):
        store.tag("foo", "bad tag")


@pytest.mark.parametrize("ref", ["busybox", "a/b/c:1.0", "a__b.c-d:X_y", "localhost:5000/x", "Example.COM/x:t"])
def test_good_references(ref):
    parsed = refs.parse_reference(ref)
    assert str(parsed).startswith(parsed.name)


@pytest.mark.parametrize("ref", ["", "A", "a/B", "a:", "a:.x", "-a", "a_", "a..b", "a@sha256:00", "ab" * 32])
def test_bad_references(ref):
    with pytest.raises(InvalidArgument, match="invalid reference format"):
        refs.parse_reference(ref)


def test_tag_list_and_rmi_untag_then_delete(store, tmp):
    a = store.import_path(_rootfs(f"{tmp}/a"), "app:1")
    store.tag("app:1", "app:2")
    assert store.get("app:2").tags == ["app:1", "app:2"]
    assert store.remove("app:1") == ["Untagged: app:1"]
    assert store.get(a.id).tags == ["app:2"]
    lines = store.remove("app:2")
    assert lines[:2] == ["Untagged: app:2", f"Deleted: {a.id}"]
    assert lines[2] == f"Deleted: {a.layers[0]}"
    assert store.list() == [] and store.layers.all() == []
    assert os.listdir(os.path.join(store.root, "l")) == []


def test_rmi_by_id_with_several_tags_needs_force(store, tmp):
    a = store.import_path(_rootfs(f"{tmp}/a"), "app:1")
    store.tag(a.id, "app:2")
    with pytest.raises(Conflict, match="must be forced"):
        store.remove(a.id[7:19])
    assert store.remove(a.id, force=True)[:3] == ["Untagged: app:1", "Untagged: app:2", f"Deleted: {a.id}"]


def test_shared_layers_are_kept(store, tmp):
    a = store.import_path(_rootfs(f"{tmp}/a"), "a")
    b = store.import_path(_rootfs(f"{tmp}/a"), None, config={"Cmd": ["true"]})  # same layer
    assert a.id != b.id and a.layers == b.layers
    lines = store.remove("a")
    assert lines == ["Untagged: a:latest", f"Deleted: {a.id}"]
    assert os.path.isdir(store.layers.path(b.layers[0]))


def test_in_use_refusal_message(store, tmp):
    a = store.import_path(_rootfs(f"{tmp}/a"), "busybox")
    with pytest.raises(Conflict) as err:
        store.remove("busybox", in_use_by=lambda image_id: ["abc123"] if image_id == a.id else [])
    assert str(err.value) == (
        "unable to remove image busybox:latest: it is used by container abc123; "
        "remove the container first or use -f"
    )
    assert store.get("busybox").id == a.id
    # forced: the tag goes, the image stays for the container
    assert store.remove("busybox", force=True, in_use_by=lambda _: ["abc123"]) == ["Untagged: busybox:latest"]
    assert store.get(a.id).tags == []


def _upper_with_whiteout(path: str) -> str:
    os.makedirs(f"{path}/etc")
    os.mknod(f"{path}/etc/marker", stat.S_IFCHR | 0o600, os.makedev(0, 0))  # deleted
    with open(f"{path}/etc/new", "w") as f:
        f.write("new")
    return path


def test_commit_makes_a_child_with_a_whiteout_and_history(store, tmp):
    base = store.import_path(_rootfs(f"{tmp}/a"), "base", config={"Cmd": ["sh"], "Env": ["A=1"]}, comment="the base")
    child = store.commit(_upper_with_whiteout(f"{tmp}/upper"), base, "child:1", config={"Cmd": ["ls"]},
                         comment="removed marker", author="me")
    assert child.parent == base.id and child.layers == base.layers + [child.layers[-1]]
    assert child.config["Cmd"] == ["ls"] and child.config["Env"] == ["A=1"] and child.author == "me"
    top = store.layers.path(child.layers[-1])
    st = os.lstat(f"{top}/etc/marker")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    hist = store.history("child:1")
    assert [h["id"] for h in hist] == [child.id, base.id]
    assert [h["comment"] for h in hist] == ["removed marker", "the base"]
    assert hist[0]["tags"] == ["child:1"] and hist[1]["tags"] == ["base:latest"] and hist[0]["size"] == 3
    with pytest.raises(Conflict, match="dependent child images"):
        store.remove(base.id)
    assert store.remove("base") == ["Untagged: base:latest"]  # kept: child needs it
    lines = store.remove("child:1")
    assert f"Deleted: {child.id}" in lines and f"Deleted: {base.id}" in lines  # untagged parent goes too
    assert store.list() == [] and store.layers.all() == []


def test_lowerdirs_are_short_and_resolve(store, tmp):
    base = store.import_path(_rootfs(f"{tmp}/a"), "base")
    child = store.commit(_upper_with_whiteout(f"{tmp}/upper"), base, None, config=None)
    lows = store.lowerdirs(child)
    assert len(lows) == 2 and all(len(x) == 28 and x.startswith("l/") for x in lows)
    resolved = [os.path.realpath(os.path.join(store.root, x)) for x in lows]
    assert resolved == [store.layers.path(child.layers[1]), store.layers.path(child.layers[0])]


def test_120_layer_chain_fits_in_a_page(store, tmp):
    image = store.import_path(_rootfs(f"{tmp}/a"), "base")
    for i in range(119):
        up = f"{tmp}/u{i}"
        os.makedirs(up)
        with open(f"{up}/f{i}", "w") as f:
            f.write(str(i))
        image = store.commit(up, image, None, config=None)
    assert len(image.layers) == 120
    opt = "lowerdir=" + ":".join(store.lowerdirs(image))
    assert len(opt) < 4096
    assert os.path.isfile(os.path.join(store.root, store.lowerdirs(image)[0], "f118"))


def test_busybox_image(store, tmp):
    image = import_busybox(store)
    assert image.tags == ["busybox:latest"] and image.config["Cmd"] == ["sh"]
    assert image.config["Env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    layer = store.layers.path(image.layers[0])
    assert os.readlink(f"{layer}/bin/sh") == "/bin/busybox"
    assert os.stat(f"{layer}/tmp").st_mode & 0o7777 == 0o1777
    with open(f"{layer}/etc/passwd") as f:
        assert "nobody:x:65534:65534:" in f.read()
    assert import_busybox(store, "busybox:again").id == image.id  # deterministic
    out = subprocess.run([f"{layer}/bin/busybox", "echo", "ok"], capture_output=True, text=True)
    assert out.stdout == "ok\n"
    assert os.listdir(os.path.join(store.root, "tmp")) == []


def test_busybox_refuses_a_dynamic_binary(tmp):
    with pytest.raises(InvalidArgument, match="busybox-static"):
        make_rootfs(f"{tmp}/r", busybox="/bin/ls")  # dynamically linked on Debian


def test_bad_config_key_is_refused(store, tmp):
    with pytest.raises(InvalidArgument, match="unknown image config key 'Cmdd'"):
        store.import_path(_rootfs(f"{tmp}/a"), "x", config={"Cmdd": ["sh"]})


# crash safety ----------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    kill_at = int(sys.argv[1])
    calls = 0
    def hook(real):
        def wrapped(*a, **kw):
            global calls
            calls += 1
            if calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **kw)
        return wrapped
    for name in ("rename", "symlink", "mknod", "unlink", "mkdir", "link"):
        setattr(os, name, hook(getattr(os, name)))
    from engine.images import ImageStore
    root, src, upper = sys.argv[2:5]
    s = ImageStore(root)
    base = s.import_path(src, "crash:base")
    s.commit(upper, base, "crash:child", config=None)
    s.remove("crash:base")
    s.import_path(src, "crash:again", config={{"Cmd": ["x"]}})
    s.remove("crash:child")
    print(calls)
    """
)


def _consistent(root: str) -> list:
    store = ImageStore(root)
    store.gc()
    images = store.list()
    for image in images:
        for diff_id in image.layers:
            assert os.path.isdir(store.layers.path(diff_id))
        for low in store.lowerdirs(image):
            assert os.path.isdir(os.path.join(root, low))
    assert os.listdir(os.path.join(root, "tmp")) == []
    for name in os.listdir(os.path.join(root, "l")):
        assert os.path.isdir(os.path.join(root, "l", name)), f"dangling link l/{name}"
    for tag, image_id in (store._repos_map()).items():
        assert store.get(image_id).id == image_id, tag
    return images


def test_kill_9_at_any_point_leaves_a_consistent_store(tmp):
    src = _rootfs(f"{tmp}/src")
    for i in range(20):
        with open(f"{src}/etc/f{i}", "w") as f:
            f.write("x" * i)
    upper = _upper_with_whiteout(f"{tmp}/upper")
    code = _CHILD.format(repo=REPO)

    def run(kill_at: int, root: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code, str(kill_at), root, src, upper],
                              capture_output=True, text=True, timeout=30)

    full = run(0, f"{tmp}/full")
    assert full.returncode == 0, full.stderr
    total = int(full.stdout)
    assert total > 20
    for n in range(1, total + 1):  # every rename, link, mknod, unlink and mkdir
        root = f"{tmp}/r{n}"
        proc = run(n, root)
        assert proc.returncode == -9, (n, proc.stderr)
        _consistent(root)
        # the store still works after the crash
        again = ImageStore(root).import_path(src, "after:crash")
        assert "after:crash" in again.tags
