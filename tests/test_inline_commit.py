"""A lone write committed on its caller's thread (``Database.write_item_alone``): only
when nothing else is to be written, never ahead of a queued write, never blocking the
loop on a lock another connection holds; concurrent writes still share group commits."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from typing import Any

from stepline.store import db, open_store
from stepline.store import sqlite as sqlite_backend
from stepline.store.store import INLINE_MAX_EVENTS
from tests.test_handoff import query

INSERT = "INSERT INTO events (id, name, body, external_id, user_id, ts, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)"


class Recorder:
    """A shared operation that stores one event per item and notes, per call, the thread
    it ran on and the items it was given. An item named "bad…" is refused (its event
    stays written, as a shared operation's item error does not roll back the others');
    one named "raise…" makes the whole operation raise."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.kind = db.Batched("record", self._fn)

    def _fn(self, conn: db.Conn, items: list[str]) -> list[Any]:
        self.calls.append((threading.current_thread().name, list(items)))
        out: list[Any] = []
        for item in items:
            conn.defer(INSERT, (item, "x/y", "{}", None, None, 1, 1))
            if item.startswith("raise"):
                raise ValueError(f"{item} fails the operation")
            if item.startswith("bad"):
                out.append(ValueError(f"{item} is refused"))
            else:
                out.append(item.upper())
        return out

    def threads(self) -> set[str]:
        return {thread for thread, _ in self.calls}


def _writer_name(database: db.Database) -> str:
    return f"stepline-{database.dialect}-writer"


async def test_a_lone_write_commits_on_the_callers_thread_when_the_writer_is_idle(make_engine, db_url) -> None:
    engine = await make_engine(run_worker=False)
    database = engine.store.db
    recorder = Recorder()
    assert await database.write_item_alone(recorder.kind, "ev-1") == "EV-1"
    assert await database.write_item_alone(recorder.kind, "ev-2") == "EV-2"
    # SQLite commits in the caller's thread; PostgreSQL (a round trip away) always on its writer.
    expected = threading.current_thread().name if db_url.endswith(".db") else _writer_name(database)
    assert recorder.threads() == {expected}
    assert database.commits_inline == db_url.endswith(".db")
    assert query(db_url, "SELECT id FROM events WHERE id IN ('ev-1', 'ev-2') ORDER BY id") == [("ev-1",), ("ev-2",)]


async def test_writes_ready_together_share_the_writers_group_commit(make_engine, db_url) -> None:
    engine = await make_engine(run_worker=False)
    database = engine.store.db
    recorder = Recorder()
    items = [f"ev-{i:02d}" for i in range(20)]
    results = await asyncio.gather(*(database.write_item_alone(recorder.kind, item) for item in items))
    assert results == [item.upper() for item in items]
    assert recorder.threads() == {_writer_name(database)}  # none went alone
    assert len(recorder.calls) < len(items)  # they were grouped
    assert sorted(item for _, batch in recorder.calls for item in batch) == items


async def test_a_lone_write_never_overtakes_a_queued_one(make_engine, db_url) -> None:
    engine = await make_engine(run_worker=False)
    database = engine.store.db
    recorder = Recorder()
    order: list[str] = []
    started = threading.Event()

    def hold(conn: db.Conn) -> None:
        started.set()
        time.sleep(0.3)
        order.append("held")

    holding = asyncio.ensure_future(database.write(hold))
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 5.0)
    assert await database.write_item_alone(recorder.kind, "ev-after") == "EV-AFTER"
    order.append("alone")
    await holding
    assert order == ["held", "alone"]
    assert recorder.threads() == {_writer_name(database)}


async def test_a_lone_write_fails_as_a_queued_one_would_and_the_next_commits(make_engine, db_url) -> None:
    engine = await make_engine(run_worker=False)
    database = engine.store.db
    recorder = Recorder()
    for item, error in (("bad-1", "bad-1 is refused"), ("raise-1", "raise-1 fails the operation")):
        try:
            await database.write_item_alone(recorder.kind, item)
        except ValueError as exc:
            assert error in str(exc)
        else:
            raise AssertionError(f"{item}: the error did not reach its caller")
    assert await database.write_item_alone(recorder.kind, "ev-ok") == "EV-OK"
    # The refused item's write stays (the operation itself succeeded); the raising one's is rolled back.
    rows = query(db_url, "SELECT id FROM events WHERE id IN ('bad-1', 'raise-1', 'ev-ok') ORDER BY id")
    assert rows == [("bad-1",), ("ev-ok",)]


async def test_a_write_lock_held_elsewhere_queues_the_write_and_leaves_the_loop_free(sqlite_url) -> None:
    """Another process holding SQLite's write lock must not freeze the event loop: the write
    goes to the writer thread, which waits for the lock, and commits once it is free."""
    store = open_store(sqlite_url, migrate_now=False)
    await store.start()
    try:
        database = store.db
        recorder = Recorder()
        other = sqlite3.connect(sqlite_url, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            write = asyncio.ensure_future(database.write_item_alone(recorder.kind, "ev-late"))
            began = time.monotonic()
            await asyncio.sleep(0.3)
            # The loop ran on: a write blocked on the lock in this thread would have held it
            # until the other connection let go.
            assert time.monotonic() - began < 5.0
            assert not write.done() and recorder.calls == []
        finally:
            other.execute("COMMIT")
            other.close()
        assert await asyncio.wait_for(write, 10.0) == "EV-LATE"
        assert recorder.threads() == {_writer_name(database)}
        assert await database.write_item_alone(recorder.kind, "ev-next") == "EV-NEXT"  # alone again
        assert recorder.calls[-1][0] == threading.current_thread().name
    finally:
        await store.close()


async def test_the_writer_waits_out_a_lock_held_elsewhere_and_says_so(sqlite_url, monkeypatch, caplog) -> None:
    """The writer's connection has no busy timeout: the writer itself retries the lock for
    as long as another connection holds it, warning at each interval and once it is free,
    and the write then commits; nothing fails meanwhile."""
    monkeypatch.setattr(sqlite_backend, "LOCK_WARN_EVERY", 0.2)
    monkeypatch.setattr(sqlite_backend, "LOCK_WARN_FIRST", 0.2)
    store = open_store(sqlite_url, migrate_now=False)
    await store.start()
    try:
        recorder = Recorder()
        other = sqlite3.connect(sqlite_url, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            write = asyncio.ensure_future(store.db.write_item(recorder.kind, "ev-waited"))
            await asyncio.sleep(0.7)
            assert not write.done() and recorder.calls == []
        finally:
            other.execute("COMMIT")
            other.close()
        assert await asyncio.wait_for(write, 10.0) == "EV-WAITED"
    finally:
        await store.close()
    said = [r.getMessage() for r in caplog.records if r.name == "stepline.store.sqlite"]
    assert any("has held the write lock" in m and "waiting for it" in m for m in said), said
    assert any("is free again" in m for m in said), said


async def test_an_ingest_commits_inline_only_when_small(make_engine, db_url) -> None:
    """A batch of events past ``INLINE_MAX_EVENTS`` is committed by the writer, so the loop
    stays free while it is written; a small one alone goes inline (SQLite)."""
    engine = await make_engine(run_worker=False)
    store = engine.store
    seen: list[tuple[str, int]] = []
    shared = store._ingests.fn

    def spy(conn: db.Conn, items: list[Any]) -> list[Any]:
        seen.extend((threading.current_thread().name, len(events)) for events, _ in items)
        return shared(conn, items)

    store._ingests.fn = spy
    small = [{"name": "inline/small", "data": {"i": i}} for i in range(INLINE_MAX_EVENTS)]
    large = [{"name": "inline/large", "data": {"i": i}} for i in range(INLINE_MAX_EVENTS + 1)]
    assert len(await engine.send_many(small)) == INLINE_MAX_EVENTS
    assert len(await engine.send_many(large)) == INLINE_MAX_EVENTS + 1
    here = threading.current_thread().name if store.db.commits_inline else _writer_name(store.db)
    assert seen == [(here, INLINE_MAX_EVENTS), (_writer_name(store.db), INLINE_MAX_EVENTS + 1)]
    assert query(db_url, "SELECT COUNT(*) FROM events WHERE name IN ('inline/small', 'inline/large')") == [(2 * INLINE_MAX_EVENTS + 1,)]
