"""What a worker counts between two flushes to the database.

Lease losses and retries happen in worker processes, which serve no ``/metrics`` of
their own; each worker adds what it counted to totals kept in the database (with its
heartbeat), so any API server's ``/metrics`` reports them for every process. A count not
yet flushed when a process is killed is lost: these are operators' figures, not records.
"""

from __future__ import annotations

import collections

# Counter names, as /metrics shows them (stepline_<name>_total).
LEASE_LOSSES = "lease_losses"
RETRIES = "retries"

# (counter name, function id, detail) -> how many since the last flush
Key = tuple[str, str, str]


class Counters:
    def __init__(self) -> None:
        self._pending: collections.Counter[Key] = collections.Counter()

    def add(self, name: str, function_id: str, detail: str, n: int = 1) -> None:
        self._pending[(name, function_id, detail)] += n

    def take(self) -> dict[Key, int]:
        """What was counted since the last take; ``give_back`` it if it could not be saved."""
        taken, self._pending = dict(self._pending), collections.Counter()
        return taken

    def give_back(self, taken: dict[Key, int]) -> None:
        self._pending.update(taken)
