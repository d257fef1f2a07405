"""``docker ps --filter``: which container rows pass which filters."""

from __future__ import annotations

from typing import Any

from .errors import InvalidArgument

__all__ = ["filter_containers", "parse_filter_args"]


def filter_containers(items: list[dict[str, Any]], filters: dict[str, list[str]]
                      ) -> list[dict[str, Any]]:
    """The rows of :meth:`Engine.ps` that pass every filter (``docker ps --filter``):
    ``{key: [values]}`` with keys id, name, status, label, ancestor, volume (a volume's
    name or a mount point); a row passes a key when it matches any of its values
    (label: all of them).  Other keys are refused."""
    known = {"id", "name", "status", "label", "ancestor", "volume"}
    unknown = set(filters) - known
    if unknown:
        raise InvalidArgument(f"invalid filter {sorted(unknown)[0]!r}; the filters are "
                              f"{', '.join(sorted(known))}")

    def keep(c: dict[str, Any]) -> bool:
        for key, values in filters.items():
            if key == "id" and not any(c["Id"].startswith(v) for v in values):
                return False
            if key == "name" and not any(v.lstrip("/") in n.lstrip("/")
                                         for v in values for n in c["Names"]):
                return False
            if key == "status" and c["State"] not in values:
                return False
            if key == "ancestor" and not any(v in (c["Image"], c["ImageID"]) for v in values):
                return False
            if key == "volume" and not any(v in (m.get("Name"), m["Destination"])
                                           for v in values for m in c["Mounts"]):
                return False
            if key == "label":
                for v in values:
                    k, eq, val = v.partition("=")
                    if k not in c["Labels"] or (eq and c["Labels"][k] != val):
                        return False
        return True

    return [c for c in items if keep(c)]


def parse_filter_args(args: list[str]) -> dict[str, list[str]]:
    """``["status=exited", "label=app=x"]`` (the CLI's ``-f`` values) as ``{key: [values]}``."""
    out: dict[str, list[str]] = {}
    for arg in args:
        key, eq, value = arg.partition("=")
        if not eq or not key:
            raise InvalidArgument(f"bad filter {arg!r}: use KEY=VALUE (e.g. status=exited)")
        out.setdefault(key, []).append(value)
    return out
