"""Test-side helpers for tests that run chan peers as real child processes.

Imported by tests/chan/test_faults.py, test_fuzz.py and test_curve.py (they put this
directory on sys.path).  :class:`Children` starts the scripts of this directory with
``sys.executable`` and, in :meth:`Children.cleanup` (called by a fixture, so it runs even
when a test fails), SIGKILLs and reaps exactly the processes it started, by PID.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

PEERS = Path(__file__).resolve().parent
REPO = PEERS.parents[2]


class Child:
    """One started peer: its Popen, and the lines it printed (read by a thread)."""

    def __init__(self, proc: subprocess.Popen, name: str) -> None:
        self.proc = proc
        self.name = name
        self.pid = proc.pid
        self.lines: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"read-{name}-{proc.pid}")
        self._reader.start()

    def _read(self) -> None:
        try:
            for raw in self.proc.stdout:
                self.lines.put(raw.decode(errors="replace").rstrip("\n"))
        except (ValueError, OSError):
            pass  # closed under us by release()
        self.lines.put(None)  # EOF

    def expect(self, prefix: str, timeout: float = 10.0) -> str:
        """The rest of the next line starting with ``prefix`` (other lines are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(remaining, 0.001))
            except queue.Empty:
                raise AssertionError(f"{self.name} (pid {self.pid}) printed no {prefix!r} "
                                     f"within {timeout} s; stderr: {self.stderr()!r}") from None
            if line is None:
                self.proc.wait(5)
                raise AssertionError(f"{self.name} (pid {self.pid}) exited "
                                     f"({self.proc.returncode}) before printing {prefix!r}; "
                                     f"stderr: {self.stderr()!r}")
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def tell(self, line: str) -> None:
        """Write one line to its stdin."""
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def stderr(self) -> str:
        try:
            self.proc.stderr_file.seek(0)  # type: ignore[attr-defined]
            return self.proc.stderr_file.read().decode(errors="replace")[-2000:]  # type: ignore[attr-defined]
        except (AttributeError, ValueError, OSError):
            return ""

    def kill(self) -> None:
        """SIGKILL this child (by its PID) and reap it."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def release(self) -> None:
        """Close our ends of its pipes and its stderr file (once it has exited)."""
        if self.proc.poll() is not None:
            self._reader.join(2)
        files = [self.proc.stdin, getattr(self.proc, "stderr_file", None)]
        if not self._reader.is_alive():  # closing under a blocked reader would hang
            files.append(self.proc.stdout)
        for f in files:
            try:
                if f is not None:
                    f.close()
            except Exception:
                pass


class Children:
    """Starts peer scripts; :meth:`cleanup` kills and reaps every one of them."""

    def __init__(self, tmpdir: Path) -> None:
        self.tmpdir = Path(tmpdir)
        self.started: list[Child] = []
        self._n = 0

    def start(self, script: str, *args: str, name: str | None = None) -> Child:
        self._n += 1
        name = name or script
        err = open(self.tmpdir / f"cbx-stderr-{self._n}-{Path(script).stem}.txt", "w+b")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.pop("PYTHONSTARTUP", None)
        proc = subprocess.Popen(
            [sys.executable, "-u", str(PEERS / script), *map(str, args)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env,
            cwd=str(self.tmpdir))
        proc.stderr_file = err  # type: ignore[attr-defined]
        child = Child(proc, name)
        self.started.append(child)
        return child

    def cleanup(self) -> None:
        for child in self.started:
            try:
                if child.proc.poll() is None:
                    os.kill(child.pid, signal.SIGKILL)
                child.proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            child.release()
        self.started.clear()
