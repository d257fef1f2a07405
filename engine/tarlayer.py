"""Layer tars: safe extraction into an overlay-form directory, and the reverse.

A layer travels as a tar in OCI form: a deleted path is an empty file ``.wh.NAME`` and a
directory that hides everything below it holds ``.wh..wh..opq``.  On disk (the overlayfs
form) the same facts are a character device 0/0 named ``NAME`` and the xattr
``trusted.overlay.opaque=y`` on the directory.  :func:`apply_tar` converts the first
form into the second, :func:`diff_tar` the second into the first.

A layer's id is its *diff id*: ``sha256:`` + the hex digest of its uncompressed tar.
The ``size`` both functions return is the sum of the regular files' sizes (what
``docker history`` shows for a layer), not the length of the tar.

Extraction is defensive (a layer tar is untrusted input): names are made relative,
``..`` is refused, nothing is ever written through a symlink, hard links must point at
something already extracted inside the destination, and device nodes are *refused*
(with :class:`~engine.errors.InvalidArgument` naming the entry) unless the caller passes
``allow_devices=True``.  FIFOs are always allowed.  An entry that fails a check stops the
extraction; the caller throws the half-made destination away (the layer store builds
layers in a staging directory for that reason).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import queue
import shutil
import stat
import tarfile
import threading
import zlib
from collections.abc import Iterator
from typing import IO, BinaryIO

from engine.errors import InvalidArgument

__all__ = ["apply_tar", "diff_tar", "tar_info", "xattrs_of", "add_special", "add_path", "WHITEOUT_PREFIX",
           "OPAQUE_MARKER", "OPAQUE_XATTR"]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"

_BUFSIZE = 1 << 20
# xattr namespaces carried by layers; trusted.overlay.* is overlayfs's own bookkeeping
# (opaque dirs travel as .wh..wh..opq, never as a raw xattr a tar could forge)
_XATTR_PREFIXES = ("user.", "trusted.", "security.capability")
_PAX_XATTR = "SCHILY.xattr."
_EUID, _EGID = os.geteuid(), os.getegid()
_IS_ROOT = _EUID == 0


def _keep_xattr(name: str) -> bool:
    return name.startswith(_XATTR_PREFIXES) and not name.startswith("trusted.overlay.")


class _Source:
    """The uncompressed tar stream, hashed on a second core.

    sha256 and zlib's inflate drop the GIL, so in a helper thread they run beside the
    parser, whose Python holds it.  A gzipped stream is read, gunzipped and hashed
    by the helper, which hands the chunks over a short queue (memory stays bounded
    and a slow extraction slows the reading).  A plain stream is read in line (a
    thread between the file and the parser cost more than it saved) and only its
    hashing is handed to the helper, which runs far ahead of the extraction.
    :meth:`read` hands out the chunks (or raises what the helper met);
    :meth:`hexdigest` is the sha256 of everything handed out.
    """

    def __init__(self, fileobj: IO[bytes]) -> None:
        self._digest = hashlib.sha256()
        self._ended = False
        self._stopping = False
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=8)
        magic = _read_upto(fileobj, 2)
        if magic != b"\x1f\x8b":
            self._plain: Iterator[bytes] | None = _plain_chunks(fileobj, magic)
            target, args = self._hash, ()
        else:
            self._plain = None
            target, args = self._run, (_gunzip_chunks(fileobj, magic),)
        self._thread = threading.Thread(target=target, args=args, name="cbx-layer-source", daemon=True)
        self._thread.start()

    def _run(self, chunks: Iterator[bytes]) -> None:
        """Gzip: read, gunzip and hash, handing the chunks to :meth:`read`."""
        try:
            for chunk in chunks:
                if self._stopping:
                    return
                self._digest.update(chunk)
                self._queue.put(chunk)
        except Exception as exc:  # handed to the extracting thread, which raises it
            self._queue.put(exc)
        else:
            self._queue.put(None)

    def _hash(self) -> None:
        """Plain: hash what :meth:`read` queues, until None."""
        update, get = self._digest.update, self._queue.get
        while (chunk := get()) is not None:
            update(chunk)

    def read(self, size: int = -1) -> bytes:
        """The next chunk (of any length up to 1 MiB); b"" at the end."""
        if self._ended:
            return b""
        if self._plain is not None:
            item: bytes | BaseException | None = next(self._plain, None)
            if item is not None:
                self._queue.put(item)
        else:
            item = self._queue.get()
        if item is None:
            self._ended = True
            return b""
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        return item

    def hexdigest(self) -> str:
        """The hex sha256 of everything read (call once :meth:`read` gave b"")."""
        self.stop()
        return self._digest.hexdigest()

    def stop(self) -> None:
        """End the helper, whether or not the stream was read to its end (idempotent)."""
        if not self._thread.is_alive():
            return
        if self._plain is not None:
            self._queue.put(None)  # the hasher ends after what is queued
            self._thread.join()
            return
        self._stopping = True
        while self._thread.is_alive():
            try:  # make room for a put the thread may be blocked in
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()


def _read_upto(fileobj: IO[bytes], n: int) -> bytes:
    """``n`` bytes, fewer only at the end of the stream (a pipe may give fewer per read)."""
    data = b""
    while len(data) < n:
        more = fileobj.read(n - len(data))
        if not more:
            break
        data += more
    return data


def _plain_chunks(fileobj: IO[bytes], head: bytes) -> Iterator[bytes]:
    if head:
        yield head
    while data := fileobj.read(_BUFSIZE):
        yield data


def _gunzip_chunks(fileobj: IO[bytes], head: bytes) -> Iterator[bytes]:
    """The gunzipped stream in chunks of up to 1 MiB.

    zlib checks each gzip member's CRC and length itself; members may follow one
    another (and zero padding may follow the last), as with ``gzip -c a b``.
    """
    d = zlib.decompressobj(wbits=31)
    data = head
    while True:
        if not data:
            data = fileobj.read(_BUFSIZE)
            if not data:
                if not d.eof:
                    raise EOFError("the gzip stream ends before its end marker (a truncated file)")
                return
        if d.eof:  # a member ended: padding, or the next member
            data = data.lstrip(b"\0")
            if data:
                d = zlib.decompressobj(wbits=31)
            continue
        out = d.decompress(data, _BUFSIZE)
        if out:
            yield out
        data = d.unused_data if d.eof else d.unconsumed_tail


class _ForwardReader:
    """A forward-only reader over one big buffer that looks seekable to :mod:`tarfile`.

    Headers are sliced straight out of a 1 MiB chunk of the stream (a Python-level
    slice costs less than a call into :class:`io.BufferedReader` and back), and member
    data can be taken as views of that chunk without copying (:meth:`view`).  Only
    forward seeks happen (tarfile skips the padding after a member's data with
    ``seek(offset - 1); read(1)``), done by skipping.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._data = b""
        self._off = 0  # where in _data the stream is
        self._base = 0  # the stream offset of _data[0]

    @property
    def pos(self) -> int:
        """The stream offset of the next byte read."""
        return self._base + self._off

    def _refill(self) -> bool:
        self._base += len(self._data)
        self._data = self._raw.read(_BUFSIZE)
        self._off = 0
        return bool(self._data)

    def read(self, size: int = -1) -> bytes:
        off = self._off
        end = off + size
        if 0 <= size and end <= len(self._data):
            self._off = end
            return self._data[off:end]
        parts = [self._data[off:]]
        have = len(parts[0])
        while (size < 0 or have < size) and self._refill():
            take = len(self._data) if size < 0 else min(size - have, len(self._data))
            parts.append(self._data[:take])
            self._off = take
            have += take
        return b"".join(parts)

    def view(self, size: int) -> memoryview:
        """Up to ``size`` of the next bytes (empty only at the end), as a view of the buffer."""
        off = self._off
        if off == len(self._data):
            if not self._refill():
                return memoryview(b"")
            off = 0
        end = min(off + size, len(self._data))
        self._off = end
        return memoryview(self._data)[off:end]

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0 or pos < self.pos:
            raise io.UnsupportedOperation("a layer tar is read forward only")
        while pos - self._base > len(self._data):
            if not self._refill():
                break
        self._off = min(pos - self._base, len(self._data))
        return self.pos


class _PrefixedReader(io.RawIOBase):
    """``prefix`` followed by the rest of ``raw`` (to sniff magic on a pipe)."""

    def __init__(self, prefix: bytes, raw: IO[bytes]) -> None:
        self._prefix = prefix
        self._raw = raw

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._prefix:
            if size < 0:
                data, self._prefix = self._prefix + self._raw.read(), b""
                return data
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return self._raw.read(size)

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


class HashingWriter:
    """A write-only file that hashes (sha256) and counts what passes through to ``out``."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.digest = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.count += len(data)
        self._out.write(data)
        return len(data)

    def tell(self) -> int:
        return self.count

    def flush(self) -> None:
        self._out.flush()


def _clean_name(name: str, what: str) -> list[str]:
    """The path components of a tar name, made relative; ``..`` is refused."""
    parts = name.split("/")
    if "" in parts or "." in parts:
        parts = [p for p in parts if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(
            f"unsafe layer tar: {what} {name!r} contains '..'; the archive tries to write "
            "outside its layer, refusing it (rebuild the tar with relative paths)"
        )
    return parts


_BLOCK = 512
_REG_TYPES = frozenset(b"07\0")
_HEADER_ONLY = frozenset(b"123456")
_POSIX_MAGIC = b"ustar\x0000"
_ZERO_BLOCK = bytes(_BLOCK)
_SPARSE = ord("S")
_PAX, _GLOBAL_PAX, _LONGNAME = ord("x"), ord("g"), ord("L")
_EXTENDED = frozenset(b"xgLK")  # headers that describe the header after them
_DEVICES = frozenset(b"34")
_TYPE_BYTES = tuple(bytes((i,)) for i in range(256))
# the pax keys that mark a GNU sparse member (formats 0.0, 0.1 and 1.0), as tarfile reads them
_SPARSE_KEYS = frozenset(("GNU.sparse.size", "GNU.sparse.offset", "GNU.sparse.map", "GNU.sparse.major"))


def _header_sum(buf: bytes) -> int:
    """A header block's unsigned checksum: its byte sum with the checksum field as spaces."""
    # adler32's low half is 1 + the byte sum mod 65521, exact for runs of up to 256 bytes
    a = zlib.adler32
    return (a(buf[:148]) & 0xFFFF) + (a(buf[156:412]) & 0xFFFF) + (a(buf[412:]) & 0xFFFF) + 253


def _nts(b: bytes) -> str:
    i = b.find(b"\0")
    return (b if i < 0 else b[:i]).decode("utf-8", "surrogateescape")


def _nti(b: bytes) -> int:
    try:  # the usual field: octal digits ended by NUL or space
        return int(b.rstrip(b"\0 "), 8)
    except ValueError:
        return _nti_other(b)


def _nti_other(b: bytes) -> int:
    if b[0] in (0o200, 0o377):  # base-256 (GNU, for numbers octal cannot hold)
        n = int.from_bytes(b[1:], "big")
        return n - (256 ** (len(b) - 1)) if b[0] == 0o377 else n
    i = b.find(b"\0")
    s = (b if i < 0 else b[:i]).strip()
    try:
        return int(s, 8) if s else 0
    except ValueError:
        raise InvalidArgument(
            f"layer tar has a header field that is not a number ({bytes(b)!r}); the archive is corrupt"
        ) from None


def _parse_pax(data: bytes, into: dict[str, str]) -> None:
    pos = 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        sp = data.index(b" ", pos)
        length = int(data[pos:sp])
        if length <= 0:
            raise tarfile.InvalidHeaderError("invalid pax record length")
        rec = data[sp + 1:pos + length - 1]
        key, eq, value = rec.partition(b"=")
        if not eq:
            raise tarfile.InvalidHeaderError("invalid pax record")
        into[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length


class _TarStream:
    """A forward-only tar reader that parses headers itself (several times tarfile's speed).

    It reads ustar, GNU (long names and links, base-256 numbers) and pax (extended and
    global) headers, verifies every header's checksum, and treats a truncated header
    or a bad checksum as a corrupt archive.  Sparse members (rare in layers) are handed
    to :mod:`tarfile`, replaying their header blocks to it.
    """

    def __init__(self, reader: _ForwardReader) -> None:
        self.reader = reader
        self._next = 0  # where the next header starts
        self._globals: dict[str, str] = {}
        self.sparse_tar: tarfile.TarFile | None = None

    def _read_exact(self, n: int, what: str) -> bytes:
        data = self.reader.read(n)
        if len(data) != n:
            raise InvalidArgument(f"layer tar is truncated in {what}; the archive is incomplete")
        return data

    def __iter__(self) -> Iterator[tarfile.TarInfo]:
        return self

    def _block(self, pos: int) -> bytes:
        """The 512 bytes at stream offset ``pos`` (fewer at the end), read forward."""
        reader = self.reader
        at = pos - reader._base
        data = reader._data
        if 0 <= at and at + _BLOCK <= len(data):  # the usual case: a slice of the buffer
            reader._off = at + _BLOCK
            return data[at:at + _BLOCK]
        reader.seek(pos)
        return reader.read(_BLOCK)

    def __next__(self) -> tarfile.TarInfo:
        self.sparse_tar = None
        pax: dict[str, str] = {}
        longname = longlink = None
        raw: list[bytes] = []
        pos = self._next
        while True:
            buf = self._block(pos)
            if not buf or (not raw and buf == _ZERO_BLOCK):
                if raw:
                    raise InvalidArgument("layer tar ends inside a member's headers; the archive is incomplete")
                raise StopIteration
            if len(buf) != _BLOCK:
                raise InvalidArgument("layer tar is truncated inside a header; the archive is incomplete")
            try:
                chksum = int(buf[148:156].rstrip(b"\0 "), 8)
            except ValueError:
                try:
                    chksum = _nti_other(buf[148:156])
                except InvalidArgument:
                    chksum = -1  # reported as a bad checksum below
            # the unsigned sum (what every writer uses) first; the signed one is rare
            if chksum != _header_sum(buf) and chksum not in tarfile.calc_chksums(buf):
                raise InvalidArgument(
                    f"layer tar has a header with a bad checksum at byte {pos}; "
                    "the archive is corrupt (fetch or build it again)"
                )
            raw.append(buf)
            pos += _BLOCK
            typ = buf[156]
            size = _nti(buf[124:136])
            if typ not in _EXTENDED:
                break
            data = self._read_exact(size + (-size % _BLOCK), "an extended header")
            pos += len(data)
            raw.append(data)
            data = data[:size]
            if typ == _PAX:
                _parse_pax(data, pax)
            elif typ == _GLOBAL_PAX:
                _parse_pax(data, self._globals)
                raw.clear()
            elif typ == _LONGNAME:
                longname = _nts(data)
            else:
                longlink = _nts(data)
        if typ == _SPARSE or (pax and not _SPARSE_KEYS.isdisjoint(pax)):
            return self._sparse(b"".join(raw))
        name = longname if longname is not None else _nts(buf[0:100])
        if longname is None and buf[345] and buf[257:265] == _POSIX_MAGIC:
            name = _nts(buf[345:500]) + "/" + name
        m = tarfile.TarInfo(name)
        try:  # the usual fields: octal digits ended by NUL or space
            m.mode = int(buf[100:108].rstrip(b"\0 "), 8)
            m.uid = int(buf[108:116].rstrip(b"\0 "), 8)
            m.gid = int(buf[116:124].rstrip(b"\0 "), 8)
            m.mtime = int(buf[136:148].rstrip(b"\0 "), 8)
        except ValueError:
            m.mode = _nti(buf[100:108])
            m.uid = _nti(buf[108:116])
            m.gid = _nti(buf[116:124])
            m.mtime = _nti(buf[136:148])
        m.type = _TYPE_BYTES[typ]
        m.linkname = longlink if longlink is not None else _nts(buf[157:257]) if buf[157] else ""
        if typ in _DEVICES:
            m.devmajor = _nti(buf[329:337])
            m.devminor = _nti(buf[337:345])
        if typ == 0 and name.endswith("/"):
            m.type = tarfile.DIRTYPE
        if self._globals:
            pax = {**self._globals, **pax}
        if pax:
            m.pax_headers = pax
            if "path" in pax:
                m.name = pax["path"]
            if "linkpath" in pax:
                m.linkname = pax["linkpath"]
            try:
                if "size" in pax:
                    size = int(pax["size"])
                if "uid" in pax:
                    m.uid = int(pax["uid"])
                if "gid" in pax:
                    m.gid = int(pax["gid"])
                if "mtime" in pax:
                    m.mtime = float(pax["mtime"])
            except ValueError as exc:
                raise InvalidArgument(f"layer tar has a bad pax header for {m.name!r}: {exc}") from exc
        if m.type == tarfile.DIRTYPE:
            m.name = m.name.rstrip("/")
        if size < 0:
            raise InvalidArgument(f"layer tar gives {m.name!r} a negative size; the archive is corrupt")
        m.size = size
        m.offset_data = pos
        # as tarfile: no data follows a link, device, directory or FIFO header, whatever
        # its size field says
        self._next = pos + (0 if typ in _HEADER_ONLY else size + (-size % _BLOCK))
        return m

    def _sparse(self, headers: bytes) -> tarfile.TarInfo:
        replay = _ForwardReader(_PrefixedReader(headers, self.reader))  # type: ignore[arg-type]
        try:
            tar = tarfile.TarFile(fileobj=replay, mode="r")  # type: ignore[arg-type]
        except tarfile.TarError as exc:
            raise InvalidArgument(f"layer tar has a bad sparse member: {exc}; the archive is corrupt") from exc
        m = tar.firstmember
        if m is None:
            raise InvalidArgument("layer tar ends inside a sparse member; the archive is incomplete")
        if self._globals:
            m.pax_headers = {**self._globals, **m.pax_headers}
        self.reader = replay
        self.sparse_tar = tar
        self._next = tar.offset
        return m

    def copy_data(self, m: tarfile.TarInfo, fd: int) -> None:
        """Write the data of ``m`` (the member just returned) to ``fd``."""
        if self.sparse_tar is not None:
            src = self.sparse_tar.extractfile(m)
            assert src is not None
            while chunk := src.read(_BUFSIZE):
                os.write(fd, chunk)
            return
        reader = self.reader
        left = m.size
        while left:
            view = reader.view(left)
            if not view:
                raise InvalidArgument(f"layer tar is truncated inside {m.name!r}; the file is incomplete")
            left -= len(view)
            while view:
                view = view[os.write(fd, view):]


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race other threads)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o7777  # unknown: never fold the mode into open()


class _Extractor:
    """One extraction: tracks the directories already known not to be symlinks.

    ``safe_dirs`` maps each such directory to whether a file made in it gets our own
    group: true when the directory's group is ours, whatever its set-group-ID bit and
    the mount's ``grpid`` option say.  A new file owned as the tar says needs no
    ``fchown``; on ext4 that call (a journaled inode change) cost a fifth of an
    import of many small files.
    """

    def __init__(self, dest: str, allow_devices: bool, layer: bool = True) -> None:
        self.dest = os.path.abspath(dest)
        self.allow_devices = allow_devices
        self.layer = layer
        self.safe_dirs: dict[str, bool] = {"": os.stat(self.dest).st_gid == _EGID}
        self.dir_times: list[tuple[str, int]] = []
        self.size = 0
        self.umask = _umask()

    def _ensure_parent(self, parts: list[str], name: str) -> str:
        """Make the entry's parent directories; refuse a parent that is not a real dir.

        Returns the entry's path.
        """
        parent = "/".join(parts[:-1])
        if parent not in self.safe_dirs:
            self._make_parents(parts, name)
        return f"{self.dest}/{parent}/{parts[-1]}" if parent else f"{self.dest}/{parts[-1]}"

    def _make_parents(self, parts: list[str], name: str) -> None:
        rel = ""
        our_group = self.safe_dirs[""]
        for comp in parts[:-1]:
            rel = f"{rel}/{comp}" if rel else comp
            known = self.safe_dirs.get(rel)
            if known is not None:
                our_group = known
                continue
            full = os.path.join(self.dest, rel)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                # a new directory takes its parent's group or ours: ours if they are the same
                os.mkdir(full, 0o755)
            else:
                our_group = st.st_gid == _EGID
                if stat.S_ISLNK(st.st_mode):
                    raise InvalidArgument(
                        f"unsafe layer tar: entry {name!r} would be written through the "
                        f"symlink {rel!r}; refusing the archive (a layer may not write "
                        "through its own symlinks)"
                    )
                if not stat.S_ISDIR(st.st_mode):
                    raise InvalidArgument(
                        f"bad layer tar: entry {name!r} needs {rel!r} to be a directory but "
                        "the archive made it a file; fix the archive"
                    )
            self.safe_dirs[rel] = our_group

    def _clear(self, path: str, rel: str, keep_dir: bool) -> None:
        """Remove what an earlier entry put at ``path`` (a later entry wins)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            if not self.layer:
                raise InvalidArgument(f"cannot overwrite the directory {rel!r} with a non-directory")
            shutil.rmtree(path)
            self.safe_dirs = {d: g for d, g in self.safe_dirs.items() if d != rel and not d.startswith(rel + "/")}
        elif keep_dir and not self.layer:
            raise InvalidArgument(f"cannot overwrite the non-directory {rel!r} with a directory")
        else:
            os.unlink(path)

    def _meta(self, path: str, m: tarfile.TarInfo, fd: int | None = None, mode_set: bool = False,
              owned: bool = False) -> None:
        target: int | str = fd if fd is not None else path
        follow = fd is not None
        if _IS_ROOT and not owned:
            if fd is not None:
                os.fchown(fd, m.uid, m.gid)
            else:
                os.chown(path, m.uid, m.gid, follow_symlinks=False)
        for key, value in m.pax_headers.items():
            if key.startswith(_PAX_XATTR):
                xname = key[len(_PAX_XATTR):]
                if _keep_xattr(xname):
                    raw = value.encode("utf-8", "surrogateescape")
                    with contextlib.suppress(PermissionError):
                        os.setxattr(target, xname, raw, follow_symlinks=follow or not m.issym())
        if not m.issym() and not mode_set:
            os.chmod(target, m.mode & 0o7777)
        if not m.isdir():
            mt = int(m.mtime * 1_000_000_000)
            os.utime(target, ns=(mt, mt), follow_symlinks=follow)

    def entry(self, tar: _TarStream, m: tarfile.TarInfo) -> None:
        parts = _clean_name(m.name, "entry")
        if not parts:  # the root of the layer itself
            if m.isdir():
                self._meta(self.dest, m)
                self.safe_dirs[""] = m.gid == _EGID
                self.dir_times.append((self.dest, int(m.mtime * 1_000_000_000)))
            return
        base = parts[-1]
        if self.layer and base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parts, m)
            return
        path = self._ensure_parent(parts, m.name)
        rel = "/".join(parts)
        if m.isreg():
            self._regular(tar, m, path, rel)
            return
        self._clear(path, rel, keep_dir=m.isdir())
        if m.isdir():
            if not os.path.isdir(path):
                os.mkdir(path, 0o700)
            self._meta(path, m)
            self.safe_dirs[rel] = m.gid == _EGID  # what _meta made it (only root changes owners)
            self.dir_times.append((path, int(m.mtime * 1_000_000_000)))
        elif m.issym():
            os.symlink(m.linkname, path)
            self._meta(path, m)
        elif m.islnk():
            self._hardlink(parts, m, path)
        elif m.isfifo():
            os.mkfifo(path, 0o600)
            self._meta(path, m)
        elif m.ischr() or m.isblk():
            if not self.allow_devices:
                raise InvalidArgument(
                    f"layer tar holds the device node {m.name!r}; device nodes are refused "
                    "in layers unless devices are explicitly allowed (remove it from the "
                    "archive: the runtime provides /dev)"
                )
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(m.devmajor, m.devminor))
            self._meta(path, m)
        else:
            raise InvalidArgument(f"layer tar entry {m.name!r} has an unsupported type {m.type!r}")

    def _regular(self, tar: _TarStream, m: tarfile.TarInfo, path: str, rel: str) -> None:
        mode = m.mode & 0o7777
        # the mode goes in with open() unless the umask would cut it or a later fchown
        # would clear its set-id bits; then fchmod sets it after
        folded = not mode & (self.umask | 0o6000)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, mode if folded else 0o600)
        except FileExistsError:
            self._clear(path, rel, keep_dir=False)  # a later entry wins (rare: no lstat first)
            fd = os.open(path, flags, mode if folded else 0o600)
        try:
            if m.size:
                tar.copy_data(m, fd)
                self.size += m.size
            # a new file is ours; its group is ours unless its directory gives it another
            owned = m.uid == _EUID and m.gid == _EGID and self.safe_dirs[rel.rpartition("/")[0]]
            self._meta(path, m, fd, mode_set=folded, owned=owned)
        finally:
            os.close(fd)

    def _hardlink(self, parts: list[str], m: tarfile.TarInfo, path: str) -> None:
        if m.linkname.startswith("/"):
            raise InvalidArgument(
                f"unsafe layer tar: hard link {m.name!r} points at the absolute path "
                f"{m.linkname!r}; refusing the archive (hard links must be relative to the layer)"
            )
        tparts = _clean_name(m.linkname, "hard link target of")
        if not tparts:
            raise InvalidArgument(f"bad layer tar: hard link {m.name!r} has an empty target")
        tpath = self._ensure_parent(tparts, m.linkname)
        try:
            st = os.lstat(tpath)
        except FileNotFoundError:
            raise InvalidArgument(
                f"bad layer tar: hard link {m.name!r} points at {m.linkname!r}, which is not "
                "earlier in the archive; fix the archive"
            ) from None
        if stat.S_ISDIR(st.st_mode):
            raise InvalidArgument(f"bad layer tar: hard link {m.name!r} points at a directory")
        os.link(tpath, path, follow_symlinks=False)

    def _whiteout(self, parts: list[str], m: tarfile.TarInfo) -> None:
        name = m.name
        base = parts[-1]
        if base == OPAQUE_MARKER:
            # _ensure_parent makes and checks every directory above the marker: its own dir too
            marker = self._ensure_parent(parts, name)
            os.setxattr(os.path.dirname(marker), OPAQUE_XATTR, b"y")
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # aufs bookkeeping (.wh..wh.plnk and friends): nothing to apply
        real = base[len(WHITEOUT_PREFIX):]
        wparts = parts[:-1] + [real]
        path = self._ensure_parent(wparts, name)
        self._clear(path, "/".join(wparts), keep_dir=False)
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))
        self._meta(path, m)

    def finish(self) -> None:
        # a directory's mtime is set last: writing its children changed it
        for path, mt in reversed(self.dir_times):
            os.utime(path, ns=(mt, mt), follow_symlinks=False)


def apply_tar(fileobj: BinaryIO, dest: str, *, allow_devices: bool = False, layer: bool = True,
              owner: tuple[int, int] | None = None) -> tuple[str, int]:
    """Extract a layer tar (plain or gzip, detected by magic) into the directory ``dest``.

    OCI whiteouts become overlay whiteouts (``.wh.NAME`` -> char device 0/0 ``NAME``,
    ``.wh..wh..opq`` -> ``trusted.overlay.opaque=y`` on its directory).  Modes,
    ownership (when root), mtimes, symlinks, hard links, FIFOs and xattrs (``user.*``,
    ``trusted.*`` but ``trusted.overlay.*``, ``security.capability``) are kept.

    Returns ``(diff_id, size)``: ``"sha256:<hex>"`` of the uncompressed tar, and the
    total size of its regular files.  Raises :class:`InvalidArgument` naming the entry for
    ``..`` components, absolute or dangling hard links, an entry whose parent is a
    symlink, a device node without ``allow_devices``, or a corrupt archive.

    ``layer=False`` extracts a plain tar into a tree that already holds files (``docker
    cp``): ``.wh.`` names are ordinary names, and an entry may replace a file with a file
    but never a directory with a non-directory or the reverse.  ``owner`` (uid, gid)
    replaces the owners the tar gives.
    """
    source = _Source(fileobj)
    reader = _ForwardReader(source)  # type: ignore[arg-type]
    ex = _Extractor(dest, allow_devices, layer)
    try:
        tar = _TarStream(reader)
        for member in tar:
            if owner is not None:
                member.uid, member.gid = owner
            ex.entry(tar, member)
        # the digest covers the whole stream, end-of-archive padding included
        while tar.reader.read(_BUFSIZE):
            pass
    except (tarfile.TarError, EOFError, zlib.error, UnicodeError) as exc:
        # zlib.error: a bad gzip header, corrupt deflate data, or a CRC that does not match
        raise InvalidArgument(f"not a valid layer tar: {exc}; check the file is a tar or tar.gz") from exc
    finally:
        source.stop()
    ex.finish()
    return f"sha256:{source.hexdigest()}", ex.size


def tar_info(name: str, st: os.stat_result) -> tarfile.TarInfo:
    """A tar header for ``name`` with ``st``'s mode, numeric owner and whole-second
    mtime (no user or group names: the same tree always gives the same bytes)."""
    ti = tarfile.TarInfo(name)
    ti.mode = stat.S_IMODE(st.st_mode)
    ti.uid, ti.gid = st.st_uid, st.st_gid
    ti.uname = ti.gname = ""
    ti.mtime = int(st.st_mtime)
    return ti


def add_path(tar: tarfile.TarFile, name: str, path: str, st: os.stat_result,
             seen: dict[tuple[int, int], str]) -> None:
    """Add the file at ``path`` (``st``: its lstat) to ``tar`` as ``name``, without what a
    directory holds: xattrs and numeric owners kept, a regular file already added under
    another name (``seen``: (dev, ino) -> name, filled here) as a hard link, a symlink as
    a symlink.  A file removed meanwhile is left out."""
    ti = tar_info(name, st)
    ti.pax_headers = xattrs_of(path)
    if stat.S_ISDIR(st.st_mode):
        ti.type = tarfile.DIRTYPE
        tar.addfile(ti)
    elif stat.S_ISREG(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in seen:
            ti.type, ti.linkname = tarfile.LNKTYPE, seen[key]
            tar.addfile(ti)
            return
        seen[key] = name
        try:
            f = open(path, "rb", buffering=0)
        except FileNotFoundError:
            return
        with f:
            ti.size = os.fstat(f.fileno()).st_size
            tar.addfile(ti, f)
    else:
        add_special(tar, ti, path, st)


def add_special(tar: tarfile.TarFile, ti: tarfile.TarInfo, path: str, st: os.stat_result) -> None:
    """Add ``path`` to ``tar`` if it is a symlink, FIFO or device node (its header
    ``ti`` made by :func:`tar_info`); sockets cannot travel in a tar and are left out
    (Docker skips them too)."""
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(path)
    elif stat.S_ISFIFO(mode):
        ti.type = tarfile.FIFOTYPE
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
        ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    else:
        return
    tar.addfile(ti)


def xattrs_of(path: str) -> dict[str, str]:
    """The xattrs of ``path`` that layers carry, as pax ``SCHILY.xattr.*`` headers."""
    out: dict[str, str] = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return out
    for xname in sorted(names):
        if _keep_xattr(xname):
            with contextlib.suppress(OSError):
                value = os.getxattr(path, xname, follow_symlinks=False)
                out[_PAX_XATTR + xname] = value.decode("utf-8", "surrogateescape")
    return out


def _sorted_entries(path: str, rel: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
    with os.scandir(path) as it:
        entries = sorted(it, key=lambda e: e.name)
    return iter([(f"{rel}/{e.name}" if rel else e.name, e) for e in entries])


def diff_tar(diffdir: str, out: IO[bytes]) -> tuple[str, int]:
    """Write the overlay-form directory ``diffdir`` to ``out`` as a layer tar in OCI form.

    Entries come in sorted order with user/group names left empty and whole-second
    mtimes, so the same tree always gives the same bytes (and diff id).  Whiteouts (char
    device 0/0) become ``.wh.NAME`` and opaque directories get a ``.wh..wh..opq`` entry
    right after their own.  Returns ``(diff_id, size)`` as :func:`apply_tar` does.
    """
    sink = HashingWriter(out)
    size = 0
    seen_inodes: dict[tuple[int, int], str] = {}
    tar = tarfile.TarFile(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT, copybufsize=_BUFSIZE)  # type: ignore[arg-type]
    try:
        # pre-order, sorted: a directory's entry, then its whole subtree, then its next sibling
        stack = [_sorted_entries(diffdir, "")]
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
                continue
            name, e = item
            st = e.stat(follow_symlinks=False)
            mode = st.st_mode
            if stat.S_ISCHR(mode) and st.st_rdev == 0:
                head, _, base = name.rpartition("/")
                tar.addfile(tar_info(f"{head}/{WHITEOUT_PREFIX}{base}" if head else WHITEOUT_PREFIX + base, st))
                continue
            ti = tar_info(name, st)
            ti.pax_headers = xattrs_of(e.path)
            if stat.S_ISDIR(mode):
                ti.type = tarfile.DIRTYPE
                tar.addfile(ti)
                opaque = None
                with contextlib.suppress(OSError):
                    opaque = os.getxattr(e.path, OPAQUE_XATTR, follow_symlinks=False)
                if opaque == b"y":
                    marker = tar_info(f"{name}/{OPAQUE_MARKER}", st)
                    marker.mode = 0
                    tar.addfile(marker)
                stack.append(_sorted_entries(e.path, name))
            elif stat.S_ISREG(mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen_inodes:
                    ti.type = tarfile.LNKTYPE
                    ti.linkname = seen_inodes[key]
                    tar.addfile(ti)
                    continue
                if st.st_nlink > 1:
                    seen_inodes[key] = name
                ti.size = st.st_size
                with open(e.path, "rb", buffering=0) as f:
                    tar.addfile(ti, f)
                size += st.st_size
            else:
                add_special(tar, ti, e.path, st)
    finally:
        tar.close()
    sink.flush()
    return f"sha256:{sink.digest.hexdigest()}", size
