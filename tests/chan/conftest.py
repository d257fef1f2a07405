"""Fixtures shared by the chan tests that run real peer processes or raw sockets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from chanpeers import Children  # noqa: E402


@pytest.fixture
def children(tmp_path):
    """Peer processes started by the test; every one is killed (by PID) at teardown."""
    kids = Children(tmp_path)
    yield kids
    kids.cleanup()


@pytest.fixture
def zctx():
    """A zmq context of our own for raw sockets; closes them all at teardown."""
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)
