"""Named crash points for the crash-safety tests (etcd's gofail, cut down to one use).

``hit("create:staged")`` kills this process with SIGKILL when the environment variable
``CHANBOX_FAILPOINT`` names that point, so a test can stop the engine exactly between
two steps and check that the next command finds a consistent state.  Unset, a hit is
one string comparison.
"""

from __future__ import annotations

import os
import signal

_ACTIVE = os.environ.get("CHANBOX_FAILPOINT", "")


def hit(name: str) -> None:
    """Die here, as ``kill -9`` would kill us, if this point is the armed one."""
    if _ACTIVE and name == _ACTIVE:
        os.kill(os.getpid(), signal.SIGKILL)
