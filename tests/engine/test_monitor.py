"""The per-container monitor, its fork server and its client, with a plain fork/exec
starter (no namespaces), plus one run through the real runtime when it is installed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
import time
import uuid

import psutil
import pytest

from engine import errors, monitor_client
from engine.forkserver import ForkServer
from engine.fsutil import read_json, remove_tree
from engine.monitor import HEADER, socket_name
from engine.spec import ContainerSpec, ProcessSpec

BUSYBOX = "/bin/busybox"


class PlainStarter:
    """Starts processes with posix_spawn on the host: no namespaces, no rootfs."""

    def start(self, spec: ContainerSpec, stdin: int, stdout: int, stderr: int) -> int:
        return self._spawn(spec.process, stdin, stdout, stderr)

    def exec_in(self, init_pid: int, spec: ContainerSpec, process: ProcessSpec,
                stdin: int, stdout: int, stderr: int) -> int:
        return self._spawn(process, stdin, stdout, stderr)

    @staticmethod
    def _spawn(process: ProcessSpec, stdin: int, stdout: int, stderr: int) -> int:
        env = dict(e.split("=", 1) for e in process.env) or {"PATH": "/usr/bin:/bin"}
        actions = [(os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, stdout, 1),
                   (os.POSIX_SPAWN_DUP2, stderr, 2)]
        try:
            return os.posix_spawnp(process.args[0], process.args, env,
                                   file_actions=actions, setsid=process.terminal,
                                   setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
        except FileNotFoundError as exc:
            raise errors.CommandNotFound(f"{process.args[0]}: not found") from exc
        except PermissionError as exc:
            raise errors.CommandNotInvokable(f"{process.args[0]}: not executable") from exc


@pytest.fixture
def workdir():
    path = tempfile.mkdtemp(prefix="cbx-")
    yield path
    remove_tree(path)


@pytest.fixture
def server():
    fs = ForkServer(starter=PlainStarter())
    yield fs
    fs.close()


class Containers:
    """Spawns containers and kills whatever is left of them at the end."""

    def __init__(self, server: ForkServer, workdir: str) -> None:
        self.server = server
        self.workdir = workdir
        self.pids: list[int] = []

    def run(self, *args: str, open_stdin: bool = False, on_exit=None,
            terminal: bool = False) -> tuple[str, str, dict]:
        cid = "cbx" + uuid.uuid4().hex + "0" * 29  # 64 characters, like a real id
        cdir = os.path.join(self.workdir, cid[:16])
        os.mkdir(cdir)
        spec = ContainerSpec(id=cid, hostname="cbx", lowerdirs=[], layer_root=cdir,
                             upperdir="", workdir="", rootfs="",
                             process=ProcessSpec(args=list(args), terminal=terminal))
        info = self.server.spawn(spec, cdir, open_stdin=open_stdin, on_exit=on_exit)
        self.pids += [info["pid"], info["monitor_pid"]]
        return cid, cdir, info

    def cleanup(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def containers(server, workdir):
    c = Containers(server, workdir)
    yield c
    c.cleanup()


def log_records(cdir: str) -> list[dict]:
    with open(os.path.join(cdir, "container.log")) as f:
        return [json.loads(line) for line in f]


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while psutil.pid_exists(pid):
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        assert time.monotonic() < deadline, f"process {pid} still there"
        time.sleep(0.01)


def finished(cid: str, cdir: str) -> dict:
    """The exit record, as the engine gets it: from the monitor, or from exit.json once
    the monitor is gone (a short-lived container may be over before we ask)."""
    try:
        return monitor_client.wait(cid, timeout=10)
    except errors.NotRunning:
        return read_json(os.path.join(cdir, "exit.json"))


def read_all(att: monitor_client.Attachment, timeout: float = 10.0) -> dict[str, bytes]:
    out: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    while (got := att.read(timeout)) is not None:
        out[got[0]].append(got[1])
    return {name: b"".join(chunks) for name, chunks in out.items()}


def test_output_reaches_the_log_in_json_file_form(containers):
    cid, cdir, info = containers.run(
        "sh", "-c", "echo one; echo err >&2; printf 'two\\nthree'; printf '\\377\\n'")
    assert finished(cid, cdir)["exit_code"] == 0
    recs = log_records(cdir)
    out = [r["log"].encode("utf-8", "surrogateescape") for r in recs if r["stream"] == "stdout"]
    assert out == [b"one\n", b"two\n", b"three\xff\n"]  # bytes that are not UTF-8 kept
    with open(os.path.join(cdir, "container.log"), "rb") as f:
        assert f.read().isascii()  # (as \udcXX escapes)
    assert [r["log"] for r in recs if r["stream"] == "stderr"] == ["err\n"]
    for r in recs:
        assert set(r) == {"log", "stream", "time"}
        assert len(r["time"]) == len("2026-11-28T01:02:03.123456789Z")
        assert r["time"].endswith("Z")
    mon = read_json(os.path.join(cdir, "monitor.json"))
    assert mon == {"monitor_pid": info["monitor_pid"], "pid": info["pid"],
                   "started_at": info["started_at"]}
    assert abs(info["started_at"] - time.time_ns()) < 60e9


def test_partial_line_is_flushed_at_eof(containers):
    cid, cdir, _ = containers.run("printf", "no newline")
    finished(cid, cdir)
    assert [r["log"] for r in log_records(cdir)] == ["no newline"]


def test_exit_codes_and_exit_json(containers):
    # the sleep makes sure wait() talks to a live monitor
    for script, code, sig in [("true", 0, None), ("exit 3", 3, None),
                              ("kill -9 $$", 137, 9)]:
        cid, cdir, _ = containers.run("sh", "-c", "sleep 0.2; " + script)
        rec = monitor_client.wait(cid, timeout=10)
        assert (rec["exit_code"], rec["signal"], rec["oom_killed"]) == (code, sig, False)
        assert read_json(os.path.join(cdir, "exit.json")) == rec


def test_command_not_found_is_raised_from_spawn(containers):
    with pytest.raises(errors.CommandNotFound):
        containers.run("cbx-no-such-command")


def test_attach_sees_live_output_and_the_exit_record(containers):
    cid, _, _ = containers.run("sh", "-c", "read x; echo out:$x; echo e >&2; exit 5",
                               open_stdin=True)
    with monitor_client.attach(cid, stdin=True) as att:
        att.write(b"hello\n")
        out = read_all(att)
        assert out == {"stdout": b"out:hello\n", "stderr": b"e\n"}
        assert att.exit["exit_code"] == 5
        assert att.read() is None


def test_stdin_reaches_cat_and_close_ends_it(containers):
    cid, cdir, _ = containers.run("cat", open_stdin=True)
    with monitor_client.attach(cid, stdin=True, stderr=False) as att:
        att.write(b"a" * 100_000 + b"\nend\n")
        att.close_stdin()
        out = read_all(att)
    assert out["stdout"] == b"a" * 100_000 + b"\nend\n"
    assert att.exit["exit_code"] == 0
    assert "".join(r["log"] for r in log_records(cdir)).endswith("end\n")


def test_half_close_closes_stdin(containers):
    cid, _, _ = containers.run("cat", open_stdin=True)
    att = monitor_client.attach(cid, stdin=True)
    att.write(b"x\n")
    att._sock.shutdown(socket.SHUT_WR)
    assert read_all(att)["stdout"] == b"x\n"
    att.close()


def test_a_terminals_client_that_closes_for_good_leaves_stdin_open(containers):
    # a client that died or detached (^P^Q) is no half-close: the next one types on
    cid, _, _ = containers.run("sh", "-c", "stty -echo; cat", open_stdin=True, terminal=True)
    att = monitor_client.attach(cid, stdin=True)
    time.sleep(0.3)
    att.write(b"x\n")
    assert att.read(timeout=10) == ("stdout", b"x\r\n")
    att.close()
    time.sleep(0.3)
    assert monitor_client.alive(cid)  # cat read no EOF
    again = monitor_client.attach(cid, stdin=True)
    again.write(b"y\n")
    assert again.read(timeout=10) == ("stdout", b"y\r\n")
    again.close()
    monitor_client.signal(cid, signal.SIGKILL)


def test_a_pipes_client_that_goes_away_ends_stdin(containers):
    # as docker's StdinOnce: a killed `run -i` must not leave `cat` waiting for ever
    cid, cdir, _ = containers.run("cat", open_stdin=True)
    att = monitor_client.attach(cid, stdin=True)
    att.write(b"x\n")
    assert att.read(timeout=10) == ("stdout", b"x\n")
    att.close()
    assert finished(cid, cdir)["exit_code"] == 0


def test_two_attachers_both_get_the_output(containers):
    cid, _, _ = containers.run("sh", "-c", "read x; seq 1 2000", open_stdin=True)
    a, b = monitor_client.attach(cid, stdin=True), monitor_client.attach(cid)
    a.write(b"go\n")
    expected = "".join(f"{i}\n" for i in range(1, 2001)).encode()
    assert read_all(a)["stdout"] == expected
    assert read_all(b)["stdout"] == expected
    assert a.exit == b.exit
    a.close()
    b.close()


def test_a_stalled_attacher_does_not_block_the_container(containers):
    # 8 MB of output; the stalled attacher never reads, the fast one reads all
    cid, cdir, _ = containers.run("sh", "-c", "read x; head -c 8000000 /dev/zero | tr '\\0' 'x'",
                                  open_stdin=True)
    stalled = monitor_client.attach(cid)
    fast = monitor_client.attach(cid, stdin=True)
    fast.write(b"go\n")
    t0 = time.monotonic()
    got = len(read_all(fast, timeout=20)["stdout"])
    assert got == 8_000_000
    rec = monitor_client.wait(cid, timeout=10) if monitor_client.alive(cid) else fast.exit
    assert rec["exit_code"] == 0
    assert time.monotonic() - t0 < 20
    assert sum(len(r["log"]) for r in log_records(cdir)) == 8_000_000
    with pytest.raises(errors.EngineError):  # it was dropped, not waited for
        while stalled.read(timeout=5) is not None:
            pass
    stalled.close()
    fast.close()


def test_signal_and_alive(containers):
    cid, cdir, _ = containers.run("sleep", "30")
    assert monitor_client.alive(cid)
    monitor_client.signal(cid, signal.SIGTERM)
    rec = finished(cid, cdir)
    assert (rec["exit_code"], rec["signal"]) == (128 + signal.SIGTERM, signal.SIGTERM)


def test_sigkill_gives_137(containers):
    cid, cdir, _ = containers.run("sleep", "30")
    monitor_client.signal(cid, signal.SIGKILL)
    assert finished(cid, cdir)["exit_code"] == 137


def test_bad_signal_is_invalid_argument(containers):
    cid, _, _ = containers.run("sleep", "30")
    with pytest.raises(errors.InvalidArgument):
        monitor_client.signal(cid, 1000)
    assert monitor_client.alive(cid)
    monitor_client.signal(cid, signal.SIGKILL)


def test_wait_timeout(containers):
    cid, _, _ = containers.run("sleep", "30")
    with pytest.raises(TimeoutError):
        monitor_client.wait(cid, timeout=0.2)
    monitor_client.signal(cid, signal.SIGKILL)


def test_monitor_outlives_the_fork_server(workdir):
    server = ForkServer(starter=PlainStarter())
    c = Containers(server, workdir)
    try:
        cid, cdir, info = c.run("sh", "-c", "read x; echo done:$x", open_stdin=True)
        server.close()
        assert not psutil.pid_exists(server.pid)
        assert monitor_client.alive(cid)
        att = monitor_client.attach(cid, stdin=True)
        att.write(b"late\n")
        assert read_all(att)["stdout"] == b"done:late\n"
        att.close()
        wait_gone(info["monitor_pid"])
        assert read_json(os.path.join(cdir, "exit.json"))["exit_code"] == 0
        assert not monitor_client.alive(cid)
        with pytest.raises(errors.EngineError):
            server.spawn(ContainerSpec.from_dict({**_dummy_spec(), "id": "cbxx"}), cdir,
                         open_stdin=False)
    finally:
        c.cleanup()
        server.close()


def _dummy_spec() -> dict:
    return ContainerSpec(id="x", hostname="x", lowerdirs=[], layer_root="", upperdir="",
                         workdir="", rootfs="", process=ProcessSpec(args=["true"])).to_dict()


def hook(path: str, text: str) -> None:
    """The on_exit hook the test below names."""
    with open(path, "w") as f:
        f.write(text)


def test_on_exit_hook_runs(containers, workdir):
    marker = os.path.join(workdir, "hook-ran")
    cid, cdir, info = containers.run("true", on_exit=(f"{__name__}:hook", [marker, "yes"]))
    wait_gone(info["monitor_pid"])
    with open(marker) as f:
        assert f.read() == "yes"


def test_killed_monitor_means_not_running(containers):
    cid, _, info = containers.run("sleep", "30")
    os.kill(info["monitor_pid"], signal.SIGKILL)
    wait_gone(info["monitor_pid"])
    for call in (lambda: monitor_client.wait(cid), lambda: monitor_client.signal(cid, 15),
                 lambda: monitor_client.attach(cid),
                 lambda: monitor_client.exec(cid, ProcessSpec(args=["true"]))):
        with pytest.raises(errors.NotRunning, match=f"container {cid[:12]} is not running"):
            call()
    assert not monitor_client.alive(cid)


def test_malformed_frame_drops_only_that_client(containers):
    cid, _, _ = containers.run("sh", "-c", "read x; echo ok", open_stdin=True)
    for junk in (b"?" + (0).to_bytes(4, "big"), HEADER.pack(b"A", 5) + b"{nope",
                 HEADER.pack(b"W", 1 << 30), HEADER.pack(b"I", 1) + b"x"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(socket_name(cid))
        s.sendall(junk)
        s.settimeout(5)
        assert s.recv(100) == b""  # dropped
        s.close()
    att = monitor_client.attach(cid, stdin=True)
    att.write(b"\n")
    assert read_all(att)["stdout"] == b"ok\n"
    att.close()


def test_no_monitor_fd_leaks_into_the_container(containers):
    cid, cdir, _ = containers.run("ls", "/proc/self/fd")
    finished(cid, cdir)
    # ls itself opens one fd for the directory it lists
    fds = sorted(int(r["log"]) for r in log_records(cdir))
    assert fds[:3] == [0, 1, 2] and len(fds) == 4


def test_exec_streams_output_stdin_and_exit_code(containers):
    cid, _, _ = containers.run("sleep", "30")
    att = monitor_client.exec(cid, ProcessSpec(args=["sh", "-c", "cat; echo e >&2; exit 4"]),
                              open_stdin=True)
    att.write(b"in exec\n")
    att.close_stdin()
    assert read_all(att) == {"stdout": b"in exec\n", "stderr": b"e\n"}
    assert att.exit == {"exit_code": 4}
    att.close()
    with pytest.raises(errors.CommandNotFound):
        monitor_client.exec(cid, ProcessSpec(args=["cbx-no-such-command"]))
    assert monitor_client.alive(cid)
    monitor_client.signal(cid, signal.SIGKILL)


def test_terminal_output_comes_on_stdout(containers):
    cid, cdir, _ = containers.run("sh", "-c", "test -t 1 && echo tty", terminal=True)
    finished(cid, cdir)
    assert [r["log"] for r in log_records(cdir)] == ["tty\r\n"]


def test_monitor_memory_is_small(containers):
    n = 20
    mons = [containers.run("sleep", "60")[2]["monitor_pid"] for _ in range(n)]
    time.sleep(0.3)
    uss = [psutil.Process(pid).memory_full_info().uss for pid in mons]
    mean = sum(uss) / n
    print(f"monitor USS: mean {mean / 2**20:.2f} MiB, max {max(uss) / 2**20:.2f} MiB")
    assert mean < 4 * 2**20


# -- with the real runtime ------------------------------------------------------------------
def _busybox_layer(root: str) -> None:
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp"):
        os.mkdir(os.path.join(root, d))
    shutil.copy2(BUSYBOX, os.path.join(root, "bin", "busybox"))
    for name in ("sh", "echo", "ls", "cat", "sleep", "hostname"):
        os.symlink("busybox", os.path.join(root, "bin", name))
    with open(os.path.join(root, "etc", "motd"), "w") as f:
        f.write("from the image\n")


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(BUSYBOX),
                    reason="containers need root and busybox")
def test_real_runtime_with_a_busybox_rootfs(workdir):
    runtime = pytest.importorskip("engine.runtime")
    for sub in ("layers/lower", "upper", "work", "rootfs", "ctr"):
        os.makedirs(os.path.join(workdir, sub))
    _busybox_layer(os.path.join(workdir, "layers/lower"))
    cid = "cbx" + uuid.uuid4().hex + "0" * 29
    cdir = os.path.join(workdir, "ctr")
    spec = ContainerSpec(
        id=cid, hostname="cbxmon", lowerdirs=["lower"],
        layer_root=os.path.join(workdir, "layers"), upperdir=os.path.join(workdir, "upper"),
        workdir=os.path.join(workdir, "work"), rootfs=os.path.join(workdir, "rootfs"),
        process=ProcessSpec(args=["sh", "-c", "echo pid=$$; hostname; ls /proc/self/fd; "
                                  "read x; echo got:$x"]))
    server = ForkServer(starter=runtime)
    info = None
    try:
        with pytest.raises(errors.CommandNotFound):
            server.spawn(ContainerSpec.from_dict({
                **spec.to_dict(), "process": {"args": ["cbx-nope"]}}), cdir, open_stdin=False)
        info = server.spawn(spec, cdir, open_stdin=True)
        att = monitor_client.exec(cid, ProcessSpec(args=["cat", "/etc/motd"]))
        assert read_all(att)["stdout"] == b"from the image\n"
        assert att.exit == {"exit_code": 0}
        att.close()
        att = monitor_client.attach(cid, stdin=True)
        att.write(b"ok\n")
        att.close_stdin()
        assert read_all(att)["stdout"] == b"got:ok\n"
        assert att.exit["exit_code"] == 0
        att.close()
        wait_gone(info["monitor_pid"])
        lines = [r["log"] for r in log_records(cdir)]
        assert lines[:2] == ["pid=1\n", "cbxmon\n"]
        assert lines[2:-1] == ["0\n", "1\n", "2\n", "3\n"]  # 3: the directory ls reads
    finally:
        if info is not None:
            for pid in (info["pid"], info["monitor_pid"]):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        server.close()
