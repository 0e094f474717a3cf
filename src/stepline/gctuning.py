"""Garbage-collector settings for Stepline's own processes (``stepline dev``, ``start``, ``worker``).

A worker holding thousands of in-flight runs keeps hundreds of thousands of young
objects alive (tasks, coroutines, futures, events). With the interpreter's defaults
the collector promotes them quickly and then traverses the whole heap in full
collections of 100 ms and more, stalling every run in the process. Freezing what
start-up created (modules, functions, the apps) takes it out of every later
collection, and a larger first-generation threshold lets short-lived cycles die
young. An app that embeds Stepline keeps its own settings: only the commands call this.
"""

from __future__ import annotations

import gc

# Objects allocated between young collections; the interpreter's default is 700.
YOUNG_THRESHOLD = 10_000


def tune_for_worker() -> None:
    """Freeze the objects that exist now and collect young objects less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
