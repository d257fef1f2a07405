"""The service's answers to wrong requests: an error on ``ret``, and the service lives on."""

from __future__ import annotations

import chan
import pytest

from engine.client import Client
from engine.engine import Engine
from engine.errors import InvalidArgument, NotFound
from engine.service import handle, serve_in_thread


@pytest.fixture
def raw(engine: Engine):
    """The service's request Sender, for hand-made (wrong) requests."""
    tx, rx = chan.pipe()
    serve_in_thread(engine, rx)
    yield tx
    tx.close()


def ask(tx: chan.Sender, request: dict) -> chan.RemoteError:
    ret_tx, ret_rx = chan.pipe()
    tx.send({**request, "ret": ret_tx})
    with pytest.raises(chan.RemoteError) as info:
        ret_rx.recv(timeout=10)
    return info.value


def test_unknown_verb(raw: chan.Sender) -> None:
    err = ask(raw, {"verb": "explode", "args": {}})
    assert err.code == "invalid_argument" and "unknown verb 'explode'" in err.message
    assert "create" in err.message  # it lists what exists


def test_verb_of_the_wrong_type(raw: chan.Sender) -> None:
    assert ask(raw, {"verb": 7}).code == "invalid_argument"


def test_missing_argument(raw: chan.Sender) -> None:
    err = ask(raw, {"verb": "create", "args": {}})
    assert err.code == "invalid_argument" and "'image'" in err.message


def test_ill_typed_arguments(raw: chan.Sender) -> None:
    err = ask(raw, {"verb": "create", "args": {"image": "busybox", "memory": "lots"}})
    assert err.code == "invalid_argument" and "'memory' must be an integer" in err.message
    err = ask(raw, {"verb": "create", "args": {"image": "busybox", "cmd": "echo hi"}})
    assert "'cmd' must be a list" in err.message
    err = ask(raw, {"verb": "create", "args": {"image": "busybox", "cmd": ["x", 1]}})
    assert "list of strings" in err.message
    err = ask(raw, {"verb": "stop", "args": {"id": "x", "timeout": True}})
    assert err.code == "invalid_argument"
    err = ask(raw, {"verb": "ls", "args": ["all"]})
    assert "'args' must be a map" in err.message


def test_an_archive_comes_by_path_or_by_stream_not_both(raw: chan.Sender) -> None:
    err = ask(raw, {"verb": "load", "args": {}})
    assert err.code == "invalid_argument" and "either 'path' or 'stream'" in err.message
    mine, theirs = chan.stream_pair()
    err = ask(raw, {"verb": "save", "args": {"refs": ["busybox"], "path": "/x.tar",
                                             "stream": theirs}})
    assert err.code == "invalid_argument" and "either 'path' or 'stream'" in err.message
    assert mine.read(10, timeout=10) == b""  # the refused request's stream was closed


def test_no_ret_or_a_ret_that_is_not_a_sender_is_dropped(engine: Engine) -> None:
    # nothing to answer on: the request is logged and dropped, channel ends inside closed
    inner_tx, inner_rx = chan.pipe()
    handle(engine, {"verb": "ls", "args": {}, "extra": inner_tx})
    with pytest.raises(chan.EndOfChannel):
        inner_rx.recv(timeout=5)
    handle(engine, {"verb": "ls", "args": {}, "ret": "not a sender"})
    handle(engine, "not even a map")


def test_the_service_keeps_answering_after_bad_requests(raw: chan.Sender) -> None:
    for bad in ({"verb": None}, {"verb": "get", "args": {"id": 5}}, {"args": 3}):
        ask(raw, bad)
    raw.send({"verb": "ls"})  # no ret at all
    raw.send([1, 2, 3])
    ok = Client(raw).call("version")
    assert ok["Version"]


def test_errors_map_back_to_engine_classes(client: Client) -> None:
    with pytest.raises(NotFound, match="no such container: cbx-ghost"):
        client.call("get", id="cbx-ghost")
    with pytest.raises(InvalidArgument, match="invalid container name"):
        client.call("create", image="busybox", cmd=["true"], name="bad name!")
