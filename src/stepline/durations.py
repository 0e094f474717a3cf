"""Durations given as "30s" / "5m" / "1h30m" / "1d", seconds, or timedelta."""

from __future__ import annotations

import datetime as dt
import math
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


# The furthest ahead a run may suspend itself, as on Inngest (its MaxSleepDuration): 366 days,
# so that a one-year sleep over a leap day fits. A duration taken from an event's data
# (``sleep(event.data.delay)``) could otherwise be past what the database holds, and the run
# that could not be saved suspended ran again at every lease, for ever.
MAX_SUSPEND_S = 366 * 86400.0


def check_suspension(seconds: float, *, field: str) -> float:
    """``seconds`` ahead, or a ConfigError naming ``field`` when it is past ``MAX_SUSPEND_S``
    (or not a number): the step fails at once rather than never being saved."""
    if math.isnan(seconds) or seconds > MAX_SUSPEND_S:
        shown = "not a number" if math.isnan(seconds) else f"{seconds / 86400:.4g} days ahead"
        raise errors.ConfigError(
            f"{field}: ends {shown}; a sleep, or the timeout of a wait or an invoke, lasts at most 366 days "
            "(as on Inngest): check where the duration comes from (an event's data?), or sleep again after a year"
        )
    return seconds
