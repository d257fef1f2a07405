"""The runtime makes real containers: a busybox rootfs in a tmp dir, run through a
throwaway forked "monitor" (start() must run in a single-threaded process, and it
moves its caller into a new pid namespace, which the test process must not be)."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import time

import pytest

from engine import runtime, security
from engine.errors import CommandNotFound, CommandNotInvokable, InvalidArgument
from engine.spec import ContainerSpec, ProcessSpec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")

BUSYBOX = "/bin/busybox"


def build_busybox_rootfs(root: str) -> None:
    """A minimal image: busybox and its applets in /bin, root and nobody users."""
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "mnt", "root", "home"):
        os.mkdir(os.path.join(root, d))
    shutil.copy2(BUSYBOX, os.path.join(root, "bin", "busybox"))
    names = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                           check=True).stdout.split()
    for name in names:
        if name != "busybox":
            os.symlink("busybox", os.path.join(root, "bin", name))
    with open(os.path.join(root, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n"
                "nobody:x:65534:65534:nobody:/home:/bin/false\n")
    with open(os.path.join(root, "etc", "group"), "w") as f:
        f.write("root:x:0:\nwheel:x:10:root\nnogroup:x:65534:\n")
    with open(os.path.join(root, "etc", "motd"), "w") as f:
        f.write("from the lower layer\n")


@pytest.fixture(scope="module")
def layers():
    """(layer_root, lower dir name) holding the busybox image layer."""
    base = tempfile.mkdtemp(prefix="cbx-layers-")
    try:
        os.mkdir(os.path.join(base, "lower"))
        build_busybox_rootfs(os.path.join(base, "lower"))
        yield base, "lower"
    finally:
        shutil.rmtree(base)


def _mounted_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if f" {path}" in line]


@pytest.fixture
def make(layers):
    """A factory of ContainerSpecs, each with its own upper/work/rootfs dirs."""
    made = []

    def factory(args: list[str], **kw) -> ContainerSpec:
        d = tempfile.mkdtemp(prefix="cbx-ctr-")
        made.append(d)
        for sub in ("upper", "work", "rootfs"):
            os.mkdir(os.path.join(d, sub))
        proc = ProcessSpec(args=args, env=kw.pop("env", []), cwd=kw.pop("cwd", "/"),
                           user=kw.pop("user", ""))
        return ContainerSpec(id=os.path.basename(d), hostname=kw.pop("hostname", "cbxhost"),
                             lowerdirs=[layers[1]], layer_root=layers[0],
                             upperdir=os.path.join(d, "upper"),
                             workdir=os.path.join(d, "work"),
                             rootfs=os.path.join(d, "rootfs"), process=proc, **kw)

    yield factory
    for d in made:
        assert not _mounted_under(d), "the union leaked into the host's mount table"
        shutil.rmtree(d)


def in_monitor(fn, timeout: float = 20.0):
    """Run ``fn(report)`` in a forked single-threaded monitor; return its JSON result.
    ``report(pid)`` tells the test which container init to kill if things hang."""
    r, w = os.pipe()
    mon = os.fork()
    if mon == 0:
        os.close(r)
        code = 0
        try:
            def report(pid: int) -> None:
                os.write(w, json.dumps({"init": pid}).encode() + b"\n")
            try:
                result = fn(report)
            except Exception as exc:  # noqa: BLE001 - carried to the test as data
                result = {"error": type(exc).__name__, "message": str(exc)}
            os.write(w, json.dumps({"result": result}).encode() + b"\n")
        except BaseException:  # noqa: BLE001 - never unwind into pytest in a fork
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    buf, inits, deadline = b"", [], time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                raise TimeoutError("the container did not finish in time")
            chunk = os.read(r, 65536)
            if not chunk:
                raise RuntimeError("the monitor died without a result")
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                msg = json.loads(line)
                if "init" in msg:
                    inits.append(msg["init"])
                else:
                    return msg["result"]
    finally:
        for pid in inits:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.close(r)
        os.waitpid(mon, 0)


class Result:
    def __init__(self, d: dict) -> None:
        self.status = d.get("status")
        self.out = d.get("out", "")
        self.err = d.get("err", "")
        self.error = d.get("error")
        self.message = d.get("message")
        self.seconds = d.get("seconds")


def _start_and_wait(spec: ContainerSpec, report, exec_proc: ProcessSpec | None = None):
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    null = os.open(os.devnull, os.O_RDONLY)
    t0 = time.perf_counter()
    pid = runtime.start(spec, null, out.fileno(), err.fileno())
    report(pid)
    res: dict = {}
    if exec_proc is not None:
        eout = tempfile.TemporaryFile()
        epid = runtime.exec_in(pid, spec, exec_proc, null, eout.fileno(), eout.fileno())
        _, est = os.waitpid(epid, 0)
        eout.seek(0)
        res["exec_status"] = os.waitstatus_to_exitcode(est)
        res["exec_out"] = eout.read().decode()
        os.kill(pid, signal.SIGKILL)
    _, st = os.waitpid(pid, 0)
    res["seconds"] = time.perf_counter() - t0
    out.seek(0)
    err.seek(0)
    res.update(status=os.waitstatus_to_exitcode(st), out=out.read().decode(),
               err=err.read().decode())
    return res


def run(spec: ContainerSpec) -> Result:
    return Result(in_monitor(lambda report: _start_and_wait(spec, report)))


def sh(make, script: str, **kw) -> Result:
    return run(make(["sh", "-c", script], **kw))


# -- process, namespaces ---------------------------------------------------------------

def test_init_is_pid_1_and_ps_shows_only_the_container(make):
    res = sh(make, "echo $$; ps -o pid,comm; true")
    assert res.status == 0, res.err
    lines = res.out.split("\n")
    assert lines[0] == "1"
    pids = [ln.split()[0] for ln in lines[2:] if ln.strip()]
    assert pids == ["1", "2"], res.out


def test_hostname_env_and_cwd(make):
    res = sh(make, 'hostname; echo "$FOO|$HOME|$PATH"; pwd', hostname="cbxbox",
             env=["FOO=bar"], cwd="/work/dir")
    assert res.status == 0, res.err
    assert res.out.split("\n")[:3] == [
        "cbxbox", f"bar|/root|{runtime.DEFAULT_PATH}", "/work/dir"]


def test_exit_codes_and_signals(make):
    assert sh(make, "exit 3").status == 3
    assert run(make(["true"])).status == 0
    spec = make(["sleep", "30"])

    def killed(report):
        null = os.open(os.devnull, os.O_RDWR)
        pid = runtime.start(spec, null, null, null)
        report(pid)
        os.kill(pid, signal.SIGKILL)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    assert in_monitor(killed) == -signal.SIGKILL


def test_command_not_found_is_127_like_docker(make):
    res = run(make(["nosuch"]))
    assert res.error == CommandNotFound.__name__
    assert res.message == 'exec: "nosuch": executable file not found in $PATH'
    assert CommandNotFound.exit_status == 127


def test_non_executable_file_is_not_invokable(make):
    res = run(make(["/etc/passwd"]))
    assert res.error == CommandNotInvokable.__name__, res.message
    assert "permission denied" in res.message


def test_unknown_user_name_is_invalid(make):
    res = run(make(["true"], user="nosuch"))
    assert res.error == InvalidArgument.__name__
    assert "nosuch" in res.message


def test_user_by_name_and_uid_gid(make):
    res = sh(make, "id -u; id -g; echo $HOME", user="nobody")
    assert res.out.split("\n")[:3] == ["65534", "65534", "/home"], res.err
    res = sh(make, "id -u; id -g", user="1000:1001")
    assert res.out.split("\n")[:2] == ["1000", "1001"], res.err


def test_root_gets_supplementary_groups(make):
    res = sh(make, "id -G")
    assert res.out.split() == ["0", "10"]


# -- filesystem ---------------------------------------------------------------------------

def test_union_reads_lower_writes_upper_and_whiteouts(make, layers):
    spec = make(["sh", "-c", "cat /etc/motd; echo new > /tmp/new; rm /etc/motd"])
    res = run(spec)
    assert res.status == 0, res.err
    assert res.out == "from the lower layer\n"
    with open(os.path.join(spec.upperdir, "tmp", "new")) as f:
        assert f.read() == "new\n"
    wh = os.lstat(os.path.join(spec.upperdir, "etc", "motd"))
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    lower = os.path.join(*layers)
    assert os.path.exists(os.path.join(lower, "etc", "motd"))
    assert not os.path.exists(os.path.join(lower, "tmp", "new"))


def test_readonly_rootfs(make):
    res = sh(make, "touch /x", readonly=True)
    assert res.status != 0 and "Read-only" in res.err


def test_devices_and_links(make):
    res = sh(make, "ls /dev; echo x > /dev/null; head -c 4 /dev/zero | wc -c; "
             "readlink /dev/ptmx; readlink /dev/fd")
    assert res.status == 0, res.err
    for name in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm",
                 "mqueue", "stdin", "stdout", "stderr"):
        assert name in res.out.split(), res.out
    assert res.out.split()[-3:] == ["4", "pts/ptmx", "/proc/self/fd"]


def _mount_opts(mountinfo: str, target: str) -> list[str]:
    for line in mountinfo.splitlines():
        f = line.split()
        if f[4] == target:
            return f[5].split(",")
    raise AssertionError(f"{target} not mounted:\n{mountinfo}")


def test_masked_and_readonly_paths(make):
    # /proc/kcore is absent on this kernel: probe the masked paths the host has
    res = sh(make, "for p in /proc/keys /proc/timer_list /proc/kcore; do "
             "[ -e $p ] && wc -c < $p; done; ls /sys/firmware | wc -l; cat /proc/self/mountinfo")
    assert res.status == 0, res.err
    host = [p for p in ("/proc/keys", "/proc/timer_list", "/proc/kcore") if os.path.exists(p)]
    lines = res.out.split("\n")
    assert [ln.strip() for ln in lines[:len(host) + 1]] == ["0"] * (len(host) + 1)
    mi = "\n".join(lines[len(host) + 1:])
    assert "ro" in _mount_opts(mi, "/proc/sys")
    assert "ro" in _mount_opts(mi, "/sys")
    assert "ro" not in _mount_opts(mi, "/")


def test_privileged_has_no_masks_no_seccomp_all_caps(make):
    res = sh(make, "grep -E 'CapBnd|Seccomp:' /proc/self/status; wc -c < /proc/keys",
             privileged=True)
    assert res.status == 0, res.err
    assert "Seccomp:\t0" in res.out
    assert res.out.split("\n")[0].split()[1] != "00000000a80425fb"
    with open("/proc/keys") as f:  # unmasked: the real (namespace-filtered) file
        assert int(res.out.split("\n")[2]) > 0 or f.read() == ""


def test_mount_is_denied(make):
    res = sh(make, "mount -t tmpfs x /mnt")
    assert res.status != 0
    assert "denied" in res.err or "not permitted" in res.err


def test_capabilities_nonewprivs_seccomp(make):
    res = sh(make, "grep -E '^(CapBnd|CapEff|NoNewPrivs|Seccomp):' /proc/self/status")
    fields = dict(ln.split(":\t") for ln in res.out.strip().split("\n"))
    assert fields["CapBnd"] == "00000000a80425fb"
    assert fields["CapEff"] == "00000000a80425fb"
    assert fields["NoNewPrivs"] == "1"
    if security.default_seccomp_program() is not None:
        assert fields["Seccomp"] == "2"


def test_nobody_has_no_effective_caps(make):
    res = sh(make, "grep -E '^(CapBnd|CapEff):' /proc/self/status", user="nobody")
    fields = dict(ln.split(":\t") for ln in res.out.strip().split("\n"))
    assert fields == {"CapBnd": "00000000a80425fb", "CapEff": "0000000000000000"}


# -- network -----------------------------------------------------------------------------

def _ifaces(proc_net_dev: str) -> set[str]:
    # other containers' veths (cbxv...) come and go as their namespaces die: not compared
    return {name for ln in proc_net_dev.splitlines()[2:] if ":" in ln
            if not (name := ln.split(":")[0].strip()).startswith("cbxv")}


def test_network_none_has_only_lo_and_it_is_up(make):
    res = sh(make, "cat /proc/net/dev; ping -c1 -W1 127.0.0.1 >/dev/null && echo PING")
    assert _ifaces(res.out) == {"lo"}
    assert "PING" in res.out


def test_host_network_sees_host_interfaces(make):
    res = sh(make, "cat /proc/net/dev", network="host")
    with open("/proc/net/dev") as f:
        assert _ifaces(res.out) == _ifaces(f.read())


# -- exec ------------------------------------------------------------------------------------

def test_exec_in_shares_pid_namespace_and_filesystem(make):
    spec = make(["sh", "-c", "echo hi > /tmp/mark; exec sleep 30"])
    probe = ProcessSpec(args=["sh", "-c", "sleep 0.2; cat /tmp/mark; echo $$; "
                                          "cat /proc/1/cmdline | tr '\\0' ' '; echo; hostname; id -u"],
                        user="nobody", cwd="/tmp")
    res = in_monitor(lambda report: _start_and_wait(spec, report, probe))
    assert res["exec_status"] == 0
    lines = res["exec_out"].split("\n")
    assert lines[0] == "hi"
    assert 1 < int(lines[1]) < 100
    assert lines[2].startswith("sleep 30")
    assert lines[3:5] == ["cbxhost", "65534"]
    assert res["status"] == -signal.SIGKILL


def test_exec_in_missing_command(make):
    spec = make(["sleep", "30"])

    def go(report):
        null = os.open(os.devnull, os.O_RDWR)
        pid = runtime.start(spec, null, null, null)
        report(pid)
        try:
            runtime.exec_in(pid, spec, ProcessSpec(args=["nosuch"]), null, null, null)
        except CommandNotFound as exc:
            return {"error": "CommandNotFound", "message": str(exc)}
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        return {}

    assert in_monitor(go)["error"] == "CommandNotFound"


# -- speed -----------------------------------------------------------------------------------

def test_start_to_exit_of_true_is_fast(make, capsys):
    times = []
    for _ in range(5):
        res = run(make(["true"]))
        assert res.status == 0
        times.append(res.seconds)
    best = min(times)
    with capsys.disabled():
        print(f"\nstart()-to-exit of `true`: best {best * 1000:.1f} ms, "
              f"median {sorted(times)[2] * 1000:.1f} ms")
    assert best < 0.2


def test_kernel_refusal_names_the_stage(make):
    spec = make(["true"])
    spec.lowerdirs = ["no-such-layer"]
    res = run(spec)
    assert res.error == "RuntimeFailure"
    assert res.message.startswith(f"mount overlay on {spec.rootfs}: "), res.message


def test_terminal_makes_a_session_with_a_controlling_tty(make):
    spec = make(["sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo TTY; ps -o pid,tty | tail -n +2"])
    spec.process.terminal = True

    def go(report):
        master, slave = os.openpty()
        pid = runtime.start(spec, slave, slave, slave)
        report(pid)
        os.close(slave)
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        out = b""
        try:
            while chunk := os.read(master, 4096):
                out += chunk
        except OSError:
            pass  # EIO once the slave side is closed everywhere
        return {"status": status, "out": out.decode()}

    res = in_monitor(go)
    assert res["status"] == 0
    assert res["out"].splitlines()[0] == "TTY"


def test_exec_in_a_stopped_container_is_not_running(make):
    spec = make(["true"])

    def go(report):
        null = os.open(os.devnull, os.O_RDWR)
        pid = runtime.start(spec, null, null, null)
        os.waitpid(pid, 0)
        runtime.exec_in(pid, spec, ProcessSpec(args=["true"]), null, null, null)

    assert in_monitor(go)["error"] == "NotRunning"


def test_the_union_is_invisible_to_the_host(make):
    spec = make(["sleep", "30"])

    def go(report):
        null = os.open(os.devnull, os.O_RDWR)
        pid = runtime.start(spec, null, null, null)
        report(pid)
        during = _mounted_under(spec.rootfs)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return {"during": during, "after": _mounted_under(spec.rootfs)}

    assert in_monitor(go) == {"during": [], "after": []}
