"""Sortable unique ids (ULID) for events, runs and workers: python-ulid's, increasing
within a millisecond, from any thread."""

from __future__ import annotations

import threading

from ulid import ULID

# python-ulid reads the clock before taking its generator's lock, so a thread switched out
# between the two can draw a fresh random part for an older millisecond after another
# thread moved on: its next id then sorts before its previous one. Reading the clock under
# a lock of ours keeps each thread's ids increasing.
_lock = threading.Lock()


def new_id() -> str:
    with _lock:
        return str(ULID())
