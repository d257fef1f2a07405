"""Image archives in and out: ``docker save`` tarballs and OCI image layouts.

:func:`load` reads, from a tar file (plain or gzip) or a directory:

- an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/...``; nested
  indexes, gzip or plain layers, several tags);
- a ``docker save`` archive (``manifest.json``: layers as ``<id>/layer.tar`` or, as
  Docker 25 writes them, ``blobs/sha256/<hex>``);
- the legacy layout older Dockers wrote (``repositories`` and ``<id>/{json,layer.tar}``).

Every blob is checked against its descriptor (sha256 and size) and every layer against
its config's diff id; all layers of all images are made before any image is published,
so a corrupted or truncated archive is refused with the entry it tripped on and leaves
no image and no new layer behind.

:func:`save` writes the same two formats.  A layer travels as
:meth:`~engine.layers.LayerStore.export` makes it (sorted, deterministic tar), so its
diff id in the written config is the digest of those bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
from collections.abc import Callable
from typing import IO, Any

from engine import fsutil, refs
from engine.errors import EngineError, InvalidArgument, NotFound
from engine.images import ImageStore, config_from_oci

__all__ = ["load", "save", "oci_config", "Verifier", "export_layers", "image_blobs", "canonical_json", "MT_OCI_MANIFEST", "MT_OCI_INDEX",
           "MT_OCI_CONFIG", "MT_OCI_LAYER_GZIP", "MT_DOCKER_MANIFEST", "MT_DOCKER_LIST"]

MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEXES = (MT_OCI_INDEX, MT_DOCKER_LIST)
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
_BUF = 1 << 20
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64"}

Progress = Callable[[dict], None]


def host_arch() -> str:
    """This machine's architecture in OCI's words (``amd64``, ``arm64``, ...)."""
    m = os.uname().machine
    return _ARCH.get(m, m)


def canonical_json(obj: Any) -> bytes:
    """``obj`` as compact, key-sorted JSON: the same image always gives the same blobs."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def oci_config(rec: dict, diff_ids: list[str]) -> dict:
    """The OCI image config document of an image record whose layers export with
    ``diff_ids``."""
    cfg = {k: v for k, v in rec["config"].items() if v not in (None, [], {}, "")}
    doc: dict[str, Any] = {
        "created": rec.get("created"), "architecture": host_arch(), "os": "linux",
        "config": cfg, "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{k: v for k, v in h.items() if v} for h in rec.get("history") or []],
    }
    if rec.get("author"):
        doc["author"] = rec["author"]
    return doc


_REFUSING = "refusing the image archive entry"


def _bad(what: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"{_REFUSING} {what}: {why}")


# -- reading ----------------------------------------------------------------------------

class Verifier:
    """Reads a blob, hashing and counting it; :meth:`check` compares with its descriptor."""

    def __init__(self, raw: IO[bytes], what: str, digest: str | None, size: int | None,
                 progress: Callable[[int], None] | None = None) -> None:
        self._raw, self.what, self.digest, self.size = raw, what, digest, size
        self._hash = hashlib.sha256()
        self.count = 0
        self._progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if data:
            self._hash.update(data)
            self.count += len(data)
            if self._progress is not None:
                self._progress(self.count)
        return data

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def check(self) -> None:
        """Raise :class:`InvalidArgument` unless all of the blob was read and matches."""
        while self.read(_BUF):
            pass
        if self.size is not None and self.count != self.size:
            raise _bad(self.what, f"it is {self.count} bytes long but its descriptor says {self.size} "
                                  "(a truncated or altered file); get a fresh copy")
        got = "sha256:" + self._hash.hexdigest()
        if self.digest is not None and got != self.digest:
            raise _bad(self.what, f"its sha256 is {got} but its descriptor says {self.digest} "
                                  "(a corrupted file); get a fresh copy")


class _Source:
    """Named files of an archive: a directory or a tar."""

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def open(self, name: str) -> IO[bytes]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _DirSource(_Source):
    def __init__(self, path: str) -> None:
        self.path = path

    def _full(self, name: str) -> str:
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise _bad(name, "a path in the archive leaves it ('..')")
        return os.path.join(self.path, *parts)

    def exists(self, name: str) -> bool:
        return os.path.isfile(self._full(name))

    def open(self, name: str) -> IO[bytes]:
        try:
            return open(self._full(name), "rb")
        except FileNotFoundError:
            raise _bad(name, "the archive refers to it but it is missing (an incomplete copy)") from None


class _TarSource(_Source):
    def __init__(self, path: str, stage: str) -> None:
        import gzip
        import tarfile

        self._file = open(path, "rb")
        if self._file.read(2) == b"\x1f\x8b":
            # a gzipped archive: unpack it once, the members are then read at random
            self._file.seek(0)
            plain = os.path.join(stage, "archive.tar")
            try:
                with gzip.GzipFile(fileobj=self._file) as gz, open(plain, "wb") as out:
                    while chunk := gz.read(_BUF):
                        out.write(chunk)
            except (OSError, EOFError) as exc:
                raise _bad(path, f"it is not a valid gzip file ({exc})") from exc
            self._file.close()
            self._file = open(plain, "rb")
        self._file.seek(0)
        try:
            self._tar = tarfile.open(fileobj=self._file, mode="r:")
            members = self._tar.getmembers()
        except (tarfile.TarError, EOFError) as exc:
            self._file.close()
            raise _bad(path, f"it is not a valid tar file ({exc}); give a docker-save or OCI archive") from exc
        self._members = {posixpath.normpath(m.name.lstrip("/")): m for m in members}

    def _member(self, name: str) -> Any:
        key = posixpath.normpath(name.lstrip("/"))
        for _ in range(8):  # docker save links a layer that occurs twice to its first copy
            m = self._members.get(key)
            if m is None or not m.issym():
                return m
            key = posixpath.normpath(posixpath.join(posixpath.dirname(key), m.linkname))
        return None

    def exists(self, name: str) -> bool:
        m = self._member(name)
        return m is not None and m.isreg()

    def open(self, name: str) -> IO[bytes]:
        m = self._member(name)
        if m is None or not m.isreg():
            raise _bad(name, "the archive refers to it but it is missing (an incomplete copy)")
        f = self._tar.extractfile(m)
        assert f is not None
        return f  # type: ignore[return-value]

    def close(self) -> None:
        self._tar.close()
        self._file.close()


def _read_json(src: _Source, name: str, digest: str | None = None, size: int | None = None) -> Any:
    import tarfile

    with src.open(name) as f:
        v = Verifier(f, name, digest, size)
        try:
            data = v.read()
            v.check()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise _bad(name, f"it cannot be read ({exc}); the archive is truncated") from exc
    try:
        return json.loads(data)
    except (ValueError, UnicodeError) as exc:
        raise _bad(name, f"it is not valid JSON ({exc})") from exc


def _blob(digest: Any) -> str:
    if not isinstance(digest, str) or not digest.startswith("sha256:") or refs.parse_id(digest) is None:
        raise _bad(str(digest), "only sha256 digests are supported")
    return "blobs/sha256/" + digest[7:]


class _Loader:
    """One load: the layers it added (dropped again if it fails) and the images found."""

    def __init__(self, store: ImageStore, src: _Source, progress: Progress | None) -> None:
        self.store, self.src, self.progress = store, src, progress
        self.added: list[str] = []
        self.images: list[tuple[list[str], dict, list[str]]] = []

    def layer(self, name: str, digest: str | None, size: int | None, diff_id: str | None) -> str:
        """Add one layer blob (verified); its diff id."""
        import tarfile

        if diff_id is not None and self.store.layers.exists(diff_id):
            return diff_id
        with self.src.open(name) as f:
            v = Verifier(f, name, digest, size)

            def check(got: str) -> None:
                v.check()
                if diff_id is not None and got != diff_id:
                    raise _bad(name, f"its content has diff id {got} but the image config says "
                                     f"{diff_id} (a corrupted layer); get a fresh copy")
            try:
                existed = diff_id is not None and self.store.layers.exists(diff_id)
                got = self.store.layers.add_from_tar(v, check=check)  # type: ignore[arg-type]
            except (tarfile.TarError, EOFError) as exc:
                raise _bad(name, f"it cannot be read ({exc}); the archive is truncated") from exc
            except InvalidArgument as exc:
                if str(exc).startswith(_REFUSING):
                    raise
                raise _bad(name, str(exc)) from exc
        if not existed:
            self.added.append(got)
        if self.progress:
            self.progress({"layer": got[7:19], "status": "Loaded", "current": v.count, "total": v.count})
        return got

    def image(self, cfg: dict, layers: list[str], tags: list[str]) -> None:
        """Remember an image whose layers are all made; :meth:`publish` records it."""
        self.images.append((layers, cfg, tags))

    def publish(self) -> list[str]:
        out = []
        for layers, cfg, tags in self.images:
            hist = [{"created": h.get("created", ""), "created_by": h.get("created_by", ""),
                     "comment": h.get("comment", ""), "author": h.get("author", "")}
                    for h in cfg.get("history") or [] if isinstance(h, dict) and not h.get("empty_layer")]
            created = cfg.get("created") if isinstance(cfg.get("created"), str) else None
            img = self.store.add_image(layers, config_from_oci(cfg), tags, created=created, history=hist,
                                       author=str(cfg.get("author") or ""))
            out.extend(refs.normalize(t) for t in tags) if tags else out.append(img.id)
        return out


def _diff_ids(cfg: Any, what: str, n: int) -> list[str]:
    diff_ids = (cfg.get("rootfs") or {}).get("diff_ids") if isinstance(cfg, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != n:
        raise _bad(what, f"its config lists {len(diff_ids or [])} layer diff ids for {n} layers")
    return diff_ids


def _tags_from_oci(desc: dict, default_repo: str | None) -> list[str]:
    ann = desc.get("annotations") or {}
    full = ann.get(CONTAINERD_NAME)
    name = ann.get(REF_NAME)
    for cand in (full, name):
        if isinstance(cand, str) and ("/" in cand or ":" in cand):
            with contextlib.suppress(InvalidArgument):
                return [_familiar(cand)]
    if isinstance(name, str) and name and default_repo:
        with contextlib.suppress(InvalidArgument):
            return [refs.normalize(f"{default_repo}:{name}")]
    return []


def _familiar(ref: str) -> str:
    """``docker.io/library/x:t`` as Docker shows it (``x:t``); others as they are."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if ref.startswith(prefix) and ref.count("/") - prefix.count("/") <= 1:
            ref = ref[len(prefix):]
            break
    return refs.normalize(ref)


def _load_oci(ld: _Loader, default_repo: str | None) -> None:
    index = _read_json(ld.src, "index.json")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise _bad("index.json", "it has no 'manifests' list")
    for desc in index["manifests"]:
        _load_oci_desc(ld, desc, _tags_from_oci(desc, default_repo), depth=0)


def _load_oci_desc(ld: _Loader, desc: dict, tags: list[str], depth: int) -> None:
    mt = desc.get("mediaType")
    doc = _read_json(ld.src, _blob(desc.get("digest")), desc.get("digest"), desc.get("size"))
    mt = mt or doc.get("mediaType")
    if mt in INDEXES or "manifests" in doc:
        if depth > 3:
            raise _bad("index.json", "indexes are nested too deeply")
        pick = _pick_platform(doc.get("manifests") or [])
        _load_oci_desc(ld, pick, tags, depth + 1)
        return
    layers_desc = doc.get("layers")
    if not isinstance(layers_desc, list) or not isinstance(doc.get("config"), dict):
        raise _bad(desc.get("digest", "?"), "it is not an image manifest (no config or layers)")
    cdesc = doc["config"]
    cfg = _read_json(ld.src, _blob(cdesc.get("digest")), cdesc.get("digest"), cdesc.get("size"))
    diff_ids = _diff_ids(cfg, cdesc.get("digest", "?"), len(layers_desc))
    layers = []
    for ldesc, diff_id in zip(layers_desc, diff_ids):
        mt_layer = str(ldesc.get("mediaType", ""))
        if "zstd" in mt_layer:
            raise _bad(ldesc.get("digest", "?"), "zstd-compressed layers are not supported; "
                                                 "recompress it with gzip (skopeo copy --dest-compress-format gzip)")
        layers.append(ld.layer(_blob(ldesc.get("digest")), ldesc.get("digest"), ldesc.get("size"), diff_id))
    ld.image(cfg, layers, tags)


def _pick_platform(manifests: list[dict]) -> dict:
    arch = host_arch()
    for m in manifests:
        p = m.get("platform") or {}
        if p.get("os", "linux") == "linux" and p.get("architecture", arch) == arch:
            return m
    raise NotFound(f"the image has no variant for linux/{arch} (it has: "
                   f"{', '.join(str((m.get('platform') or {}).get('architecture')) for m in manifests)})")


def _load_docker(ld: _Loader) -> None:
    manifest = _read_json(ld.src, "manifest.json")
    if not isinstance(manifest, list):
        raise _bad("manifest.json", "it is not a list of images")
    for entry in manifest:
        cfg_name = entry.get("Config")
        if not isinstance(cfg_name, str):
            raise _bad("manifest.json", "an entry has no Config")
        hexpart = posixpath.basename(cfg_name).removesuffix(".json")
        cfg = _read_json(ld.src, cfg_name, "sha256:" + hexpart if refs.parse_id(hexpart) else None)
        names = entry.get("Layers") or []
        diff_ids = _diff_ids(cfg, cfg_name, len(names))
        layers = []
        for name, diff_id in zip(names, diff_ids):
            blob_hex = posixpath.basename(name) if name.startswith("blobs/sha256/") else None
            # Docker 25 names uncompressed layers by their digest: that is the diff id
            layers.append(ld.layer(name, None, None, diff_id if blob_hex is None or
                                   f"sha256:{blob_hex}" == diff_id else None))
        ld.image(cfg, layers, [_familiar(t) for t in entry.get("RepoTags") or []])


def _load_legacy(ld: _Loader) -> None:
    repos = _read_json(ld.src, "repositories")
    if not isinstance(repos, dict):
        raise _bad("repositories", "it is not a map of repositories")
    tops: dict[str, list[str]] = {}
    for repo, tags in repos.items():
        for tag, top in (tags or {}).items():
            tops.setdefault(top, []).append(_familiar(f"{repo}:{tag}"))
    for top, names in tops.items():
        chain, cur = [], top
        while cur:
            if len(chain) > 500 or refs.parse_id(cur) is None:
                raise _bad("repositories", f"bad layer chain at {cur!r}")
            meta = _read_json(ld.src, f"{cur}/json")
            chain.append((cur, meta))
            cur = meta.get("parent") or ""
        chain.reverse()
        layers = [ld.layer(f"{lid}/layer.tar", None, None, None) for lid, _ in chain]
        cfg = dict(chain[-1][1])
        cfg.setdefault("history", [{"created": m.get("created", ""), "created_by": " ".join(
            (m.get("container_config") or {}).get("Cmd") or [])} for _, m in chain])
        ld.image(cfg, layers, names)


def load(store: ImageStore, path: str, *, progress: Progress | None = None) -> list[str]:
    """Load every image of the archive (tar file, gzip or not, or a directory) at
    ``path``; the ``name:tag`` of each (or the image id of an untagged one)."""
    if not os.path.exists(path):
        raise NotFound(f"no such file or directory: {path}; give a docker-save or OCI archive")
    stage = fsutil.staging_dir(store.root, "load")
    src: _Source | None = None
    ld: _Loader | None = None
    try:
        src = _DirSource(path) if os.path.isdir(path) else _TarSource(path, stage)
        ld = _Loader(store, src, progress)
        base = os.path.basename(os.path.normpath(path)).split(".")[0]
        default_repo = base.lower() if base else None
        if src.exists("index.json"):
            _load_oci(ld, default_repo)
        elif src.exists("manifest.json"):
            _load_docker(ld)
        elif src.exists("repositories"):
            _load_legacy(ld)
        else:
            raise _bad(path, "it has neither index.json (OCI layout) nor manifest.json "
                             "(docker save) nor repositories (legacy docker save)")
        return ld.publish()
    except BaseException:
        if ld is not None and ld.added:
            ld.store.drop_layers_if_unused(ld.added)
        raise
    finally:
        if src is not None:
            src.close()
        fsutil.remove_tree(stage)


# -- writing ----------------------------------------------------------------------------

class _Exported:
    """A layer exported to a staging file: its path and descriptor facts."""

    def __init__(self, path: str, info: dict) -> None:
        self.path, self.digest, self.size, self.diff_id = path, info["digest"], info["size"], info["diff_id"]


def export_layers(store: ImageStore, layers: list[str], stage: str, *, compress: bool) -> dict[str, _Exported]:
    """Each distinct layer written once into ``stage``: diff id -> :class:`_Exported`."""
    out: dict[str, _Exported] = {}
    for diff_id in dict.fromkeys(layers):
        path = os.path.join(stage, diff_id[7:] + (".tar.gz" if compress else ".tar"))
        with open(path, "wb", buffering=_BUF) as f:
            info = store.layers.export(diff_id, f, compress=compress)
        out[diff_id] = _Exported(path, info)
    return out


def image_blobs(rec: dict, exported: dict[str, _Exported]) -> tuple[bytes, bytes]:
    """The config and the OCI manifest (bytes) of an image whose layers are exported."""
    config = canonical_json(oci_config(rec, [exported[d].diff_id for d in rec["layers"]]))
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": _sha(config), "size": len(config)},
        "layers": [{"mediaType": MT_OCI_LAYER_GZIP, "digest": exported[d].digest, "size": exported[d].size}
                   for d in rec["layers"]],
    })
    return config, manifest


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _TarOut:
    """A tar being written with fixed metadata (the same images give the same archive)."""

    def __init__(self, path: str) -> None:
        import tarfile

        self._tarfile = tarfile
        self.tar = tarfile.open(path, "w", format=tarfile.PAX_FORMAT)
        self._dirs: set[str] = set()

    def _dir(self, name: str) -> None:
        head = posixpath.dirname(name)
        if head and head not in self._dirs:
            self._dir(head)
            ti = self._tarfile.TarInfo(head)
            ti.type, ti.mode = self._tarfile.DIRTYPE, 0o755
            self.tar.addfile(ti)
            self._dirs.add(head)

    def add_bytes(self, name: str, data: bytes) -> None:
        import io

        self._dir(name)
        ti = self._tarfile.TarInfo(name)
        ti.size, ti.mode = len(data), 0o644
        self.tar.addfile(ti, io.BytesIO(data))

    def add_file(self, name: str, path: str) -> None:
        self._dir(name)
        ti = self._tarfile.TarInfo(name)
        ti.size, ti.mode = os.path.getsize(path), 0o644
        with open(path, "rb") as f:
            self.tar.addfile(ti, f)

    def close(self) -> None:
        self.tar.close()


class _DirOut:
    def __init__(self, path: str) -> None:
        self.path = path

    def _full(self, name: str) -> str:
        full = os.path.join(self.path, *name.split("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        return full

    def add_bytes(self, name: str, data: bytes) -> None:
        with open(self._full(name), "wb") as f:
            f.write(data)

    def add_file(self, name: str, path: str) -> None:
        os.rename(path, self._full(name))

    def close(self) -> None:
        pass


def _resolve(store: ImageStore, names: list[str]) -> list[tuple[dict, list[str]]]:
    """(record, tags to write) per image, in the order first named."""
    out: dict[str, tuple[dict, list[str]]] = {}
    for name in names:
        rec = store.record(name)
        tags = out.setdefault(rec["id"], (rec, []))[1]
        if refs.parse_id(name) is None:
            with contextlib.suppress(InvalidArgument):
                norm = refs.normalize(name)
                if norm in store.get(rec["id"]).tags and norm not in tags:
                    tags.append(norm)
    return list(out.values())


def save(store: ImageStore, names: list[str], path: str, fmt: str = "docker") -> None:
    """Write the images ``names`` (refs or ids) to ``path``: a tar in ``fmt``
    ``docker`` (``docker save``'s layout) or ``oci`` (an OCI image layout); with ``oci``
    a ``path`` that is a directory (or ends in ``/``) gets the layout unpacked in it.
    The archive appears complete or not at all."""
    if fmt not in ("docker", "oci"):
        raise InvalidArgument(f"unknown archive format {fmt!r}; use docker or oci")
    if not names:
        raise InvalidArgument("save: name at least one image")
    images = _resolve(store, names)
    as_dir = fmt == "oci" and (path.endswith("/") or os.path.isdir(path))
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise NotFound(f"cannot write {path}: no such directory {parent}")
    if as_dir and os.path.isdir(path) and os.listdir(path):
        raise InvalidArgument(f"cannot write an OCI layout into {path}: the directory is not empty")
    stage = fsutil.staging_dir(store.root, "save")
    tmp = os.path.join(parent, f".{os.path.basename(path)}.cbx-{os.getpid()}.tmp")
    try:
        all_layers = [d for rec, _ in images for d in rec["layers"]]
        exported = export_layers(store, all_layers, stage, compress=fmt == "oci")
        if as_dir:
            os.mkdir(tmp, 0o755)
            out: Any = _DirOut(tmp)
        else:
            out = _TarOut(tmp)
        try:
            (_write_oci if fmt == "oci" else _write_docker)(out, images, exported)
        finally:
            out.close()
        if as_dir and os.path.isdir(path):
            os.rmdir(path)
        os.rename(tmp, path)
    except OSError as exc:
        raise EngineError(f"could not write {path}: {exc}; check the disk and the directory") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            if os.path.isdir(tmp):
                fsutil.remove_tree(tmp)
            else:
                os.unlink(tmp)
        fsutil.remove_tree(stage)


def _write_oci(out: Any, images: list[tuple[dict, list[str]]], exported: dict[str, _Exported]) -> None:
    out.add_bytes("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
    written: set[str] = set()
    index = []
    for rec, tags in images:
        config, manifest = image_blobs(rec, exported)
        for data in (config, manifest):
            out.add_bytes(_blob(_sha(data)), data)
        for d in rec["layers"]:
            e = exported[d]
            if e.digest not in written:
                out.add_file(_blob(e.digest), e.path)
                written.add(e.digest)
        desc = {"mediaType": MT_OCI_MANIFEST, "digest": _sha(manifest), "size": len(manifest)}
        for t in tags:
            index.append({**desc, "annotations": {REF_NAME: refs.parse_reference(t).tag,
                                                  CONTAINERD_NAME: _qualified(t)}})
        if not tags:
            index.append(desc)
    out.add_bytes("index.json", canonical_json({"schemaVersion": 2, "mediaType": MT_OCI_INDEX,
                                                "manifests": index}))


def _qualified(ref: str) -> str:
    """``x:t`` as ``docker.io/library/x:t`` (containerd's and Docker 25's image names)."""
    name = refs.parse_reference(ref).name
    first = name.split("/")[0]
    if "/" in name and ("." in first or ":" in first or first == "localhost"):
        return ref
    return f"docker.io/{ref}" if "/" in name else f"docker.io/library/{ref}"


def _write_docker(out: Any, images: list[tuple[dict, list[str]]], exported: dict[str, _Exported]) -> None:
    manifest = []
    repositories: dict[str, dict[str, str]] = {}
    written: set[str] = set()
    for rec, tags in images:
        diff_ids = [exported[d].diff_id for d in rec["layers"]]
        config = canonical_json(oci_config(rec, diff_ids))
        cfg_name = _sha(config)[7:] + ".json"
        out.add_bytes(cfg_name, config)
        # legacy layer ids: a chain id per position, as `docker save` made them
        names, parent = [], ""
        for d, diff_id in zip(rec["layers"], diff_ids):
            lid = hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()
            if lid not in written:
                out.add_file(f"{lid}/layer.tar", exported[d].path)
                out.add_bytes(f"{lid}/VERSION", b"1.0")
                out.add_bytes(f"{lid}/json", canonical_json({"id": lid, **({"parent": parent} if parent else {})}))
                written.add(lid)
            names.append(f"{lid}/layer.tar")
            parent = lid
        manifest.append({"Config": cfg_name, "RepoTags": tags or None, "Layers": names})
        for t in tags:
            r = refs.parse_reference(t)
            repositories.setdefault(r.name, {})[r.tag] = parent
    out.add_bytes("manifest.json", canonical_json(manifest))
    if repositories:
        out.add_bytes("repositories", canonical_json(repositories))
