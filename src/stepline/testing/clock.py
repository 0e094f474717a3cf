"""``TestClock``: a clock that stands still until a test moves it."""

from __future__ import annotations

import datetime as dt
import time

from stepline import clock, errors


class TestClock(clock.Clock):
    """The time a ``TestEngine``'s due times are measured on: still, moved by ``advance``.

    It starts at ``start`` (an aware datetime or epoch seconds; default: the real time
    now). Standing still makes a test's timers deterministic: a sleep, a wait's timeout
    or a retry's backoff comes due only when the test moves the clock past it.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, start: dt.datetime | float | None = None) -> None:
        if isinstance(start, dt.datetime):
            if start.tzinfo is None:
                raise errors.ConfigError(f"TestClock start: expected a timezone-aware datetime, got {start!r}")
            start = start.timestamp()
        self._now = time.time() if start is None else float(start)

    def time(self) -> float:
        return self._now

    def now_ms(self) -> int:
        return int(self._now * 1000)

    def now(self) -> dt.datetime:
        """The clock's time as an aware UTC datetime."""
        return dt.datetime.fromtimestamp(self._now, dt.timezone.utc)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise errors.ConfigError(f"the test clock only moves forward; got {seconds!r} seconds")
        self._now += seconds
