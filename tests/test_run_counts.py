"""Runs per function and status as ``/metrics`` reports them: kept by triggers as runs
change (migration 0026), exact after every kind of change and whoever makes it, and read
at a cost that does not grow with the runs stored."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import psycopg

import stepline
from stepline.engine import Engine
from stepline.store import Store, open_store, ops_run_counts, sqlite
from stepline.store.sqlite import SQLiteConn
from tests.helpers import counting_vm_instructions, eventually, runs_for_event, wait_run

DAY = 86400.0
Counts = dict[tuple[str, str], int]


async def counted(engine: Engine) -> Counts:
    """The runs stored, counted row by row."""
    rows = await engine.store.db.read(
        lambda conn: conn.all("SELECT function_id, status, COUNT(*) AS n FROM runs GROUP BY function_id, status")
    )
    return {(r["function_id"], r["status"]): int(r["n"]) for r in rows}


async def kept(engine: Engine | Store) -> Counts:
    store = engine.store if isinstance(engine, Engine) else engine
    return {(c["function_id"], c["status"]): c["count"] for c in await store.status_counts()}


async def in_one_snapshot(engine: Engine) -> tuple[Counts, Counts]:
    """The kept counts and a count of the rows, read by one statement (one snapshot) while
    runs change."""
    rows = await engine.store.db.read(lambda conn: conn.all(
        f"SELECT 'kept' AS source, function_id, status, n FROM ({ops_run_counts.STATUS_COUNTS}) k "
        "UNION ALL SELECT 'rows', function_id, status, COUNT(*) FROM runs GROUP BY function_id, status"
    ))
    out: tuple[Counts, Counts] = ({}, {})
    for r in rows:
        out[r["source"] == "rows"][(r["function_id"], r["status"])] = int(r["n"])
    return out


async def assert_exact(engine: Engine) -> Counts:
    """The kept counts equal a count of the rows, before and after a fold."""
    expected = await counted(engine)
    assert await kept(engine) == expected
    await engine.store.fold_run_counts()
    assert await kept(engine) == expected
    return expected


def lifecycle_app() -> stepline.App:
    app = stepline.App("counts")

    @app.function(id="ok", trigger=stepline.TriggerEvent("c/ok"))
    async def ok(ctx: stepline.Context) -> str:
        return await ctx.step.run("only", lambda: "done")

    @app.function(id="boom", trigger=stepline.TriggerEvent("c/boom"), retries=0)
    async def boom(ctx: stepline.Context) -> str:
        def fail() -> str:
            raise RuntimeError("fails for the test")

        return await ctx.step.run("fail", fail)

    @app.function(id="nap", trigger=stepline.TriggerEvent("c/nap"))
    async def nap(ctx: stepline.Context) -> str:
        await ctx.step.sleep("nap", "30d")
        return "woke"

    @app.function(id="wait", trigger=stepline.TriggerEvent("c/wait"))
    async def wait(ctx: stepline.Context) -> Any:
        return await ctx.step.wait_for_event("reply", event="c/reply", match="data.k", timeout="30d")

    return app


async def started(engine: Engine, name: str, n: int, *statuses: str) -> list[str]:
    ids = []
    for i in range(n):
        run = (await runs_for_event(engine, await engine.send({"name": name, "data": {"k": f"k{i}"}})))[0]
        await wait_run(engine, run["id"], *statuses)
        ids.append(run["id"])
    return ids


async def test_counts_match_the_stored_runs_through_every_kind_of_change(clocked) -> None:
    """Runs that complete, fail, sleep, wait, are cancelled, replayed, resumed, deleted by
    retention, and rows written by hand (a tool, an older release: an end, an end undone, a
    delete, an ended run imported): the counts stay exact."""
    clock, make = clocked
    engine = await make(lifecycle_app(), retention=DAY)
    await started(engine, "c/ok", 3, "completed")
    failed = await started(engine, "c/boom", 2, "failed")
    sleeping = await started(engine, "c/nap", 3, "sleeping")
    waiting = await started(engine, "c/wait", 3, "waiting")
    assert await assert_exact(engine) == {
        ("ok", "completed"): 3, ("boom", "failed"): 2, ("nap", "sleeping"): 3, ("wait", "waiting"): 3,
    }

    await engine.cancel(sleeping[0])
    await wait_run(engine, sleeping[0], "cancelled")
    replayed = await engine.replay(failed[0])
    await wait_run(engine, replayed, "failed")
    await engine.send({"name": "c/reply", "data": {"k": "k0"}})
    await wait_run(engine, waiting[0], "completed")
    assert (await assert_exact(engine))[("boom", "failed")] == 3

    clock.advance(2 * DAY)  # everything finished is past its retention
    report = await engine.retention.sweep(force=True)
    assert report is not None and report.deleted["runs"] == 3 + 3 + 1 + 1  # ok, boom, nap, wait
    assert await assert_exact(engine) == {("nap", "sleeping"): 2, ("wait", "waiting"): 2}

    def by_hand(conn: Any) -> None:
        conn.execute("UPDATE runs SET status = 'cancelled' WHERE id = ?", (waiting[1],))
        conn.execute("UPDATE runs SET progress = 0.5 WHERE id = ?", (waiting[2],))  # no status change
        conn.execute("DELETE FROM runs WHERE id = ?", (sleeping[1],))

    await engine.store.db.write(by_hand)
    assert await assert_exact(engine) == {
        ("nap", "sleeping"): 1, ("wait", "waiting"): 1, ("wait", "cancelled"): 1,
    }

    def imported_and_reopened(conn: Any) -> None:
        conn.execute(
            "INSERT INTO runs (id, function_id, event_id, status, created_at, updated_at, ended_at) "
            "VALUES ('imported', 'boom', 'e', 'failed', 1, 1, 1)"
        )
        conn.execute("UPDATE runs SET status = 'queued' WHERE id = ?", (waiting[1],))  # an end undone

    await engine.store.db.write(imported_and_reopened)
    assert await assert_exact(engine) == {
        ("nap", "sleeping"): 1, ("wait", "waiting"): 1, ("wait", "queued"): 1, ("boom", "failed"): 1,
    }


def busy_app() -> stepline.App:
    app = stepline.App("busy")
    for name in ("a", "b"):

        @app.function(id=name, trigger=stepline.TriggerEvent(f"busy/{name}"))
        async def work(ctx: stepline.Context) -> int:
            total = 0
            for i in range(2):
                total += await ctx.step.run(f"s{i}", lambda i=i: i)
            return total

    return app


async def test_counts_stay_exact_with_two_workers_and_folds_while_runs_change(make_pg_engine) -> None:
    """PostgreSQL: two engines (two writers) move runs of two functions through their
    statuses at once while folds run over and over beside them; no change is lost or
    counted twice, and no writer waits on another's count (no deadlock, none stuck)."""
    first = await make_pg_engine(busy_app())
    second = await make_pg_engine(busy_app())
    folding = True

    async def fold_all_along() -> int:
        folded = 0
        while folding:
            folded += await first.store.fold_run_counts()
            await asyncio.sleep(0.005)
        return folded

    folder = asyncio.create_task(fold_all_along())
    try:
        sent = await send_rounds(first, second)

        seen: list[Counts] = [{}]

        async def all_completed() -> bool:
            seen[0] = await counted(first)
            return seen[0] == {("a", "completed"): sent // 2, ("b", "completed"): sent // 2}

        await eventually(all_completed, timeout=60, what="every run to complete", diagnose=lambda: str(seen[0]))
    finally:
        folding = False
        folded = await folder
    assert folded > 0, "the folds found nothing to fold: the test did not exercise them"
    assert await assert_exact(first) == {("a", "completed"): sent // 2, ("b", "completed"): sent // 2}
    assert await first.store.fold_run_counts() == 0  # all folded: nothing pending


async def send_rounds(first: Engine, second: Engine) -> int:
    sent = 0
    for round_ in range(8):
        for engine in (first, second):
            events = [{"name": f"busy/{'ab'[i % 2]}", "data": {"r": round_, "i": i}} for i in range(24)]
            await engine.send_many(events)
            sent += len(events)
        kept_now, counted_now = await in_one_snapshot(first)
        assert kept_now == counted_now  # exact mid-flight, folded or not
    return sent


async def test_reading_the_counts_does_not_read_the_runs(make_sqlite_engine, sqlite_url: str) -> None:
    """The counts for 3 runs and for 3,000 cost one read alike (fails when they are counted
    from ``runs``: a scan of every stored run per /metrics scrape)."""
    engine = await make_sqlite_engine(lifecycle_app())
    await started(engine, "c/ok", 3, "completed")

    def cost() -> int:
        conn = sqlite.connect(sqlite_url.removeprefix("sqlite:///"))
        try:
            with counting_vm_instructions(conn) as n:
                ops_run_counts.status_counts_txn(SQLiteConn(conn))
            return n[0]
        finally:
            conn.close()

    few = cost()

    def many(conn: Any) -> None:  # 3,000 finished runs, as a bulk load would leave them
        conn.executemany(
            "INSERT INTO runs (id, function_id, event_id, status, created_at, updated_at, ended_at) "
            "VALUES (?, 'ok', 'e', 'completed', 1, 1, 1)",
            [(f"bulk-{i:05d}",) for i in range(3000)],
        )

    await engine.store.db.write(many)
    assert await assert_exact(engine) == {("ok", "completed"): 3003}
    assert cost() <= few + 20, (few, cost())


async def test_upgrading_counts_the_runs_already_stored(postgres_url: str, tmp_path: Any) -> None:
    """A database of an earlier release, runs in it, migrated: the counts start from them."""
    from tests.test_migrations import apply_first

    for url in (f"sqlite:///{tmp_path / 'old.db'}", _fresh_pg(postgres_url)):
        total = len(apply_first(url, 25))
        assert total == 25
        _insert_runs(url, [("f", "completed")] * 4 + [("f", "failed")] * 2 + [("g", "queued")])
        store = open_store(url, migrate_now=True)
        try:
            assert await kept(store) == {("f", "completed"): 4, ("f", "failed"): 2, ("g", "queued"): 1}
        finally:
            await store.close()


def _fresh_pg(postgres_url: str) -> str:
    """``postgres_url``'s database emptied of its schema, to be migrated from the start."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return postgres_url


def _insert_runs(url: str, runs: list[tuple[str, str]]) -> None:
    sql = "INSERT INTO runs (id, function_id, event_id, status, created_at, updated_at) VALUES ({0}, {0}, 'e', {0}, 1, 1)"
    rows = [(f"run-{i}", fn, status) for i, (fn, status) in enumerate(runs)]
    if url.startswith("sqlite"):
        with sqlite3.connect(url[len("sqlite:///"):]) as conn:
            conn.executemany(sql.format("?"), rows)
    else:
        with psycopg.connect(url) as conn:
            conn.cursor().executemany(sql.format("%s"), rows)
