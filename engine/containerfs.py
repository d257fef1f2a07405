"""Files in and out of a container (``docker cp``): a helper process that works inside
the container's root.

The engine never opens a container's paths from the host: a symlink the container made
(``/etc -> /``) would lead there.  Like Docker's chrootarchive, it starts this module as
a process of its own (``python -m engine.containerfs``) that first makes the
container's root its own with ``chroot``, where every symlink and ``..`` resolves inside
the container, then reads or writes with plain paths:

- a running container: the root of its init process (``/proc/PID/root``, its mount
  namespace's view: its bind mounts and volumes included).  The PID is checked to be in
  the container's cgroup through the same ``/proc/PID`` handle, so a recycled PID
  cannot lead elsewhere;
- a stopped one: its layers mounted as overlayfs on its ``rootfs`` directory, and its
  volumes and bind mounts on theirs, in a mount namespace of the helper's own, which
  the kernel takes down when the helper exits.

Everything the helper imports is imported before the chroot, and it never asks for user
or group names: inside the container, glibc would load the container's NSS libraries
(CVE-2019-14271).

The helper's verbs (argv: root spec as JSON, verb, path):

- ``stat``: prints the path's stat as Docker's ``X-Docker-Container-Path-Stat`` JSON;
- ``get``: prints that JSON on one line, then writes a tar of the path (its top entry
  named after the path's last component; a symlink stays a symlink) to stdout;
- ``put``: extracts the tar on stdin into the directory at the path.

A failure exits 2 with ``{"code", "message"}`` (an :class:`EngineError`'s) on stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import tarfile
from typing import IO, Any, Callable

from . import rootfs, syscalls
from .errors import EngineError, InvalidArgument, NotFound
from .tarlayer import add_path, apply_tar
from .timefmt import rfc3339

__all__ = ["RootSpec", "run_helper", "go_mode"]

# {"pid", "cgroup"}, or {"layer_root", "lowerdirs", "mountpoint", "binds": [[source, target,
# readonly], ...]} and, to write, {"upper", "work"}
RootSpec = dict

_BUF = 1 << 20

# Go's os.FileMode type bits, which Docker's path stat carries in "mode"
_GO_DIR, _GO_SYMLINK, _GO_DEVICE, _GO_PIPE, _GO_SOCKET = 1 << 31, 1 << 27, 1 << 26, 1 << 25, 1 << 24
_GO_SETUID, _GO_SETGID, _GO_CHARDEV, _GO_STICKY = 1 << 23, 1 << 22, 1 << 21, 1 << 20


def go_mode(mode: int) -> int:
    """A stat ``st_mode`` as Go's ``os.FileMode`` (what the docker CLI decodes)."""
    out = stat.S_IMODE(mode) & 0o777
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFDIR:
        out |= _GO_DIR
    elif kind == stat.S_IFLNK:
        out |= _GO_SYMLINK
    elif kind == stat.S_IFIFO:
        out |= _GO_PIPE
    elif kind == stat.S_IFSOCK:
        out |= _GO_SOCKET
    elif kind == stat.S_IFCHR:
        out |= _GO_DEVICE | _GO_CHARDEV
    elif kind == stat.S_IFBLK:
        out |= _GO_DEVICE
    if mode & stat.S_ISUID:
        out |= _GO_SETUID
    if mode & stat.S_ISGID:
        out |= _GO_SETGID
    if mode & stat.S_ISVTX:
        out |= _GO_STICKY
    return out


# ------------------------------------------------------------------ the engine's side

def run_helper(spec: RootSpec, verb: str, path: str, *, stdin: IO[bytes] | None = None,
               stdout: IO[bytes] | None = None, owner: tuple[int, int] | None = None,
               on_stat: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the helper; the stat it printed.

    ``get`` copies the tar into ``stdout``, after calling ``on_stat`` with the stat;
    ``put`` feeds it ``stdin``.  The helper's own error is raised as the
    :class:`EngineError` it names.
    """
    argv = [sys.executable, "-m", "engine.containerfs", json.dumps(spec), verb, path]
    if owner is not None:
        argv.append(f"{owner[0]}:{owner[1]}")
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.stdout is not None and proc.stderr is not None
    info: dict[str, Any] = {}
    try:
        if stdin is not None:
            assert proc.stdin is not None
            try:
                while chunk := stdin.read(_BUF):
                    proc.stdin.write(chunk)
            except BrokenPipeError:
                pass  # the helper stopped reading: its error says why
            finally:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
        elif verb in ("stat", "get"):
            line = proc.stdout.readline()
            if line:
                info = json.loads(line)
            if verb == "get" and info:
                assert stdout is not None
                if on_stat is not None:
                    on_stat(info)
                while chunk := proc.stdout.read(_BUF):
                    stdout.write(chunk)
        err = proc.stderr.read()
        status = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        proc.stdout.close()
        proc.stderr.close()
    if status != 0:
        raise _helper_error(err, status)
    return info


def _helper_error(err: bytes, status: int) -> EngineError:
    try:
        doc = json.loads(err.decode().strip().splitlines()[-1])
        kind = {"not_found": NotFound, "invalid_argument": InvalidArgument}.get(doc["code"], EngineError)
        return kind(doc["message"])
    except (ValueError, KeyError, IndexError, TypeError):
        pass
    if status < 0:
        return EngineError(f"copying failed: its helper process was killed (signal "
                           f"{-status}) part of the way, so the copy is incomplete")
    return EngineError(f"copying failed (helper exited with {status}): "
                       f"{err.decode(errors='replace').strip()[-500:]}")


# ------------------------------------------------------------------ the helper's side

def _enter(spec: RootSpec) -> None:
    """Make the container's root this process's root."""
    if "pid" in spec:
        gone = NotFound("the container's process is gone (it stopped meanwhile); try again")
        try:
            proc = os.open(f"/proc/{int(spec['pid'])}", os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            raise gone from None
        try:
            with open(os.open("cgroup", os.O_RDONLY, dir_fd=proc), "rb") as f:
                if os.fsencode(spec["cgroup"]) not in f.read():
                    raise gone
            root = os.open("root", os.O_RDONLY | os.O_DIRECTORY, dir_fd=proc)
        except (FileNotFoundError, ProcessLookupError):
            raise gone from None
        finally:
            os.close(proc)
    else:
        syscalls.unshare(syscalls.CLONE_NEWNS)
        syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
        os.chdir(spec["layer_root"])  # the lowerdirs are relative to it (short options)
        if spec.get("upper"):
            opts = (f"lowerdir={':'.join(spec['lowerdirs'])},upperdir={spec['upper']},"
                    f"workdir={spec['work']}")
            syscalls.mount("overlay", spec["mountpoint"], "overlay", 0, opts)
        else:  # only to read: the writable layer as the top lower one, its workdir untouched
            syscalls.mount("overlay", spec["mountpoint"], "overlay", syscalls.MS_RDONLY,
                           f"lowerdir={':'.join(spec['lowerdirs'])}")
        for source, target, readonly in spec.get("binds", ()):  # its volumes, as when it runs
            try:
                rootfs.bind(os.fsencode(source), os.fsencode(spec["mountpoint"]),
                            os.fsencode(target), readonly)
            except OSError:
                if spec.get("upper"):
                    raise
                # read-only: a mount point that is not there yet cannot be made (and
                # nothing below it can be read either)
        root = os.open(spec["mountpoint"], os.O_RDONLY | os.O_DIRECTORY)
    os.fchdir(root)
    os.chroot(".")
    os.chdir("/")
    os.close(root)


def _locate(path: str) -> tuple[str, str]:
    """``(where, name)``: the path with every component but the last resolved (a symlink
    at the end stays one), and the name its tar entry gets.  A path ending in ``/`` or
    ``/.`` names the directory itself, resolved; with ``/.`` its entry is ``.``."""
    if not path.startswith("/"):
        raise InvalidArgument(f"the path in the container must be absolute, not {path!r}")
    if path.endswith(("/", "/.")):
        real = os.path.realpath(path)
        return real, "." if path.endswith("/.") else (os.path.basename(real) or "/")
    parent, name = os.path.split(path)
    return os.path.join(os.path.realpath(parent), name), name


def _stat(path: str) -> tuple[dict[str, Any], str, os.stat_result]:
    full, name = _locate(path)
    try:
        st = os.lstat(full)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"no such file or directory in the container: {path}") from None
    target = ""
    if stat.S_ISLNK(st.st_mode):
        target = os.path.realpath(full)
    info = {"name": name, "size": st.st_size, "mode": go_mode(st.st_mode),
            "mtime": rfc3339(st.st_mtime_ns), "linkTarget": target}
    return info, full, st


# The kernel's file systems in a running container: copied as empty directories, as
# they are in its layers (Docker's copy sees only the layers and volumes).
_KERNEL_DIRS = frozenset(("/proc", "/sys", "/dev"))


def _walk(tar: tarfile.TarFile, full: str, name: str, st: os.stat_result) -> None:
    """Add ``full`` as ``name``, and what is below it (links as links, numeric owners)."""
    seen: dict[tuple[int, int], str] = {}
    stack: list[tuple[str, str, os.stat_result]] = [(full, name, st)]
    while stack:
        path, arc, st = stack.pop()
        add_path(tar, arc, path, st, seen)
        if not stat.S_ISDIR(st.st_mode) or path in _KERNEL_DIRS:
            continue
        for child in sorted(os.listdir(path), reverse=True):  # popped in name order
            cpath = os.path.join(path, child)
            try:
                stack.append((cpath, f"{arc}/{child}", os.lstat(cpath)))
            except FileNotFoundError:
                continue  # gone meanwhile (the container runs)


def _helper(argv: list[str]) -> None:
    spec, verb, path = json.loads(argv[0]), argv[1], argv[2]
    owner = tuple(int(x) for x in argv[3].split(":")) if len(argv) > 3 else None
    _enter(spec)
    out = sys.stdout.buffer
    if verb == "put":
        dest = os.path.realpath(_locate(path)[0])
        if not os.path.isdir(dest):
            if os.path.lexists(dest):
                raise InvalidArgument(f"the destination {path} in the container is not a directory")
            raise NotFound(f"no such directory in the container: {path}")
        try:
            apply_tar(sys.stdin.buffer, dest, layer=False, owner=owner)  # type: ignore[arg-type]
        except InvalidArgument as exc:  # (its words are a layer's)
            raise InvalidArgument(str(exc).replace("layer tar", "tar to copy")) from None
        return
    info, full, st = _stat(path)
    out.write(json.dumps(info).encode() + b"\n")
    out.flush()
    if verb == "get":
        tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=_BUF)
        try:
            _walk(tar, full, "." if info["name"] == "/" else info["name"], st)
        finally:
            tar.close()
        out.flush()


def main() -> None:
    """``python -m engine.containerfs SPEC VERB PATH [UID:GID]`` (the engine runs it)."""
    try:
        _helper(sys.argv[1:])
    except EngineError as exc:
        sys.stderr.write(json.dumps({"code": exc.code, "message": str(exc)}) + "\n")
        sys.exit(2)
    except OSError as exc:
        sys.stderr.write(json.dumps({"code": "internal", "message": f"copying failed: {exc}"}) + "\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
