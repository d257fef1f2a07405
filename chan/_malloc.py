"""Bulk data without page faults: glibc keeps the memory that stream chunks free.

Each 64 KiB chunk makes two buffers of its size on the writing side (the packed record
and ZeroMQ's copy of it) and two on the reading side (the frame and the bytes ``read``
returns), and frees them soon after.  glibc hands the top of its heap back to the
kernel whenever more than ``M_TRIM_THRESHOLD`` (128 KiB) lies free there, which two
such buffers reach every time, so every chunk faulted its pages in again: 15 minor
faults per chunk for a writer over tcp, 7 for its reader, costing more CPU than the
copies themselves (tcp streams ran at half their speed).  A higher threshold keeps the
freed memory for the next chunk.  Setting it also ends glibc's self-tuning of the size
from which an allocation gets a map of its own (each such map faults afresh), so that
size is set too, above the chunks chan moves (up to 1 MiB).

Sessions call this when a byte stream first crosses them (the bulk path): a process
that only exchanges messages never pays for importing ``ctypes`` (5 ms).  A process
that chose for itself (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_`` or a
``glibc.malloc`` tunable) is left as it is, and so is a C library without ``mallopt``.
"""

from __future__ import annotations

import os

TRIM_THRESHOLD = 32 << 20  # free heap glibc may keep at the top of each heap
MMAP_THRESHOLD = 4 << 20  # allocations from this size on get maps of their own
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's <malloc.h>
_DONE = False


def keep_freed_memory() -> None:
    """Raise glibc's trim threshold for this process (once; see the module)."""
    global _DONE
    if _DONE:
        return
    _DONE = True
    env = os.environ
    if "MALLOC_TRIM_THRESHOLD_" in env or "MALLOC_MMAP_THRESHOLD_" in env \
            or "glibc.malloc" in env.get("GLIBC_TUNABLES", ""):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return  # not glibc
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
