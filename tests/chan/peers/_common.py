"""Shared by the peer scripts: die with the parent, and say when ready.

Every peer watches its stdin in a daemon thread and exits at once on EOF, so a peer never
outlives the test process that started it (even when that process is killed).
"""

import os
import threading


def die_with_parent() -> None:
    def watch() -> None:
        try:
            while os.read(0, 4096):  # raw reads: no buffer lock held at shutdown
                pass
        finally:
            os._exit(0)
    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def say(*words: object) -> None:
    print(*words, flush=True)
