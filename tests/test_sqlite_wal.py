"""SQLite's WAL stays bounded while writes never stop and reads overlap.

PASSIVE checkpoints copy the log back into the file but never restart it while a reader
still uses it; with reads overlapping without end (an API or a dashboard polled while
workers write), the log grew by everything written. Past ``WAL_LIMIT`` the checkpointer
truncates it as soon as the readers let it.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time

from stepline import event as event_mod
from stepline.store import open_store
from stepline.store import sqlite as sqlite_backend


def _overlapping_reads(path: str, stop: threading.Event) -> list[threading.Thread]:
    """Two readers whose read transactions overlap, so that one is always open."""

    def read(offset: float) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        time.sleep(offset)
        while not stop.is_set():
            conn.execute("BEGIN")
            conn.execute("SELECT COUNT(*) FROM events").fetchone()
            time.sleep(0.02)
            conn.execute("COMMIT")
            time.sleep(0.005)
        conn.close()

    threads = [threading.Thread(target=read, args=(offset,), daemon=True) for offset in (0.0, 0.012)]
    for thread in threads:
        thread.start()
    return threads


async def test_the_wal_is_truncated_past_its_limit_while_reads_overlap(sqlite_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    limit = 256 * 1024
    monkeypatch.setattr(sqlite_backend._Checkpointer, "WAL_LIMIT", limit, raising=False)  # absent before the limit existed
    store = open_store(sqlite_url, migrate_now=False)
    await store.start()
    stop = threading.Event()
    readers = _overlapping_reads(sqlite_url, stop)
    largest = 0
    try:
        pad = "x" * 4000
        for _ in range(250):  # about 10 MB of events, in many commits
            events = [event_mod.Event(name="wal/fill", data={"pad": pad, "n": i}) for i in range(10)]
            await store.ingest(events)
            largest = max(largest, os.path.getsize(sqlite_url + "-wal"))
            await asyncio.sleep(0.02)  # writes keep coming, as under load
    finally:
        stop.set()
        for thread in readers:
            thread.join()
        await store.close()
    # Unbounded, the log holds every page written (10 MB and more); truncated past the
    # limit, it stays within a few checkpoint intervals' worth of writes above it.
    assert largest < 20 * limit, f"the WAL reached {largest} bytes"
