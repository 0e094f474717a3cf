"""Durations given as "30s" / "5m" / "1h30m" / "1d", seconds, or timedelta."""

from __future__ import annotations

import datetime as dt
import re

from stepline import errors

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")

Duration = str | int | float | dt.timedelta


def parse(value: Duration, *, field: str = "duration") -> float:
    """Seconds in ``value``; raises ConfigError naming ``field`` when it is not a duration."""
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise errors.ConfigError(f"{field}: expected a duration like '30s', got {value!r}")
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        pos, seconds = 0, 0.0
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if not text or pos != len(text):
            raise errors.ConfigError(
                f"{field}: {value!r} is not a duration; write it like '500ms', '30s', '5m', "
                "'1h30m', '1d', or pass seconds or a timedelta"
            )
    else:
        raise errors.ConfigError(
            f"{field}: expected a duration like '30s', seconds or a timedelta, got {value!r}"
        )
    if seconds < 0:
        raise errors.ConfigError(f"{field}: duration must not be negative, got {value!r}")
    return seconds
