"""The content-addressed layer store under an engine root ``R``.

``R/layers/<hex>/`` holds ``diff`` (the layer's files in overlay form), ``link`` (a
26-character random id) and ``size``; ``R/l/<link> -> ../layers/<hex>/diff`` gives each
layer a short name so that a ``lowerdir=l/A:l/B:...`` option for a deep image fits in
one page (overlay2's trick; the runtime chdirs to ``R``).  ``<hex>`` is the layer's diff
id: the sha256 of its uncompressed tar.

A layer is built in ``R/tmp`` and renamed into ``R/layers`` when complete, so a layer
directory that exists is a finished one; removal renames it back into ``R/tmp`` first.
:meth:`LayerStore.gc` cleans what a killed process left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable
from typing import IO, BinaryIO

from engine import fsutil
from engine.errors import EngineError, InvalidArgument, NotFound

__all__ = ["LayerStore", "layer_hex"]

_LINK_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_LINK_LEN = 26
# zlib level 6 (gzip's default) costs ~3x level 1 for a few percent of size; pushes and
# OCI archives of big layers are dominated by it, so a faster level
_GZIP_LEVEL = 1


def layer_hex(diff_id: str) -> str:
    """The hex digest of ``sha256:<hex>`` (or of bare hex); InvalidArgument otherwise."""
    hexpart = diff_id[7:] if diff_id.startswith("sha256:") else diff_id
    if len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise InvalidArgument(f"invalid layer id {diff_id!r}: expected sha256:<64 hex digits>")
    return hexpart


class LayerStore:
    """Layers by diff id under ``root``; adding is idempotent and crash-safe."""

    def __init__(self, root: str, *, allow_devices: bool = False) -> None:
        self.root = os.path.abspath(root)
        self.allow_devices = allow_devices
        self._layers = os.path.join(self.root, "layers")
        self._links = os.path.join(self.root, "l")
        for d in (self._layers, self._links, os.path.join(self.root, "tmp")):
            os.makedirs(d, exist_ok=True)

    def _dir(self, diff_id: str) -> str:
        return os.path.join(self._layers, layer_hex(diff_id))

    def exists(self, diff_id: str) -> bool:
        """Whether the layer is present and complete."""
        return os.path.isfile(os.path.join(self._dir(diff_id), "link"))

    def add_from_tar(self, fileobj: BinaryIO, *, check: Callable[[str], None] | None = None) -> str:
        """Add the layer in a tar (plain or gzip) stream; return its diff id.

        A layer that is already present is reused (the new copy is thrown away).
        ``check`` is called with the diff id once the whole stream is read and before
        the layer becomes visible: it raises to refuse the layer (a digest that does
        not match its descriptor), which then leaves nothing behind.
        """
        stage = fsutil.staging_dir(self.root, "layer")
        try:
            diff = os.path.join(stage, "diff")
            os.mkdir(diff, 0o755)
            from engine.tarlayer import apply_tar  # tarfile, gzip: only when importing

            diff_id, size = apply_tar(fileobj, diff, allow_devices=self.allow_devices)
            if check is not None:
                check(diff_id)
            final = self._dir(diff_id)
            if self.exists(diff_id):
                return diff_id
            short = "".join(_LINK_ALPHABET[b % len(_LINK_ALPHABET)]
                            for b in os.urandom(_LINK_LEN))
            with open(os.path.join(stage, "size"), "w") as f:
                f.write(str(size))
            with open(os.path.join(stage, "link"), "w") as f:
                f.write(short)
            try:
                os.rename(stage, final)
            except OSError:
                # another process finished the same layer first: use theirs
                if not self.exists(diff_id):
                    raise
                return diff_id
            # made after the rename so a link never dangles while a layer is being added;
            # if we die in between, link() and gc() make it
            self._ensure_link(diff_id, short)
            return diff_id
        finally:
            fsutil.remove_tree(stage)

    def add_from_dir(self, path: str) -> str:
        """Add the directory ``path`` (overlay form: whiteouts, opaque dirs) as a layer."""
        if not os.path.isdir(path):
            raise NotFound(f"no such directory: {path}; give the directory to make a layer of")
        rfd, wfd = os.pipe()
        failure: list[BaseException] = []

        def produce() -> None:
            with open(wfd, "wb", buffering=1 << 20) as out:
                try:
                    from engine.tarlayer import diff_tar

                    diff_tar(path, out)
                except BrokenPipeError:
                    pass  # the reader failed; its error is the one to report
                except EngineError as exc:
                    failure.append(exc)
                except OSError as exc:
                    err = EngineError(f"could not read {path} to make a layer: {exc}; check the directory is readable")
                    err.__cause__ = exc
                    failure.append(err)

        writer = threading.Thread(target=produce, name="cbx-layer-diff", daemon=True)
        writer.start()
        try:
            with open(rfd, "rb", buffering=0) as src:
                try:
                    diff_id = self.add_from_tar(src)  # type: ignore[arg-type]
                finally:
                    src.close()  # unblocks a writer stuck on a full pipe
                    writer.join()
        except InvalidArgument:
            if failure:
                raise failure[0] from None
            raise
        if failure:
            raise failure[0]
        return diff_id

    def export(self, diff_id: str, out: IO[bytes], *, compress: bool) -> dict:
        """Write the layer to ``out`` as an OCI layer tar (gzip when ``compress``).

        The tar is :func:`~engine.tarlayer.diff_tar`'s, so the same layer always gives
        the same bytes; returns ``{"digest", "size", "diff_id"}`` (the blob's sha256 and
        length, the uncompressed tar's sha256) and remembers it for :meth:`exported`.
        """
        import gzip

        from engine.tarlayer import HashingWriter, diff_tar

        src = self.path(diff_id)
        blob = HashingWriter(out)
        if compress:
            # mtime=0 and no file name: the same tar always compresses to the same blob
            with gzip.GzipFile(fileobj=blob, mode="wb", compresslevel=_GZIP_LEVEL, mtime=0) as gz:  # type: ignore[arg-type]
                tar_digest, _ = diff_tar(src, gz)  # type: ignore[arg-type]
        else:
            tar_digest, _ = diff_tar(src, blob)  # type: ignore[arg-type]
        info = {"digest": "sha256:" + blob.digest.hexdigest(), "size": blob.count, "diff_id": tar_digest}
        cache = self._export_cache(diff_id)
        cache["gzip" if compress else "tar"] = info
        with contextlib.suppress(OSError):  # only a cache: a failure costs a recompute
            fsutil.write_json(os.path.join(self._dir(diff_id), "export.json"), cache, sync=False)
        return info

    def exported(self, diff_id: str, *, compress: bool) -> dict | None:
        """What :meth:`export` returned the last time for this layer and form, if known."""
        return self._export_cache(diff_id).get("gzip" if compress else "tar")

    def _export_cache(self, diff_id: str) -> dict:
        try:
            return fsutil.read_json(os.path.join(self._dir(diff_id), "export.json"), {}) or {}
        except (OSError, json.JSONDecodeError):
            return {}

    def path(self, diff_id: str) -> str:
        """The absolute path of the layer's ``diff`` directory."""
        if not self.exists(diff_id):
            raise NotFound(f"no such layer: {diff_id}; it was removed or never imported")
        return os.path.join(self._dir(diff_id), "diff")

    def _ensure_link(self, diff_id: str, short: str) -> None:
        link = os.path.join(self._links, short)
        if not os.path.islink(link):
            with contextlib.suppress(FileExistsError):
                os.symlink(f"../layers/{layer_hex(diff_id)}/diff", link)

    def link(self, diff_id: str) -> str:
        """The layer's short lowerdir name ``l/<id>``, relative to the root."""
        try:
            with open(os.path.join(self._dir(diff_id), "link")) as f:
                short = f.read().strip()
        except FileNotFoundError:
            raise NotFound(f"no such layer: {diff_id}; it was removed or never imported") from None
        self._ensure_link(diff_id, short)
        return "l/" + short

    def size(self, diff_id: str) -> int:
        """Total bytes of the layer's regular files."""
        try:
            with open(os.path.join(self._dir(diff_id), "size")) as f:
                return int(f.read().strip() or 0)
        except FileNotFoundError:
            raise NotFound(f"no such layer: {diff_id}; it was removed or never imported") from None

    def all(self) -> list[str]:
        """The diff ids of every complete layer, sorted."""
        return sorted(f"sha256:{h}" for h in os.listdir(self._layers) if self.exists(h))

    def remove(self, diff_id: str, *, trash: str | None = None) -> None:
        """Delete a layer (a missing one is fine); callers check nothing uses it.

        With ``trash`` (a staging directory of the caller's) the layer is only moved
        there, in one step, for the caller to delete later outside its lock.
        """
        final = self._dir(diff_id)
        if not os.path.isdir(final):
            return
        short = None
        with contextlib.suppress(OSError):
            with open(os.path.join(final, "link")) as f:
                short = f.read().strip()
        own_trash = trash is None
        bin_dir = fsutil.staging_dir(self.root, "rmlayer") if trash is None else trash
        with contextlib.suppress(FileNotFoundError):
            # out of sight in one step; the link dangles until unlinked (gc removes it)
            os.rename(final, os.path.join(bin_dir, layer_hex(diff_id)))
        if short:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._links, short))
        if own_trash:
            fsutil.remove_tree(bin_dir)

    def gc(self) -> None:
        """Remove a dead process's staging dirs, unfinished layer dirs and dangling links,
        and remake the short link of a layer whose adder died right after finishing it."""
        fsutil.clean_staging(self.root)
        for name in os.listdir(self._layers):
            d = os.path.join(self._layers, name)
            complete = all(os.path.exists(os.path.join(d, f)) for f in ("diff", "link", "size"))
            if not complete:
                fsutil.remove_tree(d)
            else:
                self.link(name)
        for name in os.listdir(self._links):
            link = os.path.join(self._links, name)
            if not os.path.exists(link):  # dangling (exists() follows the link)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(link)
