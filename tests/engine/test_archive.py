"""engine.archive: docker-save and OCI archives in and out (chanbox load/save)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile

import pytest

from engine import archive
from engine.errors import InvalidArgument, NotFound
from engine.images import ImageStore

from .conftest import cli



def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for ti, data in entries:
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def ti(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **kw: object) -> tuple[tarfile.TarInfo, bytes | None]:
    t = tarfile.TarInfo(name)
    t.type = kind
    t.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    t.mtime = 1_600_000_000
    if kind == tarfile.REGTYPE:
        t.size = len(data)
    for k, v in kw.items():
        setattr(t, k, v)
    return t, data if kind == tarfile.REGTYPE else None


def oci_layout(path: str, layers: list[bytes], tags: list[str], config: dict | None = None,
               gz: bool = True) -> dict:
    """Write an OCI image layout by hand (no chanbox code); its blob digests."""
    os.makedirs(f"{path}/blobs/sha256")

    def blob(data: bytes) -> str:
        d = _sha(data)
        with open(f"{path}/blobs/sha256/{d[7:]}", "wb") as f:
            f.write(data)
        return d
    descs = []
    for raw in layers:
        data = gzip.compress(raw) if gz else raw
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gz else ""),
                      "digest": blob(data), "size": len(data)})
    cfg = json.dumps({"architecture": archive.host_arch(), "os": "linux",
                      "config": config or {"Cmd": ["/bin/sh"], "ExposedPorts": {"80/tcp": {}}},
                      "rootfs": {"type": "layers", "diff_ids": [_sha(r) for r in layers]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "config": {"mediaType": archive.MT_OCI_CONFIG, "digest": blob(cfg),
                           "size": len(cfg)}, "layers": descs}).encode()
    mdesc = {"mediaType": archive.MT_OCI_MANIFEST, "digest": blob(manifest), "size": len(manifest)}
    with open(f"{path}/index.json", "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [
            {**mdesc, "annotations": {archive.REF_NAME: t}} for t in tags]}, f)
    with open(f"{path}/oci-layout", "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    return {"layers": [d["digest"] for d in descs], "manifest": mdesc["digest"]}


def tar_dir(src: str, out: str) -> None:
    with tarfile.open(out, "w") as t:
        for name in sorted(os.listdir(src)):
            t.add(os.path.join(src, name), name)


def snapshot(root: str) -> tuple[list[str], list[str]]:
    s = ImageStore(root)
    return sorted(i.id for i in s.list()), s.layers.all()


def test_oci_layout_dir_and_tar_with_tags_whiteouts_links_and_xattrs(tmp: str) -> None:
    base = layer_tar([ti("./", tarfile.DIRTYPE), ti("./etc", tarfile.DIRTYPE), ti("./etc/gone", data=b"x"),
                      ti("./opq", tarfile.DIRTYPE), ti("./opq/old", data=b"old"),
                      ti("/bin", tarfile.DIRTYPE), ti("/bin/tool", data=b"#!tool", mode=0o4755, uid=12, gid=34),
                      ti("bin/link", tarfile.LNKTYPE, linkname="/bin/tool".lstrip("/"))])
    top_entries = [ti("etc", tarfile.DIRTYPE), ti("etc/.wh.gone"), ti("opq", tarfile.DIRTYPE),
                   ti("opq/.wh..wh..opq"), ti("opq/new", data=b"new"),
                   ti("bin/sym", tarfile.SYMTYPE, linkname="tool")]
    t, d = ti("bin/attr", data=b"a")
    t.pax_headers = {"SCHILY.xattr.user.cbx": "yes"}
    top = layer_tar(top_entries + [(t, d)])
    oci_layout(f"{tmp}/lay", [base, top], ["v1", "v2"])
    store = ImageStore(f"{tmp}/root")
    assert archive.load(store, f"{tmp}/lay") == ["lay:v1", "lay:v2"]
    img = store.get("lay:v1")
    assert img.config["Cmd"] == ["/bin/sh"] and store.get("lay:v2").id == img.id
    assert img.layers == [_sha(base), _sha(top)]
    lower, upper = (store.layers.path(d) for d in img.layers)
    st = os.stat(f"{lower}/bin/tool")
    assert stat.S_IMODE(st.st_mode) == 0o4755 and (st.st_uid, st.st_gid) == (12, 34)
    wh = os.lstat(f"{upper}/etc/gone")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert os.getxattr(f"{upper}/opq", "trusted.overlay.opaque") == b"y"
    assert os.stat(f"{lower}/bin/link").st_ino == os.stat(f"{lower}/bin/tool").st_ino
    assert os.readlink(f"{upper}/bin/sym") == "tool"
    assert os.getxattr(f"{upper}/bin/attr", "user.cbx") == b"yes"
    # the same layout as a tar, plain layers this time, into another root
    oci_layout(f"{tmp}/plain", [base, top], ["x"], gz=False)
    tar_dir(f"{tmp}/plain", f"{tmp}/plain.tar")
    other = ImageStore(f"{tmp}/root2")
    assert archive.load(other, f"{tmp}/plain.tar") == ["plain:x"]
    assert other.get("plain:x").layers == img.layers


def test_save_and_load_round_trip_in_both_formats(tmp: str) -> None:
    from .test_registry import make_image

    store = ImageStore(f"{tmp}/root")
    base = make_image(store, "team/app:base", {"etc/a": b"a", "keep": b"k"}, tmp)
    child = make_image(store, "team/app:child", {"etc/b": b"b"}, tmp, parent=base)
    store.tag(child, "other:1")
    for fmt, out in (("docker", f"{tmp}/out.tar"), ("oci", f"{tmp}/out-oci.tar"), ("oci", f"{tmp}/ocidir/")):
        archive.save(store, ["team/app:child", "other:1", "team/app:base"], out, fmt)
        dst = ImageStore(f"{tmp}/dst-{fmt}-{len(out)}")
        loaded = archive.load(dst, out)
        assert sorted(loaded) == ["other:1", "team/app:base", "team/app:child"], (fmt, loaded)
        assert dst.get("other:1").id == dst.get("team/app:child").id
        assert dst.get("team/app:child").layers == store.get(child).layers
        assert dst.get("team/app:child").config == store.get(child).config
        assert [h["created_by"] for h in dst.history("other:1")] == [h["created_by"] for h in store.history(child)]
    assert sorted(os.listdir(f"{tmp}/ocidir")) == ["blobs", "index.json", "oci-layout"]
    # saving is deterministic: the same images give the same bytes
    archive.save(store, ["team/app:child", "other:1", "team/app:base"], f"{tmp}/again.tar", "docker")
    with open(f"{tmp}/out.tar", "rb") as a, open(f"{tmp}/again.tar", "rb") as b:
        assert a.read() == b.read()


def test_legacy_docker_save_and_a_gzipped_archive_load(tmp: str) -> None:
    base = layer_tar([ti("hello", data=b"hi")])
    top = layer_tar([ti(".wh.hello"), ti("world", data=b"w")])
    ids = [hashlib.sha256(b"1").hexdigest(), hashlib.sha256(b"2").hexdigest()]
    with tarfile.open(f"{tmp}/legacy.tar", "w") as t:
        for i, (lid, data) in enumerate(zip(ids, (base, top))):
            meta = {"id": lid, "config": {"Cmd": ["/bin/true"], "Env": ["X=1"]}}
            if i:
                meta["parent"] = ids[0]
            for name, blob in ((f"{lid}/json", json.dumps(meta).encode()), (f"{lid}/layer.tar", data),
                               (f"{lid}/VERSION", b"1.0")):
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                t.addfile(info, io.BytesIO(blob))
        repos = json.dumps({"old": {"1.0": ids[1]}}).encode()
        info = tarfile.TarInfo("repositories")
        info.size = len(repos)
        t.addfile(info, io.BytesIO(repos))
    store = ImageStore(f"{tmp}/root")
    assert archive.load(store, f"{tmp}/legacy.tar") == ["old:1.0"]
    img = store.get("old:1.0")
    assert img.config["Cmd"] == ["/bin/true"] and img.layers == [_sha(base), _sha(top)]
    with open(f"{tmp}/legacy.tar", "rb") as f, open(f"{tmp}/legacy.tar.gz", "wb") as g:
        g.write(gzip.compress(f.read()))
    other = ImageStore(f"{tmp}/root2")
    assert archive.load(other, f"{tmp}/legacy.tar.gz") == ["old:1.0"]


@pytest.mark.parametrize("damage", ["flip", "truncate-blob", "truncate-archive", "escape", "diffid"])
def test_damaged_archives_are_refused_and_leave_nothing(tmp: str, damage: str) -> None:
    from .test_registry import make_image

    store = ImageStore(f"{tmp}/root")
    make_image(store, "keep:1", {"k": b"k"}, tmp)
    before = snapshot(f"{tmp}/root")
    good = layer_tar([ti("ok", data=os.urandom(50_000))])
    bad = layer_tar([ti("../../evil", data=b"x")]) if damage == "escape" else layer_tar([ti("f", data=os.urandom(300_000))])
    blobs = oci_layout(f"{tmp}/lay", [good, bad], ["t"], gz=damage != "diffid")
    target = f"{tmp}/lay/blobs/sha256/{blobs['layers'][1][7:]}"
    if damage == "flip":
        with open(target, "r+b") as f:
            f.seek(1000)
            f.write(b"\0\0\0\0")
    elif damage == "truncate-blob":
        os.truncate(target, os.path.getsize(target) // 2)
    elif damage == "diffid":
        # a valid blob whose content is not the layer the config names
        with open(target, "wb") as f:
            f.write(layer_tar([ti("other", data=b"o")]))
        os.rename(target, target)
    path = f"{tmp}/lay"
    if damage == "truncate-archive":
        tar_dir(f"{tmp}/lay", f"{tmp}/lay.tar")
        os.truncate(f"{tmp}/lay.tar", os.path.getsize(f"{tmp}/lay.tar") - 200_000)
        path = f"{tmp}/lay.tar"
    with pytest.raises(InvalidArgument) as exc:
        archive.load(store, path)
    msg = str(exc.value)
    assert "refusing the image archive entry" in msg, msg
    assert {"flip": "sha256", "truncate-blob": "truncated", "escape": "..",
            "diffid": "descriptor", "truncate-archive": "missing"}[damage] in msg or \
        "not a valid" in msg or "truncated" in msg, msg
    assert snapshot(f"{tmp}/root") == before
    assert os.listdir(f"{tmp}/root/tmp") == []


def test_save_refuses_unknown_images_and_leaves_no_file(tmp: str) -> None:
    store = ImageStore(f"{tmp}/root")
    with pytest.raises(NotFound):
        archive.save(store, ["nope:1"], f"{tmp}/out.tar")
    with pytest.raises(InvalidArgument, match="format"):
        archive.save(store, ["nope:1"], f"{tmp}/out.tar", "zip")
    os.makedirs(f"{tmp}/full")
    open(f"{tmp}/full/x", "w").close()
    from .test_registry import make_image
    make_image(store, "a:1", {"a": b"a"}, tmp)
    with pytest.raises(InvalidArgument, match="not empty"):
        archive.save(store, ["a:1"], f"{tmp}/full/", "oci")
    assert sorted(n for n in os.listdir(tmp) if not n.startswith("cbx-src")) == ["full", "root"]
    assert os.listdir(f"{tmp}/full") == ["x"] and os.listdir(f"{tmp}/root/tmp") == []


def test_cli_load_and_save(tmp: str) -> None:
    from .test_registry import make_image

    make_image(ImageStore(f"{tmp}/a"), "cli/img:1", {"x": b"x"}, tmp)
    p = cli(f"{tmp}/a", "save", "-o", f"{tmp}/img.tar", "--format", "oci", "cli/img:1")
    assert p.returncode == 0, p.stderr
    p = cli(f"{tmp}/b", "load", "-i", f"{tmp}/img.tar")
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode() == "Loaded image: cli/img:1\n"
    with open(f"{tmp}/junk.tar", "wb") as f:
        f.write(b"not a tar at all" * 100)
    p = cli(f"{tmp}/b", "load", "-i", f"{tmp}/junk.tar")
    assert p.returncode == 125 and "not a valid tar" in p.stderr.decode()
