"""Volume verbs: ``volume_create`` (name, labels) -> the volume; ``volume_ls`` -> list;
``volume_get`` (name) -> the volume; ``volume_rm`` (name, force); ``volume_prune``
(all) -> ``{"deleted": [names]}``.  A volume is Docker's ``volume inspect`` shape:
``{"Name", "Driver", "Mountpoint", "CreatedAt", "Labels", "Scope", "Options"}`` plus
``"Anonymous"``."""

from __future__ import annotations

from typing import Any

from .engine import Engine
from .errors import InvalidArgument
from .service import _Args, verb


def _labels(a: _Args) -> dict[str, str]:
    labels = a.get("labels", dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise InvalidArgument("volume_create: labels must map strings to strings")
    return labels


@verb("volume_create")
def _v_volume_create(engine: Engine, a: _Args, ret: Any) -> Any:
    return engine.volume_create(a.get("name", str) or None, labels=_labels(a))


@verb("volume_ls")
def _v_volume_ls(engine: Engine, a: _Args, ret: Any) -> Any:
    return engine.volume_ls()


@verb("volume_get")
def _v_volume_get(engine: Engine, a: _Args, ret: Any) -> Any:
    return engine.volume_inspect(a.get("name", str, required=True))


@verb("volume_rm")
def _v_volume_rm(engine: Engine, a: _Args, ret: Any) -> Any:
    engine.volume_rm(a.get("name", str, required=True), force=a.get("force", bool, False))
    return {}


@verb("volume_prune")
def _v_volume_prune(engine: Engine, a: _Args, ret: Any) -> Any:
    return {"deleted": engine.volume_prune(all=a.get("all", bool, False))}
