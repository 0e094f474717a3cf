"""How a background loop reports failures that repeat while the database is down.

A worker's loops try again every fraction of a second; logging each failure in full
filled logs with one traceback every half second for as long as a disk stayed full or
a server stayed away. An outage is logged when it begins (with the traceback only when
the failure is not the database's: that one is a bug worth reading), then once every
``REPEAT_EVERY`` seconds with how long it has lasted, and once when the loop works again
(a success ``SETTLE`` seconds or more after the last failure).
"""

from __future__ import annotations

import logging
import time

from stepline import errors

REPEAT_EVERY = 30.0  # seconds between reminders while the failures go on
# Seconds without a failure before a success ends an outage. Successes and failures can
# alternate while one lasts (a full disk takes small writes in the free pages of SQLite's
# log and refuses larger ones): each success ended it and the next failure began another,
# two lines a second for as long as the disk stayed full.
SETTLE = 5.0


class OutageLog:
    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what  # "claiming runs", "the heartbeat", ...
        self._since: float | None = None
        self._told_at = 0.0
        self._failed_at = 0.0
        self._failures = 0

    def failed(self, exc: BaseException) -> None:
        """Call from the loop's ``except`` block."""
        now = self._failed_at = time.monotonic()
        self._failures += 1
        if self._since is None:
            self._since = self._told_at = now
            if _the_databases(exc):
                self._log.warning("%s failed: %s; retrying", self._what, exc)
            else:
                self._log.error("%s failed; retrying", self._what, exc_info=exc)
        elif now - self._told_at >= REPEAT_EVERY:
            self._told_at = now
            self._log.warning(
                "%s has failed for %.0f s (%d attempts), the last time with: %s; still retrying",
                self._what, now - self._since, self._failures, exc,
            )

    def worked(self) -> None:
        """Call after each success: ends an outage, if one was going on."""
        if self._since is not None and time.monotonic() - self._failed_at >= SETTLE:
            self._log.warning("%s works again after %.0f s (%d failed attempts)", self._what, time.monotonic() - self._since, self._failures)
            self._since = None
            self._failures = 0


def _the_databases(exc: BaseException) -> bool:
    """A failure of the database (or of reaching it), as opposed to a bug in the loop."""
    return isinstance(exc, errors.StoreError) or type(exc).__module__.split(".")[0] in ("psycopg", "psycopg_pool", "sqlite3")
