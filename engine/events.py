"""The engine's event journal: what ``watch`` streams, numbered so a consumer resumes.

Every lifecycle event (``create``, ``start``, ``die``, ``oom``, ``tag``, ...) is one JSON
line in ``<root>/events/journal``, carrying a sequence number.  A consumer that lost its
connection (or outlived a daemon restart) asks for ``since=<last seq it saw>`` and gets
exactly the events after it, as long as the journal still holds them, and a ``gap``
event saying which ones it missed when it does not.

Several processes append at once (the engine, a daemon, every container's monitor), so:

- a writer takes an ``flock`` on ``<root>/events/lock``, reads the last sequence number
  from the tail of the journal, and appends its line with one ``os.write`` on an
  ``O_APPEND`` fd; no writer caches an fd across emits, since another may rotate;
- the file is append-only.  A writer killed mid-line leaves a line without its ``\\n``:
  readers wait for a line's ``\\n`` before reading it, and the next writer prefixes its
  own line with ``\\n``, which turns the torn fragment into a line readers skip (it does
  not parse).  A torn line never consumed a sequence number: the next writer reuses it;
- bounded: once the current file holds ``max_events // 2`` events it is renamed to
  ``journal.1`` (replacing the older half) under the lock, so between ``max_events / 2``
  and ``max_events`` events are held;
- readers take the lock shared only to open both files as one consistent pair, then
  read the open fds at leisure (a rotated file stays readable through its fd).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from engine.errors import InvalidArgument

__all__ = ["FILTER_KEYS", "Filters", "Journal", "parse_filters"]

_CURRENT = "journal"
_OLDER = "journal.1"
_LOCK = "lock"
_CHUNK = 65536

#: the filter keys ``parse_filters`` knows (``action`` is an alias of ``event``)
FILTER_KEYS = ("type", "event", "container", "image", "label")
_ALIASES = {"action": "event"}

# In-process followers wake at once on an emit of this process (others are polled).
_wakeups: dict[str, threading.Condition] = {}
_generations: dict[str, int] = {}
_wakeups_lock = threading.Lock()


def _wakeup(directory: str) -> threading.Condition:
    with _wakeups_lock:
        cond = _wakeups.get(directory)
        if cond is None:
            cond = _wakeups[directory] = threading.Condition()
            _generations[directory] = 0
        return cond


# -- filters ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Filters:
    """Which events a consumer wants: values of one key OR together (``label`` values AND,
    as Docker's do), keys AND together."""

    fields: tuple[tuple[str, frozenset[str]], ...]

    def get(self, key: str) -> frozenset[str]:
        """The values given for ``key`` (empty when the key is not filtered on)."""
        for k, values in self.fields:
            if k == key:
                return values
        return frozenset()

    def matches(self, event: dict[str, Any]) -> bool:
        """Whether ``event`` passes every filter key."""
        return all(_MATCHERS[key](values, event) for key, values in self.fields)


def _match_type(values: frozenset[str], ev: dict[str, Any]) -> bool:
    return ev.get("type") in values


def _match_event(values: frozenset[str], ev: dict[str, Any]) -> bool:
    action = ev.get("action", "")
    # docker's "exec_start: sh -c ..." matches "exec_start"
    return action in values or action.split(":", 1)[0] in values


def _match_container(values: frozenset[str], ev: dict[str, Any]) -> bool:
    if ev.get("type") != "container":
        return False
    cid, name = ev.get("id", ""), ev.get("name", "")
    return any((v and cid.startswith(v)) or v.lstrip("/") == name for v in values)


def _strip_tag(ref: str) -> str:
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    return ref[:colon] if colon > slash else ref


def _match_image(values: frozenset[str], ev: dict[str, Any]) -> bool:
    refs = {ev.get("image", ""), (ev.get("attributes") or {}).get("image", "")}
    if ev.get("type") == "image":
        refs |= {ev.get("id", ""), ev.get("name", "")}
    refs.discard("")
    refs |= {_strip_tag(r) for r in refs}
    return any(v in refs for v in values)


def _match_label(values: frozenset[str], ev: dict[str, Any]) -> bool:
    # Docker ANDs labels (`--filter label=a --filter label=b`: both), unlike other keys
    attrs = ev.get("attributes") or {}
    for v in values:
        key, eq, value = v.partition("=")
        if key not in attrs or (eq and attrs[key] != value):
            return False
    return True


_MATCHERS = {"type": _match_type, "event": _match_event, "container": _match_container,
             "image": _match_image, "label": _match_label}


def parse_filters(items: list[str] | dict[str, Any] | None) -> Filters | None:
    """Docker's event filters as :class:`Filters`; ``None`` when there are none.

    ``items`` is the CLI's form (``["type=container", "event=start"]``) or the API's
    (``{"type": ["container"]}``, or Docker's older ``{"type": {"container": true}}``).
    Raises :class:`~engine.errors.InvalidArgument` for an unknown key or a missing value.
    """
    if not items:
        return None
    pairs: list[tuple[str, str]] = []
    if isinstance(items, dict):
        for key, values in items.items():
            if isinstance(values, dict):
                values = [v for v, on in values.items() if on]
            elif isinstance(values, str):
                values = [values]
            pairs.extend((key, v) for v in values)
    else:
        for item in items:
            key, eq, value = item.partition("=")
            if not eq:
                raise InvalidArgument(f"bad filter {item!r}: give it as KEY=VALUE, e.g. "
                                      "type=container or event=start")
            pairs.append((key, value))
    fields: dict[str, set[str]] = {}
    for key, value in pairs:
        key = _ALIASES.get(key.strip().lower(), key.strip().lower())
        if key not in _MATCHERS:
            raise InvalidArgument(
                f"unknown event filter {key!r}; the known filters are "
                f"{', '.join(FILTER_KEYS)} (and action, an alias of event)")
        if not isinstance(value, str) or not value:
            raise InvalidArgument(f"filter {key!r} has no value; give it as {key}=VALUE")
        fields.setdefault(key, set()).add(value)
    if not fields:
        return None
    return Filters(tuple((k, frozenset(v)) for k, v in sorted(fields.items())))


# -- reading lines ---------------------------------------------------------------------
def _parse(line: bytes) -> dict[str, Any] | None:
    """The event on one complete line, or ``None`` for a torn fragment or other junk."""
    try:
        ev = json.loads(line)
    except ValueError:
        return None
    if isinstance(ev, dict) and isinstance(ev.get("seq"), int):
        return ev
    return None


_PREFIX = b'{"seq":'


def _seq_prefix(line: bytes) -> int:
    """The seq our writers put first on a line, cheaply; a large number when unsure."""
    if line.startswith(_PREFIX):
        end = line.find(b",", len(_PREFIX))
        if end > 0:
            try:
                return int(line[len(_PREFIX):end])
            except ValueError:
                pass
    return 1 << 62


def _last_seq_of(fd: int) -> int | None:
    """The seq of the last complete event line of the file, scanning back from its end."""
    size = os.fstat(fd).st_size
    end = size
    chunk = 4096
    while end > 0:
        start = max(0, end - chunk)
        data = os.pread(fd, size - start, start)
        lines = data.split(b"\n")
        # the last piece follows the last "\n": empty or a torn fragment
        complete = lines[:-1]
        if start > 0:
            complete = complete[1:]  # the first piece may be the tail of a longer line
        for line in reversed(complete):
            ev = _parse(line)
            if ev is not None:
                return ev["seq"]
        end = start
        chunk *= 4
    return None


def _first_seq_of(fd: int) -> int | None:
    """The seq of the first complete event line of the file."""
    offset = 0
    buf = b""
    while True:
        data = os.pread(fd, _CHUNK, offset)
        if not data:
            return None
        offset += len(data)
        buf += data
        *complete, buf = buf.split(b"\n")
        for line in complete:
            ev = _parse(line)
            if ev is not None:
                return ev["seq"]


class _Source:
    """One open journal file and how far into it this reader has read."""

    __slots__ = ("fd", "ino", "offset")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.ino = os.fstat(fd).st_ino
        self.offset = 0

    def lines(self) -> Iterator[bytes]:
        """The complete lines after ``offset``, advancing it past each one yielded."""
        buf = b""
        while True:
            data = os.pread(self.fd, _CHUNK, self.offset + len(buf))
            if not data:
                return
            buf += data
            start = 0
            while True:
                nl = buf.find(b"\n", start)
                if nl < 0:
                    break
                line = buf[start:nl]
                start = nl + 1
                self.offset += len(line) + 1
                yield line
            buf = buf[start:]


class _Reader:
    """Reads the journal in seq order across rotations, from a given seq on."""

    def __init__(self, directory: str, since: int) -> None:
        self.dir = directory
        self.last = since
        self.sources: list[_Source] = []

    def close(self) -> None:
        for src in self.sources:
            os.close(src.fd)
        self.sources = []

    def signature(self) -> tuple[Any, ...]:
        """What changes when anything is appended or rotated (two stats: cheap)."""
        sig: list[Any] = []
        for name in (_OLDER, _CURRENT):
            try:
                st = os.stat(os.path.join(self.dir, name))
            except FileNotFoundError:
                sig.append(None)
            else:
                sig.append((st.st_ino, st.st_size))
        return tuple(sig)

    def reopen(self) -> None:
        """Open ``journal.1`` and ``journal`` as one pair, keeping the fds still read.

        A file this reader holds open that left the pair was rotated out: it is older
        than both and is drained first.  An inode number cannot be reused while we hold
        the file open, so comparing numbers with our open fds is safe.
        """
        fresh: list[int] = []
        with _lock(self.dir, fcntl.LOCK_SH):
            for name in (_OLDER, _CURRENT):
                try:
                    fresh.append(os.open(os.path.join(self.dir, name),
                                         os.O_RDONLY | os.O_CLOEXEC))
                except FileNotFoundError:
                    continue
        held = {src.ino: src for src in self.sources}
        ordered: list[_Source] = []
        for fd in fresh:
            ino = os.fstat(fd).st_ino
            if ino in held:
                os.close(fd)
                ordered.append(held.pop(ino))
            else:
                ordered.append(_Source(fd))
        self.sources = [s for s in self.sources if s.ino in held] + ordered

    def drain(self, filters: Filters | None) -> Iterator[dict[str, Any]]:
        """Every complete event after ``last`` now in the files, a gap event first if
        the oldest held one is later than ``last + 1``."""
        for src in self.sources:
            for line in src.lines():
                if _seq_prefix(line) <= self.last:
                    continue  # resuming late in a long file: skip without parsing
                ev = _parse(line)
                if ev is None or ev["seq"] <= self.last:
                    continue
                if ev["seq"] > self.last + 1:
                    yield _gap(self.last + 1, ev["seq"] - 1)
                self.last = ev["seq"]
                if filters is None or filters.matches(ev):
                    yield ev
        # files before the newest will not grow again (writers only append to the
        # current one, and rotation happens under the lock right after an append)
        while len(self.sources) > 1:
            os.close(self.sources.pop(0).fd)


def _gap(first: int, last: int) -> dict[str, Any]:
    return {"seq": last, "type": "journal", "action": "gap", "id": "", "name": "",
            "image": "", "time": time.time_ns(),
            "attributes": {"from": str(first), "to": str(last)}}


@contextlib.contextmanager
def _lock(directory: str, mode: int) -> Iterator[None]:
    fd = os.open(os.path.join(directory, _LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 0o600)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


# -- the journal -----------------------------------------------------------------------
class Journal:
    """The bounded, numbered, multi-process event journal under ``<root>/events/``.

    ``emit`` and the readers raise ``OSError`` when the filesystem fails them.
    """

    def __init__(self, root: str, *, max_events: int = 10000) -> None:
        if max_events < 2:
            raise InvalidArgument(f"max_events must be at least 2, not {max_events}")
        self.root = root
        self.dir = os.path.join(root, "events")
        self.max_events = max_events
        os.makedirs(self.dir, 0o700, exist_ok=True)
        self._key = os.path.realpath(self.dir)
        self._cond = _wakeup(self._key)

    def emit(self, type: str, action: str, id: str, *, name: str = "", image: str = "",
             attributes: dict[str, str] | None = None) -> dict[str, Any]:
        """Append one event; the event as stored, with its ``seq`` and ``time`` (ns)."""
        if not type or not action:
            raise InvalidArgument(f"an event needs a type and an action (got "
                                  f"type={type!r}, action={action!r})")
        attrs = {str(k): str(v) for k, v in (attributes or {}).items()}
        path = os.path.join(self.dir, _CURRENT)
        with _lock(self.dir, fcntl.LOCK_EX):
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                last = _last_seq_of(fd)
                first = _first_seq_of(fd) if last is not None else None
                if last is None:
                    last = self._older_last_seq()
                event = {"seq": last + 1, "type": type, "action": action, "id": id,
                         "name": name, "image": image, "time": time.time_ns(),
                         "attributes": attrs}
                line = json.dumps(event, separators=(",", ":")).encode() + b"\n"
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # close a torn line left by a killed writer
                if os.write(fd, line) != len(line):
                    raise OSError(errno.ENOSPC, "short write to the event journal", path)
            finally:
                os.close(fd)
            held = event["seq"] - (first if first is not None else event["seq"]) + 1
            if held >= self.max_events // 2:
                os.rename(path, os.path.join(self.dir, _OLDER))
        with self._cond:
            _generations[self._key] += 1
            self._cond.notify_all()
        return event

    def _older_last_seq(self) -> int:
        try:
            fd = os.open(os.path.join(self.dir, _OLDER), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0
        try:
            return _last_seq_of(fd) or 0
        finally:
            os.close(fd)

    def last_seq(self) -> int:
        """The seq of the newest event (0 when the journal is empty)."""
        with _lock(self.dir, fcntl.LOCK_SH):
            try:
                fd = os.open(os.path.join(self.dir, _CURRENT), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return self._older_last_seq()
            try:
                last = _last_seq_of(fd)
            finally:
                os.close(fd)
            return last if last is not None else self._older_last_seq()

    def read(self, since: int = 0,
             filters: Filters | None = None) -> Iterator[dict[str, Any]]:
        """The held events with ``seq > since``, in order (a gap event first when some
        of them are no longer held)."""
        reader = _Reader(self.dir, since)
        try:
            reader.reopen()
            yield from reader.drain(filters)
        finally:
            reader.close()

    def follow(self, since: int = 0, filters: Filters | None = None, *,
               cancelled: Callable[[], bool] | None = None,
               poll: float = 0.05) -> Iterator[dict[str, Any]]:
        """:meth:`read`, then every new event as any process appends it, until
        ``cancelled()`` says stop (asked at least every ``poll`` seconds).

        Idle, it costs two ``stat`` calls per ``poll``; an ``emit`` in this process
        wakes it at once.
        """
        reader = _Reader(self.dir, since)
        try:
            sig = reader.signature()
            reader.reopen()
            yield from reader.drain(filters)
            while cancelled is None or not cancelled():
                with self._cond:
                    gen = _generations[self._key]
                    self._cond.wait_for(lambda: _generations[self._key] != gen, poll)
                new = reader.signature()
                if new == sig:
                    continue
                if _inodes(new) != _inodes(sig):
                    sig = new
                    reader.reopen()
                else:
                    sig = new
                yield from reader.drain(filters)
        finally:
            reader.close()


def _inodes(sig: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(s[0] if s else None for s in sig)
