"""The suite's yardsticks: wait bounds, assertions, and every kind of msgpack value.

Shared by the links, the blocking checks and the asyncio checks; nothing here waits.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from ..errors import RemoteError

WAIT = 5.0  # the bound on every wait that should succeed
SHORT = 0.05  # the timeout of waits that are meant to time out


class CodedError(Exception):
    """An error with a ``code``: ``close(error=CodedError(...))`` shows it to the peer."""

    code = "E_CODED"


#: Every kind of msgpack value, as ``name -> value``: each arrives equal, with its type.
#: (Tuples are not here: they arrive as lists, see :func:`check_tuple_as_list`.)
VALUES: dict[str, Any] = {
    "none": None,
    "true": True,
    "false": False,
    "zero": 0,
    "int": 42,
    "negative int": -7,
    "uint64 max": 2**64 - 1,
    "int64 min": -2**63,
    "float": 1.5,
    "negative float": -2.25e-300,
    "inf": float("inf"),
    "empty str": "",
    "unicode str": "héllo wörld ✓ 日本語 🎉",
    "empty bytes": b"",
    "bytes": bytes(range(256)),
    "list": [1, "two", 3.0, None],
    "dict": {"a": 1, "b": [True, False]},
    "int keys": {1: "one", -2: "minus two", 2**40: "big"},
    "mixed keys": {0: "int", "0": "str", b"0": "bytes"},
    "nested": {"a": [{"b": [{"c": [[[[["deep"]]]]]}]}], "n": [[], {}, ""]},
    "deep list": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]],
}


def assert_same(got: Any, want: Any, where: str = "message") -> None:
    """``got == want`` with the same types all the way down (``True`` is not ``1``)."""
    if type(got) is not type(want):
        raise AssertionError(f"{where}: got {type(got).__name__} {got!r}, "
                             f"want {type(want).__name__} {want!r}")
    if isinstance(want, list):
        if len(got) != len(want):
            raise AssertionError(f"{where}: got {got!r}, want {want!r}")
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, dict):
        if list(got) != list(want):
            raise AssertionError(f"{where}: keys {list(got)!r}, want {list(want)!r}")
        for k in want:
            assert_same(got[k], want[k], f"{where}[{k!r}]")
    elif not (got == want or (got != got and want != want)):
        raise AssertionError(f"{where}: got {got!r}, want {want!r}")


class _Raised:
    value: BaseException


@contextlib.contextmanager
def raises(*types: type[BaseException]) -> Iterator[_Raised]:
    """Like ``pytest.raises`` (without needing pytest): the block must raise one of ``types``."""
    box = _Raised()
    try:
        yield box
    except types as exc:
        box.value = exc
    else:
        raise AssertionError(f"expected {' or '.join(t.__name__ for t in types)}, "
                             "nothing was raised")


@contextlib.contextmanager
def raises_remote(code: str, message: str, what: str) -> Iterator[None]:
    """The block must raise :class:`chan.RemoteError` with this ``code`` and ``message``.

    A ``with`` block may hold an ``await``, so both front ends use this one.
    """
    with raises(RemoteError) as err:
        yield
    got = (err.value.code, err.value.message)
    expect(got == (code, message), f"{what}: got RemoteError code={got[0]!r} "
           f"message={got[1]!r}, want code={code!r} message={message!r}")


def expect(cond: Any, message: str) -> None:
    if not cond:
        raise AssertionError(message)


def expect_type(obj: Any, cls: type, what: str) -> None:
    expect(isinstance(obj, cls), f"{what}: got {obj!r}, want a {cls.__module__}.{cls.__name__}")
