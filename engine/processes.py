"""A container's processes as ``ps -ef`` shows them (``docker top``), read from /proc.

Docker runs the host's ``ps`` and keeps the rows of the container's PIDs; reading /proc
gives the same columns without depending on procps.  PIDs are the host's, as in
``docker top``.
"""

from __future__ import annotations

import os
import time

__all__ = ["TITLES", "table", "tty_name", "cpu_time"]

TITLES = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]


def table(pids: list[int]) -> dict:
    """``{"Titles": TITLES, "Processes": [row, ...]}`` for the processes of ``pids``
    still alive, in PID order; every cell a string, as Docker's API gives them."""
    ticks = os.sysconf("SC_CLK_TCK")
    boot = _boot_time()
    users = _user_names()
    now = time.time()
    rows = []
    for pid in sorted(pids):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/status", "rb") as f:
                status = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue  # it exited meanwhile
        # comm is in parentheses and may hold spaces and ")": split after the last ")"
        comm = stat[stat.index(b"(") + 1:stat.rindex(b")")].decode("utf-8", "replace")
        fields = stat[stat.rindex(b")") + 2:].split()
        ppid, tty_nr = int(fields[1]), int(fields[4])
        cpu = (int(fields[11]) + int(fields[12])) / ticks
        started = boot + int(fields[19]) / ticks
        uid = _status_uid(status)
        args = [a.decode("utf-8", "replace") for a in cmdline.split(b"\0") if a]
        elapsed = max(now - started, 1e-9)
        rows.append([users.get(uid, str(uid)), str(pid), str(ppid),
                     str(min(int(cpu * 100 / elapsed), 99)), _stime(started, now),
                     tty_name(tty_nr), cpu_time(cpu), " ".join(args) or f"[{comm}]"])
    return {"Titles": list(TITLES), "Processes": rows}


def tty_name(tty_nr: int) -> str:
    """The controlling terminal of ``/proc/PID/stat``'s ``tty_nr``, as ps names it."""
    if tty_nr == 0:
        return "?"
    major = (tty_nr >> 8) & 0xFFF
    minor = (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    if 136 <= major <= 143:
        return f"pts/{minor + (major - 136) * 256}"
    if major == 4:
        return f"tty{minor}" if minor < 64 else f"ttyS{minor - 64}"
    return "?"


def cpu_time(seconds: float) -> str:
    """Cumulated CPU time as ps's TIME: ``HH:MM:SS``, with ``D-`` once past a day."""
    s = int(seconds)
    days, s = divmod(s, 86400)
    text = f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{days}-{text}" if days else text


def _stime(started: float, now: float) -> str:
    t = time.localtime(started)
    if now - started < 86400:
        return time.strftime("%H:%M", t)
    if t.tm_year == time.localtime(now).tm_year:
        return time.strftime("%b%d", t)
    return str(t.tm_year)


def _boot_time() -> float:
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    return time.time() - time.monotonic()


def _status_uid(status: bytes) -> int:
    for line in status.splitlines():
        if line.startswith(b"Uid:"):
            return int(line.split()[2])  # the effective uid, as ps -ef shows
    return -1


def _user_names() -> dict[int, str]:
    """The host's user names by uid (ps shows the host's names for the host's uids)."""
    names: dict[int, str] = {}
    try:
        with open("/etc/passwd", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split(":")
                if len(parts) > 2 and parts[2].isdigit():
                    names.setdefault(int(parts[2]), parts[0])
    except OSError:
        pass
    return names
