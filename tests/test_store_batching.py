"""Writes deferred within a group commit, and the caches one transaction keeps."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable

import pytest

import stepline
from stepline.store import db
from tests.helpers import runs_for_event, wait_run
from tests.test_handoff import query


async def _while_writer_busy(database: db.Database, writes: list[Awaitable[object]]) -> list[object]:
    """Queue ``writes`` while the writer is busy with another, so they share the next group commit."""
    started = threading.Event()

    def hold(conn: db.Conn) -> None:
        started.set()
        time.sleep(0.3)

    holding = asyncio.ensure_future(database.write(hold))
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 5.0)
    results = await asyncio.gather(*writes, return_exceptions=True)
    await holding
    return results


async def _in_one_batch(database: db.Database, *ops: db.Op[object]) -> list[object]:
    """Run ``ops`` in one group commit."""
    return await _while_writer_busy(database, [database.write(op) for op in ops])


async def test_a_failed_operation_takes_its_deferred_writes_with_it(make_engine, db_url) -> None:
    engine = await make_engine(run_worker=False)
    insert = "INSERT INTO events (id, name, body, external_id, user_id, ts, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)"

    def failing(conn: db.Conn) -> None:
        conn.defer(insert, ("ev-lost", "x/y", "{}", None, None, 1, 1))
        raise ValueError("this operation fails after deferring a write")

    def kept(conn: db.Conn) -> int:
        conn.defer(insert, ("ev-kept", "x/y", "{}", None, None, 1, 1))
        return int(conn.scalar("SELECT COUNT(*) AS n FROM events WHERE id IN ('ev-lost', 'ev-kept')"))

    failed, seen = await _in_one_batch(engine.store.db, failing, kept)
    assert isinstance(failed, ValueError)
    assert seen == 1  # its own deferred row was written before its read; the failed op's never
    assert query(db_url, "SELECT id FROM events WHERE id IN ('ev-lost', 'ev-kept')") == [("ev-kept",)]


async def test_a_deferred_write_that_fails_fails_only_its_operation(make_engine, db_url) -> None:
    engine = await make_engine(run_worker=False)
    insert = "INSERT INTO events (id, name, body, external_id, user_id, ts, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)"

    def duplicate(conn: db.Conn) -> None:
        conn.defer(insert, ("ev-dup", "x/y", "{}", None, None, 1, 1))
        conn.defer(insert, ("ev-dup", "x/y", "{}", None, None, 1, 1))  # the primary key refuses it at flush

    def other(conn: db.Conn) -> None:
        conn.defer(insert, ("ev-other", "x/y", "{}", None, None, 1, 1))

    failed, ok = await _in_one_batch(engine.store.db, duplicate, other)
    assert isinstance(failed, Exception) and ok is None
    assert query(db_url, "SELECT id FROM events WHERE id IN ('ev-dup', 'ev-other')") == [("ev-other",)]


async def test_a_cancel_rule_made_by_one_event_catches_the_next_in_the_same_send(make_engine) -> None:
    """Ingest skips the wait lookup for names nobody waits for; a run created earlier in
    the same transaction with a cancel rule for that name must still be found."""
    app = stepline.App("batching-cancel")

    @app.function(
        id="cancellable",
        trigger=stepline.TriggerEvent("job/start"),
        cancel_on=[stepline.CancelOn("job/stop", match="data.job")],
        retries=0,
    )
    async def cancellable(ctx: stepline.Context) -> str:
        await ctx.step.sleep("nap", "30s")
        return "finished"

    engine = await make_engine(app)
    start_id, _ = await engine.send_many(
        [{"name": "job/start", "data": {"job": "j1"}}, {"name": "job/stop", "data": {"job": "j1"}}]
    )
    run = (await runs_for_event(engine, start_id))[0]
    done = await wait_run(engine, run["id"])
    assert done["status"] == "cancelled"


@pytest.mark.parametrize("count", [1, 3, 17])
async def test_runs_end_together_with_their_own_outcomes(make_engine, count: int) -> None:
    """Many runs finishing in one commit each keep their own status and output."""
    app = stepline.App("batching-end")

    @app.function(id="ends", trigger=stepline.TriggerEvent("job/end"), retries=0)
    async def ends(ctx: stepline.Context) -> int:
        if ctx.event.data["i"] % 3 == 2:
            raise stepline.NonRetriableError(f"run {ctx.event.data['i']} fails")
        return int(ctx.event.data["i"])

    engine = await make_engine(app)
    ids = await engine.send_many([{"name": "job/end", "data": {"i": i}} for i in range(count)])
    for i, event_id in enumerate(ids):
        run = (await runs_for_event(engine, event_id))[0]
        done = await wait_run(engine, run["id"])
        if i % 3 == 2:
            assert done["status"] == "failed" and f"run {i} fails" in done["error"]["message"]
        else:
            assert done["status"] == "completed" and done["output"] == i


async def test_a_shared_operation_that_fails_is_run_again_for_each_item_alone(make_engine, db_url) -> None:
    """Concurrent ingests share one operation per commit; when it raises, its writes roll
    back with it and each item is run again alone, so only the failing item's caller sees
    the error and the others' rows are committed."""
    engine = await make_engine(run_worker=False)
    insert = "INSERT INTO events (id, name, body, external_id, user_id, ts, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
    calls: list[list[str]] = []

    def insert_all(conn: db.Conn, items: list[str]) -> list[str]:
        calls.append(list(items))
        for item in items:
            conn.execute(insert, (f"ev-{item}", "x/y", "{}", None, None, 1, 1))
            if item == "bad":
                raise ValueError("the bad item fails the whole shared operation")
        return [f"ok-{item}" for item in items]

    kind = db.Batched("insert", insert_all, alone_on_error=True)
    database = engine.store.db
    results = await _while_writer_busy(database, [database.write_item(kind, item) for item in ("a", "bad", "c")])

    # First together, then each alone. (On PostgreSQL a commit's operations first run with no
    # savepoints, and again each in its own once one of them fails: calls may repeat.)
    together = [call for call in calls if len(call) > 1]
    assert together and together == [["a", "bad", "c"]] * len(together) and calls[: len(together)] == together
    assert {tuple(call) for call in calls[len(together):]} == {("a",), ("bad",), ("c",)}
    assert results[0] == "ok-a" and results[2] == "ok-c"
    assert isinstance(results[1], ValueError)
    assert sorted(query(db_url, "SELECT id FROM events WHERE id IN ('ev-a', 'ev-bad', 'ev-c')")) == [("ev-a",), ("ev-c",)]
