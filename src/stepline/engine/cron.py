"""Cron ticks: when a schedule next fires, in its time zone."""

from __future__ import annotations

import datetime as dt
import zoneinfo

from croniter import croniter


def next_tick_ms(cron: str, timezone: str, after_ms: int) -> int:
    """The first tick strictly after ``after_ms`` (epoch milliseconds)."""
    zone = zoneinfo.ZoneInfo(timezone)
    start = dt.datetime.fromtimestamp(after_ms / 1000, zone)
    tick: dt.datetime = croniter(cron, start).get_next(dt.datetime)
    return int(tick.timestamp() * 1000)
