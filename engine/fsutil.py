"""Crash-safe file operations shared by the engine's stores.

The engine may be killed at any instant; the rules that keep its root consistent:
a file is written to a temporary name in the same directory and renamed into place
(:func:`write_json`); a directory is built under ``<root>/tmp`` and renamed into place
when complete (:func:`staging_dir`); mutations of shared records take the root's lock
(:func:`root_lock`).  Whatever a killed process left in ``<root>/tmp`` belongs to a
dead PID and is removed by :func:`clean_staging`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
from collections.abc import Iterator
from typing import Any


def write_json(path: str, obj: Any, *, sync: bool = True) -> None:
    """Atomically replace ``path`` with ``obj`` as JSON.

    The rename makes it atomic against a killed process.  ``sync`` (fsync before the
    rename, ~0.5 ms here) also makes it durable across a power loss: image records use
    it; a container's run records, on the hot path of every start, do not (after a power
    loss every container has stopped anyway).
    """
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.rename(tmp, path)


def create_json(path: str, obj: Any) -> bool:
    """Write ``obj`` as JSON to ``path`` unless it exists; whether this call made it.

    Atomic like :func:`write_json`, and exclusive: of several processes racing to
    record the same fact, exactly one gets True (the file is linked in, not renamed)."""
    tmp = f"{path}.tmp{os.getpid()}-{threading.get_ident()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def write_symlink(target: str, path: str) -> None:
    """Atomically make ``path`` a symlink to ``target``, replacing what was there."""
    tmp = f"{path}.tmp{os.getpid()}-{threading.get_ident()}"
    os.symlink(target, tmp)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_json(path: str, default: Any = None) -> Any:
    """The JSON in ``path``, or ``default`` when the file does not exist."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default


@contextlib.contextmanager
def root_lock(root: str) -> Iterator[None]:
    """Hold the engine root's exclusive lock (``<root>/lock``, an ``flock``).

    Taken around every read-modify-write of shared records (tags, names), briefly:
    never around a container's run or a long copy.
    """
    fd = os.open(os.path.join(root, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def staging_dir(root: str, purpose: str) -> str:
    """A new empty directory ``<root>/tmp/<purpose>-<pid>-<n>`` to build something in.

    Rename it into place when complete; if this process dies first,
    :func:`clean_staging` removes it.
    """
    base = os.path.join(root, "tmp")
    os.makedirs(base, exist_ok=True)
    for n in range(1000):
        path = os.path.join(base, f"{purpose}-{os.getpid()}-{n}")
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, "no free staging directory name", base)


def clean_staging(root: str) -> None:
    """Remove the staging directories of processes that no longer run."""
    base = os.path.join(root, "tmp")
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return
    for name in names:
        parts = name.rsplit("-", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        if pid_alive(int(parts[1])):
            continue
        remove_tree(os.path.join(base, name))


def remove_tree(path: str) -> None:
    """Remove a directory tree we made; a tree that is already gone is fine."""
    import shutil  # ~4 ms to import: only the commands that remove pay for it

    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError:
        # overlayfs work dirs hold a root-owned 'work' subdir with mode 000; retry after
        # making everything writable (rmtree gives up on the first EACCES)
        for dirpath, dirnames, _ in os.walk(path):
            for d in dirnames:
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(dirpath, d), 0o700)
        shutil.rmtree(path, ignore_errors=False)


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (the owner of a staging name)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
