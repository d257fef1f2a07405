"""A private asyncio event loop on a thread of its own, for blocking callers.

The etcd and Serf clients are asyncio; the bridge loop (:mod:`bridges.sync`) is
blocking.  Each registry runs its client on a :class:`LoopThread` and waits for the
coroutines it submits.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any


class LoopThread:
    """An event loop running on a daemon thread named ``name``."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name=name)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
        """Run ``coro`` on the loop; its result (``TimeoutError`` after ``timeout`` s)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Schedule a plain callable on the loop's thread."""
        self.loop.call_soon_threadsafe(fn, *args)

    def close(self, cleanup: Coroutine[Any, Any, Any] | None, timeout: float) -> None:
        """Run ``cleanup`` (best effort: it closes something that may be broken), then
        stop the loop and its thread."""
        if cleanup is not None:
            try:
                self.run(cleanup, timeout)
            except Exception:  # noqa: BLE001 -- closing a broken connection: nothing to add
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
