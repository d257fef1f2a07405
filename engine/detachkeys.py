"""Detach keys: docker's ``--detach-keys`` syntax, and spotting the keys in typed input.

Kept apart from :mod:`engine.cli_terminal` so that the CLI can check the option
without loading the terminal machinery.
"""

from __future__ import annotations

__all__ = ["DETACH_KEYS", "parse_detach_keys", "DetachKeys"]

#: docker's default detach keys: ctrl-p ctrl-q
DETACH_KEYS = b"\x10\x11"

# ctrl-X for the characters that are not letters (as docker reads --detach-keys)
_CTRL_OTHER = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


def parse_detach_keys(spec: str) -> bytes:
    """docker's ``--detach-keys`` form (``ctrl-p,ctrl-q``, ``ctrl-a,x``: ``ctrl-`` and a
    letter or one of ``@[\\]^_``, or a single character) as the bytes a terminal sends;
    the default keys when ``spec`` is empty."""
    if not spec:
        return DETACH_KEYS
    out = bytearray()
    for key in spec.split(","):
        low = key.lower()
        if low.startswith("ctrl-") and len(key) == 6:
            c = low[5]
            if "a" <= c <= "z":
                out.append(ord(c) - ord("a") + 1)
                continue
            if c in _CTRL_OTHER:
                out.append(_CTRL_OTHER[c])
                continue
        elif len(key) == 1 and key.isascii():
            out.append(ord(key))
            continue
        raise ValueError(f"{key!r} is not a key: use ctrl-<a-z, @, [, \\, ], ^ or _> or a single "
                         "character, separated by commas (e.g. ctrl-p,ctrl-q)")
    return bytes(out)


class DetachKeys:
    """What our stdin sends on, with the detach keys taken out (the start of the keys is
    held back until the next keys say whether they complete them)."""

    def __init__(self, sequence: bytes = DETACH_KEYS) -> None:
        self.sequence = sequence
        self.held = b""
        self.detached = False

    def filter(self, data: bytes) -> bytes:
        data = self.held + data
        self.held = b""
        at = data.find(self.sequence)
        if at >= 0:
            self.detached = True  # the main thread's stream sees it (detached())
            return data[:at]
        # hold back the longest end of data that may begin the sequence
        for n in range(min(len(self.sequence) - 1, len(data)), 0, -1):
            if data.endswith(self.sequence[:n]):
                self.held, data = data[-n:], data[:-n]
                break
        return data
