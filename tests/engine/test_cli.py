"""The ``chanbox`` command line, run as a user runs it: a process per command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from .conftest import CHANBOX, cli, needs_root

pytestmark = needs_root


def out(p) -> str:
    return p.stdout.decode()


def test_run_prints_output_and_exits_with_the_containers_code(image_root: str) -> None:
    p = cli(image_root, "run", "--rm", "busybox", "sh", "-c", "echo hello; echo oops >&2; exit 3")
    assert (p.returncode, out(p), p.stderr.decode()) == (3, "hello\n", "oops\n")


def test_engine_errors_exit_125_and_name_the_problem(image_root: str) -> None:
    p = cli(image_root, "run", "--rm", "cbx-nosuch:1", "true")
    assert p.returncode == 125
    assert "no such image: cbx-nosuch:1" in p.stderr.decode()
    p = cli(image_root, "run", "--rm", "--bogus-flag", "busybox", "true")
    assert p.returncode == 125
    p = cli(image_root, "run", "--rm", "-m", "lots", "busybox", "true")
    assert p.returncode == 125 and "invalid size" in p.stderr.decode()


def test_missing_command_is_127_and_not_executable_126(image_root: str) -> None:
    p = cli(image_root, "run", "--rm", "busybox", "/no/such")
    assert p.returncode == 127 and "/no/such" in p.stderr.decode()
    p = cli(image_root, "run", "--rm", "busybox", "/etc/passwd")
    assert p.returncode == 126


def test_run_interactive_passes_stdin(image_root: str) -> None:
    p = cli(image_root, "run", "--rm", "-i", "busybox", "sh", "-c", "tr a-z A-Z",
            input=b"shout\n")
    assert (p.returncode, out(p)) == (0, "SHOUT\n")


def test_detached_lifecycle(image_root: str) -> None:
    p = cli(image_root, "run", "-d", "--name", "cbx-cli-d", "busybox",
            "sh", "-c", "echo started; sleep 30")
    assert p.returncode == 0, p.stderr
    cid = out(p).strip()
    assert len(cid) == 64
    try:
        assert cid[:12] in out(cli(image_root, "ps", "-q"))
        rows = [json.loads(line) for line in out(cli(image_root, "ps", "--format", "json")).splitlines()]
        assert any(r["Id"] == cid and r["State"] == "running" for r in rows)
        table = out(cli(image_root, "ps")).splitlines()
        assert re.split(r"\s{2,}", table[0]) == ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"]
        line = next(row for row in table if row.startswith(cid[:12]))
        assert re.search(r"(Less than a second|\d+ seconds?) ago +Up (Less than a second|\d+ seconds?) +cbx-cli-d$",
                         line), line
        deadline = time.monotonic() + 5
        while "started" not in out(cli(image_root, "logs", "cbx-cli-d")):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        p = cli(image_root, "exec", "cbx-cli-d", "sh", "-c", "echo in-$(hostname)")
        assert out(p).strip() == f"in-{cid[:12]}"
        info = json.loads(out(cli(image_root, "inspect", "cbx-cli-d")))[0]
        assert info["State"]["Running"] is True
        assert cli(image_root, "stop", "-t", "1", "cbx-cli-d").returncode == 0
        assert out(cli(image_root, "wait", "cbx-cli-d")).strip() == "137"
        assert cid[:12] not in out(cli(image_root, "ps", "-q"))
        assert cid[:12] in out(cli(image_root, "ps", "-a", "-q"))
        line = next(row for row in out(cli(image_root, "ps", "-a")).splitlines() if row.startswith(cid[:12]))
        assert re.search(r"Exited \(137\) (Less than a second|\d+ seconds?) ago", line), line
    finally:
        cli(image_root, "rm", "-f", cid)
    assert cid[:12] not in out(cli(image_root, "ps", "-a", "-q"))


def test_volume_with_a_path_relative_to_here(image_root: str, tmp_path) -> None:
    # as the docker CLI: ./x is the directory x here (the engine takes absolute paths)
    p = subprocess.run([CHANBOX, "--root", image_root, "run", "--rm", "--network", "none",
                        "-v", "./shared:/shared", "busybox", "sh", "-c", "echo hi > /shared/f"],
                       cwd=tmp_path, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "shared" / "f").read_text() == "hi\n"


def test_top_lists_the_containers_processes_as_ps_ef(image_root: str) -> None:
    cid = out(cli(image_root, "run", "-d", "-t", "busybox", "sh", "-c", "sleep 300 & exec sleep 301")).strip()
    try:
        deadline = time.monotonic() + 10
        while len(lines := out(cli(image_root, "top", cid)).splitlines()) < 3:
            assert time.monotonic() < deadline, lines
            time.sleep(0.1)
        assert re.split(r"\s{2,}", lines[0]) == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
        rows = {r[-1]: r for r in (re.split(r"\s{2,}", line) for line in lines[1:])}
        assert set(rows) == {"sleep 300", "sleep 301"}
        init = json.loads(out(cli(image_root, "inspect", cid)))[0]["State"]["Pid"]
        assert rows["sleep 301"][1] == str(init)  # the host's PIDs, as docker top shows
        assert rows["sleep 300"][2] == str(init)  # its parent
        assert rows["sleep 301"][0] == "root" and rows["sleep 301"][5] == "pts/0"
        cli(image_root, "stop", "-t", "0", cid)
        p = cli(image_root, "top", cid)
        assert p.returncode == 125 and "is not running" in p.stderr.decode()
    finally:
        cli(image_root, "rm", "-f", cid)


def test_ps_columns_of_the_processes_table() -> None:
    from engine.processes import cpu_time, tty_name

    assert [tty_name(n) for n in (0, 136 << 8 | 3, 137 << 8 | 1, 4 << 8 | 2, 4 << 8 | 65)] == \
        ["?", "pts/3", "pts/257", "tty2", "ttyS1"]
    assert [cpu_time(s) for s in (0, 61.9, 3 * 3600 + 5, 86400 + 7)] == \
        ["00:00:00", "00:01:01", "03:00:05", "1-00:00:07"]


def test_diff_lists_what_the_container_changed(image_root: str) -> None:
    cid = out(cli(image_root, "run", "-d", "busybox", "sh", "-c",
                  "rm /bin/vi; mkdir -p /srv/a; echo x > /srv/a/b; echo y >> /etc/passwd; sleep 30")).strip()
    try:
        want = ["C /bin", "D /bin/vi", "C /etc", "C /etc/passwd", "A /srv", "A /srv/a", "A /srv/a/b"]
        deadline = time.monotonic() + 10
        while (got := out(cli(image_root, "diff", cid)).splitlines()) != want:
            assert time.monotonic() < deadline, got
            time.sleep(0.1)
        p = cli(image_root, "diff", "cbx-no-such-container")
        assert p.returncode != 0 and "no such container" in p.stderr.decode()
    finally:
        cli(image_root, "rm", "-f", cid)


def test_ps_filters(image_root: str) -> None:
    up = out(cli(image_root, "run", "-d", "--network", "none", "-l", "cbx-role=web", "--name",
                 "cbx-f-up", "busybox", "sleep", "30")).strip()
    done = out(cli(image_root, "run", "-d", "--network", "none", "--name", "cbx-f-done",
                   "busybox", "true")).strip()
    try:
        cli(image_root, "wait", done)

        def ids(*args: str) -> set[str]:
            return set(out(cli(image_root, "ps", "-q", "--no-trunc", *args)).split())

        assert done in ids("-f", "status=exited") and up not in ids("-f", "status=exited")
        assert ids("-f", "label=cbx-role=web") == {up}
        assert ids("-a", "-f", "name=cbx-f-", "-f", "status=running") == {up}
        assert ids("-a", "-f", f"id={done[:10]}") == {done}
        p = cli(image_root, "ps", "-f", "health=healthy")
        assert p.returncode == 125 and "invalid filter 'health'" in p.stderr.decode()
        p = cli(image_root, "ps", "-f", "status")
        assert p.returncode == 125 and "use KEY=VALUE" in p.stderr.decode()
    finally:
        cli(image_root, "rm", "-f", up, done)


def test_stats_shows_cpu_memory_and_pids(image_root: str) -> None:
    busy = out(cli(image_root, "run", "-d", "-m", "64m", "--network", "none", "--name", "cbx-busy",
                   "busybox", "sh", "-c", "while :; do :; done & sleep 30")).strip()
    try:
        lines = out(cli(image_root, "stats", "--no-stream", busy)).splitlines()
        assert re.split(r"\s{2,}", lines[0]) == ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT",
                                                 "MEM %", "NET I/O", "PIDS"]
        row = re.split(r"\s{2,}", lines[1])
        assert row[:2] == [busy[:12], "cbx-busy"]
        assert float(row[2].rstrip("%")) > 20, row  # the loop takes most of a CPU
        assert row[3].endswith(" / 64MiB") and row[6] in ("2", "3"), row
        cli(image_root, "kill", busy)
        p = cli(image_root, "stats", "--no-stream", busy)
        assert p.returncode == 125 and "is not running" in p.stderr.decode()
    finally:
        cli(image_root, "rm", "-f", busy)


def test_stats_percentages_as_docker_computes_them() -> None:
    from engine.stats import cpu_percent, memory_use

    reading = {"cpu_stats": {"cpu_usage": {"total_usage": 3_000}, "system_cpu_usage": 20_000,
                             "online_cpus": 2},
               "precpu_stats": {"cpu_usage": {"total_usage": 1_000}, "system_cpu_usage": 10_000},
               "memory_stats": {"usage": 5_000, "stats": {"inactive_file": 1_000}}}
    assert cpu_percent(reading) == 40.0  # 2000 of 10000 system ns, on 2 CPUs
    assert memory_use(reading) == 4_000
    reading["precpu_stats"]["system_cpu_usage"] = 0  # no earlier reading: no figure
    assert cpu_percent(reading) == 0.0


def test_rename(image_root: str) -> None:
    cid = out(cli(image_root, "run", "-d", "--network", "none", "--name", "cbx-old", "busybox",
                  "sleep", "30")).strip()
    other = out(cli(image_root, "create", "--network", "none", "--name", "cbx-taken", "busybox",
                    "true")).strip()
    try:
        assert cli(image_root, "rename", "cbx-old", "cbx-new").returncode == 0
        assert json.loads(out(cli(image_root, "inspect", "cbx-new")))[0]["Id"] == cid
        assert cli(image_root, "inspect", "cbx-old").returncode == 1  # the old name is free
        p = cli(image_root, "rename", "cbx-new", "cbx-taken")
        assert p.returncode == 125 and "already in use" in p.stderr.decode()
        p = cli(image_root, "rename", "cbx-new", "bad/name")
        assert p.returncode == 125 and "invalid container name" in p.stderr.decode()
        assert out(cli(image_root, "run", "--rm", "--network", "none", "--name", "cbx-old",
                       "busybox", "echo", "reused")) == "reused\n"
        events = out(cli(image_root, "events", "--no-follow", "--since", "0", "-f",
                         f"container={cid}", "-f", "event=rename"))
        assert "oldName=/cbx-old" in events and "name=cbx-new" in events
    finally:
        cli(image_root, "rm", "-f", cid, other)


def test_update_changes_limits_now_and_for_later_runs(image_root: str) -> None:
    from engine.engine import Engine

    cid = out(cli(image_root, "run", "-d", "-m", "64m", "--network", "none", "busybox", "sh", "-c",
                  "head -c 20000000 /dev/zero > /dev/shm/fill; sleep 30")).strip()
    try:
        assert out(cli(image_root, "update", "-m", "128m", "--cpus", "0.5", "--pids-limit", "20",
                       cid)) == cid + "\n"

        def limits() -> dict[str, str]:
            paths = Engine(image_root).containers.get(cid).cgroups
            found = {}
            for d in paths:
                for name in ("memory.limit_in_bytes", "memory.max", "cpu.cfs_quota_us", "cpu.max",
                             "pids.max"):
                    if os.path.exists(os.path.join(d, name)):
                        with open(os.path.join(d, name)) as f:
                            found[name.split(".")[0]] = f.read().split()[0]
            return found

        assert limits() == {"memory": str(128 << 20), "cpu": "50000", "pids": "20"}
        hc = json.loads(out(cli(image_root, "inspect", cid)))[0]["HostConfig"]
        assert (hc["Memory"], hc["NanoCpus"], hc["PidsLimit"]) == (128 << 20, 500_000_000, 20)
        # the kernel cannot take back the 20 MB the container holds in /dev/shm
        deadline = time.monotonic() + 10
        while "fill" not in out(cli(image_root, "exec", cid, "ls", "/dev/shm")):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        p = cli(image_root, "update", "-m", "8m", cid)
        assert p.returncode == 125 and "uses more than 8388608 bytes" in p.stderr.decode()
        p = cli(image_root, "update", "-m", "1m", cid)
        assert p.returncode == 125 and "minimum allowed is 6MB" in p.stderr.decode()
        assert cli(image_root, "stop", "-t", "0", cid).returncode == 0
        assert cli(image_root, "update", "--pids-limit", "30", cid).returncode == 0
        assert cli(image_root, "start", cid).returncode == 0  # a new run, new cgroups
        assert limits() == {"memory": str(128 << 20), "cpu": "50000", "pids": "30"}
    finally:
        cli(image_root, "rm", "-f", cid)


def test_logs_since_and_until(image_root: str) -> None:
    cid = out(cli(image_root, "run", "-d", "--network", "none", "busybox", "sh", "-c",
                  "echo one; sleep 1.2; echo two")).strip()
    try:
        cli(image_root, "wait", cid)
        stamped = dict(reversed(line.split(" ", 1)) for line in
                       out(cli(image_root, "logs", "-t", cid)).splitlines())
        assert set(stamped) == {"one", "two"}
        assert out(cli(image_root, "logs", "--since", stamped["two"], cid)) == "two\n"
        assert out(cli(image_root, "logs", "--until", stamped["one"], cid)) == "one\n"
        assert out(cli(image_root, "logs", "--since", "1h", cid)) == "one\ntwo\n"
        p = cli(image_root, "logs", "--since", "yesterday", cid)
        assert p.returncode != 0 and "is not a time" in p.stderr.decode()
    finally:
        cli(image_root, "rm", "-f", cid)


def test_port_shows_where_published_ports_are(image_root: str) -> None:
    cid = out(cli(image_root, "run", "-d", "-p", "127.0.0.1::8000", "-p", "127.0.0.1::53/udp",
                  "busybox", "sleep", "30")).strip()
    try:
        ports = json.loads(out(cli(image_root, "inspect", cid)))[0]["NetworkSettings"]["Ports"]
        tcp, udp = ports["8000/tcp"][0]["HostPort"], ports["53/udp"][0]["HostPort"]
        assert out(cli(image_root, "port", cid)).splitlines() == [
            f"53/udp -> 127.0.0.1:{udp}", f"8000/tcp -> 127.0.0.1:{tcp}"]
        assert out(cli(image_root, "port", cid, "8000")) == f"127.0.0.1:{tcp}\n"
        p = cli(image_root, "port", cid, "9/tcp")
        assert p.returncode == 1 and "no public port '9/tcp'" in p.stderr.decode()
    finally:
        cli(image_root, "rm", "-f", cid)


def test_images_history_tag_rmi(image_root: str) -> None:
    assert "busybox" in out(cli(image_root, "images"))
    assert cli(image_root, "tag", "busybox", "cbx-copy:v1").returncode == 0
    rows = [json.loads(line) for line in out(cli(image_root, "images", "--format", "json")).splitlines()]
    assert any("cbx-copy:v1" in r["RepoTags"] for r in rows)
    hist = out(cli(image_root, "history", "cbx-copy:v1")).splitlines()
    assert hist[0].startswith("IMAGE") and len(hist) == 2
    p = cli(image_root, "rmi", "cbx-copy:v1")
    assert p.returncode == 0 and "Untagged: cbx-copy:v1" in out(p)
    assert cli(image_root, "rmi", "cbx-copy:v1").returncode != 0


def test_info_says_what_security_the_kernel_offers(image_root: str) -> None:
    info = json.loads(out(cli(image_root, "info", "--format", "json")))
    sec = json.dumps(info["Security"]).lower()
    assert "apparmor" in sec and "selinux" in sec and "seccomp" in sec
    assert info["Driver"] == "overlay2" and info["CgroupVersion"] in ("1", "2")


def test_version(image_root: str) -> None:
    p = cli(image_root, "version")
    assert p.returncode == 0 and "Version" in out(p)


def test_import_a_rootfs_tarball(image_root: str, tmp_path) -> None:
    import tarfile

    src = tmp_path / "rootfs"
    (src / "bin").mkdir(parents=True)
    (src / "hello.txt").write_text("from a tarball\n")
    import shutil
    shutil.copy("/bin/busybox", src / "bin" / "busybox")
    tar = tmp_path / "rootfs.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(src, arcname="/")
    p = cli(image_root, "import", str(tar), "cbx-imported:1")
    assert p.returncode == 0, p.stderr
    try:
        p = cli(image_root, "run", "--rm", "cbx-imported:1", "/bin/busybox", "cat", "/hello.txt")
        assert out(p) == "from a tarball\n"
    finally:
        cli(image_root, "rmi", "cbx-imported:1")


def test_interrupt_reaches_the_container(image_root: str) -> None:
    import signal
    import subprocess

    from .conftest import CHANBOX

    p = subprocess.Popen([CHANBOX, "--root", image_root, "run", "--rm", "busybox", "sh", "-c",
                          "trap 'echo got INT; exit 130' INT; echo ready; "
                          "while true; do sleep 0.1; done"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"ready\n"
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert (p.returncode, out) == (130, b"got INT\n"), err


def test_logs_follow_and_attach_and_exec_interactive(image_root: str) -> None:
    cid = out(cli(image_root, "run", "-d", "-i", "busybox", "sh", "-c",
                  "echo first; read line; echo second:$line; sleep 0.3")).strip()
    try:
        p = cli(image_root, "exec", "-i", cid, "tr", "a-z", "A-Z", input=b"quiet\n")
        assert (p.returncode, out(p)) == (0, "QUIET\n")
        p = cli(image_root, "attach", cid, input=b"hello\n")
        assert p.returncode == 0 and "second:hello" in out(p)
        p = cli(image_root, "logs", "-f", cid)
        assert out(p) == "first\nsecond:hello\n"
        p = cli(image_root, "logs", "--tail", "1", cid)
        assert out(p) == "second:hello\n"
    finally:
        cli(image_root, "rm", "-f", cid)


def test_commands_import_nothing_heavy_they_do_not_use(image_root: str) -> None:
    # start-up is part of the product: the embedded engine never needs ZeroMQ or netlink
    import subprocess
    import sys

    code = ("import sys\nfrom engine.cli import main\n"
            "try:\n    main(['--root', sys.argv[1], 'images', '-q'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('zmq', 'pyroute2', 'msgpack', 'tarfile') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code, image_root], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().splitlines()[-1] == "[]"


def test_a_reader_that_stops_early_is_no_error(image_root: str) -> None:
    # `chanbox ... | head -0`: the closed pipe ends the command quietly with status 1
    # (click's rule for EPIPE), with no traceback from the flush at the quick exit
    p = subprocess.Popen([CHANBOX, "--root", image_root, "history", "busybox"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=30) == 1, err
    assert err == ""


def test_output_is_complete_when_piped(image_root: str) -> None:
    # the quick exit must not lose what was written but not yet flushed
    p = subprocess.run([CHANBOX, "--root", image_root, "run", "--rm", "--network", "none",
                        "busybox", "sh", "-c", "seq 1 200000; echo done >&2; exit 4"],
                       capture_output=True, timeout=60)
    assert p.returncode == 4
    assert p.stdout.decode().split() == [str(i) for i in range(1, 200001)]
    assert p.stderr == b"done\n"


def test_binary_output_comes_out_byte_for_byte(image_root: str) -> None:
    # `chanbox run img tar c ... > backup.tar` must not lose a byte: the log that `run`
    # follows keeps bytes that are not UTF-8 (and characters split between reads)
    import hashlib

    p = subprocess.run([CHANBOX, "--root", image_root, "run", "--rm", "--network", "none",
                        "busybox", "sh", "-c", "cat /bin/busybox; md5sum /bin/busybox >&2"],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert len(p.stdout) > 100_000
    assert hashlib.md5(p.stdout).hexdigest() == p.stderr.split()[0].decode()


class _Pty:
    """``argv`` run with a pty as its terminal; what it printed so far in ``out``."""

    def __init__(self, argv: list[str], rows: int = 33, cols: int = 111) -> None:
        import fcntl
        import pty
        import struct
        import termios

        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the CLI with the pty as its terminal
            os.execv(argv[0], argv)
        self.out = bytearray()
        self.cooked = termios.tcgetattr(self.fd)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def until(self, needle: bytes, timeout: float = 10.0) -> None:
        import select

        deadline = time.monotonic() + timeout
        while needle not in self.out:
            assert time.monotonic() < deadline, (needle, bytes(self.out))
            if select.select([self.fd], [], [], 0.1)[0]:
                try:
                    self.out.extend(os.read(self.fd, 4096))
                except OSError:
                    return

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def exit_code(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            assert time.monotonic() < deadline, f"still running: {bytes(self.out)!r}"
            time.sleep(0.05)

    def close(self) -> None:
        import signal

        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.fd)


def _lends_the_terminal(argv: list[str]) -> None:
    """Drive ``argv`` (a -it shell) from a pty, as ``docker run -it``/``exec -it`` are
    used: raw mode (keys, ^C included, go to the process's terminal; no local echo, no
    second \r), the window size at the start and on SIGWINCH, the exit code, and the
    terminal's own mode back at the end."""
    import fcntl
    import signal
    import struct
    import termios

    t = _Pty(argv)
    try:
        t.until(b"built-in commands")  # (ash then asks the terminal where its cursor is)
        t.type(b"stty size; tty; echo $((6*7))\r")
        t.until(b"42\r\n")
        assert b"33 111\r\n" in t.out
        assert b"/dev/pts/0\r\n" in t.out  # a terminal of the container's own devpts
        # raw mode: our terminal neither echoes nor adds a \r (the container's does both)
        mode = termios.tcgetattr(t.fd)
        assert not mode[3] & (termios.ECHO | termios.ICANON) and not mode[1] & termios.OPOST
        assert b"\r\r\n" not in t.out
        fcntl.ioctl(t.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 44, 122, 0, 0))
        os.kill(t.pid, signal.SIGWINCH)
        for _ in range(20):  # the CLI sends the new size from a thread: ask until it is in
            time.sleep(0.25)
            t.type(b"stty size\r")
            t.until(b"stty size\r\n")
            del t.out[:t.out.index(b"stty size\r\n") + 11]
            t.until(b"\r\n")
            if t.out.startswith(b"44 122\r\n"):
                break
        else:
            raise AssertionError(f"the new size never arrived: {bytes(t.out)!r}")
        t.type(b"sleep 30\r")
        time.sleep(0.5)
        t.type(b"\x03")  # ^C: the container's shell interrupts its sleep
        t.type(b"exit 5\r")
        t.until(b"exit 5\r\n")
        assert t.exit_code() == 5
        after = termios.tcgetattr(t.fd)
        assert after[3] & (termios.ICANON | termios.ECHO) == \
            t.cooked[3] & (termios.ICANON | termios.ECHO)  # cooked again
    finally:
        t.close()


def test_run_it_lends_the_terminal_and_gives_it_back(image_root: str) -> None:
    _lends_the_terminal([CHANBOX, "--root", image_root, "run", "--rm", "-it",
                         "--network", "none", "busybox", "sh"])


def test_exec_it_lends_the_terminal_and_gives_it_back(image_root: str) -> None:
    cid = out(cli(image_root, "run", "-d", "--network", "none", "busybox", "sleep", "60")).strip()
    try:
        _lends_the_terminal([CHANBOX, "--root", image_root, "exec", "-it", cid, "sh"])
    finally:
        cli(image_root, "rm", "-f", cid)


def test_a_t_process_has_a_terminal_of_the_containers_own(image_root: str) -> None:
    # made in the container's devpts (runc's console socket): tty(1) finds it there
    p = cli(image_root, "run", "--rm", "-t", "--network", "none", "busybox", "tty")
    assert (p.returncode, out(p)) == (0, "/dev/pts/0\r\n")
    cid = out(cli(image_root, "run", "-d", "--network", "none", "busybox", "sleep", "60")).strip()
    try:
        p = cli(image_root, "exec", "-t", cid, "sh", "-c", "tty; ls /dev/pts")
        lines = out(p).split("\r\n")
        assert p.returncode == 0 and lines[0].startswith("/dev/pts/")
        assert lines[0].rsplit("/", 1)[1] in lines[1].split()  # its own devpts has it
        assert cli(image_root, "exec", cid, "tty").returncode == 1  # no -t: not a tty
    finally:
        cli(image_root, "rm", "-f", cid)


def _detaches(argv: list[str], keys: bytes = b"\x10\x11") -> None:
    """The detach keys (^P^Q unless --detach-keys says otherwise) leave the -it process
    running: the CLI ends with status 0."""
    t = _Pty(argv)
    try:
        t.type(b"echo $((40+2))\r")  # (waits in the terminal until the CLI reads it)
        t.until(b"42\r\n")
        if keys != b"\x10\x11":  # the default keys are now just keys for the shell
            t.type(b"\x10\x11")
            time.sleep(0.3)
            assert os.waitpid(t.pid, os.WNOHANG) == (0, 0), "detached on ^P^Q"
        t.type(keys[:-1])  # the start of the keys is held back ...
        time.sleep(0.3)
        t.type(keys[-1:])  # ... until the last one says they are the detach keys
        t.until(b"read escape sequence")
        assert t.exit_code() == 0
    finally:
        t.close()


def test_detach_keys_leave_the_container_and_its_stdin_running(image_root: str) -> None:
    cid = out(cli(image_root, "run", "-d", "-it", "--network", "none", "busybox", "sh")).strip()
    try:
        _detaches([CHANBOX, "--root", image_root, "attach", cid])
        _detaches([CHANBOX, "--root", image_root, "attach", cid])  # its shell took no EOF
        _detaches([CHANBOX, "--root", image_root, "exec", "-it", cid, "sh"])
        procs = out(cli(image_root, "exec", cid, "ps", "-o", "comm"))
        assert procs.split().count("sh") == 2  # the exec'd shell runs on too
        _detaches([CHANBOX, "--root", image_root, "run", "-it", "--name", "cbx-cli-det",
                   "--network", "none", "busybox", "sh"])
        assert json.loads(out(cli(image_root, "inspect", "cbx-cli-det")))[0]["State"]["Running"]
    finally:
        cli(image_root, "rm", "-f", cid, "cbx-cli-det")


def test_detach_keys_of_ones_own_choosing(image_root: str) -> None:
    cid = out(cli(image_root, "run", "-d", "-it", "--network", "none", "busybox", "sh")).strip()
    try:
        for argv in (["attach", cid], ["exec", "-it", cid, "sh"],
                     ["run", "-it", "--name", "cbx-cli-keys", "--network", "none", "busybox", "sh"]):
            cmd, rest = argv[0], argv[1:]
            _detaches([CHANBOX, "--root", image_root, cmd, "--detach-keys", "ctrl-x,ctrl-@,z", *rest],
                      keys=b"\x18\x00z")
        assert json.loads(out(cli(image_root, "inspect", "cbx-cli-keys")))[0]["State"]["Running"]
    finally:
        cli(image_root, "rm", "-f", cid, "cbx-cli-keys")
    p = cli(image_root, "attach", "--detach-keys", "ctrl-1", cid)
    assert p.returncode == 125 and "'ctrl-1' is not a key" in p.stderr.decode()


def test_detach_keys_syntax() -> None:
    from engine.detachkeys import parse_detach_keys

    assert parse_detach_keys("") == b"\x10\x11"
    assert parse_detach_keys("ctrl-p,ctrl-q") == b"\x10\x11"
    assert parse_detach_keys("Ctrl-A,x,ctrl-[,ctrl-_") == b"\x01x\x1b\x1f"
    for bad in ("ctrl-1", "ab", "ctrl-", "ctrl-a,,x", "é"):
        with pytest.raises(ValueError, match="is not a key"):
            parse_detach_keys(bad)


def test_detach_keys_are_taken_out_of_the_input_and_a_lone_ctrl_p_goes_on() -> None:
    from engine.detachkeys import DetachKeys

    keys = DetachKeys()
    assert keys.filter(b"ab\x10") == b"ab"  # held back: it may start the keys
    assert keys.filter(b"c") == b"\x10c"  # it did not
    assert not keys.detached
    assert keys.filter(b"xy\x10\x11zz") == b"xy" and keys.detached
    three = DetachKeys(b"\x18\x00z")
    assert three.filter(b"a\x18") == b"a" and three.filter(b"\x00") == b""  # both held
    assert three.filter(b"q") == b"\x18\x00q" and not three.detached  # not the keys
    assert three.filter(b"\x18\x18\x00") == b"\x18" and three.filter(b"z!") == b""
    assert three.detached


def test_save_to_stdout_and_load_from_stdin(image_root: str) -> None:
    # docker save IMAGE | gzip > x.tgz; docker load < x.tar
    import io
    import tarfile

    assert cli(image_root, "tag", "busybox", "cbx-piped:1").returncode == 0
    try:
        p = cli(image_root, "save", "cbx-piped:1")
        assert p.returncode == 0, p.stderr
        with tarfile.open(fileobj=io.BytesIO(p.stdout)) as tar:
            assert "manifest.json" in tar.getnames()
        assert cli(image_root, "rmi", "cbx-piped:1").returncode == 0
        loaded = subprocess.run([CHANBOX, "--root", image_root, "load"], input=p.stdout,
                                capture_output=True, timeout=60)
        assert (loaded.returncode, out(loaded)) == (0, "Loaded image: cbx-piped:1\n")
        assert "cbx-piped" in out(cli(image_root, "images"))
    finally:
        cli(image_root, "rmi", "cbx-piped:1")
    empty = subprocess.run([CHANBOX, "--root", image_root, "load"], input=b"",
                           capture_output=True, timeout=60)
    assert empty.returncode == 125 and b"the stream was empty" in empty.stderr
    junk = subprocess.run([CHANBOX, "--root", image_root, "load"], input=b"junk\n" * 200,
                          capture_output=True, timeout=60)
    assert junk.returncode == 125 and b"not a valid tar file" in junk.stderr
    assert b"load-in" not in junk.stderr  # the engine's spool file is not the user's
    # a save that fails ends the stream too: no waiting for an archive that never comes
    missing = subprocess.run([CHANBOX, "--root", image_root, "save", "cbx-nosuch:1"],
                             capture_output=True, timeout=20)
    assert missing.returncode == 125 and b"no such image: cbx-nosuch:1" in missing.stderr
