"""Upgrading: a database of the previous release, with runs in flight, sleeping and waiting,
is migrated to this release and its runs carry on under the new code.

The previous release's database is built from the migrations up to its last one
(``PREVIOUS_RELEASE``) and the rows that release's code wrote for runs in each state (as
it wrote them: no lease epoch, configs without the newer keys). Then ``stepline migrate``
brings it to head and an engine of this release resumes every run from its journal.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import stepline
from stepline import jsonutil
from stepline.engine import Engine
from stepline.store import Lease, migrate, open_store
from tests.conftest import TEST_SETTINGS, _pg_admin, pg_url
from tests.helpers import eventually, wait_run
from tests.test_migrations import apply_first

PREVIOUS_RELEASE = 6  # 0006_cleanup_window: the last migration of the release before this one


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "previous.db")
        return
    name = f"stepline_up_{uuid.uuid4().hex[:10]}"
    _pg_admin(f"CREATE DATABASE {name}")
    yield pg_url(name)
    _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def execute(url: str, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
    if url.startswith("postgresql://"):
        with psycopg.connect(url) as conn:
            for sql, params in statements:
                conn.execute(sql.replace("?", "%s"), params)
        return
    conn = sqlite3.connect(url)
    with conn:
        for sql, params in statements:
            conn.execute(sql, params)
    conn.close()


executed: dict[str, int] = {}


def upgrade_app() -> stepline.App:
    app = stepline.App("upgrade")

    def counted(name: str, value: str) -> Any:
        def body() -> str:
            executed[name] = executed.get(name, 0) + 1
            return value

        return body

    @app.function(id="pipeline", trigger=stepline.TriggerEvent("t/pipeline"))
    async def pipeline(ctx: stepline.Context) -> str:
        a = await ctx.step.run("a", counted(f"a:{ctx.event.data['n']}", "A-new"))
        b = await ctx.step.run("b", counted(f"b:{ctx.event.data['n']}", "B"))
        c = await ctx.step.run("c", counted(f"c:{ctx.event.data['n']}", "C"))
        return a + b + c

    @app.function(id="napper", trigger=stepline.TriggerEvent("t/napper"))
    async def napper(ctx: stepline.Context) -> str:
        before = await ctx.step.run("before", counted("before", "before-new"))
        await ctx.step.sleep("nap", "1h")
        return before + "+woke"

    @app.function(id="waiter", trigger=stepline.TriggerEvent("t/waiter"))
    async def waiter(ctx: stepline.Context) -> Any:
        approval = await ctx.step.wait_for_event(
            "approval", event="t/approve", timeout="1d", if_="async.data.order == event.data.order"
        )
        return None if approval is None else approval.data["by"]

    return app


def old_config(function: Any) -> str:
    """The config as the previous release stored it: only the keys it knew."""
    config = function.config.to_dict()
    known = (
        "id", "app_id", "name", "triggers", "retries", "cancel_on", "idempotency", "timeouts", "concurrency",
        "throttle", "rate_limit", "debounce", "priority", "batch_events", "singleton", "failure_handler_for",
    )
    return jsonutil.dumps({k: config[k] for k in known if k in config})


def previous_release_rows(now: int) -> tuple[list[tuple[str, tuple[Any, ...]]], dict[str, str]]:
    """What the previous release's code left in the database: one run of each kind."""
    app = upgrade_app()
    rows: list[tuple[str, tuple[Any, ...]]] = []
    for function in app.functions:
        rows.append(("INSERT INTO functions (id, app_id, config, updated_at) VALUES (?, ?, ?, ?)",
                     (function.id, app.id, old_config(function), now - 60_000)))
        rows.append(("INSERT INTO triggers (function_id, position, event_name, expression) VALUES (?, 0, ?, NULL)",
                     (function.id, function.config.triggers[0].to_dict()["event"])))
    runs = {kind: f"run-{kind}" for kind in ("midflight", "queued", "sleeping", "waiting", "done")}

    def event(run_kind: str, name: str, data: dict[str, Any]) -> str:
        event_id = f"ev-{run_kind}"
        body = {"name": name, "data": data, "id": event_id, "ts": now - 30_000}
        rows.append(("INSERT INTO events (id, name, body, external_id, user_id, ts, received_at) VALUES (?, ?, ?, NULL, NULL, ?, ?)",
                     (event_id, name, jsonutil.dumps(body), now - 30_000, now - 30_000)))
        return event_id

    def run(kind: str, function_id: str, event_id: str, status: str, wait_reason: str | None, *,
            started: bool, ended: bool = False, output: str | None = None, cleanup: int = 0) -> None:
        rows.append((
            "INSERT INTO runs (id, function_id, event_id, status, wait_reason, attempt, created_at, started_at, ended_at, "
            "updated_at, output, cleanup) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?)",
            (runs[kind], function_id, event_id, status, wait_reason, now - 30_000, now - 29_000 if started else None,
             now - 20_000 if ended else None, now - 20_000, output, cleanup),
        ))

    def step(kind: str, key: str, step_kind: str, status: str, seq: int, output: str | None, wake_at: int | None = None) -> None:
        rows.append((
            "INSERT INTO steps (run_id, key, name, kind, status, seq, output, error, attempts, started_at, ended_at, wake_at, meta) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, NULL, 1, ?, ?, ?, NULL)",
            (runs[kind], key, key, step_kind, status, seq, output, now - 28_000,
             now - 27_000 if status == "completed" else None, wake_at),
        ))

    def queue(kind: str, function_id: str, due_at: int, owner: str | None = None, expires: int | None = None) -> None:
        rows.append(("INSERT INTO queue (run_id, function_id, due_at, lease_owner, lease_expires_at) VALUES (?, ?, ?, ?, ?)",
                     (runs[kind], function_id, due_at, owner, expires)))

    # Mid-flight: its worker died after step "a" committed; its lease has run out.
    run("midflight", "pipeline", event("midflight", "t/pipeline", {"n": 1}), "running", None, started=True)
    step("midflight", "a", "run", "completed", 1, jsonutil.dumps("A-old"))
    queue("midflight", "pipeline", now - 29_000, owner="w-previous-release", expires=now - 5_000)
    # Queued: accepted, never started.
    run("queued", "pipeline", event("queued", "t/pipeline", {"n": 2}), "queued", "queued", started=False)
    queue("queued", "pipeline", now - 30_000)
    # Sleeping: its nap ended while the old workers were being replaced.
    run("sleeping", "napper", event("sleeping", "t/napper", {}), "sleeping", "scheduled", started=True)
    step("sleeping", "before", "run", "completed", 1, jsonutil.dumps("before-old"))
    step("sleeping", "nap", "sleep", "sleeping", 2, None, wake_at=now - 1_000)
    queue("sleeping", "napper", now - 1_000)
    # Waiting for an approval event, with a day left before its timeout.
    run("waiting", "waiter", event("waiting", "t/waiter", {"order": 7}), "waiting", "waiting_for_event", started=True, cleanup=1)
    step("waiting", "approval", "wait", "waiting", 1, None, wake_at=now + 86_400_000)
    rows.append(("INSERT INTO waits (id, run_id, step_key, event_name, expression, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                 (f"{runs['waiting']}:approval", runs["waiting"], "approval", "t/approve",
                  "async.data.order == event.data.order", now + 86_400_000)))
    queue("waiting", "waiter", now + 86_400_000)
    # Finished before the upgrade.
    run("done", "pipeline", event("done", "t/pipeline", {"n": 3}), "completed", None, started=True, ended=True,
        output=jsonutil.dumps("A-oldBC"))
    for seq, (key, value) in enumerate((("a", "A-old"), ("b", "B"), ("c", "C")), start=1):
        step("done", key, "run", "completed", seq, jsonutil.dumps(value))
    return rows, runs


async def test_runs_of_the_previous_release_carry_on_after_the_upgrade(empty_db: str) -> None:
    url = empty_db
    assert len(apply_first(url, PREVIOUS_RELEASE)) == PREVIOUS_RELEASE
    rows, runs = previous_release_rows(int(time.time() * 1000))
    execute(url, rows)

    listing = subprocess.run(
        [sys.executable, "-m", "stepline.cli", "migrate", "--dry-run", "--db", url], capture_output=True, text=True, timeout=60
    )
    assert listing.returncode == 0, listing.stderr
    pending = migrate.pending(url)
    assert pending and pending[0].startswith("0007")
    for migration_id in pending:
        assert migration_id in listing.stdout
    assert migrate.pending(url) == pending, "--dry-run applies nothing"
    assert migrate.apply(url) == pending

    executed.clear()
    engine = Engine(open_store(url, migrate_now=False), TEST_SETTINGS.replace(db=url, retention_interval=0.0), [upgrade_app()])
    await engine.start()
    try:
        midflight = await wait_run(engine, runs["midflight"])
        assert midflight["status"] == "completed" and midflight["output"] == "A-oldBC"
        assert "a:1" not in executed, "the step committed before the upgrade is not run again"
        assert executed["b:1"] == 1 and executed["c:1"] == 1
        assert (await wait_run(engine, runs["queued"]))["output"] == "A-newBC"
        sleeping = await wait_run(engine, runs["sleeping"])
        assert sleeping["output"] == "before-old+woke" and "before" not in executed
        assert (await engine.get_run(runs["waiting"]))["status"] == "waiting"
        await engine.send({"name": "t/approve", "data": {"order": 7, "by": "ops"}})
        assert (await wait_run(engine, runs["waiting"]))["output"] == "ops"
        done = await engine.get_run(runs["done"])
        assert done["output"] == "A-oldBC" and [s["id"] for s in done["steps"]] == ["a", "b", "c"]

        # The new release's sweep works on the upgraded data: every run is finished now.
        report = await engine.retention.sweep(force=True, older_than=0.001)
        assert report is not None and report.deleted["runs"] == 5
        await eventually(lambda: _no_runs(engine), what="every run pruned")
    finally:
        await engine.stop(grace=1.0)


async def _no_runs(engine: Engine) -> bool:
    return await engine.list_runs() == []


async def test_a_run_parked_by_a_worker_of_the_previous_release_is_woken_by_a_new_one(make_engine, db_url: str) -> None:
    """In a rolling deploy, an old worker parks a run behind a concurrency limit without the
    claim order that migration 0011 added; a new worker freeing the slot still wakes it."""
    app = stepline.App("mixed-release")

    @app.function(id="capped", trigger=stepline.TriggerEvent("mixed/go"), concurrency=[stepline.Concurrency(limit=1)])
    async def capped(ctx: stepline.Context) -> str:
        return "ran"

    sender = await make_engine(app, run_worker=False)
    first, second = (await sender.send_many([{"name": "mixed/go", "data": {}}] * 2))
    run_ids = [r["id"] for e in (first, second) for r in (await sender.store.get_event(e))["runs"]]
    (claimed,), _ = await sender.store.claim("old-worker", ["capped"], 2, 60_000)  # takes the one slot
    parked = [r for r in run_ids if r != claimed.run_id][0]
    # As a worker of the previous release parks it: no parked_score.
    execute(db_url, [("UPDATE queue SET parked_on = ck1, parked_score = NULL, due_at = ? WHERE run_id = ?", (9_999_999_999_999, parked))])
    await sender.store.finish_run(Lease(claimed.run_id, "old-worker", claimed.epoch), "completed", '"ran"', None)
    worker = await make_engine(app)
    assert (await wait_run(worker, parked))["status"] == "completed"
