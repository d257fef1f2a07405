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
    for batch in read_batches(path, tail=tail, follow=follow, ended=ended):
        yield from batch


def read_batches(path: str, *, tail: int | None = None, follow: bool = False,
                 ended: Callable[[float], bool] | None = None) -> Iterator[list[dict[str, Any]]]:
    """:func:`read`, a list of entries at a time: those of one read of the file (up to
    64 KiB), so a reader that forwards them pays per read, not per line."""
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
                batch = _decode_all([line for line in lines if line])
                if batch:
                    yield batch
                continue
            if not follow or ended is None:
                return
            if ended(0.05):
                # one last read: whatever the monitor wrote before it recorded the exit
                rest = pending + f.read()
                batch = _decode_all([line for line in rest.split(b"\n") if line])
                if batch:
                    yield batch
                return


def _decode_all(lines: list[bytes]) -> list[dict[str, Any]]:
    """Decode many lines in one call of the JSON parser (a call per line costs more
    than the parsing); a damaged line sends the batch through :func:`_decode`."""
    if not lines:
        return []
    try:
        return json.loads(b"[" + b",".join(lines) + b"]")
    except ValueError:
        return [_decode(line) for line in lines]


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
