"""engine.timefmt: times as Docker prints them."""

from __future__ import annotations

import time

import pytest

from engine.timefmt import ago, human_duration, rfc3339


@pytest.mark.parametrize("seconds, says", [
    (0.4, "Less than a second"), (1, "1 second"), (59, "59 seconds"), (60, "About a minute"),
    (119, "About a minute"), (120, "2 minutes"), (3599, "59 minutes"), (3600, "About an hour"),
    (5400, "2 hours"), (47 * 3600, "47 hours"), (3 * 86400, "3 days"), (20 * 86400, "2 weeks"),
    (100 * 86400, "3 months"), (800 * 86400, "2 years"),
])
def test_durations_read_as_docker_ps_says_them(seconds: float, says: str) -> None:
    assert human_duration(seconds) == says


def test_ago_takes_nanoseconds_seconds_and_rfc3339_with_any_offset() -> None:
    now = 1_800_000_000.0
    assert ago(int((now - 5) * 1e9), now=now) == "5 seconds ago"
    assert ago(int(now - 300), now=now) == "5 minutes ago"
    assert ago(rfc3339(int((now - 7200) * 1e9)), now=now) == "2 hours ago"
    local = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - 90 + 2 * 3600)) + ".5+02:00"
    assert ago(local, now=now) == "About a minute ago"
    assert ago(None) == ago("") == ago("not a time") == ago(0) == ""
