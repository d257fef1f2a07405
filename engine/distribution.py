"""Pull and push images: a client of the OCI distribution API (registry v2).

A reference is normalised as Docker does: ``busybox`` is
``docker.io/library/busybox:latest`` (served by ``registry-1.docker.io``) and is kept
locally as ``busybox:latest``; ``127.0.0.1:5000/team/app`` names that registry.
HTTPS by default; ``insecure`` speaks plain HTTP (a test registry on loopback).
Authentication answers the registry's challenge: ``Bearer`` (a token from the realm it
names, for the repository's scope; Docker's token protocol) or ``Basic``, with the
credentials of Docker's ``config.json`` (``$DOCKER_CONFIG`` or ``~/.docker``) if any.

Pull verifies everything it receives: the manifest against its digest, the config
blob, each layer blob (sha256 and size) and each layer's diff id, before the layer
becomes visible.  A layer already in the store is not downloaded; two pulls of the same
layer at once (threads or processes) take a per-layer lock, so one downloads and the
other finds it there.  If a pull fails, the layers it added are removed again.

HTTP is the standard library's :mod:`http.client` (one kept-alive connection per
pull; the blobs stream straight into the layer extractor).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

from engine import fsutil
from engine.archive import (INDEXES, MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX,
                            MT_OCI_MANIFEST, Verifier, _pick_platform, export_layers, image_blobs)
from engine.errors import EngineError, InvalidArgument, NotFound, RegistryError, Unauthorized
from engine.images import ImageStore, config_from_oci

__all__ = ["RemoteRef", "parse_remote", "pull", "push", "RegistryError", "Unauthorized"]

DOCKER_HUB = "docker.io"
_HUB_API = "registry-1.docker.io"
_ACCEPT = ", ".join([MT_OCI_INDEX, MT_OCI_MANIFEST, MT_DOCKER_LIST, MT_DOCKER_MANIFEST])
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_BUF = 1 << 20
_PROGRESS_EVERY = 0.2  # seconds between progress messages of one layer

Progress = Callable[[dict], None]


@dataclass(frozen=True)
class RemoteRef:
    """A reference resolved against its registry."""

    registry: str    #: as written (``docker.io``, ``127.0.0.1:5000``)
    repository: str  #: the path in the registry (``library/busybox``)
    tag: str | None
    digest: str | None

    @property
    def api_host(self) -> str:
        """The host:port the API is served on."""
        return _HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def reference(self) -> str:
        """What names the manifest in the API: the digest if given, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def local(self) -> str:
        """The local ``name:tag`` Docker would show (``busybox:latest``)."""
        if self.registry == DOCKER_HUB:
            name = self.repository.removeprefix("library/")
        else:
            name = f"{self.registry}/{self.repository}"
        return f"{name}:{self.tag or 'latest'}"


def parse_remote(ref: str) -> RemoteRef:
    """Split ``[registry/]path[:tag][@sha256:...]`` as Docker normalises it."""
    if not isinstance(ref, str) or not ref:
        raise InvalidArgument("an image reference must not be empty")
    rest, digest = ref, None
    if "@" in ref:
        rest, digest = ref.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise InvalidArgument(f'invalid reference format: "{ref}": a digest is sha256:<64 hex digits>')
    tag = None
    slash, colon = rest.rfind("/"), rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.fullmatch(tag):
            raise InvalidArgument(f'invalid reference format: "{ref}": bad tag {tag!r}')
    parts = rest.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        registry, path = parts[0], parts[1:]
    else:
        registry, path = DOCKER_HUB, parts
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and len(path) == 1:
        path = ["library", *path]
    if not path or not all(_COMPONENT.fullmatch(p) for p in path):
        raise InvalidArgument(f'invalid reference format: "{ref}": a repository name is lowercase '
                              "letters and digits separated by '.', '_', '__' or '-', in '/'-separated parts")
    if tag is None and digest is None:
        tag = "latest"
    return RemoteRef(registry, "/".join(path), tag, digest)


def _credentials(registry: str) -> tuple[str, str] | None:
    """(user, password) for ``registry`` from Docker's config.json, if it has them."""
    base = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    try:
        with open(os.path.join(base, "config.json")) as f:
            auths = json.load(f).get("auths") or {}
    except (OSError, ValueError):
        return None
    keys = [registry, f"https://{registry}", f"http://{registry}"]
    if registry == DOCKER_HUB:
        keys += ["https://index.docker.io/v1/", "index.docker.io"]
    for k in keys:
        entry = auths.get(k)
        if isinstance(entry, dict) and entry.get("auth"):
            try:
                user, _, pw = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeError):
                continue
            return user, pw
    return None


class _Registry:
    """HTTP to one registry for one repository, with its challenge answered."""

    def __init__(self, remote: RemoteRef, insecure: bool, actions: str) -> None:
        self.remote = remote
        self.scheme = "http" if insecure else "https"
        self.base = f"{self.scheme}://{remote.api_host}"
        self.scope = f"repository:{remote.repository}:{actions}"
        self._auth: str | None = None
        self._conns: dict[tuple[str, str], Any] = {}

    def close(self) -> None:
        for c in self._conns.values():
            c.close()
        self._conns.clear()

    def _conn(self, scheme: str, netloc: str) -> Any:
        import http.client

        key = (scheme, netloc)
        if key not in self._conns:
            if scheme == "https":
                import ssl

                c: Any = http.client.HTTPSConnection(netloc, timeout=60, context=ssl.create_default_context())
            else:
                c = http.client.HTTPConnection(netloc, timeout=60)
            c.blocksize = _BUF
            self._conns[key] = c
        return self._conns[key]

    def request(self, method: str, url: str, *, headers: dict | None = None, body: Any = None,
                ok: tuple[int, ...] = (200,), redirects: int = 5) -> Any:
        """Send one request (answering an auth challenge once); the response, whose body
        the caller reads completely.  A status outside ``ok`` raises."""
        import http.client

        url = urljoin(self.base + "/", url)
        for attempt in range(2):
            parts = urlsplit(url)
            hdrs = dict(headers or {})
            same_host = parts.netloc == urlsplit(self.base).netloc
            if self._auth and same_host:
                hdrs["Authorization"] = self._auth
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            conn = self._conn(parts.scheme, parts.netloc)
            try:
                if hasattr(body, "seek"):
                    body.seek(0)
                conn.request(method, path, body=body, headers=hdrs)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                hint = " (a plain-http registry? use --insecure)" if self.scheme == "https" else ""
                raise RegistryError(f"cannot reach the registry {parts.netloc}: {exc}{hint}; "
                                    "check it is running and the address") from exc
            if resp.status == 401 and attempt == 0 and same_host:
                challenge = resp.getheader("WWW-Authenticate", "")
                resp.read()
                self._auth = self._answer(challenge)
                continue
            if resp.status in (301, 302, 303, 307, 308) and redirects > 0:
                location = resp.getheader("Location", "")
                resp.read()
                return self.request("GET" if resp.status == 303 else method, urljoin(url, location),
                                    headers=headers, body=body, ok=ok, redirects=redirects - 1)
            if resp.status not in ok:
                raise self._failure(method, url, resp)
            return resp
        raise AssertionError("unreachable")

    def _failure(self, method: str, url: str, resp: Any) -> EngineError:
        text = resp.read(65536).decode("utf-8", "replace")
        detail = text.strip()
        with contextlib.suppress(ValueError, AttributeError, TypeError, IndexError):
            err = json.loads(text)["errors"][0]
            detail = f"{err.get('code')}: {err.get('message')}"
        where = f"{method} {urlsplit(url).path}"
        if resp.status == 401:
            return Unauthorized(f"the registry {self.remote.registry} refused {where}: {detail}; "
                                "log in (Docker's config.json auths) with an account that may do this")
        if resp.status == 404:
            return NotFound(f"not found in the registry {self.remote.registry}: {where}: {detail}; "
                            "check the name and tag")
        return RegistryError(f"the registry {self.remote.registry} answered {resp.status} to {where}: {detail}")

    def _answer(self, challenge: str) -> str:
        scheme, _, rest = challenge.partition(" ")
        params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        creds = _credentials(self.remote.registry)
        if scheme.lower() == "basic":
            if creds is None:
                raise Unauthorized(f"the registry {self.remote.registry} wants a user name and password; "
                                   "put them in Docker's config.json (auths)")
            return "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        if scheme.lower() != "bearer" or "realm" not in params:
            raise Unauthorized(f"the registry {self.remote.registry} asks for an unsupported "
                               f"authentication: {challenge!r}")
        return "Bearer " + self._token(params, creds)

    def _token(self, params: dict[str, str], creds: tuple[str, str] | None) -> str:
        import urllib.error
        import urllib.request

        query = {"scope": params.get("scope") or self.scope}
        if params.get("service"):
            query["service"] = params["service"]
        if self.scope not in query["scope"].split(" "):
            query["scope"] = self.scope
        req = urllib.request.Request(params["realm"] + ("&" if "?" in params["realm"] else "?") + urlencode(query))
        if creds:
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                doc = json.load(resp)
        except urllib.error.HTTPError as exc:
            raise Unauthorized(f"the token server {params['realm']} refused us ({exc.code}): check the "
                               "credentials in Docker's config.json") from exc
        except (OSError, ValueError) as exc:
            raise RegistryError(f"cannot get a token from {params['realm']}: {exc}") from exc
        token = doc.get("token") or doc.get("access_token")
        if not isinstance(token, str):
            raise RegistryError(f"the token server {params['realm']} answered without a token")
        return token

    def read(self, url: str, *, headers: dict | None = None, limit: int = 4 << 20) -> tuple[bytes, Any]:
        resp = self.request("GET", url, headers=headers)
        data = resp.read(limit + 1)
        if len(data) > limit:
            raise RegistryError(f"the registry sent more than {limit} bytes for {url}; refusing it")
        return data, resp


def _sha(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeError) as exc:
        raise RegistryError(f"the registry sent a {what} that is not JSON ({exc})") from exc


@contextlib.contextmanager
def _layer_lock(root: str, diff_id: str) -> Iterator[None]:
    import fcntl

    d = os.path.join(root, "pulls")
    os.makedirs(d, exist_ok=True)
    fd = os.open(os.path.join(d, diff_id[7:] + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class _Throttle:
    """Progress messages of one layer, at most every :data:`_PROGRESS_EVERY` seconds."""

    def __init__(self, progress: Progress | None, layer: str, status: str, total: int) -> None:
        self.progress, self.layer, self.status, self.total = progress, layer, status, total
        self._last = 0.0

    def __call__(self, current: int) -> None:
        now = time.monotonic()
        if self.progress is not None and now - self._last >= _PROGRESS_EVERY:
            self._last = now
            self.progress({"layer": self.layer, "status": self.status, "current": current, "total": self.total})


def _say(progress: Progress | None, layer: str, status: str, current: int = 0, total: int = 0) -> None:
    if progress is not None:
        progress({"layer": layer, "status": status, "current": current, "total": total})


def _manifest(reg: _Registry, remote: RemoteRef) -> tuple[dict, str]:
    """The image manifest for this machine's platform, verified, and its digest."""
    ref = remote.reference
    for _ in range(3):
        data, resp = reg.read(f"/v2/{remote.repository}/manifests/{ref}", headers={"Accept": _ACCEPT})
        digest = _sha(data)
        claimed = ref if _DIGEST.fullmatch(ref) else resp.getheader("Docker-Content-Digest")
        if claimed and claimed != digest:
            raise RegistryError(f"the manifest of {remote.repository}:{ref} has digest {digest} but the "
                                f"registry says {claimed}: refusing it")
        doc = _json(data, "manifest")
        mt = doc.get("mediaType") or resp.getheader("Content-Type", "")
        if doc.get("schemaVersion") == 1:
            raise RegistryError(f"{remote.repository}:{ref} has a schema 1 manifest, which is not supported")
        if mt in INDEXES or "manifests" in doc:
            ref = _pick_platform(doc.get("manifests") or [])["digest"]
            continue
        return doc, digest
    raise RegistryError(f"the manifest of {remote.repository} is nested too deeply")


def pull(store: ImageStore, ref: str, *, insecure: bool = False,
         progress: Progress | None = None) -> tuple[str, str]:
    """Pull ``ref`` into ``store``; ``(image id, local name:tag)``."""
    remote = parse_remote(ref)
    reg = _Registry(remote, insecure, "pull")
    added: list[str] = []
    try:
        manifest, _ = _manifest(reg, remote)
        cdesc = manifest.get("config") or {}
        layers_desc = manifest.get("layers")
        if not isinstance(layers_desc, list) or not isinstance(cdesc.get("digest"), str):
            raise RegistryError(f"the manifest of {remote.repository} is not an image manifest")
        data, _ = reg.read(f"/v2/{remote.repository}/blobs/{cdesc['digest']}", limit=16 << 20)
        if _sha(data) != cdesc["digest"]:
            raise RegistryError(f"the config blob of {remote.repository} does not match its digest "
                                f"{cdesc['digest']}: refusing it")
        cfg = _json(data, "config")
        diff_ids = (cfg.get("rootfs") or {}).get("diff_ids") or []
        if len(diff_ids) != len(layers_desc):
            raise RegistryError(f"the config of {remote.repository} lists {len(diff_ids)} diff ids for "
                                f"{len(layers_desc)} layers")
        for desc, diff_id in zip(layers_desc, diff_ids):
            if _fetch_layer(store, reg, remote, desc, diff_id, progress):
                added.append(diff_id)
        hist = [{"created": h.get("created", ""), "created_by": h.get("created_by", ""),
                 "comment": h.get("comment", ""), "author": h.get("author", "")}
                for h in cfg.get("history") or [] if isinstance(h, dict) and not h.get("empty_layer")]
        local = [remote.local] if remote.digest is None else []
        img = store.add_image(list(diff_ids), config_from_oci(cfg), local,
                              created=cfg.get("created") if isinstance(cfg.get("created"), str) else None,
                              history=hist, author=str(cfg.get("author") or ""))
        return img.id, local[0] if local else f"{remote.registry}/{remote.repository}@{remote.digest}"
    except BaseException:
        if added:
            store.drop_layers_if_unused(added)
        raise
    finally:
        reg.close()


def _fetch_layer(store: ImageStore, reg: _Registry, remote: RemoteRef, desc: dict, diff_id: str,
                 progress: Progress | None) -> bool:
    """Download one layer unless present; whether this call added it."""
    digest, size = desc.get("digest"), desc.get("size")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest) or not isinstance(diff_id, str):
        raise RegistryError(f"the manifest of {remote.repository} has a layer without a sha256 digest")
    short = digest[7:19]
    if store.layers.exists(diff_id):
        _say(progress, short, "Already exists", size or 0, size or 0)
        return False
    with _layer_lock(store.root, diff_id):
        if store.layers.exists(diff_id):  # another pull fetched it while we waited
            _say(progress, short, "Already exists", size or 0, size or 0)
            return False
        if "zstd" in str(desc.get("mediaType", "")):
            raise RegistryError(f"layer {digest} is zstd-compressed, which is not supported")
        resp = reg.request("GET", f"/v2/{remote.repository}/blobs/{digest}")
        total = size if isinstance(size, int) else int(resp.getheader("Content-Length") or 0)
        v = Verifier(resp, f"layer {digest} of {remote.repository}", digest,
                     size if isinstance(size, int) else None, _Throttle(progress, short, "Downloading", total))

        def check(got: str) -> None:
            v.check()
            if got != diff_id:
                raise RegistryError(f"layer {digest} of {remote.repository} unpacks to diff id {got} but "
                                    f"its config says {diff_id}: refusing it")
        try:
            store.layers.add_from_tar(v, check=check)  # type: ignore[arg-type]
        except InvalidArgument as exc:
            raise RegistryError(f"layer {digest} of {remote.repository}: {exc}") from exc
        except OSError as exc:
            raise RegistryError(f"downloading layer {digest} of {remote.repository} failed: {exc}") from exc
        finally:
            resp.close()
        _say(progress, short, "Pull complete", v.count, total)
        return True


def push(store: ImageStore, ref: str, *, insecure: bool = False,
         progress: Progress | None = None) -> tuple[str, str, str]:
    """Push the local image ``ref`` to its registry; ``(image id, ref, manifest digest)``."""
    remote = parse_remote(ref)
    if remote.digest is not None:
        raise InvalidArgument(f"cannot push to a digest ({ref}); push a tag")
    rec = store.record(remote.local)
    reg = _Registry(remote, insecure, "pull,push")
    stage = fsutil.staging_dir(store.root, "push")
    try:
        exported = {}
        for diff_id in dict.fromkeys(rec["layers"]):
            cached = store.layers.exported(diff_id, compress=True)
            if cached and _blob_exists(reg, remote, cached["digest"]):
                _say(progress, cached["digest"][7:19], "Layer already exists", cached["size"], cached["size"])
                exported.update(_cached(diff_id, cached))
                continue
            e = export_layers(store, [diff_id], stage, compress=True)[diff_id]
            exported[diff_id] = e
            if _blob_exists(reg, remote, e.digest):
                _say(progress, e.digest[7:19], "Layer already exists", e.size, e.size)
                continue
            with open(e.path, "rb") as f:
                _upload(reg, remote, e.digest, e.size, f, _Throttle(progress, e.digest[7:19], "Pushing", e.size))
            _say(progress, e.digest[7:19], "Pushed", e.size, e.size)
        config, manifest = image_blobs(rec, exported)  # type: ignore[arg-type]
        if not _blob_exists(reg, remote, _sha(config)):
            import io

            _upload(reg, remote, _sha(config), len(config), io.BytesIO(config), None)
        resp = reg.request("PUT", f"/v2/{remote.repository}/manifests/{remote.tag}", body=manifest,
                           headers={"Content-Type": MT_OCI_MANIFEST}, ok=(200, 201))
        resp.read()
        return rec["id"], remote.local, _sha(manifest)
    finally:
        reg.close()
        fsutil.remove_tree(stage)


def _cached(diff_id: str, info: dict) -> dict:
    from engine.archive import _Exported

    return {diff_id: _Exported("", info)}


def _blob_exists(reg: _Registry, remote: RemoteRef, digest: str) -> bool:
    resp = reg.request("HEAD", f"/v2/{remote.repository}/blobs/{digest}", ok=(200, 404))
    resp.read()
    return resp.status == 200


class _Reading:
    """A file whose reads report progress (http.client streams the body with read())."""

    def __init__(self, f: Any, progress: Callable[[int], None] | None) -> None:
        self._f, self._progress, self.count = f, progress, 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.count += len(data)
        if self._progress is not None:
            self._progress(self.count)
        return data

    def seek(self, pos: int) -> None:
        self._f.seek(pos)
        self.count = pos


def _upload(reg: _Registry, remote: RemoteRef, digest: str, size: int, f: Any,
            progress: Callable[[int], None] | None) -> None:
    resp = reg.request("POST", f"/v2/{remote.repository}/blobs/uploads/", ok=(202,),
                       headers={"Content-Length": "0"})
    resp.read()
    location = resp.getheader("Location")
    if not location:
        raise RegistryError(f"the registry {remote.registry} started an upload without a Location")
    sep = "&" if "?" in location else "?"
    resp = reg.request("PUT", f"{location}{sep}digest={digest}", body=_Reading(f, progress),
                       headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                       ok=(201,))
    resp.read()
