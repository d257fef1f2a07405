"""The bridges' exception hierarchy."""

from __future__ import annotations


class BridgeError(Exception):
    """A discovery system failed or refused; the bridge reconnects and resyncs."""

    code = "bridge_error"


class RegistryUnavailable(BridgeError):
    """The discovery system cannot be reached (all endpoints tried)."""

    code = "registry_unavailable"


class SessionExpired(BridgeError):
    """Our lease or session ended, and the entries tied to it with it: resync."""

    code = "session_expired"
