"""The clock that due times are measured on.

Sleeps, wait and invoke timeouts, retry backoffs, cron ticks, rate-limit windows, run
timeouts and the times recorded on runs and steps are read from one ``Clock``, the
store's (``Store.clock``, given to ``open_store``); the engine reads it through the store.

On PostgreSQL many hosts set and compare these times, so each process's store keeps its
own ``Clock`` corrected to the database server's clock (``Store.align_clock``, read at
start and every minute): a host whose clock is off then neither ends other runs' sleeps
early nor sets its own late. On SQLite every process reads the one host's clock.

Leases are not on it. A lease is set and compared on the database's own clock
(``Conn.clock_ms``, docs/architecture.md "Leases and fencing"), and a worker's fence
and heartbeats use ``time.monotonic``. So a clock that jumps ahead (the one
``stepline.testing`` skips time with) makes timers due without making any lease
look expired.
"""

from __future__ import annotations

import time


class Clock:
    """Wall-clock time, in seconds and milliseconds since the epoch, plus ``correction_s``
    (the database's clock's lead over this host's; 0 until a store aligns it)."""

    def __init__(self) -> None:
        self.correction_s = 0.0

    def time(self) -> float:
        return time.time() + self.correction_s

    def now_ms(self) -> int:
        return int((time.time() + self.correction_s) * 1000)


SYSTEM = Clock()  # never corrected: SQLite's, and times read outside a store
