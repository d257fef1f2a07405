"""Helpers for the processes tests start (no side effects at import: benchmarks use it too)."""

from __future__ import annotations

import signal
import subprocess


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM,
                 timeout: float = 20) -> int | None:
    """Send ``sig`` to a process a test started, SIGKILL it after ``timeout`` seconds;
    its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
