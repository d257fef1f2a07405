"""engine.timefmt: times as Docker prints them."""

from __future__ import annotations

import time

import pytest

from engine.timefmt import ago, human_duration, parse_time_ns, rfc3339


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


def test_since_and_until_take_dockers_forms_exactly() -> None:
    now = 1_800_000_000_000_000_000
    assert parse_time_ns("10m", now_ns=now) == now - 600 * 10**9
    assert parse_time_ns("1h30m", now_ns=now) == now - 5400 * 10**9
    assert parse_time_ns("1.5s", now_ns=now) == now - 1_500_000_000
    assert parse_time_ns("1700000000") == 1_700_000_000 * 10**9
    assert parse_time_ns("1700000000.123456789") == 1_700_000_000_123_456_789  # no float on the way
    assert parse_time_ns("1700000000.25") == 1_700_000_000_250_000_000
    assert parse_time_ns(rfc3339(1_700_000_000_999_999_999)) == 1_700_000_000_999_999_999
    assert parse_time_ns("2023-11-14T22:13:20.5+01:00") == 1_699_996_400_500_000_000
    assert parse_time_ns("2023-11-14") == 1_699_920_000 * 10**9
    for bad in ("yesterday", "10x", "", "2023-13-45", "1700000000.1234567890"):
        with pytest.raises(ValueError, match="is not a time"):
            parse_time_ns(bad)
