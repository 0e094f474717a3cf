"""Sortable unique ids (ULID) for events, runs and workers, increasing from any thread.

A ULID is 48 bits of milliseconds and 80 random bits, written in 26 characters of
Crockford's base32 (ulid-transform, in C: python-ulid's object and text form cost about
6 µs an id, and the ingest path takes two). Within one millisecond each id is the last
one plus one, as ULID's monotonic rule says, so ids made one after another sort in that
order; if the clock steps back, ids go on from the last millisecond given out.
"""

from __future__ import annotations

import os
import threading
import time

from ulid_transform import bytes_to_ulid

_RANDOM_BITS = 80

# The clock is read under the lock too: a thread switched out between reading it and
# drawing the random part could otherwise draw for an older millisecond after another
# thread moved on, and its next id would sort before its previous one.
_lock = threading.Lock()
_last = 0  # the last id given out, as an integer


def new_id() -> str:
    global _last
    with _lock:
        millisecond = time.time_ns() // 1_000_000
        if millisecond > _last >> _RANDOM_BITS:
            _last = millisecond << _RANDOM_BITS | int.from_bytes(os.urandom(_RANDOM_BITS // 8), "big")
        else:
            _last += 1
        value = _last
    return bytes_to_ulid(value.to_bytes(16, "big"))
