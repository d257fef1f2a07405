"""The user's terminal while a ``-t`` container has it (``run -it``, ``attach``).

As ``docker`` does: the terminal goes to raw mode, so every key (^C and the arrows
included) goes to the container's own terminal, which echoes and edits, and its output
is shown as it is (no second ``\\r`` added here); the window's size is sent at the start
and on every SIGWINCH.  The terminal is restored however the command ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from .errors import EngineError


@contextlib.contextmanager
def lent_to(client: Any, cid: str) -> Iterator[None]:
    """Lend our terminal (stdin) to the container ``cid`` for the ``with`` block; a
    no-op when stdin is not a terminal."""
    fd = sys.stdin.fileno()
    if not os.isatty(fd):
        yield
        return
    import termios
    import tty

    def send_size() -> None:
        try:
            cols, rows = os.get_terminal_size(fd)
            client.call("resize", id=cid, rows=rows, cols=cols)
        except (OSError, EngineError):
            pass  # a size the kernel cannot tell, or the container is gone: nothing to do

    def on_winch(signum: int, frame: Any) -> None:
        # a thread, not here: the main thread may be inside a channel call
        threading.Thread(target=send_size, daemon=True).start()

    saved = termios.tcgetattr(fd)
    previous = signal.signal(signal.SIGWINCH, on_winch)
    try:
        send_size()
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, previous)
