"""The container store's name index: a name is found by one link, not by reading every
container's record, and the index never disagrees with the containers' directories."""

from __future__ import annotations

import os
import shutil

import pytest

from engine import containers as containers_mod
from engine.containers import ContainerStore
from engine.errors import Conflict, InvalidArgument, NotFound


@pytest.fixture
def store(tmp):
    return ContainerStore(tmp)


@pytest.fixture
def reads(monkeypatch):
    """Counts the records the store reads."""
    seen: list[str] = []
    real = containers_mod.fsutil.read_json

    def counting(path, default=None):
        seen.append(path)
        return real(path, default)

    monkeypatch.setattr(containers_mod.fsutil, "read_json", counting)
    return seen


def test_a_name_is_found_without_reading_the_other_containers(store, reads):
    made = {f"cbx-n{i}": store.create({}, f"cbx-n{i}").id for i in range(40)}
    reads.clear()
    assert store.get("cbx-n17").id == made["cbx-n17"]
    assert store.get("/cbx-n3").id == made["cbx-n3"]
    assert {os.path.basename(os.path.dirname(p)) for p in reads} == \
        {made["cbx-n17"], made["cbx-n3"]}


def test_an_id_prefix_reads_only_the_container_it_names(store, reads):
    ids = [store.create({}, None).id for _ in range(20)]
    target = ids[7]
    prefix = next(target[:n] for n in range(4, 64)
                  if sum(i.startswith(target[:n]) for i in ids) == 1)
    reads.clear()
    assert store.get(prefix).id == target
    assert {os.path.basename(os.path.dirname(p)) for p in reads} == {target}


def test_names_are_unique_and_rm_frees_them(store):
    first = store.create({}, "cbx-web")
    with pytest.raises(Conflict, match=first.id):
        store.create({}, "cbx-web")
    assert store.delete(first) is True
    assert store.delete(first) is False  # a concurrent rm that lost: no second destroy
    with pytest.raises(NotFound):
        store.get("cbx-web")
    again = store.create({}, "cbx-web")
    assert store.get("cbx-web").id == again.id != first.id


def test_a_link_whose_container_is_gone_counts_as_free(store, tmp):
    c = store.create({}, "cbx-stale")
    shutil.rmtree(c.dir)  # as if an engine died between the two steps of a remove
    with pytest.raises(NotFound):
        store.get("cbx-stale")
    assert store.get(store.create({}, "cbx-stale").id).name == "cbx-stale"


def test_a_root_made_before_the_index_gets_one(store, tmp):
    a = store.create({}, "cbx-old-a")
    b = store.create({}, None)
    shutil.rmtree(os.path.join(tmp, "names"))
    fresh = ContainerStore(tmp)
    assert fresh.get("cbx-old-a").id == a.id
    assert fresh.get(b.name).id == b.id
    with pytest.raises(Conflict):
        fresh.create({}, "cbx-old-a")


def test_generated_names_avoid_taken_ones(store):
    names = {store.create({}, None).name for _ in range(60)}
    assert len(names) == 60


def test_bad_references(store):
    a = store.create({}, None)
    with pytest.raises(InvalidArgument, match="required"):
        store.get("")
    with pytest.raises(NotFound, match="no such container: cbx-nobody"):
        store.get("cbx-nobody")
    with pytest.raises(InvalidArgument, match="invalid container name"):
        store.create({}, "bad/name")
    while True:  # another container sharing a's first character: the prefix is ambiguous
        b = store.create({}, None)
        if b.id[0] == a.id[0]:
            break
    with pytest.raises(InvalidArgument, match="ambiguous"):
        store.get(a.id[0])


def test_many_removals_at_once_all_succeed(store, tmp):
    # `docker rm -f a b c` removes in parallel: each removal needs a staging name of
    # its own until it is done
    import threading

    made = [store.create({}, f"cbx-par{i}") for i in range(48)]
    errors: list[BaseException] = []

    def remove(chunk):
        for c in chunk:
            try:
                assert store.delete(c) is True
            except BaseException as exc:  # noqa: BLE001 - carried to the test thread
                errors.append(exc)

    threads = [threading.Thread(target=remove, args=(made[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.list() == [] and os.listdir(os.path.join(tmp, "names")) == []
    assert os.listdir(os.path.join(tmp, "tmp")) == []
