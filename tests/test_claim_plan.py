"""What a claim reads: the runs that are ready, however many more sleep in the queue, and
still in claim order (due time less priority) whichever way it reads them."""

from __future__ import annotations

import json
from typing import Any

import stepline
from stepline.store import db, ops_exec

SLEEPERS = 1500


def app() -> stepline.App:
    app = stepline.App("claims")

    @app.function(id="job", trigger=stepline.TriggerEvent("claims/job"))
    async def job(ctx: stepline.Context) -> None:
        return None

    @app.function(id="urgent", trigger=stepline.TriggerEvent("claims/urgent"), priority=stepline.Priority(run="600"))
    async def urgent(ctx: stepline.Context) -> None:
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
    queue rows the claim's reads examined."""
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
    for _ in range(ops_exec.FEW_READY // 100 + 2):
        await engine.send_many([{"name": "claims/job", "data": {"i": i}} for i in range(100)])
    await engine.send({"name": "claims/urgent"})  # due last; its priority puts it first
    claimed, _ = await claim_and_examine(engine, 10)
    assert claimed[0] == "urgent" and claimed[1:] == ["job"] * 9


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
