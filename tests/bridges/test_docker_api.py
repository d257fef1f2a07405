"""The Docker Engine API bridge, driven by the real ``docker`` CLI and docker-py.

A real ``chanbox daemon`` on a private ipc socket, a real ``chanbox bridge docker`` on
a private unix socket (``--no-pull``: nothing reaches a registry), and the docker CLI
28.x with ``DOCKER_HOST`` and a temporary ``DOCKER_CONFIG``.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

from engine import fsutil
from tests.engine.conftest import CHANBOX, FORKER, needs_root, remove_root, stop_process
from tests.engine.test_daemon import DaemonProc

DOCKER = shutil.which("docker")
pytestmark = [needs_root, pytest.mark.skipif(
    DOCKER is None, reason="the docker CLI is not installed (client 28.x expected)")]


class BridgeProc:
    """``chanbox bridge docker`` on a private socket, over the daemon at ``endpoint``."""

    def __init__(self, endpoint: str, sock_dir: str, *, pull: bool = False) -> None:
        self.endpoint = endpoint
        self.socket = os.path.join(sock_dir, "docker.sock")
        self.log = os.path.join(sock_dir, "bridge.log")
        self.config = os.path.join(sock_dir, "docker-config")
        os.makedirs(self.config, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [CHANBOX, "-H", endpoint, "bridge", "docker", "--socket", self.socket,
                 *([] if pull else ["--no-pull"])], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while "serving the Docker API" not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the bridge did not start: {self.output()}")
            time.sleep(0.05)
        self.env = {**os.environ, "DOCKER_HOST": "unix://" + self.socket,
                    "DOCKER_CONFIG": self.config}

    def output(self) -> str:
        with open(self.log) as f:
            return f.read()

    def docker(self, *args: str, input: bytes | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([DOCKER, *args], input=input, capture_output=True,
                              timeout=timeout, env=self.env)

    def stop(self) -> None:
        stop_process(self.proc, timeout=10)


@pytest.fixture(scope="module")
def bridge() -> Iterator[BridgeProc]:
    from engine.engine import Engine

    root = tempfile.mkdtemp(prefix="cbx-droot-")
    sock_dir = tempfile.mkdtemp(prefix="cbx-sock-")
    Engine(root, forker=FORKER).bootstrap("busybox:latest")
    daemon = bridge = None
    try:
        daemon = DaemonProc(root, sock_dir)
        bridge = BridgeProc(daemon.endpoint, sock_dir)
        yield bridge
    finally:
        if bridge is not None:
            bridge.stop()
        if daemon is not None:
            daemon.stop()
        remove_root(root)
        fsutil.remove_tree(sock_dir)


def out(p: subprocess.CompletedProcess) -> str:
    return p.stdout.decode()


def err(p: subprocess.CompletedProcess) -> str:
    return p.stderr.decode()


def ok(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, (p.returncode, out(p), err(p))
    return out(p)


def names(bridge: BridgeProc) -> set[str]:
    return set(ok(bridge.docker("ps", "-a", "--format", "{{.Names}}")).split())


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def request(bridge: BridgeProc, method: str, path: str,
            body: dict | None = None) -> tuple[int, dict, bytes]:
    conn = _UnixHTTP(bridge.socket)
    try:
        if body is None:
            conn.request(method, path)
        else:
            conn.request(method, path, json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


# -- the handshake -------------------------------------------------------------------------

def test_ping_advertises_what_the_cli_negotiates_on(bridge: BridgeProc) -> None:
    for method in ("HEAD", "GET"):
        status, headers, body = request(bridge, method, "/_ping")
        assert status == 200
        assert headers["Api-Version"] >= "1.44" and headers["Ostype"] == "linux"
        assert headers["Docker-Experimental"] == "false" and headers["Swarm"] == "inactive"
        assert "Builder-Version" in headers
        assert body == (b"OK" if method == "GET" else b"")
    status, _, body = request(bridge, "GET", "/v1.41/version")  # versioned paths too
    assert status == 200 and json.loads(body)["MinAPIVersion"] == "1.24"
    status, headers, body = request(bridge, "GET", "/containers/cbx-nosuch/json")
    assert (status, headers["Content-Type"]) == (404, "application/json")
    assert "cbx-nosuch" in json.loads(body)["message"]


def test_version_and_info(bridge: BridgeProc) -> None:
    v = ok(bridge.docker("version", "--format", "{{.Server.APIVersion}} {{.Server.Os}}"))
    assert v.split()[1] == "linux" and v.split()[0] >= "1.44"
    info = ok(bridge.docker("info", "--format", "{{.OSType}} {{.Driver}} {{.Images}}"))
    assert info.split()[:2] == ["linux", "overlay2"] and int(info.split()[2]) >= 1


# -- run -----------------------------------------------------------------------------------

def test_run_gives_the_exit_code_and_keeps_stdout_and_stderr_apart(bridge: BridgeProc) -> None:
    p = bridge.docker("run", "--name", "cbx-exit3", "-e", "WHO=world", "busybox",
                      "sh", "-c", "echo hello $WHO; echo oops >&2; exit 3")
    assert (p.returncode, out(p), err(p)) == (3, "hello world\n", "oops\n")
    assert "cbx-exit3" in names(bridge)  # without --rm it stays
    ok(bridge.docker("rm", "cbx-exit3"))
    assert "cbx-exit3" not in names(bridge)


def test_run_rm_removes_the_container(bridge: BridgeProc) -> None:
    p = bridge.docker("run", "--rm", "--name", "cbx-rm", "busybox", "sh", "-c",
                      "echo last words; exit 7")
    assert (p.returncode, out(p)) == (7, "last words\n"), err(p)
    assert "cbx-rm" not in names(bridge)


def test_run_below_api_1_30_waits_through_events(bridge: BridgeProc) -> None:
    env = {**bridge.env, "DOCKER_API_VERSION": "1.29"}
    p = subprocess.run([DOCKER, "run", "--rm", "--name", "cbx-legacy", "busybox", "sh", "-c",
                        "echo legacy; exit 3"], capture_output=True, env=env, timeout=60)
    assert (p.returncode, out(p)) == (3, "legacy\n"), err(p)
    assert "cbx-legacy" not in names(bridge)


def test_run_with_a_tty_sends_raw_bytes(bridge: BridgeProc) -> None:
    p = bridge.docker("run", "--rm", "-t", "busybox", "sh", "-c", "echo tty; exit 2")
    assert (p.returncode, out(p)) == (2, "tty\r\n"), err(p)


def test_run_interactive_pipes_stdin(bridge: BridgeProc) -> None:
    p = bridge.docker("run", "--rm", "-i", "busybox", "tr", "a-z", "A-Z", input=b"piped in\n")
    assert (p.returncode, out(p)) == (0, "PIPED IN\n"), err(p)


def test_run_a_missing_image_fails_with_404_and_never_pulls(bridge: BridgeProc) -> None:
    p = bridge.docker("run", "--rm", "cbx-nosuch-image", "true", timeout=30)
    assert p.returncode == 125
    assert "Unable to find image 'cbx-nosuch-image:latest' locally" in err(p)
    assert "Error response from daemon: pull access denied for cbx-nosuch-image" in err(p)
    p = bridge.docker("pull", "cbx-nosuch-image")
    assert p.returncode == 1 and "pull access denied" in err(p)


def test_run_a_missing_command_exits_127(bridge: BridgeProc) -> None:
    p = bridge.docker("run", "--rm", "busybox", "cbx-no-such-command")
    assert p.returncode == 127, err(p)
    assert "executable file not found" in err(p)


def test_concurrent_runs(bridge: BridgeProc) -> None:
    def run(i: int) -> tuple[int, str]:
        p = bridge.docker("run", "--rm", "busybox", "sh", "-c", f"echo run {i}; exit {i}")
        return p.returncode, out(p)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(run, range(6)))
    assert results == [(i, f"run {i}\n") for i in range(6)]


# -- detached containers ---------------------------------------------------------------

def test_detached_then_logs_follow_exec_stop_and_rm(bridge: BridgeProc) -> None:
    cid = ok(bridge.docker("run", "-d", "--name", "cbx-web", "busybox", "sh", "-c",
                           "for i in 1 2 3; do echo line $i; sleep 0.2; done; echo bye >&2; "
                           "sleep 600")).strip()
    try:
        assert len(cid) == 64
        assert "cbx-web" in ok(bridge.docker("ps", "--format", "{{.Names}} {{.State}}"))
        assert cid[:12] in ok(bridge.docker("ps", "-q")).split()
        # logs -f follows until the container ends: stop it while following
        follow = subprocess.Popen([DOCKER, "logs", "-f", "cbx-web"], env=bridge.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(1.5)
        p = bridge.docker("exec", "cbx-web", "sh", "-c", "echo from exec; exit 5")
        assert (p.returncode, out(p)) == (5, "from exec\n")
        p = bridge.docker("exec", "-i", "cbx-web", "tr", "a-z", "A-Z", input=b"exec stdin\n")
        assert (p.returncode, out(p)) == (0, "EXEC STDIN\n")
        p = bridge.docker("exec", "cbx-web", "cbx-no-such-command")
        assert p.returncode == 127 and "executable file not found" in err(p)
        assert ok(bridge.docker("stop", "-t", "1", "cbx-web")).strip() == "cbx-web"
        o, e = follow.communicate(timeout=20)
        assert o == b"line 1\nline 2\nline 3\n" and e == b"bye\n"
        p = bridge.docker("logs", "--tail", "2", "cbx-web")
        assert (out(p), err(p)) == ("line 3\n", "bye\n")
        state = ok(bridge.docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}",
                                 "cbx-web")).split()
        assert state[0] == "exited" and state[1] in ("137", "143")
        assert ok(bridge.docker("wait", "cbx-web")).strip() == state[1]
    finally:
        bridge.docker("rm", "-f", "cbx-web")
    assert "cbx-web" not in names(bridge)


def test_create_start_attach_kill_restart_rm_force(bridge: BridgeProc) -> None:
    cid = ok(bridge.docker("create", "--name", "cbx-life", "-m", "64m", "busybox", "sh", "-c",
                           "echo started; trap 'echo got TERM; exit 9' TERM; "
                           "while true; do sleep 0.1; done")).strip()
    try:
        assert ok(bridge.docker("inspect", "-f", "{{.State.Status}} {{.HostConfig.Memory}}",
                                cid)).split() == ["created", str(64 << 20)]
        ok(bridge.docker("start", "cbx-life"))
        assert ok(bridge.docker("inspect", "-f", "{{.State.Running}}", cid)).strip() == "true"
        attach = subprocess.Popen([DOCKER, "attach", "--no-stdin", "cbx-life"], env=bridge.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(1.0)
        ok(bridge.docker("kill", "-s", "TERM", "cbx-life"))
        o, e = attach.communicate(timeout=20)
        assert b"got TERM" in o and attach.returncode == 9, e
        p = bridge.docker("kill", "cbx-life")  # not running any more: a conflict
        assert p.returncode == 1 and "is not running" in err(p)
        ok(bridge.docker("restart", "-t", "1", "cbx-life"))
        assert ok(bridge.docker("inspect", "-f", "{{.State.Running}}", cid)).strip() == "true"
        p = bridge.docker("rm", "cbx-life")
        assert p.returncode == 1 and "Error response from daemon" in err(p)
        ok(bridge.docker("rm", "-f", "cbx-life"))
    finally:
        bridge.docker("rm", "-f", "cbx-life")
    p = bridge.docker("inspect", "cbx-life")
    assert p.returncode == 1 and "No such object: cbx-life" in err(p)
    p = bridge.docker("rm", "cbx-life")
    assert p.returncode == 1 and "no such container" in err(p).lower()


# -- images --------------------------------------------------------------------------------

def test_resize_refuses_what_is_not_a_terminal_size_and_keeps_working(bridge: BridgeProc) -> None:
    cid = ok(bridge.docker("run", "-d", "-t", "busybox", "sh", "-c", "sleep 2; stty size; sleep 60")).strip()
    try:
        for query, says in (("h=abc&w=80", b"whole numbers"), ("h=-3&w=80", b"out of range")):
            status, _, body = request(bridge, "POST", f"/containers/{cid}/resize?{query}")
            assert (status, says in body) == (400, True), body
        status, _, body = request(bridge, "POST", f"/containers/{cid}/exec",
                                  {"Cmd": ["true"], "Tty": True})
        assert status == 201, body
        status, _, body = request(bridge, "POST", f"/exec/{json.loads(body)['Id']}/resize?h=24&w=x")
        assert (status, b"whole numbers" in body) == (400, True), body
        status, _, body = request(bridge, "POST", f"/containers/{cid}/resize?h=30&w=100")
        assert status == 200, body
        deadline = time.monotonic() + 20
        while "30 100" not in out(bridge.docker("logs", cid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "30 100" in out(bridge.docker("logs", cid))
    finally:
        bridge.docker("rm", "-f", cid)


def test_docker_run_with_a_volume(bridge: BridgeProc, tmp_path) -> None:
    (tmp_path / "in").write_text("from the host\n")
    p = bridge.docker("run", "--rm", "-v", f"{tmp_path}:/data", "busybox",
                      "sh", "-c", "cat /data/in; echo back > /data/out")
    assert (p.returncode, out(p)) == (0, "from the host\n"), err(p)
    assert (tmp_path / "out").read_text() == "back\n"
    cid = ok(bridge.docker("create", "-v", f"{tmp_path}:/data:ro", "busybox", "true")).strip()
    try:
        mounts = json.loads(ok(bridge.docker("inspect", "-f", "{{json .Mounts}}", cid)))
        assert [(m["Source"], m["Destination"], m["RW"]) for m in mounts] == [(str(tmp_path), "/data", False)]
    finally:
        bridge.docker("rm", cid)
    p = bridge.docker("run", "--rm", "--mount", f"type=bind,src={tmp_path},dst=/data,readonly",
                      "busybox", "sh", "-c", "cat /data/in; touch /data/x")
    assert p.returncode != 0 and out(p) == "from the host\n" and "Read-only" in err(p)
    p = bridge.docker("run", "--rm", "--mount", "type=tmpfs,dst=/data", "busybox", "true")
    assert p.returncode != 0 and "only type=bind and type=volume" in err(p)


def test_docker_rename(bridge: BridgeProc) -> None:
    cid = ok(bridge.docker("create", "--name", "cbx-r1", "busybox", "true")).strip()
    try:
        ok(bridge.docker("rename", "cbx-r1", "cbx-r2"))
        assert ok(bridge.docker("inspect", "-f", "{{.Name}}", cid)).strip() == "/cbx-r2"
    finally:
        bridge.docker("rm", "-f", cid)


def test_docker_update(bridge: BridgeProc) -> None:
    cid = ok(bridge.docker("run", "-d", "-m", "64m", "busybox", "sleep", "30")).strip()
    try:
        ok(bridge.docker("update", "--memory", "96m", "--cpus", "0.5", "--pids-limit", "40", cid))
        got = ok(bridge.docker("inspect", "-f", "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} "
                               "{{.HostConfig.PidsLimit}}", cid)).split()
        assert got == [str(96 << 20), "500000000", "40"]
        assert "96MiB" in ok(bridge.docker("stats", "--no-stream", cid))
        p = bridge.docker("update", "--cpu-shares", "512", cid)
        assert p.returncode != 0 and "CpuShares is not supported" in err(p)
    finally:
        bridge.docker("rm", "-f", cid)


def test_docker_logs_since(bridge: BridgeProc) -> None:
    cid = ok(bridge.docker("run", "-d", "busybox", "sh", "-c", "echo one; sleep 1.2; echo two")).strip()
    try:
        ok(bridge.docker("wait", cid))
        stamps = {line.split(" ", 1)[1]: line.split(" ", 1)[0]
                  for line in ok(bridge.docker("logs", "-t", cid)).splitlines()}
        assert ok(bridge.docker("logs", "--since", stamps["two"], cid)) == "two\n"
        assert ok(bridge.docker("logs", "--until", stamps["one"], cid)) == "one\n"
    finally:
        bridge.docker("rm", "-f", cid)


def test_docker_container_and_image_prune(bridge: BridgeProc) -> None:
    up = ok(bridge.docker("run", "-d", "busybox", "sleep", "30")).strip()
    done = ok(bridge.docker("run", "-d", "busybox", "sh", "-c", "echo z > /z")).strip()
    try:
        ok(bridge.docker("wait", done))
        dangling = ok(bridge.docker("commit", done)).strip()
        out_ = ok(bridge.docker("container", "prune", "-f"))
        assert done in out_ and up not in out_
        assert up in ok(bridge.docker("ps", "-q", "--no-trunc")).split()
        out_ = ok(bridge.docker("image", "prune", "-f"))
        assert dangling in out_ and "busybox" not in out_
        assert "busybox" in ok(bridge.docker("images", "--format", "{{.Repository}}"))
    finally:
        bridge.docker("rm", "-f", up, done)


def test_docker_export(bridge: BridgeProc, tmp_path) -> None:
    cid = ok(bridge.docker("create", "busybox", "true")).strip()
    try:
        p = bridge.docker("export", "-o", str(tmp_path / "rootfs.tar"), cid)
        assert p.returncode == 0, err(p)
        import tarfile

        with tarfile.open(tmp_path / "rootfs.tar") as t:
            assert "bin/busybox" in t.getnames()
        p = bridge.docker("export", "-o", str(tmp_path / "none.tar"), "cbx-no-such-container")
        assert p.returncode != 0 and not (tmp_path / "none.tar").exists()
    finally:
        bridge.docker("rm", cid)


def test_streamed_stats_come_every_second_and_end_with_the_container(bridge: BridgeProc) -> None:
    cid = ok(bridge.docker("run", "-d", "busybox", "sleep", "3")).strip()
    try:
        status, _, body = request(bridge, "GET", f"/containers/{cid}/stats")  # stream=1
        assert status == 200
        readings = [json.loads(line) for line in body.splitlines()]
        assert 1 <= len(readings) <= 4 and all(r["id"] == cid for r in readings)
        for before, after in zip(readings, readings[1:]):
            assert after["precpu_stats"] == before["cpu_stats"]  # as the daemon keeps them
        status, _, _ = request(bridge, "GET", "/containers/cbx-no-such-container/stats")
        assert status == 404
    finally:
        bridge.docker("rm", "-f", cid)


def test_docker_stats(bridge: BridgeProc) -> None:
    cid = ok(bridge.docker("run", "-d", "-m", "64m", "busybox", "sh", "-c",
                           "while :; do :; done & sleep 30")).strip()
    try:
        lines = ok(bridge.docker("stats", "--no-stream", "--no-trunc", cid)).splitlines()
        assert lines[0].split()[:2] == ["CONTAINER", "ID"]
        row = lines[1].split()
        assert row[0] == cid and "64MiB" in lines[1], lines
        assert float(row[2].rstrip("%")) > 20, lines  # docker computes it from two readings
        p = bridge.docker("stats", "--no-stream", "cbx-no-such-container")
        assert p.returncode != 0
    finally:
        bridge.docker("rm", "-f", cid)


def test_docker_top(bridge: BridgeProc) -> None:
    cid = ok(bridge.docker("run", "-d", "busybox", "sh", "-c", "sleep 300 & exec sleep 301")).strip()
    try:
        deadline = time.monotonic() + 10
        while len(lines := out(bridge.docker("top", cid)).splitlines()) < 3:
            assert time.monotonic() < deadline, lines
            time.sleep(0.1)
        assert lines[0].split()[:3] == ["UID", "PID", "PPID"] and lines[0].split()[-1] == "CMD"
        assert sorted(line.split(None, 7)[-1] for line in lines[1:]) == ["sleep 300", "sleep 301"]
        p = bridge.docker("top", cid, "aux")
        assert p.returncode != 0 and "only the default ps arguments" in err(p)
    finally:
        bridge.docker("rm", "-f", cid)


def test_docker_diff(bridge: BridgeProc) -> None:
    cid = ok(bridge.docker("run", "-d", "busybox", "sh", "-c", "rm /bin/vi; touch /new; sleep 30")).strip()
    try:
        deadline = time.monotonic() + 10
        while (got := out(bridge.docker("diff", cid)).splitlines()) != ["C /bin", "D /bin/vi", "A /new"]:
            assert time.monotonic() < deadline, got
            time.sleep(0.1)
    finally:
        bridge.docker("rm", "-f", cid)


def test_images_tag_rmi_pull_commit(bridge: BridgeProc) -> None:
    listed = ok(bridge.docker("images", "--format", "{{.Repository}}:{{.Tag}}")).split()
    assert "busybox:latest" in listed
    ok(bridge.docker("tag", "busybox", "cbx-mine:1"))
    assert "cbx-mine:1" in ok(bridge.docker("images", "--format", "{{.Repository}}:{{.Tag}}"))
    assert "Untagged: cbx-mine:1" in ok(bridge.docker("rmi", "cbx-mine:1"))
    p = bridge.docker("rmi", "cbx-mine:1")
    assert p.returncode == 1 and "No such image: cbx-mine:1" in err(p)
    assert "up to date" in ok(bridge.docker("pull", "busybox"))  # local, never fetched
    ok(bridge.docker("run", "--name", "cbx-commit", "busybox", "sh", "-c",
                     "echo committed > /stamp"))
    try:
        iid = ok(bridge.docker("commit", "cbx-commit", "cbx-committed:1")).strip()
        assert iid.startswith("sha256:")
        p = bridge.docker("run", "--rm", "cbx-committed:1", "cat", "/stamp")
        assert (p.returncode, out(p)) == (0, "committed\n"), err(p)
    finally:
        bridge.docker("rm", "-f", "cbx-commit")
        bridge.docker("rmi", "cbx-committed:1")


def test_save_and_load(bridge: BridgeProc, tmp_path) -> None:
    tar = str(tmp_path / "busybox.tar")
    ok(bridge.docker("save", "-o", tar, "busybox"))
    assert os.path.getsize(tar) > 100_000
    ok(bridge.docker("tag", "busybox", "cbx-before-load:1"))
    ok(bridge.docker("rmi", "cbx-before-load:1"))
    assert "Loaded image" in ok(bridge.docker("load", "-i", tar))
    assert "busybox:latest" in ok(bridge.docker("images", "--format",
                                                "{{.Repository}}:{{.Tag}}")).split()


# -- events, networks -------------------------------------------------------------------

def test_events_report_the_lifecycle(bridge: BridgeProc) -> None:
    since = time.time()
    ok(bridge.docker("run", "--rm", "--name", "cbx-events", "busybox", "true"))
    until = time.time() + 0.5
    time.sleep(0.6)
    p = bridge.docker("events", "--since", f"{since:.3f}", "--until", f"{until:.3f}",
                      "--filter", "container=cbx-events", "--format", "{{.Action}}")
    actions = ok(p).split()
    for action in ("create", "start", "die", "destroy"):
        assert action in actions, actions


def test_networks_and_published_ports(bridge: BridgeProc) -> None:
    listed = ok(bridge.docker("network", "ls", "--format", "{{.Name}}")).split()
    assert {"bridge", "none", "host"} <= set(listed)
    ok(bridge.docker("network", "create", "cbx-dnet"))
    try:
        assert "cbx-dnet" in ok(bridge.docker("network", "ls", "--format", "{{.Name}}")).split()
        info = json.loads(ok(bridge.docker("network", "inspect", "cbx-dnet")))
        assert info[0]["Name"] == "cbx-dnet" and info[0]["IPAM"]["Config"][0]["Subnet"]
        ok(bridge.docker("run", "-d", "--name", "cbx-dsrv", "--network", "cbx-dnet",
                         "busybox", "sh", "-c", "echo pong | nc -l -p 80"))
        out = ok(bridge.docker("run", "--rm", "--network", "cbx-dnet", "busybox",
                               "sh", "-c", "sleep 0.3; nc cbx-dsrv 80"))
        assert out.strip() == "pong"  # by name, on the user network
        port = _free_port()
        ok(bridge.docker("run", "-d", "--name", "cbx-dpub", "-p", f"127.0.0.1:{port}:80",
                         "busybox", "sh", "-c", "echo published | nc -l -p 80"))
        info = json.loads(ok(bridge.docker("inspect", "cbx-dpub")))[0]
        assert info["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"] == str(port)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
                    data = c.recv(100)
                if data:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert data == b"published\n"
    finally:
        bridge.docker("rm", "-f", "cbx-dsrv", "cbx-dpub")
        bridge.docker("network", "rm", "cbx-dnet")
    assert "cbx-dnet" not in ok(bridge.docker("network", "ls", "--format", "{{.Name}}")).split()


def test_pull_from_a_registry_on_loopback(bridge: BridgeProc) -> None:
    # a real registry on 127.0.0.1, which Docker (and so the bridge) talks plain http to
    from tests.engine.test_registry import Registry

    registry = Registry()
    sock_dir = tempfile.mkdtemp(prefix="cbx-sock-")
    puller = BridgeProc(bridge.endpoint, sock_dir, pull=True)
    ref = f"{registry.host}/cbx/busybox:1"
    chanbox = [CHANBOX, "-H", bridge.endpoint]
    try:
        for args in (["tag", "busybox", ref], ["push", "--insecure", ref], ["rmi", ref]):
            p = subprocess.run([*chanbox, *args], capture_output=True, timeout=60)
            assert p.returncode == 0, p.stderr
        p = puller.docker("pull", ref)
        assert p.returncode == 0, err(p)
        assert ref in ok(puller.docker("images", "--format", "{{.Repository}}:{{.Tag}}")).split()
        assert ok(puller.docker("run", "--rm", ref, "echo", "pulled")) == "pulled\n"
        missing = puller.docker("pull", f"{registry.host}/cbx/nothing:1")
        assert missing.returncode != 0
    finally:
        puller.stop()
        subprocess.run([*chanbox, "rmi", ref], capture_output=True, timeout=60)
        registry.close()
        fsutil.remove_tree(sock_dir)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- docker-py ------------------------------------------------------------------------------

def test_docker_py(bridge: BridgeProc) -> None:
    docker = pytest.importorskip("docker", reason="docker-py is not installed (pip install docker)")
    client = docker.DockerClient(base_url="unix://" + bridge.socket, timeout=30)
    try:
        assert client.ping() is True
        assert client.containers.run("busybox", ["echo", "from docker-py"], remove=True) \
            == b"from docker-py\n"
        c = client.containers.run("busybox", ["sh", "-c", "echo ready; sleep 600"],
                                  detach=True, name="cbx-py")
        try:
            time.sleep(0.5)
            assert client.containers.get("cbx-py").id == c.id
            assert c.id in [x.id for x in client.containers.list()]
            assert c.logs() == b"ready\n"
            for _ in range(5):  # output right after the 101 must not be lost
                code, output = c.exec_run(["echo", "hi from exec"])
                assert (code, output) == (0, b"hi from exec\n")
            c.stop(timeout=1)
            c.reload()
            assert c.status == "exited"
        finally:
            c.remove(force=True)
        assert "cbx-py" not in [x.name for x in client.containers.list(all=True)]
        # the size of a -t container's terminal reaches it
        t = client.containers.run("busybox", ["sh", "-c", "sleep 1; stty size"], tty=True,
                                  detach=True)
        try:
            t.resize(height=27, width=91)
            assert t.wait(timeout=20)["StatusCode"] == 0
            assert t.logs().strip() == b"27 91"
        finally:
            t.remove(force=True)
        # ... and so does an exec's
        s = client.containers.run("busybox", ["sleep", "60"], detach=True)
        try:
            eid = client.api.exec_create(s.id, ["sh", "-c", "sleep 1; stty size"],
                                         tty=True)["Id"]
            output = client.api.exec_start(eid, tty=True, stream=True)
            client.api.exec_resize(eid, height=23, width=77)
            assert b"".join(output).strip() == b"23 77"
        finally:
            s.remove(force=True)
        with pytest.raises(docker.errors.NotFound):
            client.containers.get("cbx-py")
        tags = [t for i in client.images.list() for t in i.tags]
        assert "busybox:latest" in tags
        assert "busybox:latest" in client.images.pull("busybox", tag="latest").tags
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get("cbx-nosuch-image")
    finally:
        client.close()


# -- start-up --------------------------------------------------------------------------------

def test_the_cli_does_not_load_aiohttp_for_other_commands(bridge: BridgeProc) -> None:
    code = ("import sys\nfrom engine.cli import main\n"
            "try:\n    main(['bridge', 'docker', '--help'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('aiohttp', 'zmq', 'bridges.docker.server') "
            "if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().splitlines()[-1] == "[]"


def test_docker_cp_both_ways_stays_inside_the_container(bridge: BridgeProc, tmp_path) -> None:
    # /escape -> / is the container's own symlink: a copy through it lands in the
    # container's root, never in the host's
    cid = ok(bridge.docker("run", "-d", "busybox", "sh", "-c",
                           "mkdir -p /d/sub; echo a > /d/a; echo b > /d/sub/b; ln -s / /escape; "
                           "sleep 60")).strip()
    host_marker = f"/cbx-cp-{os.getpid()}"
    try:
        ok(bridge.docker("cp", f"{cid}:/d", str(tmp_path / "out")))
        assert (tmp_path / "out" / "sub" / "b").read_text() == "b\n"
        ok(bridge.docker("cp", f"{cid}:/d/a", str(tmp_path)))
        assert (tmp_path / "a").read_text() == "a\n"
        src = tmp_path / "in"
        src.mkdir()
        (src / "f").write_text("copied in\n")
        os.chmod(src / "f", 0o640)
        ok(bridge.docker("cp", str(src), f"{cid}:/escape{host_marker}"))
        assert not os.path.exists(host_marker)
        listing = ok(bridge.docker("exec", cid, "ls", "-ln", f"{host_marker}/f"))
        assert listing.startswith("-rw-r-----") and " 0 " in listing  # the container's root owns it
        assert ok(bridge.docker("exec", cid, "cat", f"{host_marker}/f")) == "copied in\n"
        p = bridge.docker("cp", f"{cid}:/no/such/path", str(tmp_path / "x"))
        assert p.returncode != 0 and "no such file" in err(p).lower()
        p = bridge.docker("cp", str(src / "f"), "cbx-no-such-container:/tmp")
        assert p.returncode != 0 and "no such container" in err(p).lower()
    finally:
        bridge.docker("rm", "-f", cid)


def test_docker_volumes_named_anonymous_and_mount(bridge: BridgeProc) -> None:
    name = f"cbx-vol-{os.getpid()}"
    ok(bridge.docker("volume", "create", "--label", "team=web", name))
    try:
        assert name in ok(bridge.docker("volume", "ls", "-q")).split()
        assert ok(bridge.docker("volume", "ls", "-q", "-f", "label=team=web")).split() == [name]
        info = json.loads(ok(bridge.docker("volume", "inspect", name)))[0]
        assert (info["Name"], info["Driver"], info["Labels"]) == (name, "local", {"team": "web"})
        ok(bridge.docker("run", "--rm", "-v", f"{name}:/data", "busybox", "sh", "-c",
                         "echo kept > /data/f"))
        assert ok(bridge.docker("run", "--rm", "--mount", f"type=volume,source={name},target=/v,readonly",
                                "busybox", "cat", "/v/f")) == "kept\n"
        # an empty volume gets what the image holds at its mount point
        assert "passwd" in ok(bridge.docker("run", "--rm", "-v", f"{name}-seed:/etc", "busybox", "ls", "/etc"))
        # an anonymous volume (Config.Volumes) goes with its container (rm -v)
        cid = ok(bridge.docker("create", "-v", "/scratch", "busybox", "true")).strip()
        anon = json.loads(ok(bridge.docker("inspect", cid)))[0]["Mounts"][0]
        assert anon["Type"] == "volume" and anon["Destination"] == "/scratch"
        assert anon["Name"] in ok(bridge.docker("volume", "ls", "-q", "-f", "dangling=false")).split()
        user = ok(bridge.docker("create", "-v", f"{name}:/x", "busybox", "true")).strip()
        p = bridge.docker("volume", "rm", name)
        assert p.returncode != 0 and "in use" in err(p)
        ok(bridge.docker("rm", "-v", cid, user))
        assert anon["Name"] not in ok(bridge.docker("volume", "ls", "-q")).split()
        p = bridge.docker("volume", "inspect", "cbx-no-such-volume")
        assert p.returncode != 0 and "no such volume" in err(p).lower()
        p = bridge.docker("volume", "create", "-d", "nfs", f"{name}-nfs")
        assert p.returncode != 0 and "driver 'nfs' is not supported" in err(p)
        p = bridge.docker("volume", "create", "-o", "type=tmpfs", f"{name}-opt")
        assert p.returncode != 0 and "options are not supported" in err(p)
        p = bridge.docker("volume", "ls", "-f", "scope=local")
        assert p.returncode != 0 and "invalid filter 'scope'" in err(p)
        assert f"{name}-nfs" not in ok(bridge.docker("volume", "ls", "-q")).split()
    finally:
        bridge.docker("volume", "rm", "-f", name, f"{name}-seed")
    assert name not in ok(bridge.docker("volume", "ls", "-q")).split()
