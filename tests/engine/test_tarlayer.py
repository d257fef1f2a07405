"""engine.tarlayer: layer tars round trip, whiteouts both ways, and hostile archives."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile

import pytest

from engine.errors import InvalidArgument
from engine.tarlayer import apply_tar, diff_tar



def _tree(root: str) -> dict[str, tuple]:
    """Everything a user would compare about a tree, keyed by relative path."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            extra: object = None
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    extra = (f.read(), st.st_nlink)
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode):
                extra = st.st_rdev
            xattrs = {} if stat.S_ISLNK(st.st_mode) else {
                x: os.getxattr(p, x) for x in os.listxattr(p) if x.startswith(("user.", "trusted."))
            }
            mtime = None if stat.S_ISLNK(st.st_mode) else int(st.st_mtime)
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, mtime, extra, xattrs)
    return out


def _sample(root: str) -> None:
    os.makedirs(f"{root}/etc/app")
    os.makedirs(f"{root}/opaque/inner")
    with open(f"{root}/etc/app/conf", "w") as f:
        f.write("key=value\n")
    with open(f"{root}/bin", "wb") as f:
        f.write(os.urandom(200_000))
    os.chmod(f"{root}/bin", 0o4755)
    os.chown(f"{root}/etc/app/conf", 1000, 1001)
    os.link(f"{root}/etc/app/conf", f"{root}/etc/conf-hardlink")
    os.symlink("app/conf", f"{root}/etc/conf-symlink")
    os.symlink("/nonexistent/abs", f"{root}/dangling")
    os.mkfifo(f"{root}/fifo")
    os.setxattr(f"{root}/bin", "user.note", b"\xffbinary\x00value")
    os.setxattr(f"{root}/etc", "trusted.cbx", b"t")
    os.mknod(f"{root}/etc/deleted", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    os.setxattr(f"{root}/opaque", "trusted.overlay.opaque", b"y")
    with open(f"{root}/opaque/inner/x", "w") as f:
        f.write("x")
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (1_500_000_000, 1_500_000_000), follow_symlinks=False)


def test_round_trip_keeps_modes_owners_mtimes_links_xattrs_whiteouts(tmp):
    src, dst = f"{tmp}/src", f"{tmp}/dst"
    os.mkdir(src)
    os.mkdir(dst)
    _sample(src)
    buf = io.BytesIO()
    diff_id, size = diff_tar(src, buf)
    buf.seek(0)
    applied_id, applied_size = apply_tar(buf, dst)
    assert diff_id == applied_id and diff_id.startswith("sha256:") and len(diff_id) == 71
    assert size == applied_size == 200_000 + len("key=value\n") + 1  # a hard link counts once
    assert _tree(dst) == _tree(src)
    assert os.stat(f"{dst}/etc/conf-hardlink").st_ino == os.stat(f"{dst}/etc/app/conf").st_ino
    assert os.getxattr(f"{dst}/opaque", "trusted.overlay.opaque") == b"y"
    assert os.stat(f"{dst}/bin").st_mode & 0o7777 == 0o4755


def test_oci_form_uses_wh_entries(tmp):
    src = f"{tmp}/src"
    os.mkdir(src)
    _sample(src)
    buf = io.BytesIO()
    diff_tar(src, buf)
    buf.seek(0)
    names = tarfile.open(fileobj=buf).getnames()
    assert "etc/.wh.deleted" in names and "etc/deleted" not in names
    assert "opaque/.wh..wh..opq" in names
    assert names.index("opaque/.wh..wh..opq") == names.index("opaque") + 1
    for name in names:  # pre-order: a directory comes before what is inside it
        head = name.rpartition("/")[0]
        assert not head or names.index(head) < names.index(name)


def test_same_content_same_diff_id_and_gzip_detected(tmp):
    src = f"{tmp}/src"
    os.mkdir(src)
    _sample(src)
    a, b = io.BytesIO(), io.BytesIO()
    assert diff_tar(src, a) == diff_tar(src, b)
    plain = a.getvalue()
    gz = io.BytesIO(gzip.compress(plain))
    os.mkdir(f"{tmp}/g")
    diff_id, _ = apply_tar(gz, f"{tmp}/g")
    assert diff_id == diff_tar(src, io.BytesIO())[0]  # the id is of the uncompressed tar
    assert _tree(f"{tmp}/g") == _tree(src)


def test_oci_whiteouts_from_a_foreign_tar(tmp):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("./a/", "./a/.wh..wh..opq", "./.wh.gone", "/abs/file"):
            ti = tarfile.TarInfo(name)
            if name.endswith("/"):
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
            tar.addfile(ti, io.BytesIO(b""))
    buf.seek(0)
    apply_tar(buf, tmp)
    st = os.lstat(f"{tmp}/gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(f"{tmp}/a", "trusted.overlay.opaque") == b"y"
    assert os.path.isfile(f"{tmp}/abs/file")  # leading '/' stripped


def _tar(*entries: tarfile.TarInfo, data: dict[str, bytes] | None = None) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for ti in entries:
            payload = (data or {}).get(ti.name)
            if payload is not None:
                ti.size = len(payload)
            tar.addfile(ti, io.BytesIO(payload) if payload is not None else None)
    buf.seek(0)
    return buf


def _ti(name: str, type_: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = type_
    ti.linkname = linkname
    ti.mode = 0o644
    return ti


@pytest.mark.parametrize(
    "archive, entry",
    [
        (lambda: _tar(_ti("../escape"), data={"../escape": b"x"}), "../escape"),
        (lambda: _tar(_ti("a/../../escape"), data={"a/../../escape": b"x"}), "a/../../escape"),
        (lambda: _tar(_ti("link", tarfile.SYMTYPE, "{outside}"), _ti("link/evil"), data={"link/evil": b"x"}), "link/evil"),
        (lambda: _tar(_ti("hl", tarfile.LNKTYPE, "{outside}/victim")), "hl"),
        (lambda: _tar(_ti("hl", tarfile.LNKTYPE, "../victim")), "../victim"),
        (lambda: _tar(_ti("null", tarfile.CHRTYPE)), "null"),
    ],
    ids=["dotdot", "nested-dotdot", "through-symlink", "abs-hardlink", "escaping-hardlink", "device"],
)
def test_hostile_entries_are_refused_and_nothing_lands_outside(tmp, archive, entry):
    outside = f"{tmp}/outside"
    dest = f"{tmp}/dest/layer"
    os.makedirs(outside)
    os.makedirs(dest)
    with open(f"{outside}/victim", "w") as f:
        f.write("untouched")
    before = sorted(os.listdir(tmp)), sorted(os.listdir(outside))
    buf = archive()
    raw = buf.getvalue().replace(b"{outside}", outside.encode())
    # the placeholder changes length inside the PAX/ustar header: rebuild instead
    if raw != buf.getvalue():
        entries = []
        for ti in tarfile.open(fileobj=io.BytesIO(buf.getvalue())).getmembers():
            ti.linkname = ti.linkname.replace("{outside}", outside)
            entries.append(ti)
        buf = _tar(*entries, data={"link/evil": b"x"})
    with pytest.raises(InvalidArgument) as err:
        apply_tar(buf, dest)
    assert entry.replace("{outside}", outside) in str(err.value)
    assert (sorted(os.listdir(tmp)), sorted(os.listdir(outside))) == before
    with open(f"{outside}/victim") as f:
        assert f.read() == "untouched"
    assert os.stat(f"{outside}/victim").st_nlink == 1
    assert not os.path.exists(f"{tmp}/dest/escape") and not os.path.exists(f"{tmp}/escape")


def test_devices_allowed_on_request(tmp):
    ti = _ti("dev/null", tarfile.CHRTYPE)
    ti.devmajor, ti.devminor = 1, 3
    apply_tar(_tar(ti), tmp, allow_devices=True)
    assert os.stat(f"{tmp}/dev/null").st_rdev == os.makedev(1, 3)


def test_garbage_is_invalid_argument(tmp):
    with pytest.raises(InvalidArgument, match="not a valid layer tar"):
        apply_tar(io.BytesIO(b"\x1f\x8b" + b"nonsense" * 100), tmp)


# --- the hand-written header parser: formats other tools write, and damage ---

def _gnu_tar(tmp: str, *args: str) -> bytes:
    """A tar written by GNU tar itself (not Python's tarfile) from the tree ``tmp/src``."""
    import subprocess

    out = f"{tmp}/gnu.tar"
    subprocess.run(["tar", *args, "-cf", out, "-C", f"{tmp}/src", "."], check=True)
    with open(out, "rb") as f:
        return f.read()


@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar"])
def test_gnu_tar_formats_long_names_sparse_and_modes_extract_exactly(tmp, fmt):
    src = f"{tmp}/src"
    deep = f"{src}/{'d' * 60}/{'e' * 60}"
    os.makedirs(deep)
    with open(f"{deep}/{'f' * 90}", "w") as f:
        f.write("long")
    with open(f"{src}/sparse", "wb") as f:
        f.seek(3 << 20)
        f.write(b"tail")
        f.seek(0)
        f.write(b"head")
    with open(f"{src}/setuid", "w") as f:
        f.write("s")
    os.chmod(f"{src}/setuid", 0o4755)
    with open(f"{src}/open", "w") as f:
        f.write("o")
    os.chmod(f"{src}/open", 0o666)  # wider than the umask: must not be cut
    os.chown(f"{src}/open", 1234, 5678)
    if fmt == "posix":
        os.setxattr(f"{src}/open", "user.k", b"v")
    for dirpath, dirnames, filenames in os.walk(src, topdown=False):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (1_500_000_000, 1_500_000_000))
    extra = (["--xattrs"] if fmt == "posix" else []) + ([] if fmt == "ustar" else ["--sparse"])
    data = _gnu_tar(tmp, f"--format={fmt}", "--numeric-owner", *extra)
    dest = f"{tmp}/dest"
    os.mkdir(dest)
    old = os.umask(0o022)
    try:
        _, size = apply_tar(io.BytesIO(data), dest)
    finally:
        os.umask(old)
    want = _tree(src)
    want.pop("", None)
    got = _tree(dest)
    assert got == want
    assert os.stat(f"{dest}/open").st_mode & 0o7777 == 0o666
    assert os.stat(f"{dest}/setuid").st_mode & 0o7777 == 0o4755
    assert size == sum(os.lstat(os.path.join(d, n)).st_size for d, _, fs in os.walk(src) for n in fs)


def test_a_later_entry_replaces_an_earlier_file(tmp):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for content in (b"first version", b"second"):
            ti = tarfile.TarInfo("etc/conf")
            ti.size = len(content)
            tar.addfile(ti, io.BytesIO(content))
    buf.seek(0)
    apply_tar(buf, tmp)
    with open(f"{tmp}/etc/conf", "rb") as f:
        assert f.read() == b"second"


def _two_files() -> bytearray:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in ("a", "b"):
            ti = tarfile.TarInfo(name)
            ti.size = 600
            tar.addfile(ti, io.BytesIO(b"x" * 600))
    return bytearray(buf.getvalue())


def test_a_bad_header_checksum_anywhere_is_refused(tmp):
    data = _two_files()
    data[1536 + 10] ^= 0x01  # the second member's header (after 512 + 1024 bytes)
    with pytest.raises(InvalidArgument, match="bad checksum"):
        apply_tar(io.BytesIO(bytes(data)), tmp)


@pytest.mark.parametrize("cut", [1536 + 100, 1536 + 512 + 100])
def test_a_truncated_archive_is_refused(tmp, cut):
    data = bytes(_two_files()[:cut])
    with pytest.raises(InvalidArgument, match="truncated"):
        apply_tar(io.BytesIO(data), tmp)


def test_corrupt_gzip_data_is_refused_with_a_clear_error(tmp_path) -> None:
    import zlib

    # compressible content, so a flipped byte breaks the deflate stream itself (zlib.error)
    # and not only the trailing CRC (BadGzipFile)
    raw = io.BytesIO()
    data = b"".join(b"line %d of a compressible layer\n" % i for i in range(20000))
    with tarfile.open(fileobj=raw, mode="w") as t:
        info = tarfile.TarInfo("f")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    good = gzip.compress(raw.getvalue())
    for pos in range(len(good) // 3, len(good) - 20):
        blob = bytearray(good)
        blob[pos] ^= 0xFF
        try:
            gzip.decompress(bytes(blob))
        except zlib.error:
            break
        except (gzip.BadGzipFile, EOFError):
            continue
    else:
        pytest.fail("no single-byte flip broke the deflate stream")
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(InvalidArgument, match="not a valid layer"):
        apply_tar(io.BytesIO(bytes(blob)), str(dest))


class _Trickle(io.RawIOBase):
    """A stream that hands out at most a few kB per read (as a pipe or a socket does)."""

    def __init__(self, data: bytes, seed: int) -> None:
        import random

        self._data = memoryview(data)
        self._pos = 0
        self._rnd = random.Random(seed)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        n = self._rnd.randint(1, 9000)
        if size >= 0:
            n = min(n, size)
        out = bytes(self._data[self._pos:self._pos + n])
        self._pos += len(out)
        return out


@pytest.mark.parametrize("seed", [1, 2])
def test_short_reads_and_members_across_buffer_ends_extract_exactly(tmp, seed):
    """Headers and data that straddle the reader's 1 MiB chunks and short reads."""
    import random

    rnd = random.Random(seed)
    src = f"{tmp}/src"
    os.makedirs(f"{src}/d")
    for i in range(60):
        size = rnd.choice([0, 1, 511, 512, 513, rnd.randint(1, 200_000), (1 << 20) + rnd.randint(-600, 600)])
        with open(f"{src}/d/f{i}", "wb") as f:
            f.write(rnd.randbytes(size))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        t.add(src, "")
    dest = f"{tmp}/dest"
    os.mkdir(dest)
    diff_id, size = apply_tar(_Trickle(buf.getvalue(), seed), dest)
    import hashlib

    assert diff_id == "sha256:" + hashlib.sha256(buf.getvalue()).hexdigest()
    assert size == sum(os.path.getsize(f"{src}/d/{n}") for n in os.listdir(f"{src}/d"))
    for name in os.listdir(f"{src}/d"):
        with open(f"{src}/d/{name}", "rb") as a, open(f"{dest}/d/{name}", "rb") as b:
            assert a.read() == b.read(), name


def test_the_fast_header_checksum_agrees_with_tarfile():
    import random

    from engine.tarlayer import _header_sum

    rnd = random.Random(7)
    blocks = [bytes([255]) * 512, bytes(512)] + [rnd.randbytes(512) for _ in range(2000)]
    for block in blocks:
        assert _header_sum(block) == tarfile.calc_chksums(block)[0]


def _header(name: str, size_field: bytes) -> bytes:
    ti = tarfile.TarInfo(name)
    block = bytearray(ti.tobuf(format=tarfile.USTAR_FORMAT))
    block[124:136] = size_field
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block) + bytes(1024)


@pytest.mark.parametrize("size_field", [b"-0000000001\0", b"00000000zz\0\0"])
def test_a_negative_or_garbled_size_is_refused(tmp, size_field):
    with pytest.raises(InvalidArgument, match="negative size|not a number"):
        apply_tar(io.BytesIO(_header("f", size_field)), tmp)
    assert not os.path.exists(f"{tmp}/f")


def _one_file_tar(name: str, content: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        ti = tarfile.TarInfo(name)
        ti.size = len(content)
        t.addfile(ti, io.BytesIO(content))
    return buf.getvalue()


def test_concatenated_gzip_members_and_zero_padding_are_one_stream(tmp):
    """``gzip -c a b`` and padded files: what GNU tar and Python's gzip accept."""
    import hashlib

    raw = _one_file_tar("f", b"y" * 300_000)
    cut = 700
    data = gzip.compress(raw[:cut]) + gzip.compress(raw[cut:]) + bytes(100)
    diff_id, _ = apply_tar(io.BytesIO(data), tmp)
    assert diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    with open(f"{tmp}/f", "rb") as f:
        assert f.read() == b"y" * 300_000


@pytest.mark.parametrize("damage", ["crc", "truncated"])
def test_a_gzip_with_a_wrong_crc_or_cut_short_is_refused(tmp, damage):
    data = bytearray(gzip.compress(_one_file_tar("f", os.urandom(50_000))))
    if damage == "crc":
        data[-8] ^= 0xFF  # the trailer's CRC32 of the uncompressed data
    else:
        del data[-30:]
    with pytest.raises(InvalidArgument, match="not a valid layer tar"):
        apply_tar(io.BytesIO(bytes(data)), tmp)


def test_a_refused_entry_early_in_a_big_stream_stops_the_gunzip_thread(tmp):
    """The extraction fails at the first entry while the gunzip thread is far from done."""
    import threading

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        t.addfile(tarfile.TarInfo("../escape"))
        for i in range(40):
            ti = tarfile.TarInfo(f"big{i}")
            ti.size = 1 << 20
            t.addfile(ti, io.BytesIO(bytes(1 << 20)))
    before = {th.ident for th in threading.enumerate()}
    with pytest.raises(InvalidArgument, match=r"contains '\.\.'"):
        apply_tar(io.BytesIO(gzip.compress(buf.getvalue(), compresslevel=1)), tmp)
    assert {th.ident for th in threading.enumerate()} <= before
    assert os.listdir(tmp) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
@pytest.mark.parametrize("setgid_dir", ["in the archive", "the destination"])
def test_files_under_a_set_group_id_directory_get_the_group_the_tar_says(tmp, setgid_dir):
    """A new file takes a setgid directory's group; the tar's group must still win."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        if setgid_dir == "in the archive":
            d = tarfile.TarInfo("shared")
            d.type, d.mode, d.gid = tarfile.DIRTYPE, 0o2775, 4321
            t.addfile(d)
        for name, gid in (("shared/root-file", 0), ("shared/sub/deeper", 0), ("shared/group-file", 4321)):
            ti = tarfile.TarInfo(name)
            ti.size, ti.gid = 2, gid
            t.addfile(ti, io.BytesIO(b"ok"))
    dest = f"{tmp}/dest"
    os.mkdir(dest)
    if setgid_dir == "the destination":
        os.chown(dest, 0, 4321)
        os.chmod(dest, 0o2775)
    apply_tar(io.BytesIO(buf.getvalue()), dest)
    assert os.stat(f"{dest}/shared/root-file").st_gid == 0
    assert os.stat(f"{dest}/shared/sub/deeper").st_gid == 0
    assert os.stat(f"{dest}/shared/group-file").st_gid == 4321
    assert os.stat(f"{dest}/shared/root-file").st_uid == 0


def test_a_plain_tar_into_a_tree_keeps_whiteout_names_and_never_swaps_dirs_and_files(tmp) -> None:
    def tar_of(*names: str) -> io.BytesIO:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            for name in names:
                ti = tarfile.TarInfo(name.rstrip("/"))
                if name.endswith("/"):
                    ti.type = tarfile.DIRTYPE
                t.addfile(ti, io.BytesIO(b""))
        buf.seek(0)
        return buf

    os.makedirs(f"{tmp}/dir")
    open(f"{tmp}/file", "w").close()
    apply_tar(tar_of(".wh.kept", "file"), tmp, layer=False, owner=(0, 0))
    assert os.path.isfile(f"{tmp}/.wh.kept") and not os.path.exists(f"{tmp}/kept")
    with pytest.raises(InvalidArgument, match="directory 'dir' with a non-directory"):
        apply_tar(tar_of("dir"), tmp, layer=False)
    with pytest.raises(InvalidArgument, match="non-directory 'file' with a directory"):
        apply_tar(tar_of("file/"), tmp, layer=False)
    assert os.path.isdir(f"{tmp}/dir") and os.path.isfile(f"{tmp}/file")
