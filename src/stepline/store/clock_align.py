"""Keeps a store's clock on the database server's clock (PostgreSQL, where hosts share it).

Due times (sleeps, wait and retry timeouts, cron ticks, rate-limit windows) are written by
one host and compared by another. On each host's own clock, a worker 10 minutes ahead
ended other runs' 2-minute sleeps at once and set its own 10 minutes late. So every
process reads the database's clock at start and every minute, halfway through the
fastest of a few round trips, and corrects its store's ``Clock`` by the difference; the
error left is half a round trip. A host far off still gets a warning: its logs and the
times apps read from ``time.time()`` are off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from stepline import clock as clock_mod
from stepline.store import db

log = logging.getLogger("stepline.clock")

ALIGN_EVERY = 60.0  # seconds between readings of the database's clock
SAMPLES = 3  # round trips per reading; the fastest one's midpoint is used
MIN_CHANGE_S = 0.002  # a correction that moves less than this is noise: left as it is
# A reading whose fastest round trip took longer than this waited for a connection or a slow
# network, so its midpoint may be off by seconds: it neither corrects nor warns.
MAX_ROUND_TRIP_S = 0.25
SKEW_WARN_MS = 1000
SKEW_REPEAT = 600.0  # seconds between warnings while a host stays off


async def host_lead_ms(database: db.Database) -> float | None:
    """How far this host's clock is ahead of the database's (negative: behind), in ms; None
    when every round trip was too slow to tell."""
    samples: list[tuple[float, float]] = []  # (round trip, lead)
    for _ in range(SAMPLES):
        before = time.time()
        server_ms = await database.read(lambda conn: int(conn.scalar(f"SELECT {conn.clock_ms} AS now")))
        after = time.time()
        samples.append((after - before, (before + after) * 500 - server_ms))
    round_trip, lead = min(samples)
    return lead if round_trip <= MAX_ROUND_TRIP_S else None


class ClockAligner:
    """Corrects ``clock`` to ``database``'s clock now and every ``ALIGN_EVERY`` seconds."""

    def __init__(self, database: db.Database, clock: clock_mod.Clock) -> None:
        self._db = database
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._warned_at = 0.0

    async def start(self) -> None:
        with contextlib.suppress(Exception):  # uncorrected (this host's clock) until the next reading
            await self.align()
        self._task = asyncio.create_task(self._loop(), name="stepline-clock")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def align(self) -> float | None:
        """Read the database's clock and correct by it; returns this host's lead in ms (None:
        no reading good enough, nothing changed)."""
        lead_ms = await host_lead_ms(self._db)
        if lead_ms is None:
            return None
        correction = -lead_ms / 1000
        if abs(correction - self._clock.correction_s) >= MIN_CHANGE_S:
            self._clock.correction_s = correction
        self._warn_if_far(lead_ms)
        return lead_ms

    def _warn_if_far(self, lead_ms: float) -> None:
        now = time.monotonic()
        if abs(lead_ms) <= SKEW_WARN_MS or (self._warned_at and now - self._warned_at < SKEW_REPEAT):
            return
        self._warned_at = now
        log.warning(
            "this host's clock is %.1f s %s the database's: Stepline times sleeps, timeouts, retries and cron on the "
            "database's clock, but this host's logs and its apps' own times are off; keep hosts in sync (NTP)",
            abs(lead_ms) / 1000, "ahead of" if lead_ms > 0 else "behind",
        )

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(ALIGN_EVERY)
            with contextlib.suppress(Exception):  # a database outage is the other loops' to report
                await self.align()
