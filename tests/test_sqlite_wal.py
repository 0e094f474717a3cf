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


async def _fill_while_reads_overlap(sqlite_url: str, commits: int, pause: float) -> list[int]:
    """Ingest ``commits`` batches of ten 4 KB events, ``pause`` s apart (writes keep coming, as
    under load), while reads overlap; the WAL's size after each."""
    store = open_store(sqlite_url, migrate_now=False)
    await store.start()
    stop = threading.Event()
    readers = _overlapping_reads(sqlite_url, stop)
    sizes: list[int] = []
    try:
        pad = "x" * 4000
        for _ in range(commits):
            await store.ingest([event_mod.Event(name="wal/fill", data={"pad": pad, "n": i}) for i in range(10)])
            sizes.append(os.path.getsize(sqlite_url + "-wal"))
            await asyncio.sleep(pause)
    finally:
        stop.set()
        for thread in readers:
            thread.join()
        await store.close()
    return sizes


async def test_the_wal_is_truncated_past_its_limit_while_reads_overlap(sqlite_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    limit = 256 * 1024
    monkeypatch.setattr(sqlite_backend._Checkpointer, "WAL_LIMIT", limit, raising=False)  # absent before the limit existed
    largest = max(await _fill_while_reads_overlap(sqlite_url, commits=250, pause=0.02))  # about 10 MB of events
    # Unbounded, the log holds every page written (10 MB and more); truncated past the
    # limit, it stays within a few checkpoint intervals' worth of writes above it.
    assert largest < 20 * limit, f"the WAL reached {largest} bytes"


async def test_the_wal_restarts_under_steady_writes_without_a_size_limit(sqlite_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A checkpoint beside a busy writer never catches up with it, so SQLite never restarted
    the log: it grew by every page written (80 MB/s under one HTTP connection's ingests)
    until the size limit's truncation held every write for tens of milliseconds. The
    catch-up under the writer's lock lets it restart from its beginning, which SQLite
    marks by counting up the checkpoint sequence number in the log's header."""
    monkeypatch.setattr(sqlite_backend._Checkpointer, "WAL_LIMIT", 2**40)  # no truncation to hide a growing log
    monkeypatch.setattr(sqlite_backend._Checkpointer, "CATCH_UP_FRAMES", 100, raising=False)  # absent before the catch-up
    store = open_store(sqlite_url, migrate_now=False)
    await store.start()
    sequences: set[int] = set()
    commits = 0
    try:
        until = time.monotonic() + 2.0  # ten checkpoint rounds at least
        while time.monotonic() < until or commits < 400:
            await store.ingest([event_mod.Event(name="wal/steady", data={"pad": "x" * 3000, "n": commits})])
            commits += 1
            sequences.add(_wal_checkpoint_sequence(sqlite_url))
            if commits % 50 == 0:
                await store.list_events(limit=5)  # short reads between the writes, as a polled API makes
    finally:
        await store.close()
    assert len(sequences) >= 4, f"the WAL restarted {len(sequences) - 1} times in {commits} commits"


def _wal_checkpoint_sequence(path: str) -> int:
    """The checkpoint sequence number in the WAL's header (bytes 12-15): one more at each restart."""
    with open(path + "-wal", "rb") as wal:
        return int.from_bytes(wal.read(16)[12:16], "big")


async def test_truncating_the_wal_holds_this_process_writes_on_a_lock_not_a_poll(sqlite_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A truncation holds SQLite's write lock; the writer meets it as another connection's
    lock and polled it with growing sleeps (a 10 ms truncation cost a write 30 ms). The
    checkpointer now holds the writer's own lock meanwhile, so writes wait on that."""
    monkeypatch.setattr(sqlite_backend._Checkpointer, "WAL_LIMIT", 128 * 1024)
    polls: list[float] = []
    wait_for_lock = sqlite_backend.SQLiteDatabase._wait_for_lock

    def counted(self, conn, since):  # type: ignore[no-untyped-def]
        polls.append(since)
        return wait_for_lock(self, conn, since)

    monkeypatch.setattr(sqlite_backend.SQLiteDatabase, "_wait_for_lock", counted)
    sizes = await _fill_while_reads_overlap(sqlite_url, commits=150, pause=0.01)
    truncations = sum(later < earlier for earlier, later in zip(sizes, sizes[1:]))
    assert truncations > 0, "the log was never truncated: the test proves nothing"
    assert polls == [], f"the writer polled SQLite's lock {len(polls)} times while this process's checkpointer held it"
