"""Image references (``name[:tag]``) and image ids, with Docker's grammar and messages.

A name is ``[host[:port]/]component[/component...]``; a component is lowercase
alphanumerics separated by ``.``, ``_``, ``__`` or runs of ``-``; the first part is a
host only when there is more than one part and it holds a ``.`` or a ``:`` or is
``localhost``.  A tag is ``[\\w][\\w.-]{0,127}`` and defaults to ``latest``.  An id is
``sha256:<64 hex>``, 64 hex digits, or (for lookups) a hex prefix of at least 4.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.errors import InvalidArgument

__all__ = ["Reference", "parse_reference", "normalize", "parse_id", "id_prefix", "DEFAULT_TAG"]

DEFAULT_TAG = "latest"
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN = re.compile(
    r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_HEX64 = re.compile(r"[a-f0-9]{64}")
_HEXPREFIX = re.compile(r"[a-f0-9]{4,64}")
_NAME_MAX = 255


@dataclass(frozen=True)
class Reference:
    """A parsed ``name:tag``; ``str()`` gives the normalized form."""

    name: str
    tag: str = DEFAULT_TAG

    def __str__(self) -> str:
        return f"{self.name}:{self.tag}"


def _bad(ref: str, why: str) -> InvalidArgument:
    return InvalidArgument(f'invalid reference format: "{ref}": {why}')


def _valid_name(name: str) -> bool:
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        if not _DOMAIN.fullmatch(parts[0]):
            return False
        parts = parts[1:]
    return all(_COMPONENT.fullmatch(p) for p in parts)


def parse_reference(ref: str) -> Reference:
    """Parse ``name[:tag]``; raise :class:`InvalidArgument` with Docker's wording if bad."""
    if not isinstance(ref, str) or not ref:
        raise _bad(str(ref), "an image reference must not be empty")
    if "@" in ref:
        raise _bad(ref, "digest references (name@sha256:...) are not supported; use name:tag or an image id")
    name, tag = ref, DEFAULT_TAG
    slash, colon = ref.rfind("/"), ref.rfind(":")
    if colon > slash:
        name, tag = ref[:colon], ref[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise _bad(ref, "a tag is 1 to 128 of letters, digits, '_', '.' and '-', not starting with '.' or '-'")
    if len(name) > _NAME_MAX:
        raise _bad(ref, f"repository name must not be longer than {_NAME_MAX} characters")
    if not _valid_name(name):
        if _valid_name(name.lower()):
            raise _bad(ref, "repository name must be lowercase")
        raise _bad(
            ref,
            "a repository name is lowercase letters and digits, separated by '.', '_', '__' "
            "or '-', in '/'-separated parts (e.g. busybox or example.com:5000/team/app)",
        )
    if _HEX64.fullmatch(name):
        raise _bad(ref, "a repository name cannot be a 64-character hexadecimal string (it looks like an image id)")
    return Reference(name, tag)


def normalize(ref: str) -> str:
    """``ref`` as ``name:tag`` (the tag defaults to ``latest``)."""
    return str(parse_reference(ref))


def parse_id(s: str) -> str | None:
    """The 64-hex digest of a full id (``sha256:<hex>`` or bare hex), else ``None``."""
    hexpart = s[7:] if s.startswith("sha256:") else s
    return hexpart if _HEX64.fullmatch(hexpart) else None


def id_prefix(s: str) -> str | None:
    """The hex prefix ``s`` could abbreviate an id with (4 to 64 hex digits), else ``None``."""
    hexpart = s[7:] if s.startswith("sha256:") else s
    return hexpart if _HEXPREFIX.fullmatch(hexpart) else None
