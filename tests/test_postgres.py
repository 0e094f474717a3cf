"""The PostgreSQL backend's own promises: placeholders, isolated ops in a shared commit,
batches that survive a lost connection without running twice, wake-ups across
processes, and readers that reconnect by themselves."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest

import stepline
from stepline import errors
from stepline.engine import Engine
from stepline.server import api_metrics, create_app
from stepline.server.common import ServerOptions
from stepline.store import Lease, StepResult, db, open_store, ops_exec, postgres
from tests.chaos.proxy import CuttingProxy
from tests.conftest import TEST_SETTINGS
from tests.helpers import LongCall, eventually, runs_for_event, wait_run


def test_placeholders_are_translated_and_percent_signs_kept() -> None:
    assert postgres.translate("SELECT a FROM t WHERE b = ? AND c LIKE 'x%' AND d = '?'") == (
        "SELECT a FROM t WHERE b = %s AND c LIKE 'x%%' AND d = '?'"
    )
    assert postgres.translate("SELECT 1") is postgres.translate("SELECT 1")  # cached


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[postgres.PostgresDatabase]:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE scratch (id TEXT PRIMARY KEY, note TEXT)")
    database = postgres.PostgresDatabase(postgres_url)
    await database.start()
    yield database
    await database.close()


def scratch_rows(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT id, note FROM scratch ORDER BY id").fetchall()


def kill_connections(url: str) -> int:
    """Terminate every Stepline connection to this database, as a server restart would."""
    dbname = url.rsplit("/", 1)[1]
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = 'stepline' AND pid <> pg_backend_pid()",
            (dbname,),
        ).fetchall()
    return len(rows)


async def test_ops_sharing_a_commit_fail_alone_and_rows_are_dicts(pg: postgres.PostgresDatabase, postgres_url: str) -> None:
    def insert(name: str) -> db.Op[str]:
        def op(conn: db.Conn) -> str:
            conn.execute("INSERT INTO scratch (id, note) VALUES (?, ?)", (name, "50%"))
            return name

        return op

    results = await asyncio.gather(
        pg.write(insert("a")), pg.write(insert("a")), pg.write(insert("b")), return_exceptions=True
    )
    assert results[0] == "a" and results[2] == "b"
    assert isinstance(results[1], psycopg.errors.UniqueViolation)
    assert scratch_rows(postgres_url) == [("a", "50%"), ("b", "50%")]
    row = await pg.read(lambda conn: conn.one("SELECT id, note FROM scratch WHERE id = ?", ("a",)))
    assert row == {"id": "a", "note": "50%"}
    assert await pg.write(lambda conn: conn.rowcount("UPDATE scratch SET note = ?", ("x",))) == 2


async def test_a_write_whose_error_arrives_later_still_fails_only_its_own_operation(
    pg: postgres.PostgresDatabase, postgres_url: str
) -> None:
    # The writer sends writes without waiting for their answers: an error reaches the
    # writer only at the next read or sync, and must still be charged to the op that made it.
    await pg.write(lambda conn: conn.execute("INSERT INTO scratch (id, note) VALUES ('a', 'first')"))

    def duplicate_then_bug(conn: db.Conn) -> None:
        conn.execute("INSERT INTO scratch (id, note) VALUES ('a', 'again')")  # refused, but not yet heard
        raise ValueError("the operation's own bug")

    def count_updated(conn: db.Conn) -> int:
        return conn.rowcount("UPDATE scratch SET note = ? WHERE id = 'a'", ("updated",))

    def insert_b(conn: db.Conn) -> str:
        conn.execute("INSERT INTO scratch (id, note) VALUES ('b', 'kept')")
        return "b"

    started = threading.Event()

    def hold(conn: db.Conn) -> None:  # keeps the writer busy so the next three share one batch
        started.set()
        threading.Event().wait(0.3)

    holding = asyncio.ensure_future(pg.write(hold))
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 5.0)
    results = await asyncio.gather(
        pg.write(duplicate_then_bug), pg.write(count_updated), pg.write(insert_b), return_exceptions=True
    )
    await holding
    assert isinstance(results[0], (ValueError, psycopg.errors.UniqueViolation))  # whichever it met first
    assert results[1:] == [1, "b"]
    assert scratch_rows(postgres_url) == [("a", "updated"), ("b", "kept")]

    # A batch of one operation: the refusal arrives with the transaction id's read and is the op's.
    alone = await asyncio.gather(
        pg.write(lambda conn: conn.execute("INSERT INTO scratch (id, note) VALUES ('b', 'again')")),
        return_exceptions=True,
    )
    assert isinstance(alone[0], psycopg.errors.UniqueViolation)
    assert await pg.write(lambda conn: conn.rowcount("DELETE FROM scratch WHERE id = 'b'")) == 1
    assert scratch_rows(postgres_url) == [("a", "updated")]


async def test_a_group_commit_of_many_operations_costs_a_few_round_trips_not_a_few_per_operation(postgres_url: str) -> None:
    """Each operation of a shared commit ran in a savepoint and ended with a sync: two round
    trips per operation. On a link of 100 ms, 20 runs' writes held the writer for seconds,
    and the heartbeat passed over the rows it held until their leases ran out. They now go
    out together, with one sync for all of them; savepoints only when one fails (below)."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE scratch (id TEXT PRIMARY KEY, note TEXT)")
    proxy = CuttingProxy("127.0.0.1", 5432, delay=0.005).start()
    database = postgres.PostgresDatabase(postgres_url.replace(":5432/", f":{proxy.port}/"))
    await database.start()
    entered, gate = threading.Event(), threading.Event()

    def hold(conn: db.Conn) -> None:  # keeps the writer busy while the others queue up for one batch
        entered.set()
        gate.wait(10)

    def insert(name: str) -> db.Op[str]:
        def op(conn: db.Conn) -> str:
            conn.execute("INSERT INTO scratch (id, note) VALUES (?, ?)", (name, "kept"))
            return name

        return op

    loop = asyncio.get_running_loop()
    try:
        holding = asyncio.ensure_future(database.write(hold))
        await loop.run_in_executor(None, entered.wait, 10)
        for names in ([f"r{n}" for n in range(20)], ["r0", "s1", "s2"]):  # all succeed; then one fails
            writes = [asyncio.ensure_future(database.write(insert(name))) for name in names]
            await asyncio.sleep(0.1)  # every write queued behind the one in progress
            before = list(proxy.round_trips)
            gate.set()
            results = await asyncio.gather(holding, *writes, return_exceptions=True)
            spent = max(after - was for after, was in zip(proxy.round_trips, before))
            if names[0] == "r0" and len(names) == 20:
                assert results[1:] == names
                # Both batches' ends and the 20 operations together: not two per operation (25 before).
                assert spent <= 4, f"{spent} round trips for a batch of 20 operations"
            else:
                assert isinstance(results[1], psycopg.errors.UniqueViolation) and results[2:] == ["s1", "s2"], results
            gate.clear()
            entered.clear()
            holding = asyncio.ensure_future(database.write(hold))
            await loop.run_in_executor(None, entered.wait, 10)
        gate.set()
        await holding
    finally:
        gate.set()
        await database.close()
        proxy.stop()
    assert len(scratch_rows(postgres_url)) == 22


async def test_runs_released_together_cost_a_few_round_trips_and_free_their_slots(postgres_url: str) -> None:
    """Runs a worker stops together (their leases could not be renewed) are handed back:
    each release was an operation of its own, with two reads (its lease, its concurrency
    keys), so 20 of them held the writer for 8 s on a 200 ms link. The releases of one
    commit are now one operation, and the runs parked behind their slots are made ready."""
    proxy = CuttingProxy("127.0.0.1", 5432, delay=0.005).start()
    url = postgres_url.replace(":5432/", f":{proxy.port}/")
    app = stepline.App("release-together")

    @app.function(id="limited", trigger=stepline.TriggerEvent("rt/job"), concurrency=stepline.Concurrency(10))
    async def limited(ctx: stepline.Context) -> None:
        return None

    engine = Engine(open_store(url, migrate_now=False), TEST_SETTINGS.replace(db=url), [app])
    await engine.start(run_worker=False)
    try:
        await engine.send_many([{"name": "rt/job", "data": {"n": n}} for n in range(20)])
        claimed, _ = await engine.store.claim("w-1", ["limited"], 20, 60_000)
        assert len(claimed) == 10  # the other 10 parked behind the limit
        entered, gate = threading.Event(), threading.Event()

        def hold(conn: db.Conn) -> None:  # the releases queue up behind it, for one commit
            entered.set()
            gate.wait(10)

        holding = asyncio.ensure_future(engine.store.db.write(hold))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
        releases = [asyncio.ensure_future(engine.store.release([Lease(c.run_id, "w-1", c.epoch)])) for c in claimed]
        await asyncio.sleep(0.1)
        before = list(proxy.round_trips)
        gate.set()
        await asyncio.gather(holding, *releases)
        spent = max(after - was for after, was in zip(proxy.round_trips, before))
        assert spent <= 8, f"{spent} round trips to release 10 runs"  # 33 when each was its own operation
    finally:
        gate.set()
        await engine.stop(grace=1.0)
        proxy.stop()
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT lease_owner, parked_on FROM queue").fetchall()
        statuses = conn.execute("SELECT DISTINCT status FROM runs").fetchall()
    assert rows == [(None, None)] * 20, rows
    assert statuses == [("queued",)]


def test_plain_inserts_become_one_statement_over_json_and_anything_else_is_left_alone() -> None:
    statement, columns = postgres.bulk_insert("INSERT INTO runs (id, attempt, note) VALUES (?, 0, ?)")  # type: ignore[misc]
    assert statement == (
        "INSERT INTO runs (id, attempt, note) SELECT x.id, 0, x.note FROM json_populate_recordset(NULL::runs, %s::json) AS x"
    )
    assert columns == ("id", "note")
    assert postgres.bulk_insert("INSERT INTO t (a) VALUES (?) ON CONFLICT (a) DO NOTHING") is None
    assert postgres.bulk_insert("INSERT INTO t (a, b) VALUES (?, 'x, y')") is None
    assert postgres.bulk_insert("INSERT INTO t (a, b) VALUES (?, lower(?))") is None
    assert postgres.bulk_insert("UPDATE t SET a = ? WHERE b = ?") is None
    assert postgres.rows_as_json(("a", "b"), [(1, "x"), (None, 2.5)]) == '[{"a":1,"b":"x"},{"a":null,"b":2.5}]'
    for unsafe in (True, float("nan"), b"raw", {"nested": 1}):
        assert postgres.rows_as_json(("a",), [(unsafe,)]) is None  # these go through executemany


async def test_a_deferred_batch_of_inserts_stores_every_value_as_given(pg: postgres.PostgresDatabase, postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE typed (id TEXT PRIMARY KEY, n BIGINT, f DOUBLE PRECISION, t TEXT, flag BOOLEAN, fixed INTEGER)")
    sql = "INSERT INTO typed (id, n, f, t, flag, fixed) VALUES (?, ?, ?, ?, ?, 7)"
    rows = [
        ("r1", 2**62, 0.1, 'quote " backslash \\ and ünïcode ✓', None, ),
        ("r2", -1, None, None, True),  # a bool: this batch takes the executemany path
        ("r3", None, 1e300, "", None),
        ("r4", 0, -0.5, "{\"looks\": \"like json\"}", None),
    ]

    json_batch = [rows[0], rows[2], rows[3], ("r5", 5, 5.5, "five", None)]
    bulk = postgres.bulk_insert(sql)
    assert bulk is not None and len(json_batch) >= postgres.BULK_ROWS
    assert postgres.rows_as_json(bulk[1], json_batch) is not None  # this batch does go as JSON

    def write_json_path(conn: db.Conn) -> None:
        for row in json_batch:
            conn.defer(sql, row)

    def write_fallback(conn: db.Conn) -> None:
        for row in [rows[1], ("r6", 6, 6.0, "six", None), ("r7", 7, 7.0, "seven", None), ("r8", 8, 8.0, "eight", None)]:
            conn.defer(sql, row)

    await pg.write(write_json_path)
    await pg.write(write_fallback)
    with psycopg.connect(postgres_url) as conn:
        stored = {r[0]: r[1:] for r in conn.execute("SELECT id, n, f, t, flag, fixed FROM typed").fetchall()}
    assert stored["r1"] == (2**62, 0.1, 'quote " backslash \\ and ünïcode ✓', None, 7)
    assert stored["r2"] == (-1, None, None, True, 7)
    assert stored["r3"] == (None, 1e300, "", None, 7)
    assert stored["r4"] == (0, -0.5, '{"looks": "like json"}', None, 7)
    assert len(stored) == 8

    def duplicate(conn: db.Conn) -> None:
        for i in range(5):
            conn.defer(sql, (f"d{i}", i, 0.0, "x", None))
        conn.defer(sql, ("r1", 1, 0.0, "again", None))

    with pytest.raises(psycopg.errors.UniqueViolation):
        await pg.write(duplicate)
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM typed").fetchone() == (8,)  # none of the failed batch's rows


async def test_reads_are_read_only(pg: postgres.PostgresDatabase) -> None:
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        await pg.read(lambda conn: conn.execute("INSERT INTO scratch (id) VALUES ('r')"))


async def test_a_batch_whose_connection_dies_before_commit_runs_again_once(
    pg: postgres.PostgresDatabase, postgres_url: str
) -> None:
    calls = []

    def op(conn: db.Conn) -> str:
        calls.append(1)
        conn.execute("INSERT INTO scratch (id) VALUES (?)", (f"try-{len(calls)}",))
        if len(calls) == 1:
            conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return "saved"

    assert await pg.write(op) == "saved"
    assert len(calls) == 2
    assert scratch_rows(postgres_url) == [("try-2", None)], "the first try's insert never committed"


class _CutOnCommit:
    """A connection whose next COMMIT is cut off by a lost connection, after it took effect or not."""

    def __init__(self, raw: psycopg.Connection[Any], owner: CutCommitDatabase) -> None:
        self._raw = raw
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def execute(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        if sql == "COMMIT" and self._owner.cuts:
            self._owner.cuts -= 1
            self._raw.execute("COMMIT" if self._owner.commit_took_effect else "ROLLBACK")
            if self._raw._pipeline is not None:
                self._raw._pipeline.sync()  # sent in the batch's pipeline: there before the cut
            self._raw.close()
            raise psycopg.OperationalError("simulated: the connection was lost during COMMIT")
        return self._raw.execute(sql, *args, **kwargs)


class CutCommitDatabase(postgres.PostgresDatabase):
    def __init__(self, url: str, *, commit_took_effect: bool) -> None:
        super().__init__(url)
        self.commit_took_effect = commit_took_effect
        self.cuts = 1

    def _open_writer(self) -> postgres._Link:
        link = super()._open_writer()
        plain_get = link.get
        link.get = lambda: _CutOnCommit(plain_get(), self) if self.cuts else plain_get()  # type: ignore[method-assign]
        return link


@pytest.mark.parametrize("took_effect", [True, False], ids=["committed", "rolled-back"])
async def test_a_commit_cut_off_is_settled_by_asking_the_server(postgres_url: str, took_effect: bool) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE scratch (id TEXT PRIMARY KEY, note TEXT)")
    database = CutCommitDatabase(postgres_url, commit_took_effect=took_effect)
    await database.start()
    calls = []

    def op(conn: db.Conn) -> str:
        calls.append(1)
        conn.execute("INSERT INTO scratch (id) VALUES ('once')")
        return "saved"

    try:
        assert await database.write(op) == "saved"
    finally:
        await database.close()
    assert len(calls) == (1 if took_effect else 2), "run again only when the first COMMIT did not take effect"
    assert scratch_rows(postgres_url) == [("once", None)]


async def test_a_commit_that_woke_workers_wakes_other_processes(pg: postgres.PostgresDatabase, postgres_url: str) -> None:
    other = postgres.PostgresDatabase(postgres_url)
    await other.start()
    woken = threading.Event()
    wakes: list[int] = []

    def wake() -> None:
        wakes.append(1)
        woken.set()

    other.add_waker(wake)
    try:
        await pg.write(lambda conn: conn.execute("INSERT INTO scratch (id) VALUES ('quiet')"))

        def due(conn: db.Conn) -> None:
            conn.execute("INSERT INTO scratch (id) VALUES ('due')")
            conn.wake()

        await pg.write(due)
        assert await asyncio.get_running_loop().run_in_executor(None, woken.wait, 10)
        # Notifications arrive in commit order: one from the quiet commit would have come first.
        assert wakes == [1], "a commit that made no work due wakes nobody"
    finally:
        await other.close()


async def test_writer_readers_and_listener_reconnect_after_their_connections_die(
    pg: postgres.PostgresDatabase, postgres_url: str
) -> None:
    woken = threading.Event()
    pg.add_waker(woken.set)
    await pg.write(lambda conn: conn.execute("INSERT INTO scratch (id) VALUES ('before')"))
    assert await pg.read(lambda conn: conn.scalar("SELECT count(*) AS n FROM scratch")) == 1

    assert kill_connections(postgres_url) >= 3  # writer, listener, at least one reader

    await pg.write(lambda conn: conn.execute("INSERT INTO scratch (id) VALUES ('after')"))
    for _ in range(3):  # more reads than idle readers: each lost one is replaced
        assert await pg.read(lambda conn: conn.scalar("SELECT count(*) AS n FROM scratch")) == 2
    # The listener may have missed notifications while away, so it wakes its workers once back.
    assert await asyncio.get_running_loop().run_in_executor(None, woken.wait, 10)


async def test_an_unreachable_server_is_a_store_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, "RECONNECT_WINDOW", 0.3)
    database = postgres.PostgresDatabase("postgresql://stepline:secret@127.0.0.1:1/nowhere")
    with pytest.raises(errors.StoreError, match=r"stepline:\*\*\*@127\.0\.0\.1:1/nowhere is unreachable"):
        await database.start()


async def test_a_deadlock_between_processes_is_retried_and_both_batches_commit(
    pg: postgres.PostgresDatabase, postgres_url: str
) -> None:
    await pg.write(lambda conn: conn.executemany("INSERT INTO scratch (id) VALUES (?)", [("x",), ("y",)]))
    other = postgres.PostgresDatabase(postgres_url)
    await other.start()
    calls: list[str] = []

    def cross(first: str, second: str) -> db.Op[str]:
        """Lock ``first``, give the other process time to lock ``second``, then lock it too."""

        def op(conn: db.Conn) -> str:
            calls.append(first)
            conn.execute("UPDATE scratch SET note = ? WHERE id = ?", (f"by {first}", first))
            conn.execute("SELECT pg_sleep(0.3)")
            conn.execute("UPDATE scratch SET note = ? WHERE id = ?", (f"by {first}", second))
            return first

        return op

    try:
        results = await asyncio.gather(pg.write(cross("x", "y")), other.write(cross("y", "x")))
    finally:
        await other.close()
    assert results == ["x", "y"]
    assert len(calls) == 3, "the transaction PostgreSQL chose as the deadlock victim ran again, once"
    notes = {note for _, note in scratch_rows(postgres_url)}
    assert len(notes) == 1, "the batch that ran last wrote both rows"


async def test_signals_reach_other_processes_only_when_committed(
    pg: postgres.PostgresDatabase, postgres_url: str
) -> None:
    other = postgres.PostgresDatabase(postgres_url)
    await other.start()
    heard: list[str] = []
    got = threading.Event()

    def on_cancel(payload: str) -> None:
        heard.append(payload)
        if payload == "end":
            got.set()

    other.add_listener("cancel", on_cancel)

    def signal_then_fail(conn: db.Conn) -> None:
        conn.signal("cancel", "rolled-back")
        raise RuntimeError("this op rolls back, and its signal with it")

    def signal(conn: db.Conn) -> None:
        conn.signal("cancel", "run-1")

    try:
        results = await asyncio.gather(pg.write(signal_then_fail), pg.write(signal), return_exceptions=True)
        assert isinstance(results[0], RuntimeError) and results[1] is None
        await pg.write(lambda conn: conn.signal("cancel", "end"))  # delivered after anything committed before it
        assert await asyncio.get_running_loop().run_in_executor(None, got.wait, 10)
    finally:
        await other.close()
    assert heard == ["run-1", "end"]


async def test_a_cancel_from_an_api_server_stops_a_step_in_flight_on_another_process(postgres_url: str, make_pg_engine: Any) -> None:
    app = stepline.App("remote-cancel")
    long_call = LongCall()

    @app.function(id="long", trigger=stepline.TriggerEvent("remote/long"))
    async def long(ctx: stepline.Context) -> str:
        return await ctx.step.run("call", long_call)

    # Heartbeats every 200 s: only the signal can stop the step within this test.
    await make_pg_engine(app, lease=600.0)
    api = await make_pg_engine(run_worker=False, lease=600.0)
    event_id = await api.send({"name": "remote/long", "data": {}})
    run = (await runs_for_event(api, event_id))[0]
    await long_call.wait_started(15)
    assert await api.cancel(run["id"]) == "cancelling"
    await long_call.wait_interrupted(30)
    done = await wait_run(api, run["id"])
    assert done["status"] == "cancelled"


async def test_a_claim_never_misses_a_checkpoint_committing_under_an_expired_lease(postgres_url: str, make_pg_engine: Any) -> None:
    """Worker A stalled past its lease and is saving a step while worker B claims the run:
    B must either skip the run until A commits, or see A's step; never run it again."""
    app = stepline.App("lease-race")

    @app.function(id="racy", trigger=stepline.TriggerEvent("race/go"))
    async def racy(ctx: stepline.Context) -> None:
        return None

    engine = await make_pg_engine(app, run_worker=False)
    other = await make_pg_engine(run_worker=False)
    await engine.send({"name": "race/go", "data": {}})
    (claimed,), _ = await engine.store.claim("worker-a", ["racy"], 1, 60_000)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE queue SET lease_expires_at = 0")  # A's lease ran out while it worked
    step = StepResult("s1", "s1", "run", "completed", '"done"', None, 1, 1, 2)

    def slow_checkpoint(conn: db.Conn) -> list[Any]:
        saved = ops_exec.checkpoint_many_txn(conn, [(Lease(claimed.run_id, "worker-a", claimed.epoch), step, 1, None)])
        conn.execute("SELECT pg_sleep(1.0)")  # still committing when B claims
        return saved

    saving = asyncio.ensure_future(engine.store.db.write(slow_checkpoint))
    await asyncio.sleep(0.3)
    taken, _ = await other.store.claim("worker-b", ["racy"], 1, 60_000)
    assert await saving == [False], "A still held the run when it saved the step"
    for item in taken:
        assert "s1" in item.journal, "B claimed the run but cannot see A's committed step"
    if not taken:  # B skipped the locked run; once A committed, B gets it with the step
        (item,), _ = await other.store.claim("worker-b", ["racy"], 1, 60_000)
        assert item.journal["s1"].status == "completed"


async def test_statements_prepared_before_a_migration_keep_working_after_it(
    pg: postgres.PostgresDatabase, postgres_url: str
) -> None:
    """A rolling upgrade: `stepline migrate` adds a column while processes keep running."""
    await pg.write(lambda conn: conn.execute("INSERT INTO scratch (id) VALUES ('a')"))
    for _ in range(8):  # past psycopg's threshold, the statements are prepared on the server
        await pg.write(lambda conn: conn.all("SELECT * FROM scratch"))
        await pg.read(lambda conn: conn.all("SELECT * FROM scratch"))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE scratch ADD COLUMN added TEXT")
    expected = [{"id": "a", "note": None, "added": None}]
    assert await pg.write(lambda conn: conn.all("SELECT * FROM scratch")) == expected
    assert await pg.read(lambda conn: conn.all("SELECT * FROM scratch")) == expected


async def test_statements_the_server_forgot_are_prepared_again_not_failed(
    pg: postgres.PostgresDatabase, postgres_url: str
) -> None:
    """A pipeline aborted by a cancelled statement can leave psycopg believing in prepared
    statements the server does not have (26000): that is the connection's state, not the
    operation's error; the batch runs again on a new connection, reads are retried too."""
    await pg.write(lambda conn: conn.execute("INSERT INTO scratch (id) VALUES ('a')"))
    for _ in range(8):  # past psycopg's threshold, the statements are prepared on the server
        await pg.write(lambda conn: conn.all("SELECT * FROM scratch"))
        await pg.read(lambda conn: conn.all("SELECT * FROM scratch"))
    forget = "DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$"  # psycopg does not see it happen
    await pg.write(lambda conn: conn.execute(forget))
    await pg.read(lambda conn: conn.execute(forget))
    expected = [{"id": "a", "note": None}]
    assert await pg.write(lambda conn: conn.all("SELECT * FROM scratch")) == expected
    assert await pg.read(lambda conn: conn.all("SELECT * FROM scratch")) == expected


async def test_a_session_opened_read_only_is_replaced_once_the_server_takes_writes(
    pg: postgres.PostgresDatabase, postgres_url: str
) -> None:
    """After a failover, or with default_transaction_read_only, the writer's session refuses
    writes (25006): a StoreError, never an operation's own failure; and once the server
    takes writes again the writer works without a restart, though nothing closed its
    read-only session from outside."""
    dbname = postgres_url.rsplit("/", 1)[1]
    admin = psycopg.connect(postgres_url, autocommit=True)
    try:
        admin.execute(f"ALTER DATABASE {dbname} SET default_transaction_read_only = on")
        kill_connections(postgres_url)  # they come back read-only
        with pytest.raises(errors.StoreError):
            await pg.write(lambda conn: conn.execute("INSERT INTO scratch (id) VALUES ('refused')"))
        admin.execute(f"ALTER DATABASE {dbname} SET default_transaction_read_only = off")
    finally:
        admin.close()
    await pg.write(lambda conn: conn.execute("INSERT INTO scratch (id) VALUES ('taken')"))
    assert scratch_rows(postgres_url) == [("taken", None)]


async def test_a_writer_whose_connection_stops_answering_gives_it_up_and_goes_on(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that stays open but carries nothing more (a failover behind a proxy)
    once held the writer, and every write of the process, forever, and shutting down with
    it: past the deadline its statement is cancelled, then its socket shut, and the batch
    commits on a new connection, once."""
    monkeypatch.setattr(postgres, "ANSWER_DEADLINE", 1.0)
    monkeypatch.setattr(postgres, "CLOSING_DEADLINE", 1.0)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE scratch (id TEXT PRIMARY KEY, note TEXT)")
    proxy = CuttingProxy("127.0.0.1", 5432).start()
    database = postgres.PostgresDatabase(postgres_url.replace(":5432/", f":{proxy.port}/"))
    try:
        await database.start()
        await database.write(lambda conn: conn.execute("INSERT INTO scratch (id) VALUES ('before')"))
        proxy.black_hole()
        await asyncio.wait_for(database.write(lambda conn: conn.execute("INSERT INTO scratch (id) VALUES ('after')")), 30)
        assert scratch_rows(postgres_url) == [("after", None), ("before", None)]
        proxy.black_hole()  # and once more while closing: shutting down does not hang either
        writing = asyncio.ensure_future(database.write(lambda conn: conn.execute("INSERT INTO scratch (id) VALUES ('last')")))
        await asyncio.sleep(0.2)
        await asyncio.wait_for(database.close(), 30)
        with contextlib.suppress(Exception):
            await writing
    finally:
        await database.close()
        proxy.stop()


async def test_a_read_whose_connection_stops_answering_is_retried_on_another(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader's connection gone silent held its read (an API request, a worker's check)
    until TCP gave up, and shutting down with it: the watchdog gives it up as it does the
    writer's, and the read is answered on a new connection."""
    monkeypatch.setattr(postgres, "ANSWER_DEADLINE", 1.0)
    monkeypatch.setattr(postgres, "CLOSING_DEADLINE", 1.0)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE scratch (id TEXT PRIMARY KEY, note TEXT)")
        conn.execute("INSERT INTO scratch (id) VALUES ('kept')")
    proxy = CuttingProxy("127.0.0.1", 5432).start()
    database = postgres.PostgresDatabase(postgres_url.replace(":5432/", f":{proxy.port}/"))
    read = lambda conn: conn.all("SELECT id FROM scratch")  # noqa: E731
    try:
        await database.start()
        assert [row["id"] for row in await database.read(read)] == ["kept"]
        proxy.black_hole()
        rows = await asyncio.wait_for(database.read(read), 30)
        assert [row["id"] for row in rows] == ["kept"]
        proxy.black_hole()  # and while closing: shutting down waits for no silent read
        reading = asyncio.ensure_future(database.read(read))
        await asyncio.sleep(0.2)
        await asyncio.wait_for(database.close(), 30)
        with contextlib.suppress(Exception):
            await reading
    finally:
        await database.close()
        proxy.stop()


async def test_a_listen_connection_gone_silent_is_noticed_and_replaced(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The LISTEN connection only receives: gone silent (a black-holed route), it delivered
    nothing and raised nothing, and wake-ups and cancellations fell back to polling until
    the process restarted. It is now asked something every LISTEN_CHECK_EVERY seconds under
    the watchdog, which gives it up, and a new one listens."""
    monkeypatch.setattr(postgres, "ANSWER_DEADLINE", 1.0)
    monkeypatch.setattr(postgres, "CLOSING_DEADLINE", 1.0)
    monkeypatch.setattr(postgres, "LISTEN_CHECK_EVERY", 0.5)
    proxy = CuttingProxy("127.0.0.1", 5432).start()
    database = postgres.PostgresDatabase(postgres_url.replace(":5432/", f":{proxy.port}/"))
    heard: list[str] = []
    database.add_listener("probe", heard.append)
    try:
        await database.start()
        await eventually(lambda: database._listening.is_set() or None, what="the LISTEN connection")
        proxy.black_hole()  # every open connection: the listener's included
        database._listening.clear()

        def still_listening() -> bool | None:  # a signal from another session reaches this process again
            with psycopg.connect(postgres_url, autocommit=True) as other:
                other.execute("SELECT pg_notify(%s, %s)", (postgres.SIGNALS, "probe:hello"))
            return True if "hello" in heard else None

        await eventually(lambda: database._listening.is_set() or None, timeout=30, what="a new LISTEN connection")
        await eventually(lambda: still_listening(), timeout=30, what="a signal to reach the new listener")
    finally:
        await database.close()
        proxy.stop()


async def test_a_databases_idle_session_timeout_does_not_end_the_engines_sessions(
    make_pg_engine: Any, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With idle_session_timeout set on the database, the LISTEN session and idle pooled
    readers were ended every few seconds (a reconnect and a warning each time, wake-ups
    lost meanwhile). The engine's sessions now set it to 0 for themselves."""
    dbname = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {dbname} SET idle_session_timeout = '500ms'")
    caplog.set_level(logging.WARNING, logger="stepline")
    engine = await make_pg_engine()
    await asyncio.sleep(2.5)
    assert await engine.send({"name": "t/after-idle", "data": {}})
    lost = [r.getMessage() for r in caplog.records if "connection to PostgreSQL was lost" in r.getMessage()]
    assert not lost, lost


async def test_a_databases_low_statement_timeout_does_not_cancel_the_engines_statements(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator set statement_timeout low on the database (for people's ad-hoc queries).
    A pipelined batch counts as one statement until its sync, link latency included, so
    the engine's claims and checkpoints were cancelled again and again ("canceling statement
    due to statement timeout"), runs stopped and ran their steps again. Its sessions now
    set it to 0 for themselves (their bounds are lock_timeout and the watchdog)."""
    dbname = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {dbname} SET statement_timeout = '30ms'")
    proxy = CuttingProxy("127.0.0.1", 5432, delay=0.02).start()  # a link a little slower than loopback
    url = postgres_url.replace(":5432/", f":{proxy.port}/")
    executions: list[str] = []
    app = stepline.App("statement-timeout")

    @app.function(id="three-steps", trigger=stepline.TriggerEvent("st/job"))
    async def three_steps(ctx: stepline.Context) -> int:
        total = 0
        for i in range(3):

            async def body(i: int = i) -> int:
                executions.append(f"{ctx.run_id}:{i}")
                return i

            total += await ctx.step.run(f"s{i}", body)
        return total

    caplog.set_level(logging.WARNING, logger="stepline")
    engine = Engine(open_store(url, migrate_now=False), TEST_SETTINGS.replace(db=url), [app])
    await engine.start()
    try:
        event_ids = [await engine.send({"name": "st/job", "data": {"n": n}}) for n in range(10)]
        for event_id in event_ids:
            (run,) = await runs_for_event(engine, event_id, timeout=60)
            assert (await wait_run(engine, run["id"], "completed", timeout=60))["output"] == 3
    finally:
        await engine.stop(grace=1.0)
        proxy.stop()
    cancelled = [r.getMessage() for r in caplog.records if "statement timeout" in r.getMessage()]
    assert not cancelled, cancelled
    assert len(executions) == len(set(executions)) == 30, sorted(executions)


async def test_a_run_row_an_operator_locked_fails_only_that_runs_ending_and_at_once(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator's session selected one run's row FOR UPDATE and left its transaction open.
    The runs ending in the same group commit waited the lock timeout (5 s) with it, holding
    the writer, then all failed: each ran its last step again. Now that run alone stops at
    once (its row is passed over, as claims do), the others end, and it ends once the lock
    goes, its last step (never saved) run again."""
    executions: list[str] = []
    gates: dict[str, asyncio.Event] = {}
    app = stepline.App("locked-row")

    @app.function(id="two-steps", trigger=stepline.TriggerEvent("lr/job"))
    async def two_steps(ctx: stepline.Context) -> int:
        async def first() -> int:
            executions.append(f"{ctx.run_id}:first")
            await gates.setdefault(ctx.run_id, asyncio.Event()).wait()
            return 1

        async def second() -> int:
            executions.append(f"{ctx.run_id}:second")
            await asyncio.sleep(0.2)  # the runs end together
            return 2

        return await ctx.step.run("first", first) + await ctx.step.run("second", second)

    caplog.set_level(logging.INFO, logger="stepline")
    engine = Engine(open_store(postgres_url, migrate_now=False), TEST_SETTINGS.replace(db=postgres_url), [app])
    await engine.start()
    operator = psycopg.connect(postgres_url, autocommit=True)
    try:
        event_ids = [await engine.send({"name": "lr/job", "data": {"n": n}}) for n in range(4)]
        runs = [(await runs_for_event(engine, event_id))[0]["id"] for event_id in event_ids]
        await eventually(lambda: len(executions) == 4 or None, what="every run's first step to start")
        operator.execute("BEGIN")
        operator.execute("SELECT * FROM runs WHERE id = %s FOR UPDATE", (runs[0],))
        for run_id in runs:
            gates.setdefault(run_id, asyncio.Event()).set()
        for run_id in runs[1:]:
            await wait_run(engine, run_id, "completed")
        assert all(executions.count(f"{run_id}:second") == 1 for run_id in runs[1:]), executions
        await eventually(
            lambda: [r for r in caplog.records if f"the row of run {runs[0]} is locked by another session" in r.getMessage()] or None,
            what="the locked run to stop, saying why",
        )
        operator.execute("COMMIT")
        assert (await wait_run(engine, runs[0], "completed", timeout=30))["output"] == 3
    finally:
        operator.close()
        await engine.stop(grace=1.0)
    assert not [r.getMessage() for r in caplog.records if "lock timeout" in r.getMessage()]


async def test_a_slow_first_connect_is_not_reported_as_a_connection_re_established(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """On a slow link a first connect (the handshake and the session's settings, a round
    trip each) takes over half a second: it was logged as the connection "re-established",
    sending an operator after an outage that never happened. Only a connection that was
    lost is re-established."""
    proxy = CuttingProxy("127.0.0.1", 5432, delay=0.1).start()
    database = postgres.PostgresDatabase(postgres_url.replace(":5432/", f":{proxy.port}/"))
    caplog.set_level(logging.WARNING, logger="stepline")
    try:
        await database.start()
        await database.write(lambda conn: conn.one("SELECT 1 AS one"))
        await database.renew(lambda conn: conn.one("SELECT 1 AS one"))
        assert not [r.getMessage() for r in caplog.records if "re-established" in r.getMessage()]
        proxy.cut_mid_write(wait=0.0)  # now one is lost: its return is worth a line
        await database.write(lambda conn: conn.one("SELECT 1 AS one"))
        await eventually(
            lambda: [r for r in caplog.records if "writer connection to PostgreSQL re-established" in r.getMessage()] or None,
            what="the writer's reconnect to be logged",
        )
    finally:
        await database.close()
        proxy.stop()


async def test_an_event_id_locked_by_a_frozen_process_fails_its_own_ingest_not_everyone_elses(
    make_pg_engine: Any, postgres_url: str
) -> None:
    """Another process froze (a paused VM) inside a transaction that holds an event id's
    lock. An ingest of that id waited on it, and with it the whole batch, every write of
    this process, for as long as the other stayed frozen. Now that event alone is refused
    at once (BusyError: 503 with Retry-After; nothing stored) and the others commit."""
    engine = await make_pg_engine(run_worker=False)
    frozen = psycopg.connect(postgres_url, autocommit=True)
    try:
        frozen.execute("BEGIN")
        frozen.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("event-id\x1fheld-id",))
        started = time.monotonic()
        sends = [engine.send({"name": "t/held", "id": "held-id", "data": {}})]
        sends += [engine.send({"name": "t/other", "id": f"other-{n}", "data": {}}) for n in range(5)]
        results = await asyncio.wait_for(asyncio.gather(*sends, return_exceptions=True), 30)
        assert isinstance(results[0], errors.BusyError) and "send it again" in str(results[0]), results[0]
        assert all(isinstance(r, str) for r in results[1:]) and len(set(results[1:])) == 5, results
        assert time.monotonic() - started < 3  # not the whole batch held for the lock timeout
        assert not await engine.store.db.read(lambda conn: conn.all("SELECT 1 AS x FROM events WHERE name = 't/held'"))
    finally:
        frozen.close()  # the frozen process dies: its lock goes, and the id can be stored
    assert await engine.send({"name": "t/held", "id": "held-id", "data": {}})


def _frozen_holders_app() -> stepline.App:
    app = stepline.App("frozen-holders")

    @app.function(id="once", trigger=stepline.TriggerEvent("t/once"), idempotency="event.data.k")
    async def once(ctx: stepline.Context) -> None:
        return None

    @app.function(id="stoppable", trigger=stepline.TriggerEvent("t/job"), cancel_on=[stepline.CancelOn("t/stop", match="data.k")])
    async def stoppable(ctx: stepline.Context) -> None:
        return None

    return app


@pytest.mark.parametrize("held", ["idempotency key", "run row"])
async def test_any_lock_a_frozen_process_holds_fails_only_the_ingest_that_needs_it_and_at_once(
    make_pg_engine: Any, postgres_url: str, held: str
) -> None:
    """Beyond event ids: an idempotency key's lock, or the row of a run an event cancels,
    held by a process frozen mid-transaction. The ingest that needed it waited the whole lock
    timeout (5 s), then failed with every other ingest of its group as the database failing
    (503 to all, /health failing). Now that one is refused within a fraction of a second as
    busy (503 with Retry-After, nothing stored), and the others of its group commit."""
    engine = await make_pg_engine(_frozen_holders_app(), run_worker=False)
    job = await engine.send({"name": "t/job", "data": {"k": "held"}})
    (run,) = await runs_for_event(engine, job)
    frozen = psycopg.connect(postgres_url, autocommit=True)
    try:
        frozen.execute("BEGIN")
        if held == "idempotency key":
            frozen.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("idempotency\x1fonce\x1fheld",))
            needing = {"name": "t/once", "data": {"k": "held"}}
        else:
            frozen.execute("SELECT 1 FROM runs WHERE id = %s FOR UPDATE", (run["id"],))
            needing = {"name": "t/stop", "data": {"k": "held"}}
        started = time.monotonic()
        sends = [engine.send(needing)] + [engine.send({"name": "t/once", "data": {"k": f"free-{n}"}}) for n in range(5)]
        results = await asyncio.wait_for(asyncio.gather(*sends, return_exceptions=True), 30)
        took = time.monotonic() - started
        assert isinstance(results[0], errors.BusyError) and "send it again" in str(results[0]), results[0]
        assert all(isinstance(r, str) for r in results[1:]), results
        assert took < 3, took  # not the 5 s lock timeout, nor twice it
        assert engine.store.db.write_failure(60) is None  # busy is not the database failing
        stored = await engine.store.db.read(lambda conn: conn.all("SELECT body FROM events WHERE name <> 't/job'"))
        assert sorted(json.loads(r["body"])["data"]["k"] for r in stored) == [f"free-{n}" for n in range(5)]
    finally:
        frozen.close()  # the frozen process dies: its lock goes
    assert await engine.send(needing)


async def test_a_lock_held_by_a_frozen_process_fails_a_write_that_needs_it_after_the_lock_timeout(
    make_pg_engine: Any, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any other lock (a run's row, an idempotency key): the write waits LOCK_TIMEOUT_MS,
    then fails alone as the database being unavailable, instead of for ever."""
    monkeypatch.setattr(postgres, "LOCK_TIMEOUT_MS", 500)
    engine = await make_pg_engine(run_worker=False)
    frozen = psycopg.connect(postgres_url, autocommit=True)
    try:
        frozen.execute("BEGIN")
        frozen.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("held\x1fkey",))
        with pytest.raises(errors.StoreError, match="lock timeout"):
            await asyncio.wait_for(engine.store.db.write(lambda conn: conn.lock("held", "key")), 30)
        assert await engine.send({"name": "t/other", "data": {}})
    finally:
        frozen.close()


async def test_health_answers_503_while_every_write_fails_and_200_once_one_goes_through(
    make_pg_engine: Any, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only database still answers reads: /health must say that this process cannot
    write (a load balancer then steers away), and say it no longer once a write goes through."""
    monkeypatch.setattr(api_metrics, "WRITES_FAILING", 0.3)
    engine = await make_pg_engine(run_worker=False)
    app = create_app(engine, ServerOptions(dev=True))
    dbname = postgres_url.rsplit("/", 1)[1]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        assert (await client.get("/health")).status_code == 200
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {dbname} SET default_transaction_read_only = on")
            kill_connections(postgres_url)
            for _ in range(2):
                with pytest.raises(errors.StoreError):
                    await engine.send({"name": "h/refused"})
                # A transaction that only reads (a claim that finds nothing) still commits:
                # it says nothing of whether writes go through.
                await engine.store.db.write(lambda conn: conn.one("SELECT 1 AS one"))
                await asyncio.sleep(0.2)
            reply = await client.get("/health")
            assert reply.status_code == 503 and "no write has gone through" in reply.json()["error"], reply.text
            assert "read-only" in reply.json()["error"]
            admin.execute(f"ALTER DATABASE {dbname} SET default_transaction_read_only = off")
        await engine.send({"name": "h/taken"})
        assert (await client.get("/health")).status_code == 200


async def test_the_same_event_ids_and_idempotency_keys_sent_to_two_processes_at_once_count_once(
    postgres_url: str, make_pg_engine: Any
) -> None:
    app = stepline.App("dedup-race")

    @app.function(id="once-per-order", trigger=stepline.TriggerEvent("order/paid"), idempotency="event.data.order")
    async def once(ctx: stepline.Context) -> None:
        return None

    first = await make_pg_engine(app, run_worker=False)
    second = await make_pg_engine(run_worker=False)
    for start in range(0, 200, 20):
        same_ids = [{"name": "dup/x", "id": f"e-{n}", "data": {}} for n in range(start, start + 20)]
        a, b = await asyncio.gather(first.send_many(same_ids), second.send_many(same_ids))
        assert a == b, "both processes answer with the one stored event's id"
        orders = [{"name": "order/paid", "data": {"order": n}} for n in range(start, start + 20)]
        await asyncio.gather(first.send_many(orders), second.send_many(orders))
    await second.stop(grace=1.0)
    await first.stop(grace=1.0)
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM events WHERE name = 'dup/x'").fetchone() == (200,)
        assert conn.execute("SELECT count(*) FROM events WHERE name = 'order/paid'").fetchone() == (400,)
        assert conn.execute("SELECT count(*) FROM runs WHERE function_id = 'once-per-order'").fetchone() == (200,)


async def test_singleton_debounce_and_batch_keys_first_seen_by_two_processes_at_once_start_one_run(
    postgres_url: str, make_pg_engine: Any
) -> None:
    app = stepline.App("first-key-race")

    @app.function(id="single", trigger=stepline.TriggerEvent("k/single"), singleton=stepline.Singleton(key="event.data.k"))
    async def single(ctx: stepline.Context) -> None:
        return None

    @app.function(id="debounced", trigger=stepline.TriggerEvent("k/debounced"), debounce=stepline.Debounce(period=60, key="event.data.k"))
    async def debounced(ctx: stepline.Context) -> None:
        return None

    @app.function(id="batched", trigger=stepline.TriggerEvent("k/batched"), batch_events=stepline.Batch(max_size=10, timeout=60, key="event.data.k"))
    async def batched(ctx: stepline.Context) -> None:
        return None

    first = await make_pg_engine(app, run_worker=False)
    second = await make_pg_engine(run_worker=False)
    keys = 20
    for name in ("k/single", "k/debounced", "k/batched"):
        events = [{"name": name, "data": {"k": k}} for k in range(keys)]
        await asyncio.gather(first.send_many(events), second.send_many(events))
    await second.stop(grace=1.0)
    await first.stop(grace=1.0)
    with psycopg.connect(postgres_url) as conn:
        counts = dict(conn.execute("SELECT function_id, count(*) FROM runs GROUP BY function_id").fetchall())
        sizes = {len(json.loads(b)) for (b,) in conn.execute("SELECT batch_event_ids FROM runs WHERE function_id = 'batched'")}
    assert counts == {"single": keys, "debounced": keys, "batched": keys}, "one run per key and function"
    assert sizes == {2}, "both processes' events joined the key's one batch"


class Proxy:
    """A TCP relay to PostgreSQL that a test can cut (every connection dropped, new ones
    refused) and restore, to play an outage without stopping the shared server."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._links: list[socket.socket] = []
        self._server: socket.socket | None = None
        self._lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self.port = server.getsockname()[1]
        with self._lock:
            self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            if self._server is not None:
                with contextlib.suppress(OSError):
                    self._server.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it; close alone does not
                self._server.close()
                self._server = None
            for sock in self._links:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._links.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                if self._server is not server:  # cut while this one was being accepted: it never got through
                    client.close()
                    upstream.close()
                    return
                self._links += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


async def test_an_outage_longer_than_the_reconnect_window_fails_fast_then_heals_by_itself(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "RECONNECT_WINDOW", 1.0)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE scratch (id TEXT PRIMARY KEY, note TEXT)")
    proxy = Proxy(("127.0.0.1", 5432))
    proxied = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    database = postgres.PostgresDatabase(proxied)
    await database.start()
    woken = threading.Event()
    database.add_waker(woken.set)

    def insert(name: str) -> db.Op[None]:
        return lambda conn: conn.execute("INSERT INTO scratch (id) VALUES (?)", (name,))

    def count(conn: db.Conn) -> int:
        return int(conn.scalar("SELECT count(*) AS n FROM scratch"))

    try:
        await database.write(insert("before"))
        proxy.cut()
        with pytest.raises(errors.StoreError):
            await database.write(insert("during"))
        with pytest.raises(errors.StoreError):
            await database.read(count)
        proxy.restore()

        await eventually(lambda: _succeeds(database.write(insert("after"))), timeout=30, what="writes to heal")
        await eventually(lambda: _succeeds(database.read(count)), timeout=30, what="reads to heal")
        assert await database.read(count) == 2, "the write refused during the outage was not saved"
        assert await asyncio.get_running_loop().run_in_executor(None, woken.wait, 30), "the listener came back"
    finally:
        await database.close()
        proxy.cut()


async def _succeeds(attempt: Any) -> bool:
    try:
        await attempt
    except errors.StoreError:
        return False
    return True


async def test_a_burst_of_runs_refreshes_the_queue_statistics_at_once(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, make_pg_engine: Any
) -> None:
    """The planner must not keep planning claims for an empty queue until autovacuum's next round."""
    monkeypatch.setattr(postgres, "ANALYZE_AFTER_RUNS", 50)
    app = stepline.App("burst")

    @app.function(id="burst", trigger=stepline.TriggerEvent("burst/go"))
    async def burst(ctx: stepline.Context) -> None:
        return None

    engine = await make_pg_engine(app, run_worker=False)

    def statistics() -> tuple[Any, float]:
        with psycopg.connect(postgres_url) as conn:
            row = conn.execute(
                "SELECT s.last_analyze, c.reltuples FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid "
                "WHERE s.relname = 'queue'"
            ).fetchone()
            assert row is not None
            return row[0], float(row[1])

    await engine.send_many([{"name": "burst/go", "data": {"i": i}} for i in range(40)])
    assert statistics()[0] is None  # under the threshold: left to autovacuum
    await engine.send_many([{"name": "burst/go", "data": {"i": i}} for i in range(40)])

    async def analyzed() -> bool:
        last, rows = statistics()
        return last is not None and rows >= 80

    await eventually(analyzed, timeout=10, what="ANALYZE of the queue after 80 new runs")


def _napping_app() -> stepline.App:
    app = stepline.App("napping")

    @app.function(id="nap", trigger=stepline.TriggerEvent("t/nap"), retries=0)
    async def nap(ctx: stepline.Context) -> str:
        await ctx.step.sleep("nap", "120s")
        return "woke"

    return app


@pytest.mark.parametrize("lead_s", [600, -600])
async def test_due_times_are_on_the_databases_clock_whatever_the_hosts(
    make_pg_engine: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, postgres_url: str,
    lead_s: int,
) -> None:
    """Due times were set and compared on each host's clock: a worker 10 minutes behind
    ended a 2-minute sleep at once, one 10 minutes ahead set it 10 minutes late. A store on
    PostgreSQL now reads the database's clock at start (and every minute) and times its
    sleeps, timeouts, retries and cron on it; the host still gets a warning naming how far
    off it is."""
    caplog.set_level(logging.WARNING, logger="stepline.clock")
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + lead_s)
    engine = await make_pg_engine(_napping_app())
    assert abs(engine.store.now_ms() - real() * 1000) < 1000  # the store reads the database's time
    (run,) = await runs_for_event(engine, await engine.send({"name": "t/nap", "data": {}}))

    async def asleep() -> dict[str, Any] | None:
        steps = (await engine.get_run(run["id"]))["steps"]
        return steps[0] if steps and steps[0]["status"] == "sleeping" else None

    step = await eventually(asleep, what="the run asleep")
    with psycopg.connect(postgres_url) as conn:
        (database_ms,) = conn.execute("SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)").fetchone()
    wake_ms = dt.datetime.fromisoformat(step["wake_at"].replace("Z", "+00:00")).timestamp() * 1000
    assert abs(wake_ms - (database_ms + 120_000)) < 5_000, (wake_ms - database_ms) / 1000
    await asyncio.sleep(1.0)  # the worker has looked for due work meanwhile
    assert (await engine.get_run(run["id"]))["status"] == "sleeping"
    (said,) = [r.getMessage() for r in caplog.records if "clock is" in r.getMessage()]
    assert said.startswith("this host's clock is 600.") and "NTP" in said
    assert ("ahead of" if lead_s > 0 else "behind") in said

async def test_a_clock_reading_that_waited_long_for_its_answer_changes_nothing(
    make_pg_engine: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A reading of the database's clock that waited for a connection (a pool at its limit, a
    slow network) has a midpoint off by that wait: it once warned of a host seconds 'behind'
    that was not. Such a reading now neither corrects the clock nor warns."""
    from stepline.store import clock_align

    caplog.set_level(logging.WARNING, logger="stepline.clock")
    engine = await make_pg_engine(run_worker=False)
    aligned = engine.store.clock.correction_s
    real_read = engine.store.db.read

    async def slow_read(op: Any) -> Any:
        await asyncio.sleep(0.6)  # waiting for a connection, before the query is sent
        return await real_read(op)

    monkeypatch.setattr(engine.store.db, "read", slow_read)
    assert await clock_align.ClockAligner(engine.store.db, engine.store.clock).align() is None
    assert engine.store.clock.correction_s == aligned
    assert not [r for r in caplog.records if "clock is" in r.getMessage()]


async def test_a_run_whose_row_an_operators_transaction_locks_holds_up_no_other_claim(
    make_pg_engine: Any, postgres_url: str
) -> None:
    """An operator's session holds one run's row locked (``SELECT ... FOR UPDATE`` in psql,
    left open) as that run falls due. Claims pass over it until the lock goes: they waited
    for it, every claim of the worker failed after the lock timeout, and no other run
    started for as long as the session stayed open."""
    app = stepline.App("pg-locked-run")

    @app.function(id="sleeper", trigger=stepline.TriggerEvent("locked/sleep"), retries=0)
    async def sleeper(ctx: stepline.Context) -> str:
        await ctx.step.sleep("nap", "1s")
        return "woke"

    @app.function(id="quick", trigger=stepline.TriggerEvent("locked/quick"), retries=0)
    async def quick(ctx: stepline.Context) -> str:
        return str(await ctx.step.run("q", lambda: "ok"))

    await make_pg_engine(app)
    sender = await make_pg_engine(app, run_worker=False)
    (sleeping,) = await runs_for_event(sender, await sender.send({"name": "locked/sleep", "data": {}}))
    await wait_run(sender, sleeping["id"], "sleeping")
    with psycopg.connect(postgres_url) as operator:
        operator.execute("SELECT 1 FROM runs WHERE id = %s FOR UPDATE", (sleeping["id"],))
        await asyncio.sleep(1.5)  # the sleeper is due, its row still locked
        for i in range(3):
            (run,) = await runs_for_event(sender, await sender.send({"name": "locked/quick", "data": {"i": i}}))
            assert (await wait_run(sender, run["id"], timeout=15))["status"] == "completed"
        assert (await sender.get_run(sleeping["id"]))["status"] != "completed"
    assert (await wait_run(sender, sleeping["id"], timeout=15))["status"] == "completed"


async def test_a_table_missing_is_the_databases_failure_naming_the_fix(pg: postgres.PostgresDatabase, postgres_url: str) -> None:
    """A table renamed or dropped by hand (42P01), like a revoked grant (42501), is the
    database not being what this release needs: a StoreError with what to do, never an
    operation's own failure."""
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("ALTER TABLE scratch RENAME TO scratch_moved")
        kill_connections(postgres_url)
        with pytest.raises(errors.StoreError, match="stepline migrate"):
            await pg.write(lambda conn: conn.execute("INSERT INTO scratch (id) VALUES ('refused')"))
        admin.execute("ALTER TABLE scratch_moved RENAME TO scratch")
    await pg.write(lambda conn: conn.execute("INSERT INTO scratch (id) VALUES ('taken')"))
    assert scratch_rows(postgres_url) == [("taken", None)]


@contextlib.contextmanager
def _own_role(postgres_url: str) -> Any:
    """A role of this test's own (not a superuser, whom grants do not bind) with every right
    on the test database's tables; the URL to connect as it. Dropped afterwards."""
    role = f"stepline_r_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"GRANT ALL ON SCHEMA public TO {role}")
        admin.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        admin.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
    try:
        yield role, postgres_url.replace("postgresql://postgres@", f"postgresql://{role}@")
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")


async def test_a_run_whose_steps_the_database_refuses_to_save_is_not_failed(postgres_url: str) -> None:
    """The rights to write the steps table revoked for a moment (an operator's mistake, a
    grant script run half-way) refused each step's checkpoint. That counted as a failed
    attempt of the function (a run with no retries failed for good, naming
    InsufficientPrivilege); now it is the database failing, as an outage: the run stops on
    this worker and completes once the rights are back, its saved step not run again."""
    executions: list[str] = []
    gate = asyncio.Event()
    app = stepline.App("rights-refused")

    @app.function(id="two-steps", trigger=stepline.TriggerEvent("rr/job"), retries=0)
    async def two_steps(ctx: stepline.Context) -> int:
        async def first() -> int:
            executions.append(f"{ctx.run_id}:first")
            return 1

        async def second() -> int:
            executions.append(f"{ctx.run_id}:second")
            await gate.wait()
            return 2

        return await ctx.step.run("first", first) + await ctx.step.run("second", second)

    with _own_role(postgres_url) as (role, role_url), psycopg.connect(postgres_url, autocommit=True) as admin:
        engine = Engine(open_store(role_url, migrate_now=False), TEST_SETTINGS.replace(db=role_url), [app])
        await engine.start()
        try:
            run_id = (await runs_for_event(engine, await engine.send({"name": "rr/job", "data": {}})))[0]["id"]
            await eventually(lambda: f"{run_id}:second" in executions or None, what="the last step to start")
            admin.execute(f"REVOKE INSERT, UPDATE ON steps FROM {role}")
            gate.set()
            later = (await runs_for_event(engine, await engine.send({"name": "rr/job", "data": {}})))[0]["id"]
            await asyncio.sleep(2.0)  # the checkpoints are refused meanwhile
            admin.execute(f"GRANT INSERT, UPDATE ON steps TO {role}")
            run = await wait_run(engine, run_id, timeout=30)
            later_run = await wait_run(engine, later, timeout=30)
        finally:
            await engine.stop(grace=1.0)
    assert run["status"] == "completed" and run["output"] == 3, run
    assert later_run["status"] == "completed" and later_run["output"] == 3, later_run
    assert executions.count(f"{run_id}:first") == 1, executions  # saved before the refusal: never again
