"""Reading a container's log: Docker's json-file lines, with ``--tail`` and ``--follow``.

The monitor appends one JSON object per line: ``{"log": "...", "stream": "stdout",
"time": "..."}``.  Readers never block the writer: following is reading to the end,
then sleeping until the file grows or the container has ended.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

_CHUNK = 64 * 1024


def read(path: str, *, tail: int | None = None, follow: bool = False,
         ended: Callable[[float], bool] | None = None) -> Iterator[dict[str, Any]]:
    """The log's entries from the start (or the last ``tail`` lines), in order.

    With ``follow``, keep going as the file grows, until ``ended(wait_seconds)`` says
    the container has stopped (it may block up to ``wait_seconds`` waiting for that);
    the entries written before the end are all delivered.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        if tail is not None:
            _seek_to_last_lines(f, tail)
        pending = b""
        while True:
            chunk = f.read(_CHUNK)
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line:
                        yield _decode(line)
                continue
            if not follow or ended is None:
                return
            if ended(0.05):
                # one last read: whatever the monitor wrote before it recorded the exit
                rest = pending + f.read()
                for line in rest.split(b"\n"):
                    if line:
                        yield _decode(line)
                return


def _decode(line: bytes) -> dict[str, Any]:
    try:
        entry = json.loads(line)
    except ValueError:
        return {"log": line.decode("utf-8", "replace") + "\n", "stream": "stderr",
                "time": "", "corrupt": True}
    return entry


def _seek_to_last_lines(f: Any, n: int) -> None:
    """Position ``f`` at the start of its last ``n`` lines."""
    if n <= 0:
        f.seek(0, os.SEEK_END)
        return
    end = f.seek(0, os.SEEK_END)
    pos = end
    found = 0
    while pos > 0:
        step = min(_CHUNK, pos)
        pos -= step
        f.seek(pos)
        block = f.read(step)
        # a final newline ends the last line; it does not start one
        idx = len(block) if pos + step < end else len(block) - 1
        while True:
            idx = block.rfind(b"\n", 0, idx)
            if idx < 0:
                break
            found += 1
            if found == n:
                f.seek(pos + idx + 1)
                return
    f.seek(0)
