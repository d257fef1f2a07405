"""Times as Docker prints them: RFC 3339 for machines, "5 minutes ago" for people."""

from __future__ import annotations

import time

__all__ = ["rfc3339", "human_duration", "ago", "parse_time_ns"]


def rfc3339(ns: int | None) -> str:
    """``ns`` as Docker prints times (RFC 3339 with nanoseconds, UTC); zero time if unset."""
    if not ns:
        return "0001-01-01T00:00:00Z"
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def human_duration(seconds: float) -> str:
    """A duration the way ``docker ps`` says it ("3 seconds", "About a minute", "2 days")."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 14:
        return f"{hours // 24} days"
    if hours < 24 * 60:
        return f"{hours // (24 * 7)} weeks"
    if hours < 24 * 730:
        return f"{hours // (24 * 30)} months"
    return f"{int(seconds // (3600 * 24 * 365))} years"


def ago(when: int | float | str | None, now: float | None = None) -> str:
    """``when`` (ns since the epoch, or an RFC 3339 string) as "5 minutes ago"; "" if unknown."""
    if isinstance(when, str):
        ns = _parse_rfc3339_ns(when)
        when = ns / 1e9 if ns is not None else None
    if not when:
        return ""
    sec = when / 1e9 if when > 1e12 else float(when)
    return human_duration((time.time() if now is None else now) - sec) + " ago"


def parse_time_ns(text: str, now_ns: int | None = None) -> int:
    """``docker logs --since``'s forms as nanoseconds since the epoch, exactly (a time
    copied from ``logs -t`` must find its own line): a duration back from now (``10m``,
    ``1h30m``, ``45s``), an RFC 3339 time, a date, or Unix seconds with up to nine
    decimals.  Raises ValueError naming the forms."""
    import re

    text = text.strip()
    if re.fullmatch(r"(\d+(\.\d+)?(h|m|s|ms))+", text):
        units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
        back = sum(float(n) * units[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)(ms|h|m|s)", text))
        return (time.time_ns() if now_ns is None else now_ns) - int(back * 1e9)
    if m := re.fullmatch(r"(\d+)(?:\.(\d{1,9}))?", text):
        return int(m[1]) * 1_000_000_000 + int((m[2] or "0").ljust(9, "0"))
    if re.fullmatch(r"\d{4}-\d\d-\d\d", text):
        text += "T00:00:00Z"
    stamp = _parse_rfc3339_ns(text)
    if stamp is None:
        raise ValueError(f"{text!r} is not a time: give a duration (10m, 1h30m), an RFC 3339 "
                         "time (2026-11-28T10:00:00Z), a date or Unix seconds")
    return stamp


def _parse_rfc3339_ns(text: str) -> int | None:
    import calendar
    import datetime
    import re

    m = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?"
                     r"(?:[Zz]|([+-])(\d\d):(\d\d))?", text.strip())
    if m is None:
        return None
    y, mo, d, h, mi, sec = (int(g) for g in m.groups()[:6])
    try:
        datetime.datetime(y, mo, d, h, mi, min(sec, 59))  # (a leap second is :60)
        stamp = calendar.timegm((y, mo, d, h, mi, sec, 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    if m[8]:
        offset = int(m[9]) * 3600 + int(m[10]) * 60
        stamp -= offset if m[8] == "+" else -offset
    return stamp * 1_000_000_000 + int((m[7] or "0")[:9].ljust(9, "0"))
