"""The container store: each container's record and directory under ``<root>/containers``.

A container is a directory ``<root>/containers/<id>`` holding:

- ``config.json``: what ``create`` was asked (written by the engine; ``update`` rewrites
  its limits, under the root lock);
- ``cgroups.json``: the cgroup directories, written *before* they are made, so a crash
  between the two never orphans one;
- ``monitor.json`` and ``exit.json``: written by the container's monitor at start and
  at exit;
- ``upper/``, ``work/`` (the writable layer and overlayfs's work dir), ``rootfs/`` (the
  union's mount point, used only inside the container's mount namespace) and
  ``container.log`` (Docker's json-file lines);
- ``init/``, for a container whose network bind-mounts files over the image's (its
  /etc/hosts, /etc/hostname, /etc/resolv.conf): a read-only layer between the image and
  ``upper/`` holding the empty mount points, as Docker's ``-init`` layer does, so that
  they never land in the writable layer (nor in ``commit`` or ``diff``).

Start, removal and copies into a stopped container hold the container's lock (an
``flock`` on its directory, see :meth:`ContainerStore.locked`), so that two of them,
from any threads or processes, never overlap: a second ``start`` finds the container
running instead of tearing down the first one's cgroups.

A directory appears complete (built under ``<root>/tmp``, renamed into place under the
root lock, which also keeps names unique) or not at all.  The status is derived from
those files and from whether the monitor still answers, never stored twice.

Names are indexed by symlinks ``<root>/names/<name> -> <id>``, so that finding a name
(``create --name``, ``rm NAME``) reads one link, not every container's record.  The
container's directory is the truth: a link whose container is gone (an engine killed
between the two steps) counts as free.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from . import failpoints, fsutil
from .errors import Conflict, InvalidArgument, NotFound

_NAME = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]*$")

# Docker-style generated names: adjective_surname.
_LEFT = ("brave", "calm", "eager", "fervent", "gallant", "happy", "jolly", "keen",
         "lucid", "modest", "nimble", "quirky", "serene", "stoic", "tender", "vivid",
         "witty", "zealous", "bold", "clever", "dreamy", "focused", "hopeful", "kind")
_RIGHT = ("babbage", "curie", "dijkstra", "engelbart", "feynman", "goldberg", "hopper",
          "kare", "lamport", "liskov", "lovelace", "mccarthy", "noether", "pike",
          "ritchie", "shannon", "thompson", "torvalds", "turing", "wozniak", "knuth",
          "hamilton", "allen", "backus")


def _init_dir(stage: str, rel: str, image: Any) -> None:
    """A directory of the init layer, as the image has it (mode, owner) or 0755 root."""
    path = os.path.join(stage, rel)
    if os.path.isdir(path):
        return
    st = image.lstat(rel)
    os.mkdir(path)
    if st is not None and stat.S_ISDIR(st.st_mode):
        os.chown(path, st.st_uid, st.st_gid)
        os.chmod(path, stat.S_IMODE(st.st_mode))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        os.chmod(path, 0o755)


def now_ns() -> int:
    """The wall clock in nanoseconds (the unit of every timestamp the engine stores)."""
    return time.time_ns()


@dataclass
class Container:
    """One container's record as read from its directory."""

    id: str
    dir: str
    config: dict[str, Any]
    monitor: dict[str, Any] | None
    exit: dict[str, Any] | None

    @property
    def name(self) -> str:
        return self.config["Name"]

    @property
    def short_id(self) -> str:
        return self.id[:12]

    def path(self, *parts: str) -> str:
        """A path inside the container's directory."""
        return os.path.join(self.dir, *parts)

    @property
    def cgroups(self) -> list[str]:
        return fsutil.read_json(self.path("cgroups.json"), [])


class ContainerStore:
    """Container records under ``<root>/containers``."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.base = os.path.join(root, "containers")
        self.names = os.path.join(root, "names")
        os.makedirs(self.base, exist_ok=True)
        if not os.path.isdir(self.names):
            self._index_names()

    def _index_names(self) -> None:
        """Make ``names/`` for a root that predates it (built aside, renamed in)."""
        with fsutil.root_lock(self.root):
            if os.path.isdir(self.names):
                return
            stage = fsutil.staging_dir(self.root, "names")
            for c in self.list():
                os.symlink(c.id, os.path.join(stage, c.name))
            os.rename(stage, self.names)

    def _named(self, name: str) -> str | None:
        """The id of the container called ``name``, if there is one."""
        try:
            cid = os.readlink(os.path.join(self.names, name))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return cid if os.path.isdir(os.path.join(self.base, cid)) else None

    # -- making and removing ---------------------------------------------------------

    def create(self, config: dict[str, Any], name: str | None) -> Container:
        """Make a container directory for ``config``; ``config["Name"]`` is filled in.

        The directory is built in staging and renamed in under the root lock, so the
        name stays unique and a crash leaves nothing half-made in ``containers/``.
        """
        if name is not None:
            if not _NAME.match(name):
                raise InvalidArgument(
                    f"invalid container name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] "
                    "are allowed")
            name = name.lstrip("/")
        cid = os.urandom(32).hex()
        stage = fsutil.staging_dir(self.root, "create")
        try:
            for sub in ("upper", "work", "rootfs"):
                os.mkdir(os.path.join(stage, sub), 0o755)
            with fsutil.root_lock(self.root):
                if name is None:
                    name = _fresh_name(lambda n: self._named(n) is not None)
                elif (holder := self._named(name)) is not None:
                    raise Conflict(
                        f"the container name \"/{name}\" is already in use by container "
                        f"{holder}; remove that container or choose another name")
                config = dict(config, Id=cid, Name=name, Created=now_ns())
                fsutil.write_json(os.path.join(stage, "config.json"), config, sync=False)
                link = os.path.join(self.names, name)
                fsutil.write_symlink(cid, link)  # replaces a stale one
                failpoints.hit("create:staged")
                try:
                    os.rename(stage, os.path.join(self.base, cid))
                except BaseException:
                    os.unlink(link)
                    raise
        except BaseException:
            fsutil.remove_tree(stage)
            raise
        return self._load(cid)

    def delete(self, c: Container) -> bool:
        """Remove the container's directory (its processes and cgroups are gone already);
        False when another call removed it first.

        The directory is first renamed into staging, so a crash half-way through the
        removal leaves either the whole container or nothing visible.
        """
        # Into the staging directory, not onto its name: the name stays taken until the
        # removal is done (once emptied for a rename onto it, another thread's
        # staging_dir could hand out the same name: two rm at once, as `docker rm a b`
        # does, then collided and one failed).
        stage = fsutil.staging_dir(self.root, "rm")
        try:
            os.rename(c.dir, os.path.join(stage, c.id))
        except FileNotFoundError:
            os.rmdir(stage)
            return False
        failpoints.hit("rm:unlinked")
        link = os.path.join(self.names, c.name)
        with fsutil.root_lock(self.root):
            # (a create may have taken the name since the rename freed it)
            if _readlink(link) == c.id:
                os.unlink(link)
        fsutil.remove_tree(stage)
        return True

    def init_layer(self, c: Container, targets: list[tuple[str, bool]], image: Any) -> str:
        """The container's init layer (see the module), made on first use: a mount point
        at each of ``targets`` (``(absolute path in the container, is a directory)``),
        its parent directories with the owner and mode the image gives them (``image``:
        a :class:`~engine.layerview.LayerView`).  Its path relative to the engine root,
        as overlayfs's ``lowerdir`` takes it."""
        rel = os.path.relpath(c.path("init"), self.root)
        if not os.path.isdir(c.path("init")):
            stage = c.path("init.tmp")
            fsutil.remove_tree(stage)  # a start that died half-way
            os.mkdir(stage, 0o755)
            for target, is_dir in targets:
                parts = [p for p in target.split("/") if p]
                for i in range(1, len(parts) + (1 if is_dir else 0)):
                    _init_dir(stage, "/".join(parts[:i]), image)
                if not is_dir:
                    with open(os.path.join(stage, *parts), "ab"):
                        pass
            try:
                os.rename(stage, c.path("init"))
            except OSError:  # a concurrent start made it first
                fsutil.remove_tree(stage)
                if not os.path.isdir(c.path("init")):
                    raise
        return rel

    def rename(self, c: Container, name: str) -> Container:
        """Give the container the name ``name`` (free, or already its own); the
        container as it now is.  Record and name index change under the root lock."""
        if not _NAME.match(name):
            raise InvalidArgument(f"invalid container name {name!r}: only "
                                  "[a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        name = name.lstrip("/")
        with fsutil.root_lock(self.root):
            holder = self._named(name)
            if holder is not None and holder != c.id:
                raise Conflict(f"the container name \"/{name}\" is already in use by container "
                               f"{holder}; remove that container or choose another name")
            path = c.path("config.json")
            config = fsutil.read_json(path)
            if config is None:
                raise NotFound(f"no such container: {c.id}")
            old = config["Name"]
            fsutil.write_symlink(c.id, os.path.join(self.names, name))
            config["Name"] = name
            fsutil.write_json(path, config)
            if old != name and self._named(old) == c.id:
                os.unlink(os.path.join(self.names, old))
        return self._load(c.id)

    def update_host_config(self, c: Container, changes: dict[str, Any]) -> Container:
        """Rewrite the container's ``HostConfig`` with ``changes`` (``docker update``),
        atomically and under the root lock; the container as it now is."""
        path = c.path("config.json")
        with fsutil.root_lock(self.root):
            config = fsutil.read_json(path)
            if config is None:
                raise NotFound(f"no such container: {c.id}")
            config["HostConfig"].update(changes)
            fsutil.write_json(path, config)
        return self._load(c.id)

    def reset_run(self, c: Container) -> None:
        """Forget the previous run's monitor and exit records (before a restart)."""
        for f in ("exit.json", "monitor.json"):
            try:
                os.unlink(c.path(f))
            except FileNotFoundError:
                pass

    # -- finding ---------------------------------------------------------------------

    def list(self) -> list[Container]:
        """Every container, newest first."""
        out = []
        for cid in os.listdir(self.base):
            try:
                out.append(self._load(cid))
            except NotFound:
                continue  # removed while we looked
        out.sort(key=lambda c: c.config.get("Created", 0), reverse=True)
        return out

    def get(self, ref: str) -> Container:
        """The container named ``ref``: a full id, a unique id prefix, or a name."""
        if not ref:
            raise InvalidArgument("a container name or id is required")
        if len(ref) == 64 and os.path.isdir(os.path.join(self.base, ref)):
            return self._load(ref)
        name = ref.lstrip("/")
        if _NAME.match(name) and (cid := self._named(name)) is not None:
            try:
                return self._load(cid)
            except NotFound:
                pass  # removed while we looked
        matches = [cid for cid in os.listdir(self.base) if cid.startswith(ref)]
        if len(matches) == 1:
            return self._load(matches[0])
        if len(matches) > 1:
            raise InvalidArgument(
                f"container id prefix {ref!r} is ambiguous ({len(matches)} containers); "
                "give more characters")
        raise NotFound(f"no such container: {ref}")

    @contextmanager
    def locked(self, c: Container) -> Iterator[Container]:
        """Hold ``c``'s lock, waiting for whoever holds it, and yield its record read
        afresh (what the holder before did shows); NotFound if it was removed meanwhile.
        The lock is the directory's ``flock``: a killed holder cannot leave it taken."""
        try:
            fd = os.open(c.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"no such container: {c.id}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # (a removal renames the directory away: then the lock is the old one's, and
            # the record is not found)
            yield self._load(c.id)
        finally:
            os.close(fd)

    def _load(self, cid: str) -> Container:
        d = os.path.join(self.base, cid)
        config = fsutil.read_json(os.path.join(d, "config.json"))
        if config is None:
            raise NotFound(f"no such container: {cid}")
        return Container(
            id=cid, dir=d, config=config,
            monitor=fsutil.read_json(os.path.join(d, "monitor.json")),
            exit=fsutil.read_json(os.path.join(d, "exit.json")))


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except FileNotFoundError:
        return None


def _fresh_name(taken: Callable[[str], bool]) -> str:
    while True:
        a, b, c = os.urandom(3)
        name = f"{_LEFT[a % len(_LEFT)]}_{_RIGHT[b % len(_RIGHT)]}"
        if not taken(name):
            return name
        name += f"_{c}"
        if not taken(name):
            return name
