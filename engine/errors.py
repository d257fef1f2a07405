"""The engine's exception hierarchy.

Every failure the engine reports is an :class:`EngineError` with a stable ``code`` (the
``code`` that ``chan``'s ``close(error=...)`` carries to the client, so the CLI and the
bridges branch on it) and a message that says what was wrong and what to do next.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of the engine's errors; ``code`` is stable across versions."""

    code = "internal"
    #: the exit status ``chanbox run`` uses when this error stops it (as ``docker run``)
    exit_status = 125


class InvalidArgument(EngineError):
    """A request or flag value is malformed (bad name, bad limit, unknown option)."""

    code = "invalid_argument"


class NotFound(EngineError):
    """No such image, container, layer or exec session."""

    code = "not_found"


class Conflict(EngineError):
    """The operation clashes with the current state (name in use, image in use, running)."""

    code = "conflict"


class NotRunning(Conflict):
    """The container is not running (kill, pause, exec, attach on a stopped container)."""

    code = "not_running"


class Cancelled(EngineError):
    """The caller gave up waiting (its client went away); nothing was changed."""

    code = "cancelled"


class CorruptState(EngineError):
    """On-disk state is damaged beyond what the engine repairs by itself."""

    code = "corrupt_state"


class RuntimeFailure(EngineError):
    """The kernel refused something the runtime needs (mount, namespace, cgroup)."""

    code = "runtime_failure"


class CommandNotFound(EngineError):
    """The container's command does not exist in its filesystem (``docker run`` exits 127)."""

    code = "command_not_found"
    exit_status = 127


class CommandNotInvokable(EngineError):
    """The command exists but cannot be executed (``docker run`` exits 126)."""

    code = "command_not_invokable"
    exit_status = 126


class RegistryError(EngineError):
    """The registry refused a request or could not be reached."""

    code = "registry_error"


class Unauthorized(RegistryError):
    """The registry wants credentials we do not have, or refused the ones we sent."""

    code = "unauthorized"
