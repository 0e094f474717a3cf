"""Durations and times as the SDKs write them.

Go-style durations ("30s", "1h30m", "1.5h", "500ms", "2d", "1w") and RFC 3339
times (a PY sleep's ``name`` is an absolute ISO time; a TS sleep's is "5s").
"""

from __future__ import annotations

import datetime as dt
import re

from stepline import durations as base_durations
from stepline import errors

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d|w)")


def parse_duration(text: str | float, *, field: str) -> float:
    """Seconds in a Go-style duration (a bare number counts as seconds)."""
    if isinstance(text, bool):
        raise errors.ConfigError(f"{field}: expected a duration like '30s', got {text!r}")
    if isinstance(text, (int, float)):
        return float(text)
    value = str(text).strip()
    if value.isdigit():
        return float(value)
    pos, seconds = 0, 0.0
    for match in _PART.finditer(value):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not value or pos != len(value):
        raise errors.ConfigError(f"{field}: {text!r} is not a duration; write it like '500ms', '30s', '5m', '1h30m', '1d'")
    return seconds


def parse_time(text: str) -> dt.datetime | None:
    """An aware datetime from RFC 3339 / ISO 8601 text, or None if it is not one."""
    value = text.strip()
    if len(value) < 10:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def until(text: str | float, *, field: str, now: dt.datetime | None = None) -> dt.datetime:
    """The moment a duration or a time points at (a time in the past means now)."""
    now = now or dt.datetime.now(dt.UTC)
    if isinstance(text, str):
        moment = parse_time(text)
        if moment is not None:
            return max(moment, now)
    # Past a year the step fails, naming the limit (a timedelta of 1e300 s would overflow first).
    return now + dt.timedelta(seconds=base_durations.check_suspension(parse_duration(text, field=field), field=field))


def seconds_until(text: str | float, *, field: str) -> float:
    """Seconds from now to a duration or time (for timeouts given either way)."""
    now = dt.datetime.now(dt.UTC)
    return max(0.0, (until(text, field=field, now=now) - now).total_seconds())
