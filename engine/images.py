"""The image store: images as ordered stacks of layers, their tags, import, commit, rmi.

Under the engine root ``R``: ``R/images/<hex>.json`` is one image record (``id``,
``parent``, ``layers`` base first, ``config``, ``created``, ``comment``, ``author``,
``history`` one entry per layer) and ``R/repositories.json`` maps ``name:tag`` to an
image id.  An image id is ``sha256:`` + the sha256 of the canonical JSON of its config,
layers and parent, so the same content always gets the same id.

Crash safety: a record is written (atomically) only after all its layers are complete,
under the root lock, which also checks the layers are still there; ``rmi`` moves the
record into ``R/tmp`` in one step before it touches any layer, and :meth:`ImageStore.gc`
finishes a removal whose process died half way.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from engine import fsutil, refs
from engine.errors import Conflict, CorruptState, InvalidArgument, NotFound
from engine.layers import LayerStore, layer_hex

__all__ = ["Image", "ImageStore", "normalize_config", "config_from_oci", "CONFIG_KEYS"]

#: the image config keys chanbox keeps, with their empty values
CONFIG_KEYS: dict[str, Any] = {
    "Cmd": None,
    "Entrypoint": None,
    "Env": [],
    "WorkingDir": "",
    "User": "",
    "Labels": {},
}


@dataclass
class Image:
    """One image as the engine reports it (``size`` sums its distinct layers)."""

    id: str
    tags: list[str]
    parent: str | None
    layers: list[str]
    config: dict
    created: str
    comment: str
    author: str
    size: int


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _str_list(key: str, value: Any, *, nullable: bool) -> list[str] | None:
    if value is None and nullable:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"image config {key} must be a list of strings, got {value!r}")
    return list(value)


def normalize_config(config: dict | None, base: dict | None = None) -> dict:
    """``base`` (or an empty config) updated with ``config``, validated; every key present."""
    out = json.loads(json.dumps(base)) if base else json.loads(json.dumps(CONFIG_KEYS))
    for key, value in (config or {}).items():
        if key not in CONFIG_KEYS:
            raise InvalidArgument(
                f"unknown image config key {key!r}; the keys are {', '.join(CONFIG_KEYS)}"
            )
        if key in ("Cmd", "Entrypoint"):
            out[key] = _str_list(key, value, nullable=True)
        elif key == "Env":
            env = _str_list(key, value, nullable=False) or []
            bad = [e for e in env if "=" not in e or e.startswith("=")]
            if bad:
                raise InvalidArgument(f"image config Env entries must be KEY=VALUE, got {bad[0]!r}")
            out[key] = env
        elif key in ("WorkingDir", "User"):
            if not isinstance(value, str):
                raise InvalidArgument(f"image config {key} must be a string, got {value!r}")
            out[key] = value
        else:
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise InvalidArgument(f"image config Labels must map strings to strings, got {value!r}")
            out[key] = dict(value)
    return out


def config_from_oci(doc: dict) -> dict:
    """The chanbox config of an OCI/Docker image config document (its ``config``
    member), keeping the keys chanbox runs with and dropping the others (ports,
    volumes, healthchecks: nothing here uses them)."""
    raw = doc.get("config") or doc.get("container_config") or {}
    if not isinstance(raw, dict):
        raise InvalidArgument("image config: 'config' must be an object; the image's config blob is malformed")
    kept = {k: v for k, v in raw.items() if k in CONFIG_KEYS and v is not None}
    if kept.get("Labels") is not None:
        kept["Labels"] = {str(k): str(v) for k, v in kept["Labels"].items()}
    return normalize_config(kept)


def _image_id(config: dict, layers: list[str], parent: str | None) -> str:
    canon = json.dumps({"config": config, "layers": layers, "parent": parent}, sort_keys=True, separators=(",", ":"))
    import hashlib  # (not at load: ~2.5 ms of every CLI command that never hashes)

    return "sha256:" + hashlib.sha256(canon.encode()).hexdigest()


class ImageStore:
    """Images, tags and layers under one engine root."""

    def __init__(self, root: str, *, allow_devices: bool = False) -> None:
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.layers = LayerStore(self.root, allow_devices=allow_devices)
        self._images = os.path.join(self.root, "images")
        self._repos = os.path.join(self.root, "repositories.json")
        os.makedirs(self._images, exist_ok=True)

    # records ---------------------------------------------------------------------

    def _record_path(self, image_id: str) -> str:
        return os.path.join(self._images, layer_hex(image_id) + ".json")

    def _read_record(self, image_id: str) -> dict | None:
        try:
            return fsutil.read_json(self._record_path(image_id))
        except json.JSONDecodeError as exc:
            raise CorruptState(
                f"image record {image_id} is not valid JSON ({exc}); remove "
                f"{self._record_path(image_id)} and import the image again"
            ) from exc

    def _all_records(self) -> list[dict]:
        out = []
        for name in os.listdir(self._images):
            if name.endswith(".json") and len(name) == 69:
                rec = self._read_record(name[:-5])
                if rec is not None:
                    out.append(rec)
        return out

    def _repos_map(self) -> dict[str, str]:
        return fsutil.read_json(self._repos, {}) or {}

    def _image(self, rec: dict, repos: dict[str, str]) -> Image:
        tags = sorted(t for t, i in repos.items() if i == rec["id"])
        size = 0
        for diff_id in dict.fromkeys(rec["layers"]):
            with contextlib.suppress(NotFound):
                size += self.layers.size(diff_id)
        return Image(
            id=rec["id"], tags=tags, parent=rec.get("parent"), layers=list(rec["layers"]),
            config=rec["config"], created=rec["created"], comment=rec.get("comment", ""),
            author=rec.get("author", ""), size=size,
        )

    def _resolve(self, ref_or_id: str, repos: dict[str, str]) -> tuple[dict, str | None]:
        """The record ``ref_or_id`` names, and the ``name:tag`` if it named one."""
        full = refs.parse_id(ref_or_id)
        if full is not None:
            rec = self._read_record(full)
            if rec is None:
                raise NotFound(f"no such image: {ref_or_id}")
            return rec, None
        prefix = refs.id_prefix(ref_or_id)
        shown = ref_or_id
        try:
            ref = refs.normalize(ref_or_id)
        except InvalidArgument:
            if prefix is None:
                raise
        else:
            shown = ref
            if ref in repos:
                rec = self._read_record(repos[ref])
                if rec is None:
                    raise CorruptState(
                        f"tag {ref} points at the missing image {repos[ref]}; remove the tag "
                        f"with 'rmi {ref}' and import or tag the image again"
                    )
                return rec, ref
        if prefix is not None:
            matches = [n[:-5] for n in os.listdir(self._images) if n.startswith(prefix) and n.endswith(".json")]
            if len(matches) > 1:
                raise InvalidArgument(
                    f"short image id {ref_or_id!r} is ambiguous: it matches {len(matches)} images; "
                    "give more of the id"
                )
            if matches:
                rec = self._read_record(matches[0])
                if rec is not None:
                    return rec, None
        raise NotFound(f"no such image: {shown}")

    def _write(self, rec: dict, ref: str | None) -> Image:
        """Publish a record whose layers are complete (idempotent), then tag it."""
        with fsutil.root_lock(self.root):
            missing = [d for d in rec["layers"] if not self.layers.exists(d)]
            if missing:
                raise Conflict(
                    f"layer {missing[0]} was removed while this image was being made "
                    "(a concurrent rmi); try again"
                )
            existing = self._read_record(rec["id"])
            if existing is None:
                fsutil.write_json(self._record_path(rec["id"]), rec)
            else:
                rec = existing
            repos = self._repos_map()
            if ref is not None:
                repos[ref] = rec["id"]
                fsutil.write_json(self._repos, repos)
            return self._image(rec, repos)

    def _new_image(
        self, layers: list[str], parent: dict | None, ref: str | None, config: dict,
        comment: str, author: str, created_by: str, history_comment: str,
    ) -> Image:
        created = _now()
        parent_id = parent["id"] if parent else None
        history = list(parent.get("history", [])) if parent else []
        history.append({"created": created, "created_by": created_by, "comment": history_comment, "author": author})
        rec = {
            "id": _image_id(config, layers, parent_id), "parent": parent_id, "layers": layers,
            "config": config, "created": created, "comment": comment, "author": author,
            "history": history,
        }
        return self._write(rec, ref)

    # public ----------------------------------------------------------------------

    def import_path(
        self, path: str, ref: str | None, *, config: dict | None = None, comment: str = "",
        created_by: str = "",
    ) -> Image:
        """Import a rootfs directory or a layer tar (plain or gzip) as a one-layer image."""
        norm = refs.normalize(ref) if ref is not None else None
        cfg = normalize_config(config)
        if os.path.isdir(path):
            diff_id = self.layers.add_from_dir(path)
        elif os.path.isfile(path):
            with open(path, "rb") as f:
                diff_id = self.layers.add_from_tar(f)
        else:
            raise NotFound(f"no such file or directory: {path}; give a rootfs directory or a .tar/.tar.gz file")
        return self._new_image([diff_id], None, norm, cfg, comment, "", created_by, comment or f"Imported from {path}")

    def import_stream(
        self, fileobj: BinaryIO, ref: str | None, *, config: dict | None = None, comment: str = "",
        created_by: str = "",
    ) -> Image:
        """Import a layer tar (plain or gzip) read from ``fileobj`` as a one-layer image."""
        norm = refs.normalize(ref) if ref is not None else None
        cfg = normalize_config(config)
        diff_id = self.layers.add_from_tar(fileobj)
        return self._new_image([diff_id], None, norm, cfg, comment, "", created_by, comment or "Imported from -")

    def commit(
        self, upperdir: str, parent: Image, ref: str | None, *, config: dict | None,
        comment: str = "", author: str = "", created_by: str = "",
    ) -> Image:
        """A child of ``parent`` with one new layer made from a container's upper dir.

        Whiteouts and opaque directories in ``upperdir`` are kept; ``config`` keys
        override the parent's config (``None`` keeps it as it is).
        """
        norm = refs.normalize(ref) if ref is not None else None
        parent_rec = self._read_record(parent.id)
        if parent_rec is None:
            raise NotFound(f"no such image: {parent.id} (the container's image was removed)")
        cfg = normalize_config(config, base=parent_rec["config"])
        diff_id = self.layers.add_from_dir(upperdir)
        layers = list(parent_rec["layers"]) + [diff_id]
        return self._new_image(layers, parent_rec, norm, cfg, comment, author, created_by, comment)

    def add_image(
        self, layers: list[str], config: dict, refs_: list[str], *, created: str | None = None,
        history: list[dict] | None = None, comment: str = "", author: str = "",
    ) -> Image:
        """Publish an image made of layers already in the store (a loaded or pulled one)
        and point every ``name:tag`` of ``refs_`` at it.

        ``history`` has one entry per layer (``created``, ``created_by``, ``comment``,
        ``author``); anything else is replaced by one plain entry per layer.  The image
        has no parent: the record of the image it was built from did not travel with it.
        """
        norms = [refs.normalize(r) for r in refs_]
        cfg = normalize_config(config)
        created = created or _now()
        if not history or len(history) != len(layers):
            history = [{"created": created, "created_by": "", "comment": "", "author": ""} for _ in layers]
        rec = {
            "id": _image_id(cfg, layers, None), "parent": None, "layers": list(layers), "config": cfg,
            "created": created, "comment": comment, "author": author, "history": history,
        }
        img = self._write(rec, norms[0] if norms else None)
        for extra in norms[1:]:
            self.tag(img.id, extra)
        return self.get(img.id)

    def record(self, ref_or_id: str) -> dict:
        """The image's stored record (``id``, ``layers``, ``config``, ``history``, ...)."""
        rec, _ = self._resolve(ref_or_id, self._repos_map())
        return rec

    def unused_layers(self, candidates: list[str]) -> list[str]:
        """Those of ``candidates`` that no image uses (call under :func:`fsutil.root_lock`)."""
        used = {d for r in self._all_records() for d in r["layers"]}
        return [d for d in dict.fromkeys(candidates) if d not in used]

    def drop_layers_if_unused(self, candidates: list[str]) -> None:
        """Delete the layers of ``candidates`` that no image uses: what a failed load or
        pull added before it failed."""
        with fsutil.root_lock(self.root):
            trash = fsutil.staging_dir(self.root, "rmi")
            for d in self.unused_layers(candidates):
                self.layers.remove(d, trash=trash)
        fsutil.remove_tree(trash)

    def get(self, ref_or_id: str) -> Image:
        """The image a ``name[:tag]``, a full id or a unique id prefix (>= 4 hex) names."""
        repos = self._repos_map()
        rec, _ = self._resolve(ref_or_id, repos)
        return self._image(rec, repos)

    def list(self) -> list[Image]:
        """Every image, newest first."""
        repos = self._repos_map()
        images = [self._image(rec, repos) for rec in self._all_records()]
        images.sort(key=lambda i: (i.created, i.id), reverse=True)
        return images

    def tag(self, source: str, ref: str) -> None:
        """Make ``ref`` (``name[:tag]``) point at the image ``source`` names."""
        norm = refs.normalize(ref)
        with fsutil.root_lock(self.root):
            repos = self._repos_map()
            rec, _ = self._resolve(source, repos)
            repos[norm] = rec["id"]
            fsutil.write_json(self._repos, repos)

    def remove(
        self, ref_or_id: str, *, force: bool = False,
        in_use_by: Callable[[str], list[str]] = lambda image_id: [],
    ) -> list[str]:
        """Docker's ``rmi``: untag, and delete the image when nothing keeps it.

        By tag: the tag goes; the image goes with its last tag unless a container uses
        it (Conflict, or with ``force`` the tag goes and the image stays, untagged, for
        the container) or it is the parent of another image (it stays, untagged).  By
        id: refused while a child image exists; with several tags or a container using
        it only with ``force``.  Layers no other image uses are deleted with the image.
        Returns Docker-like lines: ``Untagged: name:tag``, ``Deleted: sha256:...``.
        """
        trash = None
        with fsutil.root_lock(self.root):
            repos = self._repos_map()
            rec, via = self._resolve(ref_or_id, repos)
            image_id = rec["id"]
            short = layer_hex(image_id)[:12]
            tags = sorted(t for t, i in repos.items() if i == image_id)
            users = list(in_use_by(image_id))
            others = [r for r in self._all_records() if r["id"] != image_id]
            children = [r["id"] for r in others if r.get("parent") == image_id]
            if via is not None:
                if len(tags) > 1:
                    return self._untag(repos, [via])
                if users and not force:
                    raise Conflict(
                        f"unable to remove image {via}: it is used by container {users[0]}; "
                        "remove the container first or use -f"
                    )
            else:
                if children:
                    raise Conflict(
                        f"unable to delete {short} (cannot be forced): image has dependent child "
                        f"images ({layer_hex(children[0])[:12]}); remove them first"
                    )
                if users and not force:
                    raise Conflict(
                        f"unable to remove image {short}: it is used by container {users[0]}; "
                        "remove the container first or use -f"
                    )
                if len(tags) > 1 and not force:
                    raise Conflict(
                        f"unable to delete {short} (must be forced): image is referenced in "
                        f"{len(tags)} tags ({', '.join(tags)}); remove the tags or use -f"
                    )
            lines = self._untag(repos, tags)
            if users or children:
                return lines  # kept, untagged: a container or a child image needs it
            trash = fsutil.staging_dir(self.root, "rmi")
            gone = [rec]
            # as Docker does, untagged parents that only existed for this image go too
            parent_id = rec.get("parent")
            while parent_id:
                prec = next((r for r in others if r["id"] == parent_id), None)
                if prec is None or any(i == parent_id for i in repos.values()) or in_use_by(parent_id):
                    break
                if any(r.get("parent") == parent_id for r in others if r is not prec):
                    break
                gone.append(prec)
                others.remove(prec)
                parent_id = prec.get("parent")
            for g in gone:
                # a record leaves in one step; gc finishes the layers if we die after this
                os.rename(self._record_path(g["id"]), os.path.join(trash, layer_hex(g["id"]) + ".json"))
                lines.append(f"Deleted: {g['id']}")
            lines += self._drop_unused_layers([d for g in gone for d in g["layers"]], others, trash)
        fsutil.remove_tree(trash)
        return lines

    def _untag(self, repos: dict[str, str], tags: list[str]) -> list[str]:
        for t in tags:
            repos.pop(t, None)
        if tags:
            fsutil.write_json(self._repos, repos)
        return [f"Untagged: {t}" for t in tags]

    def _drop_unused_layers(self, layers: list[str], others: list[dict], trash: str) -> list[str]:
        used = {d for r in others for d in r["layers"]}
        lines = []
        for diff_id in dict.fromkeys(layers):
            if diff_id not in used and self.layers.exists(diff_id):
                self.layers.remove(diff_id, trash=trash)
                lines.append(f"Deleted: {diff_id}")
        return lines

    def history(self, ref_or_id: str) -> list[dict]:
        """One entry per layer, newest first: id (or ``<missing>``), created, created_by,
        size, comment, tags."""
        repos = self._repos_map()
        rec, _ = self._resolve(ref_or_id, repos)
        owner: dict[int, dict] = {}
        cur: dict | None = rec
        while cur is not None and (len(cur["layers"]) - 1) not in owner:
            owner[len(cur["layers"]) - 1] = cur
            cur = self._read_record(cur["parent"]) if cur.get("parent") else None
        hist = rec.get("history") or []
        out = []
        for i, diff_id in enumerate(rec["layers"]):
            h = hist[i] if i < len(hist) else {}
            img = owner.get(i)
            try:
                size = self.layers.size(diff_id)
            except NotFound:
                size = 0
            out.append({
                "id": img["id"] if img else "<missing>",
                "created": h.get("created", rec["created"]),
                "created_by": h.get("created_by", ""),
                "size": size,
                "comment": h.get("comment", ""),
                "tags": sorted(t for t, i2 in repos.items() if img and i2 == img["id"]),
            })
        out.reverse()
        return out

    def lowerdirs(self, image: Image) -> list[str]:
        """The image's layers as short ``l/<id>`` names (relative to the root), top-most
        first; a layer that occurs twice is kept only at its top-most place (overlayfs
        refuses the same directory twice, and the upper copy hides the lower one)."""
        return [self.layers.link(d) for d in dict.fromkeys(reversed(image.layers))]

    def gc(self) -> None:
        """Clean up after a crash: finish half-done removals, drop staging dirs of dead
        processes, unfinished layers and dangling links."""
        with fsutil.root_lock(self.root):
            base = os.path.join(self.root, "tmp")
            with contextlib.suppress(FileNotFoundError):
                for name in os.listdir(base):
                    parts = name.rsplit("-", 2)
                    if parts[0] != "rmi" or len(parts) != 3 or not parts[1].isdigit():
                        continue
                    if fsutil.pid_alive(int(parts[1])):
                        continue
                    trash = os.path.join(base, name)
                    for rec_name in os.listdir(trash):
                        dead = fsutil.read_json(os.path.join(trash, rec_name)) if rec_name.endswith(".json") else None
                        if dead:
                            self._drop_unused_layers(dead["layers"], self._all_records(), trash)
            self.layers.gc()
            # a write_json that died before its rename (writers hold the lock we hold)
            for d in (self._images, self.root):
                for name in os.listdir(d):
                    if ".json.tmp" in name:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(os.path.join(d, name))
