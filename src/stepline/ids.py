"""Sortable unique ids (ULID) for events, runs and workers.

The ULID layout and text form (48 bits of milliseconds, 80 random bits, Crockford's
base32), monotonic within a millisecond as python-ulid makes them (the random part of a
later id in the same millisecond is the previous one's plus one), built with a few C
calls: every event and run takes one while its request or step waits, and python-ulid's
object model costs five times as much.
"""

from __future__ import annotations

import os
import threading
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [_CROCKFORD[i >> 5] + _CROCKFORD[i & 31] for i in range(1024)]  # two digits for every 10 bits
_RANDOM_MAX = (1 << 80) - 1
_lock = threading.Lock()
_last_ms = 0
_last_random = 0


def new_id() -> str:
    global _last_ms, _last_random
    now = time.time_ns() // 1_000_000
    with _lock:
        if now > _last_ms:
            _last_ms, _last_random = now, int.from_bytes(os.urandom(10), "big")
        elif _last_random < _RANDOM_MAX:
            _last_random += 1  # the same millisecond (or a clock that stepped back): still sorts after
        else:
            _last_ms, _last_random = _last_ms + 1, 0
        v = (_last_ms << 80) | _last_random
    p = _PAIRS  # 128 bits as 26 digits of 5 bits (the first holds 3), 10 bits at a time
    return (
        p[v >> 120] + p[(v >> 110) & 1023] + p[(v >> 100) & 1023] + p[(v >> 90) & 1023] + p[(v >> 80) & 1023]
        + p[(v >> 70) & 1023] + p[(v >> 60) & 1023] + p[(v >> 50) & 1023] + p[(v >> 40) & 1023] + p[(v >> 30) & 1023]
        + p[(v >> 20) & 1023] + p[(v >> 10) & 1023] + p[v & 1023]
    )
