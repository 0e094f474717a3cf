"""Operating retention: the background sweep in a server, /metrics, one sweeper at a time
across processes, `stepline admin`, SQLite's file size, backups taken under load."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

import stepline
from stepline import errors
from stepline.engine import Engine
from stepline.engine import retention as retention_mod
from stepline.store import open_store
from stepline.testing import TestClock
from tests.conftest import TEST_SETTINGS
from tests.helpers import eventually, runs_for_event, send_and_wait, wait_for
from tests.server_live import ServeFactory, serve  # noqa: F401 - the fixture

DAY = 86400.0


def quick_app() -> stepline.App:
    app = stepline.App("ops")

    @app.function(id="quick", trigger=stepline.TriggerEvent("t/quick"))
    async def quick(ctx: stepline.Context) -> str:
        return await ctx.step.run("only", lambda: "x" * int(ctx.event.data.get("size", 10)))

    @app.function(id="multi", trigger=stepline.TriggerEvent("t/multi"))
    async def multi(ctx: stepline.Context) -> int:
        total = 0
        for i in range(3):
            total += await ctx.step.run(f"s{i}", lambda i=i: i + 1)
        return total

    return app


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stepline.cli", *args], capture_output=True, text=True, timeout=120)


def metric(text: str, name: str, **labels: str) -> float | None:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = "^" + re.escape(f"{name}{{{inner}}}" if inner else name) + r" (\S+)$"
    found = re.search(pattern, text, re.M)
    return None if found is None else float(found.group(1))


def test_a_server_sweeps_in_the_background_and_metrics_show_it(serve: ServeFactory) -> None:  # noqa: F811
    server = serve(quick_app(), retention=0.2, retention_interval=0.2)
    client = httpx.Client(base_url=server.url, timeout=10)
    for _ in range(3):
        assert client.post("/e/dev", json={"name": "t/quick", "data": {}}).status_code == 200

    def swept() -> str | None:
        text = client.get("/metrics").text
        done = metric(text, "stepline_retention_deleted_rows_total", table="runs") == 3
        finished = metric(text, "stepline_retention_last_sweep_timestamp_seconds")
        return text if done and finished is not None and finished == finished else None  # NaN until one finished

    text = wait_for(swept, what="the background sweep to delete the three runs")
    assert metric(text, "stepline_retention_deleted_rows_total", table="steps") == 3
    assert metric(text, "stepline_table_rows", table="runs") is not None
    assert metric(text, "stepline_table_rows", table="maintenance") is not None
    assert client.get("/api/v1/runs").json()["data"] == []


# --- one sweeper at a time -----------------------------------------------------------


async def finished_runs(db_url: str, count: int) -> Engine:
    engine = Engine(open_store(db_url, migrate_now=False), TEST_SETTINGS.replace(db=db_url, retention_interval=0.0), [quick_app()])
    await engine.start()
    for i in range(count):
        await send_and_wait(engine, {"name": "t/quick", "data": {"i": i}})
    return engine


async def run_count(engine: Engine) -> int:
    return next(t["rows"] for t in await engine.store.table_sizes(exact=True) if t["table"] == "runs")


async def test_a_second_process_cannot_prune_while_one_sweeps(db_url: str) -> None:
    engine = await finished_runs(db_url, 4)
    try:
        lease = await engine.store.acquire_sweep("holder-process", 60_000, 0)
        assert lease is not None
        loop = asyncio.get_running_loop()
        refused = await loop.run_in_executor(None, cli, "admin", "prune", "--db", db_url, "--older-than", "1ms")
        assert refused.returncode != 0
        assert "a retention sweep is running in holder-process" in refused.stderr
        assert await run_count(engine) == 4

        await engine.store.finish_sweep(lease, None)
        pruned = await loop.run_in_executor(None, cli, "admin", "prune", "--db", db_url, "--older-than", "1ms", "--json")
        assert pruned.returncode == 0, pruned.stderr
        assert json.loads(pruned.stdout)["deleted"]["runs"] == 4
        assert await run_count(engine) == 0
    finally:
        await engine.stop(grace=1.0)


async def test_a_sweeper_whose_lease_was_taken_over_deletes_nothing(db_url: str) -> None:
    engine = await finished_runs(db_url, 2)
    other = Engine(open_store(db_url, migrate_now=False), TEST_SETTINGS.replace(db=db_url, retention_interval=0.0), [])
    await other.start()
    try:
        stalled = await engine.store.acquire_sweep("stalled", 1, 0)  # a lease of 1 ms: it lapses at once
        assert stalled is not None
        taker = await eventually(lambda: other.store.acquire_sweep("taker", 60_000, 0), what="the lapsed lease taken over")
        assert taker.epoch == stalled.epoch + 1
        with pytest.raises(errors.LeaseLost):
            await engine.store.prune_runs(stalled, 60_000, "quick", engine.store.now_ms() + 1, None, 100)
        assert await run_count(engine) == 2
        batch = await other.store.prune_runs(taker, 60_000, "quick", other.store.now_ms() + 1, None, 100)
        assert batch.deleted["runs"] == 2
    finally:
        await other.stop(grace=1.0)
        await engine.stop(grace=1.0)


class TimedSweeper(retention_mod.Sweeper):
    """Notes when it held the sweep: from the moment its lease was taken to before it is given up."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held: list[tuple[float, float]] = []

    async def _sweep(self, *args: Any) -> None:
        started = time.monotonic()
        try:
            await super()._sweep(*args)
        finally:
            self.held.append((started, time.monotonic()))


async def test_two_processes_sweeping_in_a_loop_never_sweep_at_once(db_url: str) -> None:
    engines = [await finished_runs(db_url, 0)]
    engines.append(Engine(open_store(db_url, migrate_now=False), TEST_SETTINGS.replace(db=db_url, retention_interval=0.0), []))
    await engines[1].start()
    settings = TEST_SETTINGS.replace(db=db_url, retention=0.001, retention_interval=0.01)
    sweepers = [TimedSweeper(e.store, settings, owner=f"sweeper-{i}") for i, e in enumerate(engines)]
    try:
        for sweeper in sweepers:
            sweeper.start()
        for i in range(60):  # work for them while they sweep
            await engines[0].send({"name": "t/quick", "data": {"i": i}})
        await eventually(lambda: all(len(s.held) >= 5 for s in sweepers), timeout=60, what="both sweepers to sweep often")
        await eventually(lambda: _all_pruned(engines[0]), timeout=30, what="every run pruned")
    finally:
        for sweeper in sweepers:
            await sweeper.stop()
        for engine in reversed(engines):
            await engine.stop(grace=1.0)
    first, second = sweepers[0].held, sweepers[1].held
    overlaps = [(a, b) for a in first for b in second if a[0] < b[1] and b[0] < a[1]]
    assert overlaps == [], f"{len(overlaps)} sweeps overlapped"


async def _all_pruned(engine: Engine) -> bool:
    return await run_count(engine) == 0 and await engine.list_runs() == []


# --- stepline admin ------------------------------------------------------------------


async def test_admin_stats_prune_dry_run_backup_and_vacuum(db_url: str, tmp_path: Any) -> None:
    engine = await finished_runs(db_url, 3)
    await engine.stop(grace=1.0)
    loop = asyncio.get_running_loop()

    stats = await loop.run_in_executor(None, cli, "admin", "stats", "--db", db_url, "--json")
    assert stats.returncode == 0, stats.stderr
    body = json.loads(stats.stdout)
    tables = {t["table"]: t for t in body["tables"]}
    assert tables["runs"]["rows"] == 3 and tables["steps"]["rows"] == 3 and tables["events"]["rows"] == 3
    assert tables["runs"]["bytes"] > 0
    assert body["oldest"]["runs"] is not None and body["queue"] == {"ready": 0, "scheduled": 0, "leased": 0}
    assert body["retention"]["default_seconds"] == 7 * DAY

    dry = await loop.run_in_executor(None, cli, "admin", "prune", "--db", db_url, "--older-than", "1ms", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    counted = json.loads(dry.stdout)
    assert counted["dry_run"] is True and counted["deleted"]["runs"] == 3 and counted["deleted"]["events"] == 3
    after_dry = json.loads((await loop.run_in_executor(None, cli, "admin", "stats", "--db", db_url, "--json")).stdout)
    assert {t["table"]: t["rows"] for t in after_dry["tables"]} == {t: v["rows"] for t, v in tables.items()}

    real = await loop.run_in_executor(None, cli, "admin", "prune", "--db", db_url, "--older-than", "1ms", "--json")
    assert json.loads(real.stdout)["deleted"] == counted["deleted"]

    target = str(tmp_path / "copy.db")
    backup = await loop.run_in_executor(None, cli, "admin", "backup", target, "--db", db_url)
    vacuum = await loop.run_in_executor(None, cli, "admin", "vacuum", "--db", db_url)
    assert vacuum.returncode == 0, vacuum.stderr
    if db_url.startswith("postgresql://"):
        assert backup.returncode != 0 and "pg_dump" in backup.stderr and not os.path.exists(target)
        assert "VACUUM (ANALYZE)" in vacuum.stdout
    else:
        assert backup.returncode == 0, backup.stderr
        copy = sqlite3.connect(target)
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert copy.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
        copy.close()
        again = await loop.run_in_executor(None, cli, "admin", "backup", target, "--db", db_url)
        assert again.returncode != 0 and "already exists" in again.stderr


async def test_vacuum_turns_a_previous_release_sqlite_file_incremental(sqlite_url: str, tmp_path: Any) -> None:
    """A file made before incremental vacuum (auto_vacuum none) is rebuilt once by `admin vacuum`."""
    old = str(tmp_path / "old.db")
    source = sqlite3.connect(sqlite_url)
    source.execute("VACUUM INTO ?", (old,))  # a copy keeps the mode: make it "none" like an old file
    source.close()
    conn = sqlite3.connect(old, isolation_level=None)
    conn.execute("PRAGMA auto_vacuum = NONE")
    conn.execute("VACUUM")
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()
    engine = await finished_runs(old, 2)
    await engine.stop(grace=1.0)
    done = await asyncio.get_running_loop().run_in_executor(None, cli, "admin", "vacuum", "--db", old)
    assert done.returncode == 0 and "rebuilt" in done.stdout, done.stderr
    conn = sqlite3.connect(old)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2
    conn.close()


# --- SQLite's file under steady load -------------------------------------------------


async def _load_rounds(url: str, retention: float, rounds: int) -> list[int]:
    """Rounds of 40 runs (4 KB results each), an hour apart on a test clock, a sweep after
    each; returns the database's size (pages in use or free, in KiB) after each round."""
    clock = TestClock()
    settings = TEST_SETTINGS.replace(db=url, retention=retention, retention_interval=0.0)
    engine = Engine(open_store(url, migrate_now=False, clock=clock), settings, [quick_app()])
    await engine.start()
    sizes = []
    try:
        for _ in range(rounds):
            ids = [await engine.send({"name": "t/quick", "data": {"size": 4096}}) for _ in range(40)]
            for event_id in ids:
                run = (await runs_for_event(engine, event_id))[0]
                await eventually(lambda run=run: _ended(engine, run["id"]), what="the round's runs")
            clock.advance(3600)
            if retention > 0:
                assert await engine.retention.sweep(force=True) is not None
            space = await engine.store.file_space()
            sizes.append(space["page_count"] * space["page_size"] // 1024)
    finally:
        await engine.stop(grace=1.0)
    return sizes


async def _ended(engine: Engine, run_id: str) -> bool:
    return (await engine.get_run(run_id))["status"] == "completed"


async def test_sqlite_file_stops_growing_under_steady_load_with_retention(sqlite_template: str, tmp_path: Any) -> None:
    """SQLite only: the size of a database file (PostgreSQL's tables are covered by row counts
    in the other tests, and its space by its own VACUUM)."""
    from tests.conftest import new_sqlite_db

    kept = await _load_rounds(new_sqlite_db(sqlite_template, str(tmp_path)), 3 * 3600.0, 14)
    forever = await _load_rounds(new_sqlite_db(sqlite_template, str(tmp_path)), 0.0, 14)
    print(f"\nfile size per round, KiB: retention 3 h {kept}; kept forever {forever}")
    assert max(kept[6:]) <= kept[5] * 1.15, f"with retention the file keeps growing: {kept}"
    assert forever[-1] >= 2 * forever[5], f"the control without retention should grow: {forever}"
    assert kept[-1] * 2 < forever[-1]


async def test_sqlite_gives_the_space_of_a_big_prune_back_to_the_file_system(sqlite_url: str) -> None:
    clock = TestClock()
    engine = Engine(
        open_store(sqlite_url, migrate_now=False, clock=clock),
        TEST_SETTINGS.replace(db=sqlite_url, retention=DAY, retention_interval=0.0), [quick_app()],
    )
    await engine.start()
    try:
        for _ in range(150):
            await engine.send({"name": "t/quick", "data": {"size": 20_000}})
        await eventually(lambda: _count_completed(engine, 150), timeout=60, what="150 runs done")
        grown = await engine.store.file_space()
        clock.advance(2 * DAY)
        report = await engine.retention.sweep(force=True)
        assert report is not None and report.deleted["runs"] == 150
        after = await engine.store.file_space()
        shrunk = await eventually(lambda: _wal_truncated(engine), what="the WAL truncated once the process is idle")
    finally:
        await engine.stop(grace=1.0)
    print(f"\npages before the prune {grown['page_count']}, after {after['page_count']} (free kept {after['freelist_count']})")
    assert after["page_count"] * 3 < grown["page_count"]
    assert after["freelist_count"] <= max(retention_mod.MIN_FREE_PAGES_KEPT, after["page_count"] * retention_mod.FREE_PAGES_KEPT)
    assert os.path.getsize(sqlite_url) <= grown["page_count"] * grown["page_size"]
    assert shrunk["wal_bytes"] == 0 and grown["wal_bytes"] > 0


async def _wal_truncated(engine: Engine) -> dict[str, Any] | None:
    space = await engine.store.file_space()
    return space if space["wal_bytes"] == 0 else None


async def _count_completed(engine: Engine, count: int) -> bool:
    return len(await engine.list_runs(status="completed", limit=count)) == count


# --- backups ---------------------------------------------------------------------------


async def test_backup_is_a_consistent_openable_copy_taken_while_writes_go_on(db_url: str, tmp_path: Any) -> None:
    engine = Engine(open_store(db_url, migrate_now=False), TEST_SETTINGS.replace(db=db_url, retention_interval=0.0), [quick_app()])
    await engine.start()
    target = str(tmp_path / "backup.db")
    stop = asyncio.Event()

    async def load() -> int:
        sent = 0
        while not stop.is_set():
            await engine.send({"name": "t/multi", "data": {}})
            sent += 1
            await asyncio.sleep(0)
        return sent

    writer = asyncio.create_task(load())
    try:
        await eventually(lambda: _count_completed(engine, 20), what="runs under way")
        if db_url.startswith("postgresql://"):
            with pytest.raises(errors.ConfigError, match="pg_dump"):
                await engine.store.backup(target)
            return
        size = await engine.store.backup(target)
        assert size > 0 and not os.path.exists(target + ".partial")
    finally:
        stop.set()
        sent = await writer
        await engine.stop(grace=1.0)
    assert sent > 20
    copy = sqlite3.connect(target)
    try:
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        completed = copy.execute("SELECT id FROM runs WHERE status = 'completed'").fetchall()
        assert len(completed) >= 20
        uneven = copy.execute(
            "SELECT r.id FROM runs r WHERE r.status = 'completed' "
            "AND (SELECT COUNT(*) FROM steps s WHERE s.run_id = r.id AND s.status = 'completed') <> 3"
        ).fetchall()
        assert uneven == [], "a finished run in the copy has all its steps"
        assert copy.execute("SELECT COUNT(*) FROM queue q LEFT JOIN runs r ON r.id = q.run_id WHERE r.id IS NULL").fetchone()[0] == 0
        assert copy.execute("SELECT COUNT(*) FROM runs r LEFT JOIN events e ON e.id = r.event_id WHERE e.id IS NULL").fetchone()[0] == 0
        unfinished = copy.execute("SELECT COUNT(*) FROM runs WHERE ended_at IS NULL").fetchone()[0]
    finally:
        copy.close()
    # The copy is a working database: an engine opens it and finishes the runs it caught mid-way.
    restored = Engine(open_store(target, migrate_now=False), TEST_SETTINGS.replace(db=target, retention_interval=0.0, lease=0.5), [quick_app()])
    await restored.start()
    try:
        await eventually(lambda: _none_unfinished(restored), timeout=30, what=f"the {unfinished} runs the copy caught mid-way to finish")
    finally:
        await restored.stop(grace=1.0)


async def _none_unfinished(engine: Engine) -> bool:
    runs = await engine.list_runs(limit=1000)
    return all(r["status"] == "completed" for r in runs)
