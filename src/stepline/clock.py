"""The clock that due times are measured on.

Sleeps, wait and invoke timeouts, retry backoffs, cron ticks, run timeouts and the
times recorded on runs and steps are read from one ``Clock``, the store's
(``Store.clock``, given to ``open_store``); the engine reads it through the store.

Leases are not on it. A lease is set and compared on the database's own clock
(``Conn.clock_ms``, docs/architecture.md "Leases and fencing"), and a worker's fence
and heartbeats use ``time.monotonic``. So a clock that jumps ahead (the one
``stepline.testing`` skips time with) makes timers due without making any lease
look expired.
"""

from __future__ import annotations

import time


class Clock:
    """Wall-clock time, in seconds and milliseconds since the epoch (the default)."""

    def time(self) -> float:
        return time.time()

    def now_ms(self) -> int:
        return int(time.time() * 1000)


SYSTEM = Clock()
