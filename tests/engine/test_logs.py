"""Reading the json-file log: batches, tails, and lines that are not what they should be."""

from __future__ import annotations

import json
import os

import pytest

from engine import logs


def _entry(i: int, stream: str = "stdout") -> bytes:
    return json.dumps({"log": f"line {i}\n", "stream": stream,
                       "time": "2026-11-28T00:00:00.000000000Z"}).encode() + b"\n"


@pytest.fixture
def log_file(tmp):
    return os.path.join(tmp, "container.log")


def test_batches_hold_every_line_in_order_a_read_at_a_time(log_file):
    with open(log_file, "wb") as f:
        for i in range(20000):  # ~1.6 MB: many 64 KiB reads
            f.write(_entry(i, "stderr" if i % 7 == 0 else "stdout"))
    batches = list(logs.read_batches(log_file))
    assert len(batches) > 10
    entries = [e for b in batches for e in b]
    assert [e["log"] for e in entries] == [f"line {i}\n" for i in range(20000)]
    assert [e["stream"] for e in entries[:8]] == ["stderr"] + ["stdout"] * 6 + ["stderr"]
    assert list(logs.read(log_file)) == entries


def test_a_damaged_line_costs_only_itself(log_file):
    with open(log_file, "wb") as f:
        f.write(_entry(1) + b'{"log": "torn\n' + _entry(2))
    entries = list(logs.read(log_file))
    assert [e["log"] for e in entries] == ["line 1\n", '{"log": "torn\n', "line 2\n"]
    assert entries[1]["corrupt"] is True and "corrupt" not in entries[0]


def test_tail_starts_at_the_last_lines(log_file):
    with open(log_file, "wb") as f:
        for i in range(100):
            f.write(_entry(i))
    assert [e["log"] for e in logs.read(log_file, tail=3)] == \
        ["line 97\n", "line 98\n", "line 99\n"]
    assert list(logs.read(log_file, tail=0)) == []


def test_a_missing_log_is_empty(log_file):
    assert list(logs.read_batches(log_file)) == []
