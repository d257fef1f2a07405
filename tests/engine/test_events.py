"""The event journal: numbered across processes, resumable, bounded, crash-safe,
filtered as ``docker events --filter``; and the monitor's ``die``/``oom`` events."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from engine import errors, monitor_client
from engine.events import Journal, parse_filters
from engine.forkserver import ForkServer
from engine.fsutil import read_json, remove_tree, write_json
from engine.spec import ContainerSpec, ProcessSpec

from .conftest import needs_root
from .test_monitor import PlainStarter

# a writer process: emits N events, tagged with its own name
_WRITER = """
import sys, time
from engine.events import Journal
root, tag, n, max_events = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
j = Journal(root, max_events=max_events)
time.sleep(max(0.0, float(sys.argv[5]) - time.time()))  # all writers start together
for i in range(n):
    j.emit("container", "start", tag, name=tag, attributes={"i": str(i)})
"""


@pytest.fixture
def root() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="cbx-events-")
    yield path
    remove_tree(path)


def writers(root: str, count: int, n: int,
            max_events: int = 10000) -> list[subprocess.Popen]:
    """Start ``count`` processes emitting ``n`` events each (tags w0, w1, ...)."""
    go = str(time.time() + 0.3)
    return [subprocess.Popen([sys.executable, "-c", _WRITER, root, f"w{k}", str(n),
                              str(max_events), go], cwd=os.getcwd())
            for k in range(count)]


def join(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        assert p.wait(timeout=30) == 0


class Follower:
    """``journal.follow`` run in a thread, collecting what it yields."""

    def __init__(self, journal: Journal, since: int = 0, **kw: Any) -> None:
        self.events: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.arrived: list[float] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(journal, since, kw),
                                        daemon=True)
        self._thread.start()

    def _run(self, journal: Journal, since: int, kw: dict[str, Any]) -> None:
        for ev in journal.follow(since, cancelled=self.stop.is_set, **kw):
            with self._cond:
                self.events.append(ev)
                self.arrived.append(time.time())
                self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.events) >= count, timeout)
            return list(self.events)

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=5)
        assert not self._thread.is_alive(), "follow() did not return after stop was set"


@pytest.fixture
def followers() -> Iterator[list[Follower]]:
    made: list[Follower] = []
    yield made
    for f in made:
        f.stop.set()
    for f in made:
        f.close()


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for e in events]


# -- numbering ------------------------------------------------------------------------
def test_empty_journal(root: str) -> None:
    j = Journal(root)
    assert j.last_seq() == 0
    assert list(j.read()) == []


def test_emit_returns_the_stored_event(root: str) -> None:
    j = Journal(root)
    before = time.time_ns()
    ev = j.emit("container", "create", "abc", name="web", image="busybox:latest",
                attributes={"name": "web", "com.example": "1"})
    assert ev["seq"] == 1 and before <= ev["time"] <= time.time_ns()
    assert list(j.read()) == [ev]
    assert set(ev) == {"seq", "type", "action", "id", "name", "image", "time",
                       "attributes"}


def test_four_processes_emit_without_gaps_or_duplicates(root: str) -> None:
    join(writers(root, 4, 200))
    events = list(Journal(root).read())
    assert seqs(events) == list(range(1, 801))
    for k in range(4):
        mine = [int(e["attributes"]["i"]) for e in events if e["id"] == f"w{k}"]
        assert mine == list(range(200))  # each writer's events in its own order
    ids = [e["id"] for e in events]
    assert sum(a != b for a, b in zip(ids, ids[1:])) > 20, "the writers did not overlap"
    assert Journal(root).last_seq() == 800


def test_read_since_returns_exactly_the_later_events(root: str) -> None:
    j = Journal(root)
    for i in range(10):
        j.emit("image", "tag", f"img{i}")
    assert seqs(list(j.read(since=7))) == [8, 9, 10]
    assert list(j.read(since=10)) == []
    assert seqs(list(j.read(since=0))) == list(range(1, 11))


# -- following ------------------------------------------------------------------------
def test_follow_sees_another_process_within_a_second(root: str,
                                                     followers: list[Follower]) -> None:
    j = Journal(root)
    f = Follower(j, poll=0.05)
    followers.append(f)
    time.sleep(0.1)  # the follower is idle, polling
    join(writers(root, 1, 3))
    got = f.wait_for(3, timeout=2)
    assert seqs(got) == [1, 2, 3]
    for ev, arrived in zip(got, f.arrived):
        assert arrived - ev["time"] / 1e9 < 1.0


def test_follow_wakes_at_once_on_an_emit_in_this_process(
        root: str, followers: list[Follower]) -> None:
    j = Journal(root)
    f = Follower(j, poll=5.0)  # far longer than the wait below: the emit must wake it
    followers.append(f)
    time.sleep(0.05)
    ev = j.emit("container", "start", "abc")
    assert seqs(f.wait_for(1, timeout=1.0)) == [1]
    assert f.arrived[0] - ev["time"] / 1e9 < 0.5
    f.stop.set()
    j.emit("container", "stop", "abc")  # wakes it so it sees stop


def test_follow_returns_when_cancelled(root: str) -> None:
    stop = threading.Event()
    out: list[dict[str, Any]] = []
    t = threading.Thread(target=lambda: out.extend(Journal(root).follow(
        cancelled=stop.is_set, poll=0.05)))
    t.start()
    time.sleep(0.1)
    started = time.monotonic()
    stop.set()
    t.join(timeout=2)
    assert not t.is_alive() and time.monotonic() - started < 0.5
    assert out == []


def test_follow_resumes_where_it_stopped(root: str, followers: list[Follower]) -> None:
    j = Journal(root)
    for i in range(3):
        j.emit("container", "start", f"c{i}")
    first = Follower(j)
    followers.append(first)
    seen = first.wait_for(3)
    first.close()
    last_seen = seen[-1]["seq"]
    # emitted while nobody follows, by another process and by this one
    join(writers(root, 1, 4))
    j.emit("container", "die", "c9")
    second = Follower(j, since=last_seen)
    followers.append(second)
    missed = second.wait_for(5)
    assert seqs(missed) == [4, 5, 6, 7, 8]
    assert [e["id"] for e in missed] == ["w0"] * 4 + ["c9"]
    time.sleep(0.2)
    assert len(second.events) == 5  # nothing twice


def test_follow_across_rotations_loses_nothing_silently(
        root: str, followers: list[Follower]) -> None:
    f = Follower(Journal(root), poll=0.01)
    followers.append(f)
    join(writers(root, 2, 150, max_events=20))
    deadline = time.monotonic() + 30  # (a loaded CI machine: 5 s was seen short)
    while time.monotonic() < deadline:
        got = list(f.events)
        if got and got[-1]["seq"] == 300:
            break
        time.sleep(0.02)
    # every seq 1..300 once, in order: as an event, or inside a gap event's range
    covered: list[int] = []
    for ev in got:
        if ev["action"] == "gap":
            covered += range(int(ev["attributes"]["from"]), int(ev["attributes"]["to"]) + 1)
        else:
            covered.append(ev["seq"])
    assert covered == list(range(1, 301))


# -- bounds and crashes -------------------------------------------------------------------
def test_rotation_bounds_the_journal_and_reports_the_gap(root: str) -> None:
    j = Journal(root, max_events=20)
    held_counts = []
    for i in range(1, 101):
        j.emit("container", "start", f"c{i}")
        held = [e for e in j.read() if e["type"] != "journal"]
        held_counts.append(len(held))
        assert seqs(held) == list(range(i - len(held) + 1, i + 1))
    assert all(10 <= n <= 20 for n in held_counts[20:])
    files = set(os.listdir(os.path.join(root, "events")))
    assert "journal.1" in files and files <= {"journal", "journal.1", "lock"}
    held = list(j.read(since=0))
    gap, oldest = held[0], held[1]
    assert gap["type"] == "journal" and gap["action"] == "gap"
    assert gap["attributes"] == {"from": "1", "to": str(oldest["seq"] - 1)}
    assert gap["seq"] == oldest["seq"] - 1
    assert seqs(held[1:]) == list(range(oldest["seq"], 101))
    # a since within what is held gets no gap; the journal keeps counting after rotation
    assert list(j.read(since=oldest["seq"] - 1))[0] == oldest
    assert j.emit("image", "delete", "x")["seq"] == 101


def test_a_torn_last_line_is_skipped_and_the_next_emit_is_readable(
        root: str, followers: list[Follower]) -> None:
    j = Journal(root)
    j.emit("container", "create", "a")
    j.emit("container", "start", "a")
    path = os.path.join(root, "events", "journal")
    with open(path, "ab") as f:  # a writer killed half-way through its line
        f.write(b'{"seq":3,"type":"container","action":"di')
    assert seqs(list(j.read())) == [1, 2]
    assert j.last_seq() == 2
    f = Follower(j)
    followers.append(f)
    assert seqs(f.wait_for(2)) == [1, 2]
    time.sleep(0.15)
    assert len(f.events) == 2  # the torn line never surfaces
    ev = j.emit("container", "die", "a", attributes={"exitCode": "0"})
    assert ev["seq"] == 3
    assert list(j.read(since=2)) == [ev]
    assert f.wait_for(3)[-1] == ev
    assert seqs(list(j.read())) == [1, 2, 3]


# -- filters --------------------------------------------------------------------------
@pytest.fixture
def mixed(root: str) -> Journal:
    j = Journal(root)
    web = "a1b2c3" + "0" * 58
    db = "d4e5f6" + "0" * 58
    j.emit("container", "create", web, name="web", image="busybox:latest",
           attributes={"name": "web", "image": "busybox:latest", "tier": "front"})
    j.emit("container", "start", web, name="web", image="busybox:latest",
           attributes={"name": "web", "image": "busybox:latest", "tier": "front"})
    j.emit("container", "start", db, name="db", image="redis:7",
           attributes={"name": "db", "image": "redis:7", "tier": "back", "backup": ""})
    j.emit("image", "tag", "sha256:feed", name="busybox:latest",
           attributes={"name": "busybox:latest"})
    j.emit("container", "die", db, name="db", image="redis:7",
           attributes={"name": "db", "image": "redis:7", "tier": "back", "backup": "",
                       "exitCode": "0"})
    return j


@pytest.mark.parametrize("items, expected", [
    (["type=container"], [1, 2, 3, 5]),
    (["type=image"], [4]),
    (["event=start"], [2, 3]),
    (["action=start"], [2, 3]),
    (["event=start", "event=die"], [2, 3, 5]),  # OR within a key
    (["container=web"], [1, 2]),
    (["container=d4e5"], [3, 5]),  # id prefix
    (["container=/web"], [1, 2]),
    (["container=web", "container=db"], [1, 2, 3, 5]),
    (["container=web", "event=start"], [2]),  # AND across keys
    (["image=redis:7"], [3, 5]),
    (["image=busybox"], [1, 2, 4]),
    (["label=backup"], [3, 5]),
    (["label=tier=front"], [1, 2]),
    (["label=tier=front", "label=backup"], []),  # labels AND, as Docker's do
    (["label=tier=back", "label=backup"], [3, 5]),
    (["label=tier=front", "event=create"], [1]),
    (["label=tier=nope"], []),
    ({"type": ["container"], "event": ["die"]}, [5]),
    ({"event": {"start": True, "die": False}}, [2, 3]),
    ([], [1, 2, 3, 4, 5]),
    (None, [1, 2, 3, 4, 5]),
])
def test_filters(mixed: Journal, items: Any, expected: list[int]) -> None:
    assert seqs(list(mixed.read(filters=parse_filters(items)))) == expected


def test_filters_apply_to_follow(mixed: Journal, followers: list[Follower]) -> None:
    f = Follower(mixed, filters=parse_filters(["event=die"]))
    followers.append(f)
    mixed.emit("container", "die", "e" * 64, name="cache")
    mixed.emit("container", "start", "e" * 64, name="cache")
    assert seqs(f.wait_for(2)) == [5, 6]
    time.sleep(0.15)
    assert len(f.events) == 2


@pytest.mark.parametrize("items, words", [
    (["colour=red"], ["'colour'", "type", "event", "container", "image", "label"]),
    ({"until": ["5m"]}, ["'until'", "label"]),
    (["type"], ["KEY=VALUE"]),
    (["label="], ["no value"]),
])
def test_bad_filters_say_what_is_wrong(items: Any, words: list[str]) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        parse_filters(items)
    for w in words:
        assert w in str(info.value)


# -- the monitor's events ----------------------------------------------------------------
def wait_for_event(journal: Journal, since: int, cid: str, action: str,
                   timeout: float = 10.0) -> dict[str, Any]:
    """The first ``action`` event of container ``cid`` after ``since``."""
    stop = threading.Event()
    timer = threading.Timer(timeout, stop.set)
    timer.start()
    try:
        for ev in journal.follow(since, parse_filters([f"container={cid}",
                                                       f"event={action}"]),
                                 cancelled=stop.is_set):
            return ev
    finally:
        timer.cancel()
    raise AssertionError(f"no {action} event for container {cid[:12]} in {timeout} s")


@needs_root
def test_the_monitor_emits_die_with_the_exit_code(engine: Any) -> None:
    j = Journal(engine.root)
    since = j.last_seq()
    cid = engine.create("busybox", ["sh", "-c", "exit 3"], name="cbx-events-die",
                        labels={"com.example.role": "test"})
    engine.start(cid)
    assert engine.wait(cid) == 3
    die = wait_for_event(j, since, cid, "die")
    assert die["type"] == "container" and die["id"] == cid
    assert die["name"] == "cbx-events-die" and die["image"] == "busybox"
    assert die["attributes"]["exitCode"] == "3"
    assert die["attributes"]["com.example.role"] == "test"
    assert die["attributes"]["name"] == "cbx-events-die"
    assert die["attributes"]["image"] == "busybox"
    mine = [e for e in j.read(since) if e["id"] == cid]
    assert "oom" not in [e["action"] for e in mine]


@needs_root
def test_the_monitor_emits_oom_then_die(engine: Any) -> None:
    j = Journal(engine.root)
    since = j.last_seq()
    hog = "x=$(head -c 200000000 /dev/zero | tr '\\0' a)"
    cid = engine.create("busybox", ["sh", "-c", hog], memory=16 * 1024 * 1024)
    engine.start(cid)
    code = engine.wait(cid)
    die = wait_for_event(j, since, cid, "die")
    mine = [e for e in j.read(since) if e["id"] == cid and e["action"] in ("oom", "die")]
    assert [e["action"] for e in mine] == ["oom", "die"]
    assert mine[0]["seq"] < die["seq"]
    assert die["attributes"]["exitCode"] == str(code) and code != 0


@pytest.fixture(scope="module")
def plain_server() -> Iterator[ForkServer]:
    """A fork server whose monitors start plain host processes (no runtime)."""
    fs = ForkServer(starter=PlainStarter())
    yield fs
    fs.close()


def run_plain(server: ForkServer, root: str, *args: str) -> tuple[str, str]:
    """Run ``args`` under a monitor in ``root``'s layout; (id, container dir) once done."""
    cid = "cbx" + uuid.uuid4().hex + "0" * 29
    cdir = os.path.join(root, "containers", cid)
    os.makedirs(cdir)
    write_json(os.path.join(cdir, "config.json"),
               {"Id": cid, "Name": "cbx-plain", "Config": {
                   "Image": "busybox:latest", "Labels": {"role": "plain"}}})
    spec = ContainerSpec(id=cid, hostname="cbx", lowerdirs=[], layer_root=cdir,
                         upperdir="", workdir="", rootfs="",
                         process=ProcessSpec(args=list(args)))
    info = server.spawn(spec, cdir, open_stdin=False, on_exit=None)
    try:
        monitor_client.wait(cid, timeout=10)
    except errors.NotRunning:
        pass
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{info['monitor_pid']}/stat"):
        with open(f"/proc/{info['monitor_pid']}/stat") as f:
            if f.read().split(") ")[1].startswith("Z"):
                break
        assert time.monotonic() < deadline, "the monitor did not exit"
        time.sleep(0.01)
    assert read_json(os.path.join(cdir, "exit.json")) is not None
    return cid, cdir


def test_the_monitor_journals_die_from_the_container_config(plain_server: ForkServer,
                                                            root: str) -> None:
    cid, _ = run_plain(plain_server, root, "sh", "-c", "exit 7")
    (die,) = Journal(root).read()
    assert (die["type"], die["action"], die["id"]) == ("container", "die", cid)
    assert die["name"] == "cbx-plain" and die["image"] == "busybox:latest"
    assert die["attributes"] == {"exitCode": "7", "role": "plain", "name": "cbx-plain",
                                 "image": "busybox:latest"}


def test_an_events_failure_does_not_cost_the_monitor_its_exit(plain_server: ForkServer,
                                                              root: str) -> None:
    with open(os.path.join(root, "events"), "w"):  # no journal directory can be made
        pass
    _, cdir = run_plain(plain_server, root, "sh", "-c", "exit 4")
    assert read_json(os.path.join(cdir, "exit.json"))["exit_code"] == 4
    with open(os.path.join(cdir, "monitor.err")) as f:
        assert "journaling the exit events failed" in f.read()
