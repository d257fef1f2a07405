"""The public surface of chan and chan.aio, pinned (httpx's test_exported_members style).

Adding or removing a public name is a decision: change DESIGN.md, these lists and the
code together.
"""

from __future__ import annotations

import inspect
import types

import pytest

import chan
import chan.aio

PUBLIC = [
    "ByteStream",
    "ChannelError",
    "ClosedChannelError",
    "CurveKeys",
    "EndOfChannel",
    "Listener",
    "MessageTooLarge",
    "ProtocolError",
    "Receiver",
    "RemoteError",
    "Sender",
    "Session",
    "SessionLost",
    "Settings",
    "Timeout",
    "connect",
    "listen",
    "pipe",
    "stream_pair",
]


def test_chan_all_is_pinned() -> None:
    assert chan.__all__ == PUBLIC


def test_chan_aio_all_is_pinned() -> None:
    # DESIGN.md: "chan.aio offers the same names for asyncio".
    assert chan.aio.__all__ == PUBLIC


def test_all_is_sorted() -> None:
    assert chan.__all__ == sorted(chan.__all__)
    assert chan.aio.__all__ == sorted(chan.aio.__all__)


def test_every_public_attribute_of_chan_is_exported() -> None:
    # httpx: whatever the package namespace shows without an underscore is in __all__
    # (submodules such as chan.channel are modules, not members).
    # dir(), not vars(): the network names load lazily on first use (PEP 562).
    members = sorted(
        name for name in dir(chan)
        if not name.startswith("_") and not isinstance(getattr(chan, name), types.ModuleType)
    )
    assert chan.__all__ == members


@pytest.mark.parametrize("module", [chan, chan.aio], ids=["chan", "chan.aio"])
def test_star_import_gives_exactly_all(module: types.ModuleType) -> None:
    namespace: dict = {}
    exec(f"from {module.__name__} import *", namespace)
    namespace.pop("__builtins__", None)
    assert sorted(namespace) == module.__all__


def test_errors_are_shared_between_front_ends() -> None:
    # One hierarchy: an `except chan.SessionLost` catches what chan.aio raises.
    for name in ("ChannelError", "ClosedChannelError", "EndOfChannel", "MessageTooLarge",
                 "ProtocolError", "RemoteError", "SessionLost", "Timeout", "Settings",
                 "CurveKeys"):
        assert getattr(chan.aio, name) is getattr(chan, name), name


def test_error_hierarchy() -> None:
    for name in ("ClosedChannelError", "EndOfChannel", "MessageTooLarge", "ProtocolError",
                 "RemoteError", "SessionLost", "Timeout"):
        assert issubclass(getattr(chan, name), chan.ChannelError), name
    assert issubclass(chan.Timeout, TimeoutError)
    assert issubclass(chan.ChannelError, Exception)


@pytest.mark.parametrize("module", [chan, chan.aio], ids=["chan", "chan.aio"])
def test_every_public_name_has_a_docstring(module: types.ModuleType) -> None:
    assert inspect.getdoc(module)
    missing = [name for name in module.__all__ if not inspect.getdoc(getattr(module, name))]
    assert missing == []


def _public_methods(cls: type) -> list[str]:
    names = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (types.FunctionType, property, classmethod, staticmethod)):
            names.append(name)
    return names


def _undocumented_methods() -> list[str]:
    missing = []
    for module in (chan, chan.aio):
        for name in module.__all__:
            obj = getattr(module, name)
            if not inspect.isclass(obj):
                continue
            for meth in _public_methods(obj):
                if not inspect.getdoc(getattr(obj, meth)):
                    missing.append(f"{module.__name__}.{name}.{meth}")
    return sorted(set(missing))


def test_every_public_method_has_a_docstring() -> None:
    # e.g. chan.CurveKeys.generate, chan.Settings.to_wire and chan.aio's methods.
    assert _undocumented_methods() == []


def _defined_in(module: types.ModuleType) -> list[str]:
    """Public names that ``module`` itself defines (not imports), objects and values."""
    names = []
    for name, value in vars(module).items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if getattr(value, "__module__", module.__name__) == module.__name__ \
                and not isinstance(value, (str, int, float, bool, type(None))):
            names.append(name)
    return sorted(names)


def test_chan_aio_defines_no_public_name_outside_all() -> None:
    # The asyncio twin of wait_sync and the flavor namespace are private now.
    assert _defined_in(chan.aio) == sorted(
        n for n in chan.aio.__all__ if getattr(chan.aio, n).__module__ == "chan.aio")
    for gone in ("wait_async", "ASYNCIO"):
        assert not hasattr(chan.aio, gone), gone
    assert inspect.iscoroutinefunction(chan.aio._wait)
    assert {chan.aio._ASYNCIO.Sender, chan.aio._ASYNCIO.Receiver,
            chan.aio._ASYNCIO.ByteStream} == {chan.aio.Sender, chan.aio.Receiver,
                                              chan.aio.ByteStream}
