"""The daemon: the engine's verbs for other processes, live restore, who may connect.

Each test starts the real ``chanbox daemon`` as a process on its own ipc socket (never
the host's default one) and drives it with the real CLI (``-H``) or a chan client.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

import chan
import pytest

from engine import fsutil
from engine.client import Client, connect
from engine.errors import NotRunning

from .conftest import CHANBOX, FORKER, needs_root, remove_root, stop_process

pytestmark = needs_root


class DaemonProc:
    """A ``chanbox daemon`` process on ``root``, serving ``endpoint``."""

    def __init__(self, root: str, sock_dir: str, *extra: str) -> None:
        self.root = root
        self.path = os.path.join(sock_dir, "engine.sock")
        self.endpoint = "ipc://" + self.path
        self.log = os.path.join(sock_dir, f"daemon-{time.monotonic_ns()}.log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [CHANBOX, "--root", root, "daemon", "--listen", self.endpoint, *extra],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while "serving root" not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the daemon did not start: {self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        with open(self.log) as f:
            return f.read()

    def cli(self, *args: str, input: bytes | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([CHANBOX, "-H", self.endpoint, *args], input=input,
                              capture_output=True, timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        return stop_process(self.proc, sig)


@pytest.fixture(scope="module")
def daemon_root() -> Iterator[str]:
    from engine.engine import Engine

    root = tempfile.mkdtemp(prefix="cbx-droot-")
    Engine(root, forker=FORKER).bootstrap("busybox:latest")
    yield root
    remove_root(root)


@pytest.fixture
def sock_dir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="cbx-sock-")
    yield d
    fsutil.remove_tree(d)


@pytest.fixture
def daemon(daemon_root: str, sock_dir: str) -> Iterator[DaemonProc]:
    d = DaemonProc(daemon_root, sock_dir)
    yield d
    d.stop()


def out(p: subprocess.CompletedProcess) -> str:
    return p.stdout.decode()


def test_run_through_the_daemon(daemon: DaemonProc) -> None:
    p = daemon.cli("run", "--rm", "busybox", "sh", "-c", "echo via daemon; echo e >&2; exit 4")
    assert (p.returncode, out(p), p.stderr.decode()) == (4, "via daemon\n", "e\n")
    p = daemon.cli("run", "--rm", "-i", "busybox", "tr", "a-z", "A-Z", input=b"piped\n")
    assert (p.returncode, out(p)) == (0, "PIPED\n")
    p = daemon.cli("run", "--rm", "cbx-nosuch", "true")
    assert p.returncode == 125 and "no such image: cbx-nosuch" in p.stderr.decode()


def test_socket_is_0660(daemon: DaemonProc) -> None:
    mode = os.stat(daemon.path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660


def test_a_second_daemon_on_the_same_root_is_refused(daemon: DaemonProc, sock_dir: str) -> None:
    p = subprocess.run([CHANBOX, "--root", daemon.root, "daemon", "--listen",
                        f"ipc://{sock_dir}/other.sock"], capture_output=True, timeout=30)
    assert p.returncode == 125
    assert f"another chanbox daemon (pid {daemon.proc.pid})" in p.stderr.decode()
    assert daemon.cli("ps").returncode == 0  # the first one is untouched


def test_a_busy_socket_is_refused(daemon: DaemonProc, tmp_path) -> None:
    root = tempfile.mkdtemp(prefix="cbx-root-")
    try:
        p = subprocess.run([CHANBOX, "--root", root, "daemon", "--listen", daemon.endpoint],
                           capture_output=True, timeout=30)
        assert p.returncode == 125 and "already listens" in p.stderr.decode()
    finally:
        fsutil.remove_tree(root)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_containers_outlive_the_daemon_and_a_new_one_picks_them_up(
        daemon_root: str, sock_dir: str, sig: int) -> None:
    d = DaemonProc(daemon_root, sock_dir)
    p = d.cli("run", "-d", "-i", "busybox", "sh", "-c",
              "echo before; read x; echo got:$x; sleep 30")
    cid = out(p).strip()
    assert p.returncode == 0, p.stderr
    try:
        pid = _running_pid(d, cid)
        assert d.stop(sig) in (0, -signal.SIGKILL)
        assert os.path.exists(f"/proc/{pid}")  # the container runs on without a daemon
        d = DaemonProc(daemon_root, sock_dir)  # the same socket path again
        assert _running_pid(d, cid) == pid
        assert out(d.cli("logs", cid)) == "before\n"
        assert d.cli("exec", cid, "true").returncode == 0
        # its stdin is still attachable through the new daemon
        client = connect(d.endpoint)
        try:
            replies = client.stream("attach", id=cid, stdin=True)
            stream = next(replies)["stdin"]
            stream.write(b"again\n")
            stream.close()
            deadline = time.monotonic() + 10
            while "got:again" not in out(d.cli("logs", cid)):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            d.cli("kill", cid)
            assert out(d.cli("wait", cid)).strip() == "137"
            assert list(replies)[-1]["exit_code"] == 137
        finally:
            client.close()
    finally:
        d.cli("rm", "-f", cid)
        d.stop()


def _running_pid(d: DaemonProc, cid: str) -> int:
    import json

    info = json.loads(out(d.cli("inspect", cid)))[0]
    assert info["State"]["Running"] is True, info["State"]
    return info["State"]["Pid"]


def test_tcp_needs_keys_or_an_explicit_insecure(daemon_root: str, sock_dir: str) -> None:
    p = subprocess.run([CHANBOX, "--root", daemon_root, "daemon", "--listen",
                        "tcp://127.0.0.1:0"], capture_output=True, timeout=30)
    assert p.returncode == 125 and "--insecure" in p.stderr.decode()
    d = DaemonProc(daemon_root, sock_dir, "--listen", "tcp://127.0.0.1:0", "--insecure")
    try:
        assert "WARNING" in d.output() and "plain text" in d.output()
        tcp = [line.split()[-1] for line in d.output().splitlines()
               if "listening on tcp://" in line][0]
        p = subprocess.run([CHANBOX, "-H", tcp, "version"], capture_output=True, timeout=30)
        assert p.returncode == 0, p.stderr
    finally:
        d.stop()


def test_curve_lets_allowed_clients_in_and_no_one_else(daemon_root: str, sock_dir: str,
                                                       tmp_path) -> None:
    from engine import keys

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    server_key, server_pub = keys.generate(str(tmp_path / "server"))
    good_key, good_pub = keys.generate(str(tmp_path / "good"))
    bad_key, _ = keys.generate(str(tmp_path / "bad"))
    os.rename(good_pub, allowed / "good.pub")
    assert stat.S_IMODE(os.stat(server_key).st_mode) == 0o600
    d = DaemonProc(daemon_root, sock_dir, "--listen", "tcp://127.0.0.1:0",
                   "--key", server_key, "--allow", str(allowed))
    try:
        tcp = [line.split()[-1] for line in d.output().splitlines()
               if "listening on tcp://" in line][0]
        ok = subprocess.run([CHANBOX, "-H", tcp, "--key", good_key, "--server-key", server_pub,
                             "version"], capture_output=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
        no = subprocess.run([CHANBOX, "-H", tcp, "--key", bad_key, "--server-key", server_pub,
                             "version"], capture_output=True, timeout=30)
        assert no.returncode == 125 and "no chanbox daemon answers" in no.stderr.decode()
        plain = subprocess.run([CHANBOX, "-H", tcp, "version"], capture_output=True, timeout=30)
        assert plain.returncode == 125
    finally:
        d.stop()


def test_concurrent_clients_do_not_block_one_another(daemon: DaemonProc) -> None:
    # a follower that never reads, a long waiter and a log follower, while 8 clients list
    long = out(daemon.cli("run", "-d", "busybox", "sh", "-c",
                          "while true; do echo tick; sleep 0.05; done")).strip()
    stalled = connect(daemon.endpoint)
    waiter = connect(daemon.endpoint)
    try:
        stalled_stream = stalled.stream("log", id=long, follow=True)
        next(stalled_stream)  # then never read again
        wait_result: list = []
        t = threading.Thread(target=lambda: wait_result.append(waiter.call("wait", id=long)))
        t.start()
        errors: list = []

        def lister() -> None:
            try:
                c = connect(daemon.endpoint)
                for _ in range(20):
                    c.call("ls", all=True)
                c.close()
            except Exception as exc:  # noqa: BLE001 -- collected and asserted below
                errors.append(exc)

        started = time.monotonic()
        threads = [threading.Thread(target=lister) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert errors == [] and time.monotonic() - started < 30
        daemon.cli("kill", long)
        t.join(20)
        assert wait_result == [{"exit_code": 137}]
    finally:
        stalled.close()
        waiter.close()
        daemon.cli("rm", "-f", long)


def test_wrong_requests_get_errors_and_the_daemon_lives_on(daemon: DaemonProc) -> None:
    session = chan.connect(daemon.endpoint)
    try:
        tx = session.open()

        def ask(request: dict) -> chan.RemoteError:
            ret_tx, ret_rx = chan.pipe()
            tx.send({**request, "ret": ret_tx})
            with pytest.raises(chan.RemoteError) as info:
                ret_rx.recv(timeout=10)
            return info.value

        assert ask({"verb": "nope"}).code == "invalid_argument"
        assert "missing argument 'image'" in ask({"verb": "create", "args": {}}).message
        assert "must be an integer" in ask(
            {"verb": "create", "args": {"image": "busybox", "memory": "x"}}).message
        tx.send({"verb": "ls"})  # no ret
        tx.send({"verb": "ls", "ret": 42})  # a ret that is not a Sender
        tx.send("not a map")
        with pytest.raises(chan.MessageTooLarge):
            tx.send({"verb": "ls", "args": {"pad": b"x" * (65 * 1024 * 1024)}})
        assert Client(tx).call("version")["Version"]
    finally:
        session.close()
    # garbage frames from a raw ZeroMQ peer end that peer's session only
    import zmq

    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    raw.connect(daemon.endpoint)
    for junk in (b"", b"\xff" * 100, os.urandom(5000)):
        raw.send(junk)
    time.sleep(0.3)
    raw.close(0)
    ctx.term()
    assert daemon.cli("ps").returncode == 0


def test_a_client_killed_mid_attach_does_not_stop_the_container(daemon: DaemonProc) -> None:
    cid = out(daemon.cli("run", "-d", "-i", "busybox", "sh", "-c",
                         "while true; do echo tick; sleep 0.1; done")).strip()
    try:
        p = subprocess.Popen([CHANBOX, "-H", daemon.endpoint, "attach", cid],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert p.stdout.readline() == b"tick\n"
        p.kill()
        p.wait()
        time.sleep(0.5)
        assert _running_pid(daemon, cid)
        assert daemon.cli("exec", cid, "true").returncode == 0
    finally:
        daemon.cli("rm", "-f", cid)


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_waiting_verbs_of_killed_clients_end(daemon: DaemonProc) -> None:
    # Each verb waits on something idle (a silent container, a quiet journal), so it
    # has nothing to send that would tell it the client is gone: it must look.
    cid = out(daemon.cli("run", "-d", "busybox", "sleep", "300")).strip()
    clients: list[subprocess.Popen] = []
    try:
        assert daemon.cli("ps").returncode == 0  # the pool of quick verbs exists now
        time.sleep(0.3)
        before = _threads(daemon.proc.pid)
        for args in (["events"], ["logs", "-f", cid], ["attach", cid], ["wait", cid]):
            clients.append(subprocess.Popen([CHANBOX, "-H", daemon.endpoint, *args],
                                            stdout=subprocess.DEVNULL))
        deadline = time.monotonic() + 20
        # a session thread and a verb thread per client
        while _threads(daemon.proc.pid) < before + 2 * len(clients):
            assert time.monotonic() < deadline, "the clients' verbs did not start"
            time.sleep(0.05)
        time.sleep(0.5)
        for p in clients:
            p.kill()
            p.wait()
        # chan notices a dead peer within its heartbeat timeout (3 s); the verbs look
        # every CANCEL_CHECK (0.5 s)
        deadline = time.monotonic() + 3 + 0.5 + 4
        while _threads(daemon.proc.pid) > before:
            assert time.monotonic() < deadline, \
                f"{_threads(daemon.proc.pid) - before} threads of killed clients remain"
            time.sleep(0.1)
        assert _running_pid(daemon, cid), "the container must outlive its clients"
        assert "Traceback" not in daemon.output()
    finally:
        for p in clients:
            p.kill()
            p.wait()
        daemon.cli("rm", "-f", cid)


@pytest.mark.parametrize("auto_remove", [False, True], ids=["kept", "rm"])
def test_a_killed_monitor_is_reported_at_once_as_a_die_event(daemon: DaemonProc,
                                                             auto_remove: bool) -> None:
    client = connect(daemon.endpoint)
    try:
        rm = ["--rm"] if auto_remove else []
        cid = out(daemon.cli("run", "-d", *rm, "busybox", "sleep", "300")).strip()
        since = max([0] + [e["seq"] for e in client.stream("watch", since=0, follow=False)])
        monitor = fsutil.read_json(os.path.join(daemon.root, "containers", cid,
                                                "monitor.json"))
        events = client.receiver("watch", since=since, filters=[f"container={cid}"])
        os.kill(monitor["monitor_pid"], signal.SIGKILL)
        # no command looks at the container: the daemon must notice by itself
        ev = events.recv(timeout=5)
        assert (ev["action"], ev["attributes"]["exitCode"]) == ("die", "137")
        if auto_remove:  # what the monitor would have done after the exit
            assert events.recv(timeout=5)["action"] == "destroy"
            assert cid not in out(daemon.cli("ps", "-a", "-q", "--no-trunc"))
        else:
            state = client.call("get", id=cid)["State"]
            assert state["Status"] == "exited" and state["ExitCode"] == 137
        events.close()
    finally:
        client.close()
        daemon.cli("rm", "-f", cid)


def test_a_daemon_stopped_with_sigterm_tells_its_clients_at_once(daemon_root: str,
                                                                 sock_dir: str) -> None:
    # Its sessions end with a goodbye (ABORT Shutdown) that must leave before the
    # process does, not with a heartbeat timeout (3 s) on the clients' side.
    d = DaemonProc(daemon_root, sock_dir)
    client = connect(d.endpoint)
    try:
        events = client.receiver("watch")
        assert client.call("version")  # the session is up
        d.stop(signal.SIGTERM)
        t0 = time.monotonic()
        with pytest.raises(chan.SessionLost):
            events.recv(timeout=10)
        assert time.monotonic() - t0 < 1.5
    finally:
        client.close()
        d.stop()


def test_exec_output_larger_than_the_monitors_buffer_arrives_whole(
        daemon: DaemonProc) -> None:
    # An exec'd process's output exists nowhere else (no log): a client that is behind
    # makes the process wait, it is not dropped.  4 times the monitor's buffer.
    import hashlib

    from engine.monitor import CLIENT_BUFFER_LIMIT

    size = 4 * CLIENT_BUFFER_LIMIT
    cid = out(daemon.cli("run", "-d", "busybox", "sleep", "300")).strip()
    try:
        assert daemon.cli("exec", cid, "sh", "-c",
                          f"head -c {size} /dev/urandom > /tmp/blob").returncode == 0
        p = daemon.cli("exec", cid, "cat", "/tmp/blob")
        assert p.returncode == 0, p.stderr
        want = out(daemon.cli("exec", cid, "md5sum", "/tmp/blob")).split()[0]
        assert len(p.stdout) == size
        assert hashlib.md5(p.stdout).hexdigest() == want
        # a reader that stops early does not leave the process blocked for ever
        reader = subprocess.Popen([CHANBOX, "-H", daemon.endpoint, "exec", cid, "sh", "-c",
                                   "head -c 100000000 /dev/zero"], stdout=subprocess.PIPE)
        assert reader.stdout.read(10) == b"\0" * 10
        reader.stdout.close()
        reader.wait(timeout=30)
        deadline = time.monotonic() + 10
        while "head" in out(daemon.cli("exec", cid, "ps")):
            assert time.monotonic() < deadline, "the exec'd process was left blocked"
            time.sleep(0.1)
    finally:
        daemon.cli("rm", "-f", cid)


def test_save_and_load_stream_through_the_daemon(daemon: DaemonProc) -> None:
    # the archive crosses the session as a byte stream, not as a path on the daemon's host
    assert daemon.cli("tag", "busybox", "cbx-dpiped:1").returncode == 0
    try:
        saved = daemon.cli("save", "cbx-dpiped:1")
        assert saved.returncode == 0 and len(saved.stdout) > 1_000_000, saved.stderr
        assert daemon.cli("rmi", "cbx-dpiped:1").returncode == 0
        loaded = daemon.cli("load", input=saved.stdout)
        assert out(loaded) == "Loaded image: cbx-dpiped:1\n", loaded.stderr
    finally:
        daemon.cli("rmi", "cbx-dpiped:1")


def test_no_daemon_at_the_endpoint_is_a_clear_error(sock_dir: str) -> None:
    with pytest.raises(NotRunning, match="no chanbox daemon answers"):
        connect(f"ipc://{sock_dir}/nobody.sock", timeout=0.5)


def test_watch_resumes_across_a_daemon_restart_with_nothing_missed_or_repeated(
        daemon_root: str, sock_dir: str) -> None:
    d = DaemonProc(daemon_root, sock_dir)
    seen: list[dict] = []
    client = connect(d.endpoint)
    base = max([0] + [e["seq"] for e in client.stream("watch", since=0, follow=False)])

    def follow() -> None:
        try:
            for ev in client.stream("watch", since=base):
                seen.append(ev)
        except Exception:  # noqa: BLE001 -- the daemon is killed under it: expected
            pass

    t = threading.Thread(target=follow)
    t.start()
    cid = out(d.cli("run", "-d", "busybox", "sleep", "1")).strip()
    deadline = time.monotonic() + 10
    while not any(e["action"] == "start" and e["id"] == cid for e in seen):
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)
    d.stop(signal.SIGKILL)
    t.join(20)
    last = seen[-1]["seq"]
    # while no daemon runs: the container dies (its monitor records it) and an embedded
    # engine on the same root makes another
    time.sleep(1.5)
    p = subprocess.run([CHANBOX, "--root", daemon_root, "create", "--name", "cbx-offline",
                        "busybox", "true"], capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    d = DaemonProc(daemon_root, sock_dir)
    try:
        client2 = connect(d.endpoint)
        missed = list(client2.stream("watch", since=last, follow=False))
        client2.close()
        seqs = [e["seq"] for e in seen + missed]
        assert seqs == list(range(base + 1, base + 1 + len(seqs)))  # no gap, no repeat
        actions = [(e["action"], e["name"]) for e in missed]
        assert ("die", seen[-1]["name"]) in actions and ("create", "cbx-offline") in actions
        die = next(e for e in missed if e["action"] == "die")
        assert die["id"] == cid and die["attributes"]["exitCode"] == "0"
    finally:
        d.cli("rm", "-f", cid)
        d.cli("rm", "-f", "cbx-offline")
        d.stop()
        client.close()


def test_events_cli_filters_and_formats(daemon: DaemonProc) -> None:
    import json

    before = max([0] + [json.loads(line)["seq"] for line in out(daemon.cli(
        "events", "--since", "0", "--no-follow", "--format", "json")).splitlines()])
    cid = out(daemon.cli("run", "-d", "-l", "cbx.role=probe", "busybox", "true")).strip()
    daemon.cli("wait", cid)
    daemon.cli("rm", cid)
    lines = out(daemon.cli("events", "--since", str(before), "--no-follow", "--format", "json",
                           "--filter", f"container={cid[:12]}", "--filter", "event=die"))
    evs = [json.loads(line) for line in lines.splitlines()]
    assert [e["action"] for e in evs] == ["die"]
    assert evs[0]["attributes"]["cbx.role"] == "probe"
    text = out(daemon.cli("events", "--since", str(before), "--no-follow",
                          "--filter", "label=cbx.role=probe"))
    assert [line.split()[3] for line in text.splitlines()] == ["create", "start", "die", "destroy"]
    p = daemon.cli("events", "--no-follow", "--filter", "colour=red")
    assert p.returncode == 125 and "colour" in p.stderr.decode()


def test_a_client_that_stops_reading_does_not_grow_the_daemon(daemon: DaemonProc) -> None:
    import psutil

    # a steady flood (a shell loop, not `yes`: the log on disk stays small)
    cid = out(daemon.cli("run", "-d", "busybox", "sh", "-c",
                         "while true; do echo cbx-flood-line-cbx-flood-line; done")).strip()
    client = connect(daemon.endpoint)
    try:
        attached = client.stream("attach", id=cid)
        following = client.stream("log", id=cid, follow=True)
        next(attached)
        next(following)  # then neither is read again, while the container floods
        proc = psutil.Process(daemon.proc.pid)
        time.sleep(1.0)
        before = proc.memory_info().rss
        time.sleep(3.0)
        grown = proc.memory_info().rss - before
        assert grown < 32 * 1024 * 1024, f"the daemon grew by {grown >> 20} MiB"
        assert daemon.cli("ps", "-q").returncode == 0  # and still answers others
    finally:
        client.close()
        daemon.cli("rm", "-f", cid)


def test_key_mistakes_are_named(daemon_root: str, tmp_path) -> None:
    name = str(tmp_path / "cbx-k")
    first = subprocess.run([CHANBOX, "keys", "generate", name], capture_output=True, timeout=30)
    assert first.returncode == 0 and out(first).split() == [name + ".key", name + ".pub"]
    again = subprocess.run([CHANBOX, "keys", "generate", name], capture_output=True, timeout=30)
    assert again.returncode == 125 and "exists already" in again.stderr.decode()
    p = subprocess.run([CHANBOX, "--root", daemon_root, "daemon", "--listen", "tcp://127.0.0.1:0",
                        "--key", name + ".key"], capture_output=True, timeout=30)
    assert p.returncode == 125 and "--allow" in p.stderr.decode()
    p = subprocess.run([CHANBOX, "-H", "tcp://127.0.0.1:1", "--key", name + ".key", "version"],
                       capture_output=True, timeout=30)
    assert p.returncode == 125 and "needs both" in p.stderr.decode()
    (tmp_path / "bad.key").write_text("public short\n")
    p = subprocess.run([CHANBOX, "-H", "tcp://127.0.0.1:1", "--key", str(tmp_path / "bad.key"),
                        "--server-key", name + ".pub", "version"], capture_output=True, timeout=30)
    assert p.returncode == 125 and "40 Z85 characters" in p.stderr.decode()
