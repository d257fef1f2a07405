"""Every program in examples/ runs as-is and prints what it promises.

Each example runs as a subprocess of this interpreter, from the repository root, the way
a user would run it; the tests check what that user would look at: the output and the
exit status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TIMEOUT = 60

pytestmark = pytest.mark.timeout(2 * TIMEOUT)


def run(example: str, *args: str, input: bytes | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES / example), *args], cwd=ROOT,
                          input=b"" if input is None else input, capture_output=True,
                          timeout=TIMEOUT, env=env)


def lines(out: bytes) -> list[str]:
    return out.decode().splitlines()


@pytest.fixture(params=["tcp", "ipc"])
def transport(request: pytest.FixtureRequest, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Arguments selecting the transport; over ipc the example must leave no file behind."""
    if request.param == "tcp":
        yield []
        return
    # The examples make their ipc directory under TMPDIR: point it at an empty one.
    tmpdir = tmp_path / "cbx-tmp"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    yield ["--ipc"]
    assert list(tmpdir.iterdir()) == [], "the example left files behind"


@contextmanager
def serving(example: str, endpoint: str, tmp_path: Path,
            stop: signal.Signals) -> Iterator[None]:
    """The example's --serve mode in a process of its own, stopped with ``stop``."""
    tmpdir = tmp_path / "cbx-server-tmp"
    tmpdir.mkdir()
    server = subprocess.Popen(
        [sys.executable, str(EXAMPLES / example), "--serve", "--endpoint", endpoint],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(tmpdir)})
    try:
        assert server.stdout.readline().decode().startswith(f"serving on {endpoint}")
        yield
        server.send_signal(stop)
        _, err = server.communicate(timeout=TIMEOUT)
        assert server.returncode == 0, err.decode()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert list(tmpdir.iterdir()) == [], "the server left files behind"


# -- request_reply.py and its asyncio twin ----------------------------------------------

REPLIES = [
    "upper('hello, chan') -> 'HELLO, CHAN'",
    "sum([1, 2, 3, 4]) -> 10",
    "split('a reply channel in every request') -> "
    "['a', 'reply', 'channel', 'in', 'every', 'request']",
    "reverse('abc') -> error ValueError: unknown op 'reverse'",
]


def test_request_reply(transport: list[str]) -> None:
    result = run("request_reply.py", *transport)
    assert (result.returncode, result.stderr) == (0, b"")
    assert lines(result.stdout) == REPLIES


def test_request_reply_in_two_processes(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/cbx-rr.sock"
    with serving("request_reply.py", endpoint, tmp_path, signal.SIGINT):  # Ctrl-C
        for _ in range(2):  # the server keeps serving after a client leaves
            result = run("request_reply.py", "--connect", endpoint)
            assert (result.returncode, result.stderr) == (0, b"")
            assert lines(result.stdout) == REPLIES


def test_aio_request_reply(transport: list[str]) -> None:
    result = run("aio_request_reply.py", *transport)
    assert (result.returncode, result.stderr) == (0, b"")
    assert lines(result.stdout) == [
        "upper('hello, asyncio') -> 'HELLO, ASYNCIO'",
        "sum([1, 2, 3, 4]) -> 10",
        "split('one task per channel') -> ['one', 'task', 'per', 'channel']",
        "reverse('abc') -> error ValueError: unknown op 'reverse'",
    ]


# -- remote_exec.py ---------------------------------------------------------------------

def test_remote_exec_demo(transport: list[str]) -> None:
    result = run("remote_exec.py", *transport)
    assert result.returncode == 0, result.stderr.decode()
    out = lines(result.stdout)
    assert out[0].startswith("remote exec over " + ("ipc://" if transport else "tcp://"))
    assert out[1:] == [
        "$ echo hello from remote exec",
        "hello from remote exec",
        "[exit status 0]",
        "$ tr a-z A-Z <<< 'stdin goes to the server too'",
        "STDIN GOES TO THE SERVER TOO",
        "[exit status 0]",
        "$ ls /nonexistent",
        "[exit status 2]",
    ]
    # ls's complaint came back on the stderr stream, and nothing else went there.
    [complaint] = lines(result.stderr)
    assert complaint.startswith("ls: ") and "/nonexistent" in complaint


def test_remote_exec_command_with_stdin(transport: list[str]) -> None:
    result = run("remote_exec.py", *transport, "--", "tr", "a-z", "A-Z",
                 input=b"hello\nworld\n")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"HELLO\nWORLD\n", b"")


def test_remote_exec_exit_status_and_stderr() -> None:
    result = run("remote_exec.py", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"err\n")


def test_remote_exec_command_not_found() -> None:
    result = run("remote_exec.py", "--", "no-such-command-for-chan")
    assert result.returncode == 127
    assert result.stdout == b""
    assert lines(result.stderr) == ["no-such-command-for-chan: No such file or directory"]


def test_remote_exec_binary_data_both_ways(transport: list[str]) -> None:
    """Megabytes through stdin and back out: exact bytes, with flow control on the way."""
    data = os.urandom(4 << 20)
    result = run("remote_exec.py", *transport, "--", "cat", input=data)
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == data


def test_remote_exec_command_ignoring_stdin_does_not_wait_for_it() -> None:
    """Like ssh: the client exits when the command does, even if its stdin stays open."""
    with subprocess.Popen(["sleep", str(TIMEOUT)], stdout=subprocess.PIPE) as open_stdin:
        try:
            result = subprocess.run(
                [sys.executable, str(EXAMPLES / "remote_exec.py"), "--", "echo", "done"],
                cwd=ROOT, stdin=open_stdin.stdout, capture_output=True, timeout=TIMEOUT / 2)
        finally:
            open_stdin.kill()
    assert (result.returncode, result.stdout, result.stderr) == (0, b"done\n", b"")


def test_remote_exec_in_two_processes(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/cbx-exec.sock"
    with serving("remote_exec.py", endpoint, tmp_path, signal.SIGTERM):  # kill
        result = run("remote_exec.py", "--connect", endpoint, "--", "rev", input=b"abc\n")
        assert (result.returncode, result.stdout, result.stderr) == (0, b"cba\n", b"")
        result = run("remote_exec.py", "--connect", endpoint)
        assert result.returncode == 0, result.stderr.decode()
        assert "STDIN GOES TO THE SERVER TOO" in lines(result.stdout)


# -- fan_in.py --------------------------------------------------------------------------

def test_fan_in(transport: list[str]) -> None:
    result = run("fan_in.py", *transport)
    assert (result.returncode, result.stderr) == (0, b""), result.stdout.decode()
    out = lines(result.stdout)
    assert out[0].startswith("8 clients x 1000 messages -> ")
    assert out[1].startswith("server received 8000 of 8000 messages in ")
    assert out[2:] == ["every client acknowledged: none lost"]


def test_fan_in_many_clients() -> None:
    result = run("fan_in.py", "--clients", "32", "--messages", "3000")
    assert (result.returncode, result.stderr) == (0, b""), result.stdout.decode()
    assert "server received 96000 of 96000 messages" in result.stdout.decode()


@pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")
def test_run_container_runs_busybox_through_the_channel_api() -> None:
    import tempfile

    from engine import fsutil

    root = tempfile.mkdtemp(prefix="cbx-root-")
    try:
        p = run("run_container.py", "--root", root)
        assert p.returncode == 0, p.stderr
        out = lines(p.stdout)
        assert out[0].startswith("hello from ") and out[0].endswith("pid 1, as root")
        assert out[-1].split() == ["1", "ps"]  # the only process it can see is its own
        assert "making the busybox image" in p.stderr.decode()
        # a second run finds the image, and a failing command's code comes back
        p = run("run_container.py", "--root", root, "sh", "-c", "exit 9")
        assert p.returncode == 9 and "making" not in p.stderr.decode()
        assert os.listdir(os.path.join(root, "containers")) == []  # removed after the run
    finally:
        fsutil.remove_tree(root)
