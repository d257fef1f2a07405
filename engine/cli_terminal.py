"""The user's terminal while a ``-t`` process has it (``run -it``, ``attach``, ``exec -it``).

As ``docker`` does: the terminal goes to raw mode, so every key (^C and the arrows
included) goes to the container's own terminal, which echoes and edits, and its output
is shown as it is (no second ``\\r`` added here); the window's size is sent at the start
and on every SIGWINCH.  ^P^Q (or the ``--detach-keys`` given) detaches
(:class:`Detached`): the process runs on.  The terminal is restored however the command
ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import chan

from .detachkeys import DETACH_KEYS, DetachKeys
from .errors import EngineError


class Detached(Exception):
    """The user typed the detach keys: leave the process running."""


_keys: DetachKeys | None = None  # while a terminal is lent with detach keys


def detached() -> bool:
    """Whether the user typed the detach keys (the output streams stop on it)."""
    keys = _keys
    return keys is not None and keys.detached


def filter_input(data: bytes) -> bytes | None:
    """Our stdin's ``data`` as it should go on; None once the user detached."""
    keys = _keys
    if keys is None:
        return data
    if keys.detached:
        return None
    out = keys.filter(data)
    return None if keys.detached and not out else out


def container_resizer(client: Any, cid: str) -> Callable[[int, int], None]:
    """How a container's own terminal is resized: the ``resize`` verb."""
    return lambda rows, cols: client.call("resize", id=cid, rows=rows, cols=cols)


def exec_resizer(sizes: chan.Sender) -> Callable[[int, int], None]:
    """How an exec'd process's terminal is resized: the ``resize`` Sender its answer
    brought."""
    return lambda rows, cols: sizes.send({"rows": rows, "cols": cols})


@contextlib.contextmanager
def lent_to(resize: Callable[[int, int], None], *,
            detach_keys: bytes | None = DETACH_KEYS) -> Iterator[None]:
    """Lend our terminal (stdin) to a ``-t`` process for the ``with`` block, telling
    ``resize(rows, cols)`` its size; a no-op when stdin is not a terminal.  The
    ``detach_keys`` (None: none) end the streams that watch :func:`detached`; the
    ``with`` block then raises :class:`Detached`."""
    global _keys
    fd = sys.stdin.fileno()
    if not os.isatty(fd):
        yield
        return
    import termios
    import tty

    def send_size() -> None:
        try:
            cols, rows = os.get_terminal_size(fd)
            resize(rows, cols)
        except (OSError, EngineError, chan.ChannelError):
            pass  # a size the kernel cannot tell, or the process is gone: nothing to do

    def on_winch(signum: int, frame: Any) -> None:
        # a thread, not here: the main thread may be inside a channel call
        threading.Thread(target=send_size, daemon=True).start()

    saved = termios.tcgetattr(fd)
    previous = signal.signal(signal.SIGWINCH, on_winch)
    try:
        send_size()
        tty.setraw(fd, termios.TCSANOW)
        if detach_keys:
            _keys = DetachKeys(detach_keys)
        yield
        if detached():
            raise Detached()
    finally:
        _keys = None
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, previous)
