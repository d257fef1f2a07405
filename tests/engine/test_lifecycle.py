"""Containers through the channel API: what a user of ``docker run`` checks.

Every test drives the engine through :class:`engine.client.Client` over a channel
(the service's verbs), with the real runtime: namespaces, overlayfs, cgroups.
"""

from __future__ import annotations

import os
import time

import pytest

from engine.client import Client
from engine.errors import (CommandNotFound, CommandNotInvokable, Conflict, InvalidArgument,
                           NotFound, NotRunning)

from .conftest import needs_root

pytestmark = needs_root


def run(client: Client, *cmd: str, **kw) -> tuple[int, str, str, str]:
    """Create, start, wait; (exit code, stdout, stderr, id)."""
    kw.setdefault("image", "busybox")
    cid = client.call("create", cmd=list(cmd), **kw)["id"]
    client.call("start", id=cid)
    code = client.call("wait", id=cid)["exit_code"]
    out = {"stdout": "", "stderr": ""}
    for entry in client.stream("log", id=cid):
        out[entry["stream"]] += entry["log"]
    return code, out["stdout"], out["stderr"], cid


def output(client: Client, *cmd: str, **kw) -> str:
    code, out, err, _ = run(client, *cmd, **kw)
    assert code == 0, (code, out, err)
    return out


def test_output_and_exit_code_come_back(client: Client) -> None:
    code, out, err, _ = run(client, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (code, out, err) == (3, "out\n", "err\n")


def test_container_sees_only_its_own_processes_and_is_pid_1(client: Client) -> None:
    out = output(client, "sh", "-c", "echo $$; ps -o pid,comm | tail -n +2")
    lines = out.split()
    assert lines[0] == "1"
    pids = [int(p) for p in lines[1::2]]
    assert pids and max(pids) < 10, out  # only the shell and ps


def test_hostname_is_the_short_id_or_the_given_one(client: Client) -> None:
    code, out, _, cid = run(client, "hostname")
    assert out.strip() == cid[:12]
    assert output(client, "hostname", hostname="cbx-web").strip() == "cbx-web"


def test_filesystem_is_the_image_not_the_host(client: Client) -> None:
    out = output(client, "sh", "-c", "ls /; test -e /work && echo HOST || echo ISOLATED")
    assert "ISOLATED" in out and "bin" in out


def test_mount_is_denied_inside(client: Client) -> None:
    code, _, err, _ = run(client, "mount", "-t", "tmpfs", "x", "/mnt")
    assert code != 0
    assert "denied" in err.lower() or "not permitted" in err.lower()


def test_proc_is_masked_and_sys_read_only(client: Client) -> None:
    out = output(client, "sh", "-c",
                 "wc -c < /proc/timer_list; echo 1 > /proc/sys/kernel/domainname 2>&1 && echo W1; "
                 "touch /sys/cbx 2>/dev/null && echo W2; echo done")
    assert out.split()[0] == "0"  # /proc/timer_list is /dev/null inside (kcore: absent here)
    assert "W1" not in out and "W2" not in out


def test_env_workdir_and_user(client: Client) -> None:
    out = output(client, "sh", "-c", 'echo "$GREETING $(pwd) $(id -u):$(id -g)"',
                 env=["GREETING=hi"], workdir="/tmp", user="65534:65534")
    assert out.strip() == "hi /tmp 65534:65534"
    out = output(client, "id", "-un", user="nobody")
    assert out.strip() == "nobody"


def test_writes_go_to_the_containers_own_layer(client: Client) -> None:
    _, _, _, first = run(client, "sh", "-c", "echo one > /etc/cbx-note")
    out = output(client, "sh", "-c", "cat /etc/cbx-note 2>&1 || echo ABSENT")
    assert "ABSENT" in out  # a second container starts from the image again


def test_read_only_rootfs(client: Client) -> None:
    code, _, err, _ = run(client, "touch", "/cbx", read_only=True)
    assert code != 0 and "read-only" in err.lower()


def test_command_not_found_is_127_and_not_executable_126(client: Client) -> None:
    cid = client.call("create", image="busybox", cmd=["/no/such"])["id"]
    with pytest.raises(CommandNotFound, match="/no/such"):
        client.call("start", id=cid)
    assert client.call("get", id=cid)["State"]["ExitCode"] == 127
    cid = client.call("create", image="busybox", cmd=["/etc/passwd"])["id"]
    with pytest.raises(CommandNotInvokable):
        client.call("start", id=cid)
    assert client.call("get", id=cid)["State"]["ExitCode"] == 126


def test_unknown_image_names_it(client: Client) -> None:
    with pytest.raises(NotFound, match="no such image: cbx-nosuch:1"):
        client.call("create", image="cbx-nosuch:1", cmd=["true"])


def test_bad_limits_are_refused(client: Client) -> None:
    with pytest.raises(InvalidArgument, match="minimum memory"):
        client.call("create", image="busybox", cmd=["true"], memory=1024)
    with pytest.raises(InvalidArgument, match="CPUs"):
        client.call("create", image="busybox", cmd=["true"], cpus=1000.0)


def test_oom_kill_is_reported(client: Client) -> None:
    code, _, _, cid = run(client, "sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a)",
                          memory=16 * 1024 * 1024)
    assert code == 137
    assert client.call("get", id=cid)["State"]["OOMKilled"] is True


def test_pids_limit_caps_a_fork_loop(client: Client) -> None:
    loop = "i=0; while [ $i -lt 60 ]; do sleep 2 & i=$((i+1)); done; echo all-started"
    assert "all-started" in output(client, "sh", "-c", loop)
    code, out, err, _ = run(client, "sh", "-c", loop, pids_limit=20)
    assert code != 0 and "all-started" not in out
    assert "fork" in err  # busybox sh: "can't fork: Resource temporarily unavailable"


def test_cpus_throttles(client: Client) -> None:
    # a busy loop for ~1.5 s of wall time gets about half a CPU's worth of work
    def spins(**kw) -> int:
        out = output(client, "sh", "-c",
                     "end=$(($(date +%s)+2)); n=0; "
                     "while [ $(date +%s) -lt $end ]; do n=$((n+1)); done; echo $n", **kw)
        return int(out.split()[-1])

    free = spins()
    limited = spins(cpus=0.25)
    assert limited < free * 0.6, (limited, free)


def test_stop_sends_term_then_kill_after_the_grace_time(client: Client) -> None:
    # pid 1 ignores SIGTERM unless it handles it: stop must fall back to SIGKILL
    cid = client.call("spawn", image="busybox", cmd=["sleep", "60"])["id"]
    t = time.monotonic()
    assert client.call("stop", id=cid, timeout=1)["exit_code"] == 137
    assert 0.9 < time.monotonic() - t < 5
    cid = client.call("spawn", image="busybox",
                      cmd=["sh", "-c", "trap 'exit 7' TERM; while true; do sleep 0.1; done"])["id"]
    time.sleep(0.3)
    t = time.monotonic()
    assert client.call("stop", id=cid, timeout=10)["exit_code"] == 7
    assert time.monotonic() - t < 3


def test_kill_with_a_signal(client: Client) -> None:
    cid = client.call("spawn", image="busybox",
                      cmd=["sh", "-c", "trap 'exit 42' USR1; while true; do sleep 0.1; done"])["id"]
    time.sleep(0.3)
    client.call("kill", id=cid, signal="USR1")
    assert client.call("wait", id=cid)["exit_code"] == 42
    with pytest.raises(NotRunning):
        client.call("kill", id=cid, signal="KILL")


def test_resize_sets_a_tty_containers_terminal_size(client: Client) -> None:
    cid = client.call("spawn", image="busybox", tty=True,
                      cmd=["sh", "-c", "sleep 0.5; stty size"])["id"]
    client.call("resize", id=cid, rows=31, cols=97)
    assert client.call("wait", id=cid)["exit_code"] == 0
    assert "".join(e["log"] for e in client.stream("log", id=cid)).strip() == "31 97"
    with pytest.raises(NotRunning):
        client.call("resize", id=cid, rows=31, cols=97)
    plain = client.call("spawn", image="busybox", cmd=["sleep", "30"])["id"]
    with pytest.raises(Conflict, match="has no terminal"):
        client.call("resize", id=plain, rows=31, cols=97)
    with pytest.raises(InvalidArgument, match="out of range"):
        client.call("resize", id=plain, rows=0, cols=97)
    client.call("rm", id=plain, force=True)


def test_inspect_has_dockers_keys(client: Client) -> None:
    cid = client.call("spawn", image="busybox", cmd=["sleep", "30"], name="cbx-inspect",
                      labels={"tier": "web"})["id"]
    info = client.call("get", id="cbx-inspect")
    assert info["Id"] == cid and info["Name"] == "/cbx-inspect"
    assert info["Image"].startswith("sha256:")
    assert info["Config"]["Labels"] == {"tier": "web"}
    st = info["State"]
    assert st["Status"] == "running" and st["Running"] is True and st["Pid"] > 0
    assert os.path.exists(f"/proc/{st['Pid']}")
    assert st["StartedAt"].endswith("Z") and st["FinishedAt"].startswith("0001")
    client.call("kill", id=cid)
    client.call("wait", id=cid)
    st = client.call("get", id=cid)["State"]
    assert (st["Status"], st["Running"], st["ExitCode"], st["Pid"]) == ("exited", False, 137, 0)


def test_ps_lists_running_and_with_all_stopped(client: Client) -> None:
    running = client.call("spawn", image="busybox", cmd=["sleep", "30"])["id"]
    _, _, _, stopped = run(client, "true")
    ids = [r["Id"] for r in client.call("ls")]
    assert running in ids and stopped not in ids
    rows = {r["Id"]: r for r in client.call("ls", all=True)}
    assert rows[stopped]["State"] == "exited" and rows[running]["State"] == "running"


def test_names_are_unique(client: Client) -> None:
    client.call("create", image="busybox", cmd=["true"], name="cbx-once")
    with pytest.raises(Conflict, match="already in use"):
        client.call("create", image="busybox", cmd=["true"], name="cbx-once")


def test_rm_refuses_a_running_container_without_force(client: Client) -> None:
    cid = client.call("spawn", image="busybox", cmd=["sleep", "30"])["id"]
    with pytest.raises(Conflict, match="rm -f"):
        client.call("rm", id=cid)
    client.call("rm", id=cid, force=True)
    with pytest.raises(NotFound):
        client.call("get", id=cid)


def test_logs_tail_and_follow(client: Client) -> None:
    cid = client.call("spawn", image="busybox",
                      cmd=["sh", "-c", "for i in 1 2 3 4 5; do echo $i; sleep 0.2; done"])["id"]
    lines = [e["log"] for e in client.stream("log", id=cid, follow=True)]
    assert lines == [f"{i}\n" for i in range(1, 6)]
    tail = [e["log"] for e in client.stream("log", id=cid, tail=2)]
    assert tail == ["4\n", "5\n"]
    entry = next(iter(client.stream("log", id=cid)))
    assert entry["stream"] == "stdout" and entry["time"].endswith("Z")


def test_exec_runs_inside_the_running_container(client: Client) -> None:
    cid = client.call("spawn", image="busybox", cmd=["sleep", "30"])["id"]
    replies = list(client.stream("exec", id=cid,
                                 cmd=["sh", "-c", "ps -o pid,comm; hostname; exit 5"]))
    out = b"".join(m["data"] for m in replies if m.get("stream") == "stdout").decode()
    assert "sleep" in out and cid[:12] in out
    assert replies[-1]["exit_code"] == 5
    with pytest.raises(CommandNotFound):
        list(client.stream("exec", id=cid, cmd=["/no/such"]))


def test_attach_feeds_stdin(client: Client) -> None:
    cid = client.call("spawn", image="busybox", cmd=["sh", "-c", "read x; echo got:$x"],
                      open_stdin=True)["id"]
    replies = client.stream("attach", id=cid, stdin=True)
    stream = next(replies)["stdin"]
    stream.write(b"hello\n")
    stream.close()
    rest = list(replies)
    out = b"".join(m["data"] for m in rest if "data" in m)
    assert out == b"got:hello\n"
    assert rest[-1]["exit_code"] == 0


def test_pause_freezes_and_unpause_thaws(client: Client) -> None:
    cid = client.call("spawn", image="busybox", cmd=["sh", "-c",
                      "n=0; while true; do n=$((n+1)); echo $n > /tmp/n; sleep 0.05; done"])["id"]
    time.sleep(0.3)
    client.call("pause", id=cid)
    assert client.call("get", id=cid)["State"]["Status"] == "paused"
    # the counter lives in the container's writable layer: read it from the host
    upper = client.call("get", id=cid)["GraphDriver"]["Data"]["UpperDir"]
    first = open(f"{upper}/tmp/n").read()
    time.sleep(0.4)
    assert open(f"{upper}/tmp/n").read() == first
    with pytest.raises(Conflict):
        client.call("pause", id=cid)
    client.call("unpause", id=cid)
    time.sleep(0.4)
    assert open(f"{upper}/tmp/n").read() != first
    assert client.call("get", id=cid)["State"]["Status"] == "running"


def test_restart_of_a_stopped_container(client: Client) -> None:
    cid = client.call("spawn", image="busybox", cmd=["sh", "-c", "echo run; exit 4"])["id"]
    assert client.call("wait", id=cid)["exit_code"] == 4
    client.call("start", id=cid)
    assert client.call("wait", id=cid)["exit_code"] == 4
    assert [e["log"] for e in client.stream("log", id=cid)] == ["run\n", "run\n"]


def test_auto_remove_after_exit(client: Client) -> None:
    cid = client.call("spawn", image="busybox", cmd=["true"], auto_remove=True)["id"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            client.call("get", id=cid)
        except NotFound:
            break
        time.sleep(0.02)
    else:
        pytest.fail("the --rm container was not removed after it exited")


def test_signals_start_at_their_defaults(client: Client) -> None:
    # nothing the engine's processes ignore (SIGPIPE, SIGINT, SIGHUP) leaks into the
    # container: no signal ignored or blocked, and SIGPIPE ends a writer as usual
    out = output(client, "sh", "-c", "grep -E '^Sig(Ign|Blk)' /proc/self/status; "
                 "yes | head -n 1")
    assert "SigIgn:\t0000000000000000" in out and "SigBlk:\t0000000000000000" in out
    assert out.rstrip().endswith("y")
