"""A running container's resource use in the Docker Engine API's stats shape
(``GET /containers/ID/stats``), which ``docker stats`` turns into percentages."""

from __future__ import annotations

import os
import time
from typing import Any

from . import cgroups
from .timefmt import rfc3339

__all__ = ["sample", "cpu_percent", "memory_use", "host_memory"]


def sample(container_id: str, name: str, paths: list[str], init_pid: int,
           previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """One reading of the container's cgroups and network; ``previous`` (an earlier
    reading) becomes ``precpu_stats``, as the daemon does between two reads."""
    use = cgroups.usage(paths)
    mem_limit = use["memory_limit"] or host_memory()
    stats: dict[str, Any] = {
        "read": rfc3339(time.time_ns()),
        "preread": previous["read"] if previous else "0001-01-01T00:00:00Z",
        "id": container_id, "name": "/" + name,
        "pids_stats": {"current": use["pids"] or 0},
        "cpu_stats": {"cpu_usage": {"total_usage": use["cpu_ns"] or 0},
                      "system_cpu_usage": _system_cpu_ns(), "online_cpus": os.cpu_count() or 1},
        "memory_stats": {"usage": use["memory"] or 0, "limit": mem_limit,
                         "stats": {"inactive_file": use["inactive_file"] or 0}},
        "networks": _networks(init_pid),
        "blkio_stats": {"io_service_bytes_recursive": None},
    }
    stats["precpu_stats"] = previous["cpu_stats"] if previous else {
        "cpu_usage": {"total_usage": 0}, "system_cpu_usage": 0,
        "online_cpus": stats["cpu_stats"]["online_cpus"]}
    return stats


def cpu_percent(stats: dict[str, Any]) -> float:
    """CPU use between the two readings in ``stats``, as ``docker stats`` computes it."""
    cpu, pre = stats["cpu_stats"], stats["precpu_stats"]
    used = cpu["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"]
    system = cpu["system_cpu_usage"] - pre["system_cpu_usage"]
    if used <= 0 or system <= 0 or not pre["system_cpu_usage"]:
        return 0.0
    return used / system * cpu["online_cpus"] * 100.0


def memory_use(stats: dict[str, Any]) -> int:
    """Memory in use without the page cache the kernel can drop (docker stats' usage)."""
    mem = stats["memory_stats"]
    return max(mem["usage"] - mem["stats"].get("inactive_file", 0), 0)


def _system_cpu_ns() -> int:
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:9]  # user nice system idle iowait irq softirq steal
    return sum(int(x) for x in fields) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def host_memory() -> int:
    """The host's memory in bytes (MemTotal); 0 if /proc cannot say."""
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0


def _networks(pid: int) -> dict[str, dict[str, int]]:
    """Per interface of the process's network namespace, loopback left out."""
    out: dict[str, dict[str, int]] = {}
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.readlines()[2:]
    except (FileNotFoundError, ProcessLookupError):
        return out
    for line in lines:
        name, _, rest = line.partition(":")
        name = name.strip()
        if name == "lo":
            continue
        v = [int(x) for x in rest.split()]
        out[name] = {"rx_bytes": v[0], "rx_packets": v[1], "rx_errors": v[2], "rx_dropped": v[3],
                     "tx_bytes": v[8], "tx_packets": v[9], "tx_errors": v[10], "tx_dropped": v[11]}
    return out
