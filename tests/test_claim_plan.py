"""What a claim reads: the runs that are ready, however many more sleep in the queue, and
still in claim order (due time less priority) whichever way it reads them; nothing of the
functions its worker does not serve, however many runs they have asleep or waiting."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import stepline
from stepline.store import db, ops_exec, ops_runs, postgres
from tests.helpers import counting_vm_instructions

SLEEPERS = 1500
MANY = 300  # ready runs of one function: many times a claim's batch
THEIRS = 1536  # runs of a function the claims here do not serve


def app() -> stepline.App:
    app = stepline.App("claims")

    @app.function(id="job", trigger=stepline.TriggerEvent("claims/job"))
    async def job(ctx: stepline.Context) -> None:
        return None

    @app.function(id="urgent", trigger=stepline.TriggerEvent("claims/urgent"), priority=stepline.Priority(run="600"))
    async def urgent(ctx: stepline.Context) -> None:
        return None

    return app


def elsewhere(priority: stepline.Priority | None = None) -> stepline.App:
    """Another app's function in the same database, which the claims here do not serve (a
    worker of its own takes its runs)."""
    app = stepline.App("elsewhere")

    @app.function(id="other", trigger=stepline.TriggerEvent("claims/other"), priority=priority)
    async def other(ctx: stepline.Context) -> None:
        return None

    return app


class Recording:
    """A ``Conn`` that counts the queue rows each of its reads examines, before running it."""

    def __init__(self, conn: db.Conn) -> None:
        self._conn = conn
        self.examined: list[int] = []

    def all(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        if "FROM queue" in sql:
            self.examined.append(rows_examined(self._conn, sql, tuple(params)))
        return self._conn.all(sql, params)

    def one(self, sql: str, params: Any = ()) -> dict[str, Any] | None:
        rows = self.all(sql, params)
        return rows[0] if rows else None

    def scalar(self, sql: str, params: Any = ()) -> Any:
        row = self.one(sql, params)
        return None if row is None else next(iter(row.values()))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def rows_examined(conn: db.Conn, sql: str, params: tuple[Any, ...]) -> int:
    """How many queue rows a statement reads: SQLite reads the whole table only in a plan
    that scans it (counted as every row); PostgreSQL says how many it read."""
    if conn.dialect == "sqlite":
        plan = " ".join(r["detail"] for r in conn.all("EXPLAIN QUERY PLAN " + sql, params))
        scans = "SCAN queue" in plan
        return int(conn.scalar("SELECT COUNT(*) AS n FROM queue")) if scans else 0
    (row,) = conn.all("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params)
    plan = row["QUERY PLAN"]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    total = 0
    stack = [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        if node.get("Relation Name") == "queue" or "queue" in node.get("Index Name", ""):
            total += int(node.get("Actual Rows", 0)) + int(node.get("Rows Removed by Filter", 0))
        stack.extend(node.get("Plans", []))
    return total


async def claim_and_examine(engine: Any, limit: int, *, analyze: bool = True) -> tuple[list[str], int]:
    """Claim up to ``limit`` runs (in a transaction rolled back afterwards) and count the
    queue rows the claim's reads examined (on SQLite, those of plans that scan the table;
    ``claim_cost`` counts every row it reads)."""
    found: dict[str, Any] = {}

    def op(conn: db.Conn) -> None:
        if analyze and conn.dialect == "postgres":
            conn.execute("ANALYZE queue")  # as the store does after a burst of new runs (never-analysed tiny tables are scanned)
        recording = Recording(conn)
        claimed, _ = ops_exec.claim_txn(recording, "w-test", ["job", "urgent"], limit, engine.store.now_ms(), 30_000)  # type: ignore[arg-type]
        found["claimed"] = [c.function_id for c in claimed]
        found["examined"] = max(recording.examined)
        raise LookupError("rolled back")  # an operation that raises is rolled back alone

    try:
        await engine.store.db.write(op)
    except LookupError:
        pass
    return found["claimed"], found["examined"]


async def test_a_claim_reads_the_ready_runs_not_the_sleeping_ones(make_engine) -> None:
    engine = await make_engine(app(), run_worker=False)
    later = engine.store.now_ms() + 3_600_000
    for start in range(0, SLEEPERS, 500):
        await engine.send_many([{"name": "claims/job", "data": {"i": i}, "ts": later + i} for i in range(start, start + 500)])
    await engine.send_many([{"name": "claims/job", "data": {"i": -1}}, {"name": "claims/urgent"}, {"name": "claims/job"}])
    claimed, examined = await claim_and_examine(engine, 100)
    assert claimed == ["urgent", "job", "job"]  # claim order: priority first
    assert examined < 50, f"the claim read {examined} queue rows for 3 ready runs beside {SLEEPERS} sleeping"


async def test_with_more_ready_than_a_batch_the_claim_still_takes_them_in_claim_order(make_engine) -> None:
    engine = await make_engine(app(), run_worker=False)
    for _ in range(MANY // 100):
        await engine.send_many([{"name": "claims/job", "data": {"i": i}} for i in range(100)])
    await engine.send({"name": "claims/urgent"})  # due last; its priority puts it first
    claimed, _ = await claim_and_examine(engine, 10)
    assert claimed[0] == "urgent" and claimed[1:] == ["job"] * 9


async def test_with_many_ready_a_claim_reads_its_batch_not_every_ready_run(make_engine) -> None:
    """With more of a function's runs ready than its batch, a claim reads that function's
    claim-order index until its batch is full. Given an index of each function's runs by
    due time too, SQLite's planner (no statistics) chose it, as it matches more of the
    claim's terms, and read and sorted every ready run of the functions for each claim."""
    engine = await make_engine(app(), run_worker=False)

    async def ready(count: int) -> None:
        for start in range(0, count, 500):
            await engine.send_many([{"name": "claims/job", "data": {"i": i}} for i in range(start, min(count, start + 500))])

    await ready(MANY)
    claimed, some = await claim_cost(engine, 10)
    assert claimed == ["job"] * 10
    await ready(MANY * 8)
    claimed, many = await claim_cost(engine, 10)
    assert claimed == ["job"] * 10
    if engine.store.db.dialect == "postgres":
        assert many <= 30, f"the claim read {many} queue rows for a batch of 10"
    else:
        assert many <= 2 * some + 200, f"{many} VM instructions for a batch of 10 with {MANY * 9} ready, {some} with {MANY}"


async def test_a_claim_reads_the_ready_runs_when_the_statistics_still_count_the_sleepers_as_due(make_engine) -> None:
    """A burst of runs is counted by the planner while they are due, then they all go to
    sleep (their due time moves hours ahead) before the statistics are taken again: the
    claim must still read only what is ready, not the whole queue on every claim."""
    engine = await make_engine(app(), run_worker=False)
    sleepers = 20_000  # enough that reading them costs a planner more than looking up the few ready by key
    for start in range(0, sleepers, 1000):
        await engine.send_many([{"name": "claims/job", "data": {"i": i}} for i in range(start, start + 1000)])

    def went_to_sleep(conn: db.Conn) -> None:
        conn.execute("ANALYZE queue")  # the statistics see them all due now
        conn.execute("UPDATE queue SET due_at = due_at + 3600000")  # and then they sleep for an hour

    await engine.store.db.write(went_to_sleep)
    await engine.send_many([{"name": "claims/job", "data": {"i": -1}}, {"name": "claims/urgent"}, {"name": "claims/job"}])
    claimed, examined = await claim_and_examine(engine, 100, analyze=False)
    assert claimed == ["urgent", "job", "job"]
    assert examined < 50, f"the claim read {examined} queue rows for 3 ready runs beside {sleepers} sleeping"


async def read_cost(engine: Any, read: Callable[[db.Conn], Any]) -> tuple[Any, int]:
    """``read(conn)``'s result, in a write transaction rolled back afterwards, and what it
    read whatever the machine's speed: SQLite's VM instructions (to the nearest ten below;
    an index walked to its end costs as much as a scan), PostgreSQL's count of the queue
    rows its reads examined (the most of any one statement)."""
    found: dict[str, Any] = {}
    raw = engine.store.db._writer_conn if engine.store.db.dialect == "sqlite" else None

    def op(conn: db.Conn) -> None:
        if raw is None:
            conn.execute("ANALYZE queue")  # as the store does after a burst of new runs
            recording = Recording(conn)
            found["result"] = read(recording)  # type: ignore[arg-type]
            found["cost"] = max(recording.examined)
        else:
            with counting_vm_instructions(raw) as steps:
                found["result"] = read(conn)
            found["cost"] = steps[0]
        raise LookupError("rolled back")

    try:
        await engine.store.db.write(op)
    except LookupError:
        pass
    return found["result"], found["cost"]


async def claim_cost(engine: Any, limit: int = 100) -> tuple[list[str], int]:
    """The functions of the runs a claim for ``app()``'s functions takes, and what it read."""

    def claim(conn: db.Conn) -> list[str]:
        claimed, _ = ops_exec.claim_txn(conn, "w-test", ["job", "urgent"], limit, engine.store.now_ms(), 30_000)
        return [c.function_id for c in claimed]

    return await read_cost(engine, claim)


def within(cost: int, alone: int, engine: Any) -> bool:
    """Whether a read beside another function's runs cost about what it did without them."""
    return cost < 50 if engine.store.db.dialect == "postgres" else cost <= 2 * alone + 200


async def add_theirs(engine: Any, theirs: str) -> int:
    """``THEIRS`` runs of the function no claim here serves, ``asleep`` or ``ready``."""
    later = engine.store.now_ms() + 3_600_000 if theirs == "asleep" else None
    count = THEIRS
    for start in range(0, count, 500):
        await engine.send_many([
            {"name": "claims/other", "data": {"i": i}, **({"ts": later + i} if later else {})} for i in range(start, min(count, start + 500))
        ])
    return count


@pytest.mark.parametrize("theirs", ["asleep", "ready"])
@pytest.mark.parametrize("ours", [0, 3])
async def test_a_claim_reads_nothing_of_the_functions_it_does_not_serve(make_engine, theirs: str, ours: int) -> None:
    """Workers may serve different functions of one database (an app each, or a machine for
    the heavy ones). A claim read another function's runs to learn when its own next run
    falls due (every row of the due-time index, when none of its own waits) and, with more
    than a batch of theirs ready, to find its own few: 1,000,000 runs asleep in another
    app made every empty claim take 60-80 ms, holding the writer. What a claim reads now
    does not grow with the runs of functions it does not serve."""
    engine = await make_engine(app(), elsewhere(), run_worker=False)
    mine = [{"name": "claims/job", "data": {"i": -1}}, {"name": "claims/urgent"}, {"name": "claims/job"}][:ours]
    if mine:
        await engine.send_many(mine)
    expected = ["urgent", "job", "job"][:ours]
    claimed, alone = await claim_cost(engine)
    assert claimed == expected
    count = await add_theirs(engine, theirs)
    claimed, beside = await claim_cost(engine)
    assert claimed == expected
    assert within(beside, alone, engine), f"the claim read {beside} (rows or VM instructions) beside {count} runs of another function {theirs}, {alone} without"


@pytest.mark.parametrize("ours", [0, 1])
async def test_an_ingest_learns_whether_its_workers_have_ready_runs_without_reading_another_functions_backlog(make_engine, ours: int) -> None:
    """An ingest hands a new run straight to a worker of its process only when no older run
    of the worker's functions waits in the queue. Asking read the due-time index through
    every ready run of other functions (a backlog waiting for its own workers) before
    finding none of its own."""
    engine = await make_engine(app(), elsewhere(), run_worker=False)
    if ours:
        await engine.send({"name": "claims/job"})

    def ask(conn: db.Conn) -> bool:
        return ops_runs.ready_run_waiting_txn(conn, frozenset({"job", "urgent"}), engine.store.now_ms())

    waiting, alone = await read_cost(engine, ask)
    assert waiting is bool(ours)
    count = await add_theirs(engine, "ready")
    waiting, beside = await read_cost(engine, ask)
    assert waiting is bool(ours)
    assert within(beside, alone, engine), f"the question read {beside} (rows or VM instructions) beside {count} ready runs of another function, {alone} without"



async def test_with_many_of_its_own_ready_a_claim_reads_nothing_of_another_functions_backlog_before_them(make_engine) -> None:
    """With more of its own ready than a few hundred, a claim read the one claim order of
    every function from its start: through every ready run of functions it does not serve
    that sorted before its own (a backlog waiting for its own workers, older or of higher
    priority), each claim. It reads each of its own functions' claim order now."""
    engine = await make_engine(app(), elsewhere(stepline.Priority(run="600")), run_worker=False)
    await engine.send_many([{"name": "claims/job", "data": {"i": i}} for i in range(MANY)])
    await engine.send({"name": "claims/urgent"})
    claimed, alone = await claim_cost(engine, 10)
    assert claimed == ["urgent"] + ["job"] * 9
    count = await add_theirs(engine, "ready")  # their priority sorts them all before ours
    claimed, beside = await claim_cost(engine, 10)
    assert claimed == ["urgent"] + ["job"] * 9
    limit = alone + 50 if engine.store.db.dialect == "postgres" else 2 * alone + 200
    assert beside <= limit, f"the claim read {beside} (rows or VM instructions) beside {count} ready runs of another function sorting first, {alone} without"


async def test_with_many_ready_a_claim_reads_nothing_of_its_own_runs_asleep_that_their_priority_sorts_first(make_engine) -> None:
    """A run sorts as if due its priority earlier, so runs asleep for a few minutes more
    than that priority sort before the ready runs of a function without one. Reading the
    one claim order passed all of them, each claim; none of them is ready."""
    engine = await make_engine(app(), run_worker=False)
    await engine.send_many([{"name": "claims/job", "data": {"i": i}} for i in range(MANY)])
    claimed, alone = await claim_cost(engine, 10)
    assert claimed == ["job"] * 10
    soon = engine.store.now_ms() + 300_000  # asleep 5 minutes: their priority (600 s) sorts them before every ready run
    for start in range(0, THEIRS, 500):
        await engine.send_many([{"name": "claims/urgent", "data": {"i": i}, "ts": soon + i} for i in range(start, min(THEIRS, start + 500))])
    claimed, beside = await claim_cost(engine, 10)
    assert claimed == ["job"] * 10
    limit = alone + 50 if engine.store.db.dialect == "postgres" else 2 * alone + 200
    assert beside <= limit, f"the claim read {beside} (rows or VM instructions) beside {THEIRS} of its runs asleep sorting first, {alone} without"


async def test_a_claim_for_more_functions_than_one_statement_reads_still_takes_them_in_claim_order(make_engine) -> None:
    engine = await make_engine(app(), run_worker=False)
    await engine.send_many([{"name": "claims/job", "data": {"i": i}} for i in range(30)])
    await engine.send({"name": "claims/urgent"})
    served = [f"absent-{i}" for i in range(ops_exec.MAX_BRANCHES * 2)] + ["job", "urgent"]

    def claim(conn: db.Conn) -> list[str]:
        claimed, _ = ops_exec.claim_txn(conn, "w-test", served, 20, engine.store.now_ms(), 30_000)
        return [c.function_id for c in claimed]

    claimed, _ = await read_cost(engine, claim)
    assert claimed == ["urgent"] + ["job"] * 19


async def test_workers_claiming_at_once_from_one_backlog_take_different_batches(make_pg_engine, postgres_url: str) -> None:
    """Two claims in flight at once (two workers' transactions, PostgreSQL) over many ready
    runs: the second passes over the rows the first holds and takes the next batch, not
    none (each claim's read of its functions' claim order skips locked rows)."""
    engine = await make_pg_engine(app(), run_worker=False)
    await engine.send_many([{"name": "claims/job", "data": {"i": i}} for i in range(MANY)])
    now = engine.store.now_ms()
    with psycopg.connect(postgres_url, row_factory=dict_row) as first, psycopg.connect(postgres_url, row_factory=dict_row) as second:
        taken = [
            {c.run_id for c in ops_exec.claim_txn(postgres.PostgresConn(raw), f"w-{n}", ["job", "urgent"], 10, now, 30_000)[0]}
            for n, raw in enumerate((first, second))
        ]
        first.rollback()
        second.rollback()
    assert len(taken[0]) == 10 and len(taken[1]) == 10 and not taken[0] & taken[1], taken


def mixed() -> stepline.App:
    """Three functions whose runs carry their own priority (``event.data.p`` seconds)."""
    app = stepline.App("mixed")
    for name in ("a", "b", "c"):

        @app.function(id=f"mixed-{name}", trigger=stepline.TriggerEvent(f"mixed/{name}"), priority=stepline.Priority(run="event.data.p"))
        async def run(ctx: stepline.Context) -> None:
            return None

    return app


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_whatever_is_queued_a_claim_takes_the_first_ready_runs_in_claim_order(make_engine, seed: int) -> None:
    """Against a plain reading of the queue (every ready run of the served functions, sorted
    by due time less priority): runs of three functions with priorities from -12 h to
    +12 h, some ready and some asleep (minutes to a day ahead), one function not served,
    claims of batches below, at and above what each function has ready. The claim takes
    the batch's first runs in claim order (ties in any order), whichever way it reads."""
    rng = random.Random(seed)
    engine = await make_engine(mixed(), run_worker=False)
    now = engine.store.now_ms()
    counts = {"a": rng.randint(0, 40), "b": rng.randint(0, 40), "c": rng.randint(20, 60)}
    events = []
    for name, count in counts.items():
        for i in range(count):
            asleep = rng.random() < 0.4
            p = rng.choice([0, rng.randint(-43_200, 43_200)])
            ts = {"ts": now + rng.randint(60_000, 86_400_000)} if asleep else {}
            events.append({"name": f"mixed/{name}", "data": {"p": p, "i": i}, **ts})
    rng.shuffle(events)
    await engine.send_many(events)
    served = ["mixed-a", "mixed-b"]

    def first_in_claim_order(conn: db.Conn, limit: int) -> list[int]:
        marks, params = db.in_list(served)
        rows = conn.all(
            f"SELECT due_at - priority_ms AS o FROM queue WHERE lease_owner IS NULL AND due_at <= ? AND function_id IN ({marks})",
            (engine.store.now_ms(), *params),
        )
        return sorted(int(r["o"]) for r in rows)[:limit]

    for limit in (1, 3, 10, 25, 100):

        def claim(conn: db.Conn, limit: int = limit) -> tuple[list[int], list[int]]:
            expected = first_in_claim_order(conn, limit)
            claimed, _ = ops_exec.claim_txn(conn, "w-test", served, limit, engine.store.now_ms(), 30_000)
            assert all(c.function_id in served for c in claimed)
            ids = [c.run_id for c in claimed]
            if not ids:
                return [], expected
            marks, params = db.in_list(ids)
            taken = conn.all(f"SELECT DISTINCT run_id, due_at - priority_ms AS o FROM queue WHERE run_id IN ({marks})", params)
            return sorted(int(r["o"]) for r in taken), expected

        (taken, expected), _ = await read_cost(engine, claim)
        assert taken == expected, f"limit {limit}, {counts}: took {taken}, the first in claim order are {expected}"


def many_functions(count: int) -> stepline.App:
    app = stepline.App("many")
    for i in range(count):

        @app.function(id=f"many-{i:02d}", trigger=stepline.TriggerEvent(f"many/{i:02d}"))
        async def run(ctx: stepline.Context) -> None:
            return None

    return app


async def test_a_worker_serving_many_functions_each_with_a_backlog_reads_about_its_batch(make_engine) -> None:
    """A claim for 20 functions, each with 30 runs ready, reads about what it reads when one
    of them has runs ready: not a batch of each function (reading ``limit`` runs of each
    made a claim of 100 for 50 backlogged functions cost 8× its batch on SQLite)."""
    functions = 20
    engine = await make_engine(many_functions(functions), run_worker=False)
    served = [f"many-{i:02d}" for i in range(functions)]

    async def ready(names: range) -> None:
        for i in names:
            await engine.send_many([{"name": f"many/{i:02d}", "data": {"j": j}} for j in range(30)])

    def claim(conn: db.Conn) -> list[str]:
        claimed, _ = ops_exec.claim_txn(conn, "w-test", served, 10, engine.store.now_ms(), 30_000)
        return [c.function_id for c in claimed]

    await ready(range(1))
    claimed, one = await read_cost(engine, claim)
    assert claimed == ["many-00"] * 10
    await ready(range(1, functions))
    claimed, every = await read_cost(engine, claim)
    assert claimed == ["many-00"] * 10  # the oldest ready runs
    assert every <= 3 * one + 100, f"the claim read {every} (rows or VM instructions) with {functions} functions backlogged, {one} with one"
