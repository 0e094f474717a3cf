"""Retention: what a sweep deletes, what it never deletes, and how it keeps cost views.

Every test runs on SQLite and PostgreSQL. Time is a ``TestClock`` on the store: runs end
at one instant, the clock moves days ahead, then a sweep is made to run now
(``Sweeper.sweep(force=True)``); no test waits for real time to pass.
"""

from __future__ import annotations

from typing import Any

import pytest

import stepline
from stepline import errors
from stepline.engine import Engine
from stepline.engine import retention as retention_mod
from stepline.testing import FakeProvider, Reply, TestClock
from tests.helpers import eventually, runs_for_event, send_and_wait, wait_run

DAY = 86400.0
DAY_MS = int(DAY * 1000)


async def count(engine: Engine, sql: str, *params: Any) -> int:
    return int(await engine.store.db.read(lambda conn: conn.scalar(sql, params)) or 0)


async def rows_of(engine: Engine) -> dict[str, int]:
    return {row["table"]: row["rows"] for row in await engine.store.table_sizes(exact=True)}


async def sweep(engine: Engine, **options: Any) -> retention_mod.SweepReport:
    report = await engine.retention.sweep(force=True, **options)
    assert report is not None
    return report


async def gone(engine: Engine, run_id: str) -> bool:
    try:
        await engine.get_run(run_id)
    except errors.NotFoundError:
        return True
    return False


async def run_to_end(engine: Engine, clock: TestClock, event: dict[str, Any]) -> dict[str, Any]:
    """Send ``event`` and move the clock a second at a time (past retry backoffs) until
    the run it starts has ended."""
    run = (await runs_for_event(engine, await engine.send(event)))[0]

    async def ended() -> dict[str, Any] | None:
        found = await engine.get_run(run["id"])
        if found["status"] in ("completed", "failed", "cancelled"):
            return found
        clock.advance(1.0)
        if engine.worker:
            engine.worker.wake()
        return None

    return await eventually(ended, what=f"run {run['id']} to end")


def work_app() -> stepline.App:
    """``work``: a step that fails once (an attempt row), a published message, a result."""
    app = stepline.App("retention")
    failed_once: set[str] = set()

    @app.function(id="work", trigger=stepline.TriggerEvent("t/work"), retries=2)
    async def work(ctx: stepline.Context) -> dict[str, Any]:
        async def flaky() -> str:
            if ctx.run_id not in failed_once:
                failed_once.add(ctx.run_id)
                raise RuntimeError("first attempt fails")
            return "x" * 200

        value = await ctx.step.run("flaky", flaky)
        await ctx.publish({"done": True}, topic="progress")
        return {"length": len(value)}

    @app.function(id="sleepy", trigger=stepline.TriggerEvent("t/sleepy"))
    async def sleepy(ctx: stepline.Context) -> str:
        await ctx.step.run("before", lambda: "before")
        await ctx.step.sleep("nap", "30d")
        return "woke"

    @app.function(id="brief", trigger=stepline.TriggerEvent("t/brief"), retention="12h")
    async def brief(ctx: stepline.Context) -> str:
        return await ctx.step.run("only", lambda: "done")

    @app.function(id="kept", trigger=stepline.TriggerEvent("t/kept"), retention="30d")
    async def kept(ctx: stepline.Context) -> str:
        return await ctx.step.run("only", lambda: "done")

    return app


async def test_sweep_deletes_finished_runs_past_retention_with_everything_theirs(clocked) -> None:
    clock, make = clocked
    engine = await make(work_app(), retention=DAY)
    old = [await run_to_end(engine, clock, {"name": "t/work", "data": {"i": i}}) for i in range(3)]
    sleeping_event = await engine.send({"name": "t/sleepy", "data": {}})
    sleeping = (await runs_for_event(engine, sleeping_event))[0]
    await wait_run(engine, sleeping["id"], "sleeping")
    nothing = await engine.send({"name": "t/nobody-listens", "data": {}})
    assert all(run["status"] == "completed" for run in old)
    assert await count(engine, "SELECT COUNT(*) FROM step_attempts") == 6  # the failed attempt and the one after
    assert await count(engine, "SELECT COUNT(*) FROM run_messages") == 3

    clock.advance(2 * DAY)
    recent = await run_to_end(engine, clock, {"name": "t/work", "data": {"i": "new"}})
    report = await sweep(engine)

    for run in old:
        assert await gone(engine, run["id"])
    old_ids = [run["id"] for run in old]
    marks = ", ".join("?" for _ in old_ids)
    for table in ("steps", "step_attempts", "run_messages"):
        assert await count(engine, f"SELECT COUNT(*) FROM {table} WHERE run_id IN ({marks})", *old_ids) == 0, table
    for run in old:
        with pytest.raises(errors.NotFoundError):
            await engine.store.get_event(run["event_id"])
    with pytest.raises(errors.NotFoundError):
        await engine.store.get_event(nothing)  # started nothing, older than the retention
    assert (await engine.get_run(recent["id"]))["status"] == "completed"
    assert (await engine.get_run(sleeping["id"]))["status"] == "sleeping"
    assert (await engine.store.get_event(sleeping_event))["id"] == sleeping_event
    assert report.deleted["runs"] == 3
    assert report.deleted["steps"] == 3 and report.deleted["step_attempts"] == 6 and report.deleted["run_messages"] == 3
    assert report.deleted["events"] == 4  # three runs' events and the one that started nothing
    assert report.runs_by_function == {"work": 3}

    clock.advance(30 * DAY)  # the sleeping run wakes to a journal the sweep left whole
    if engine.worker:
        engine.worker.wake()
    assert (await wait_run(engine, sleeping["id"]))["output"] == "woke"

    status = await engine.store.sweep_status()
    assert status["owner"] is None and status["last_finished_at"] is not None
    assert status["deleted"]["runs"] == 3


async def test_policy_is_read_at_sweep_time_and_per_function_retention_wins(clocked) -> None:
    clock, make = clocked
    engine = await make(work_app(), retention=7 * DAY)
    work = await run_to_end(engine, clock, {"name": "t/work", "data": {}})
    brief = await send_and_wait(engine, {"name": "t/brief", "data": {}})
    kept = await send_and_wait(engine, {"name": "t/kept", "data": {}})
    clock.advance(2 * DAY)

    report = await sweep(engine)  # default 7 d: only brief (12 h) is past its own retention
    assert report.runs_by_function == {"brief": 1}
    assert await gone(engine, brief["id"]) and not await gone(engine, work["id"])

    lowered = retention_mod.Sweeper(engine.store, engine.settings.replace(retention=DAY))
    report = await lowered.sweep(force=True)  # a lowered retention applies to runs already stored
    assert report is not None and report.runs_by_function == {"work": 1}
    assert not await gone(engine, kept["id"])  # its own 30 d wins over the default

    report = await sweep(engine, older_than=3600.0)  # an operator's --older-than: functions' own still win
    assert report.runs_by_function == {} and not await gone(engine, kept["id"])

    clock.advance(29 * DAY)
    report = await sweep(engine)
    assert report.runs_by_function == {"kept": 1}


def reference_app() -> stepline.App:
    app = stepline.App("references")

    @app.function(id="child", trigger=stepline.TriggerEvent("t/child"))
    async def child(ctx: stepline.Context) -> str:
        if ctx.event.data.get("nap"):
            await ctx.step.sleep("nap", "30d")
        return await ctx.step.run("only", lambda: "child done")

    @app.function(id="parent-waits", trigger=stepline.TriggerEvent("t/parent-waits"))
    async def parent_waits(ctx: stepline.Context) -> str:
        await ctx.step.invoke("call", function="child", data={})
        await ctx.step.sleep("after", "30d")  # still unfinished long after its child ended
        return "parent done"

    @app.function(id="parent-gives-up", trigger=stepline.TriggerEvent("t/parent-gives-up"))
    async def parent_gives_up(ctx: stepline.Context) -> str:
        try:
            await ctx.step.invoke("call", function="child", data={"nap": True}, timeout="1h")
        except stepline.StepError:
            return "gave up"
        return "child answered"

    @app.function(id="plain", trigger=stepline.TriggerEvent("t/shared"))
    async def plain(ctx: stepline.Context) -> str:
        return await ctx.step.run("only", lambda: "plain done")

    @app.function(
        id="batched", trigger=stepline.TriggerEvent("t/shared"),
        batch_events=stepline.Batch(max_size=50, timeout="3d"),
    )
    async def batched(ctx: stepline.Context) -> list[Any]:
        return [event.data["i"] for event in ctx.events]

    @app.function(
        id="debounced", trigger=stepline.TriggerEvent("t/shared"), debounce=stepline.Debounce(period="3d"),
    )
    async def debounced(ctx: stepline.Context) -> Any:
        return ctx.event.data["i"]

    return app


async def test_sweep_never_deletes_a_run_or_event_something_unfinished_needs(clocked) -> None:
    clock, make = clocked
    engine = await make(reference_app(), retention=DAY)
    waiting_parent_event = await engine.send({"name": "t/parent-waits", "data": {}})
    waiting_parent = (await runs_for_event(engine, waiting_parent_event))[0]
    await wait_run(engine, waiting_parent["id"], "sleeping")
    ended_child = (await engine.list_runs(function_id="child"))[0]
    assert ended_child["status"] == "completed" and ended_child["parent_run_id"] == waiting_parent["id"]

    gave_up_event = await engine.send({"name": "t/parent-gives-up", "data": {}})
    gave_up = (await runs_for_event(engine, gave_up_event))[0]
    await eventually(lambda: _two_children(engine), what="the napping child")
    clock.advance(3601)  # the invoke times out: the parent ends, its child still naps
    if engine.worker:
        engine.worker.wake()
    assert (await wait_run(engine, gave_up["id"]))["output"] == "gave up"
    napping_child = next(r for r in await engine.list_runs(function_id="child") if r["parent_run_id"] == gave_up["id"])
    assert napping_child["status"] == "sleeping"

    shared = [await engine.send({"name": "t/shared", "data": {"i": i}}) for i in range(4)]
    plain = [(await runs_for_event(engine, e))[0] for e in shared]
    plain_runs = [r for r in plain if r["function_id"] == "plain"] or [
        next(r for r in (await engine.store.get_event(e))["runs"] if r["function_id"] == "plain") for e in shared
    ]
    for run in plain_runs:
        await wait_run(engine, run["id"])

    clock.advance(2 * DAY)
    report = await sweep(engine)

    assert not await gone(engine, ended_child["id"]), "a finished invoked run whose parent still runs is kept"
    assert not await gone(engine, gave_up["id"]), "a finished parent whose invoked run still runs is kept"
    assert report.kept_referenced == 2
    assert all([await gone(engine, run["id"]) for run in plain_runs]), "the plain runs were past their retention"
    for event_id in shared:  # pending batch and debounce still need the events their plain runs no longer do
        assert (await engine.store.get_event(event_id))["id"] == event_id

    clock.advance(2 * DAY)  # the batch's and the debounce's windows close: they get every event
    if engine.worker:
        engine.worker.wake()
    batched = await eventually(lambda: _ended(engine, "batched"), what="the batch run")
    assert batched["output"] == [0, 1, 2, 3]
    debounced = await eventually(lambda: _ended(engine, "debounced"), what="the debounced run")
    assert debounced["output"] == 3


async def _two_children(engine: Engine) -> bool:
    return len(await engine.list_runs(function_id="child")) == 2


async def _ended(engine: Engine, function_id: str) -> dict[str, Any] | None:
    runs = await engine.list_runs(function_id=function_id)
    return runs[0] if runs and runs[0]["status"] == "completed" else None


def infer_app(fake: FakeProvider) -> stepline.App:
    app = stepline.App("usage")
    llm = fake.llm()

    @app.function(id="ask", trigger=stepline.TriggerEvent("t/ask"))
    async def ask(ctx: stepline.Context) -> float:
        reply = await ctx.step.ai.infer("call", model=ctx.event.data["model"], messages="hi", llm=llm)
        return float(reply["cost_usd"])

    return app


async def test_daily_sums_keep_cost_views_after_runs_are_deleted(clocked, fake: FakeProvider) -> None:
    clock, make = clocked
    calls = [("u1", "fake-a", 0.25), ("u1", "fake-a", 0.5), ("u2", "fake-b", 1.0), ("u2", "fake-a", 0.125)]
    fake.script(*[Reply(text="ok", prompt_tokens=10, completion_tokens=5, cost=cost) for _, _, cost in calls])
    engine = await make(infer_app(fake), retention=DAY, usage_retention=400 * DAY)
    for user, model, _ in calls:
        await send_and_wait(engine, {"name": "t/ask", "data": {"model": model, "user_id": user}})
    start_of_day = clock.now_ms() - clock.now_ms() % 86_400_000

    async def views() -> tuple[Any, ...]:
        store = engine.store
        overview = await store.metrics_overview(start_of_day, start_of_day)
        return (
            await store.usage_by_model(),
            await store.usage_by_model(since_ms=start_of_day),
            overview["usage_by_day"],
            overview["usage_by_user"],
        )

    before = await views()
    assert sum(m["cost_usd"] for m in before[0]) == pytest.approx(1.875)
    clock.advance(2 * DAY)
    report = await sweep(engine)
    assert report.deleted["runs"] == 4 and report.deleted["llm_usage"] == 4
    assert await count(engine, "SELECT COUNT(*) FROM llm_usage") == 0
    assert await count(engine, "SELECT COUNT(*) FROM usage_daily") == 3  # (u1, a), (u2, b), (u2, a)
    assert await views() == before

    clock.advance(400 * DAY)
    report = await sweep(engine)
    assert report.deleted["usage_daily"] == 3
    assert await engine.store.usage_by_model() == []


async def test_dry_run_counts_exactly_what_the_sweep_then_deletes(clocked) -> None:
    clock, make = clocked
    engine = await make(work_app(), retention=DAY)
    for i in range(5):
        await run_to_end(engine, clock, {"name": "t/work", "data": {"i": i}})
    await engine.send({"name": "t/nobody-listens", "data": {}, "id": "dedup-1"})
    clock.advance(2 * DAY)
    # The worker adds the retries it counted to the totals at a heartbeat, in a row of
    # `maintenance` of their own: made now, not between the counts below.
    await eventually(lambda: count(engine, "SELECT COUNT(*) FROM maintenance WHERE task = 'counters'"),
                     what="the worker's counts to reach the database")
    # Likewise the run counts' pending changes (PostgreSQL), which a worker's upkeep folds.
    await engine.store.fold_run_counts()
    before = await rows_of(engine)
    status_before = await engine.store.sweep_status()

    rehearsal = await sweep(engine, rehearse=True)
    assert await rows_of(engine) == before, "a dry run deletes nothing"
    status = await engine.store.sweep_status()
    assert status["deleted"] == status_before["deleted"]
    # Nor does it count as a sweep begun: `admin stats` showed a last sweep that started
    # after it finished.
    assert status["last_started_at"] == status_before["last_started_at"]
    assert rehearsal.deleted["runs"] == 5 and rehearsal.deleted["events"] == 6
    assert rehearsal.deleted["event_ids_seen"] == 1

    report = await sweep(engine)
    assert {t: n for t, n in report.deleted.items() if n} == {t: n for t, n in rehearsal.deleted.items() if n}
    after = await rows_of(engine)
    for table, deleted in report.deleted.items():
        assert before[table] - after[table] == deleted, table


async def test_expired_dedup_ids_idempotency_keys_and_idle_throttle_state_go(clocked) -> None:
    clock, make = clocked
    app = stepline.App("expiry")

    @app.function(
        id="once", trigger=stepline.TriggerEvent("t/once"), idempotency="event.data.key",
        throttle=stepline.Throttle(limit=100, period="1m", key="event.data.key"), retention="1h",
    )
    async def once(ctx: stepline.Context) -> str:
        return "ran"

    engine = await make(app, retention=DAY)
    first = await engine.send({"name": "t/once", "data": {"key": "k"}, "id": "ext-1"})
    await wait_run(engine, (await runs_for_event(engine, first))[0]["id"])
    assert await engine.send({"name": "t/once", "data": {"key": "k"}, "id": "ext-1"}) == first  # de-duplicated
    assert await count(engine, "SELECT COUNT(*) FROM flow_state") == 1

    clock.advance(2 * DAY)
    report = await sweep(engine)
    assert report.deleted["event_ids_seen"] == 1 and report.deleted["idempotency_keys"] == 1
    assert report.deleted["flow_state"] == 1
    again = await engine.send({"name": "t/once", "data": {"key": "k"}, "id": "ext-1"})
    assert again != first  # the id's window ended: a new event, and a new run for the key
    assert (await wait_run(engine, (await runs_for_event(engine, again))[0]["id"]))["output"] == "ran"


async def test_the_record_of_rest_cancellations_goes_after_the_default_retention(clocked) -> None:
    """POST /v1/cancellations kept one row per call for ever: a caller could grow the table without end."""
    clock, make = clocked
    app = stepline.App("cancels")

    @app.function(id="slow", trigger=stepline.TriggerEvent("t/slow"))
    async def slow(ctx: stepline.Context) -> str:
        return "ran"

    engine = await make(app, retention=DAY)
    for _ in range(3):
        await engine.create_cancellation("cancels", "slow", started_after=None, started_before=engine.store.now_ms(), expression=None)
    clock.advance(DAY / 2)
    newer, _ = await engine.create_cancellation("cancels", "slow", started_after=None, started_before=engine.store.now_ms(), expression=None)
    assert (await sweep(engine)).deleted.get("cancellations", 0) == 0  # none older than a day yet
    assert len(await engine.store.list_cancellations()) == 4
    listed = [c["id"] for c in await engine.store.list_cancellations()]
    assert [c["id"] for c in await engine.store.list_cancellations(limit=2)] == listed[2:]  # the newest, oldest first
    clock.advance(DAY * 0.75)
    rehearsed = await sweep(engine, rehearse=True)
    assert rehearsed.deleted["cancellations"] == 3 and len(await engine.store.list_cancellations()) == 4
    assert (await sweep(engine)).deleted["cancellations"] == 3
    assert [c["id"] for c in await engine.store.list_cancellations()] == [newer["id"]]
    kept_forever = await make(app, retention=0.0)  # STEPLINE_RETENTION=0 keeps everything, this record too
    clock.advance(10 * DAY)
    assert (await sweep(kept_forever)).deleted.get("cancellations", 0) == 0
    assert len(await kept_forever.store.list_cancellations()) == 1


async def test_budget_history_goes_with_usage_and_unsettled_direct_reservations_expire(clocked) -> None:
    """A budget's spend per period is kept as long as the daily usage sums; a direct call's
    reservation left unsettled (its caller died) is deleted once it has expired."""
    clock, make = clocked
    engine = await make(retention=DAY, usage_retention=30 * DAY)
    now = engine.store.now_ms()

    def seed(conn: Any) -> None:
        conn.execute(
            "INSERT INTO budget_spend (budget_id, key, period_start, period_end, spent_usd, updated_at) VALUES "
            "('chat:1d:user', 'u1', ?, ?, 0.5, ?)",
            (now - DAY_MS, now, now),
        )
        conn.execute(
            "INSERT INTO budget_reservations (run_id, step_key, attempt, budget_id, key, period_start, usd, tokens, "
            "expires_at, created_at) VALUES ('direct:1', 'call', 1, 'chat:1d:user', 'u1', ?, 0.1, 10, ?, ?)",
            (now - DAY_MS, now + 60_000, now),
        )

    await engine.store.db.write(seed)
    clock.advance(2 * DAY)  # the reservation expired; the spend is recent history
    report = await sweep(engine)
    assert report.deleted.get("budget_reservations") == 1
    assert await count(engine, "SELECT COUNT(*) FROM budget_spend") == 1
    clock.advance(40 * DAY)  # past the usage retention
    report = await sweep(engine)
    assert report.deleted.get("budget_spend") == 1


def approval_app() -> stepline.App:
    app = stepline.App("approvals")

    @app.function(id="approve", trigger=stepline.TriggerEvent("t/doc"))
    async def approve(ctx: stepline.Context) -> int:
        got = await ctx.step.wait_for_event("approval", event="t/approved", match="data.doc", timeout="10d")
        await ctx.step.sleep("after", "3d")  # still unfinished a day after the approval came
        return 0 if got is None else len(got.data["note"])

    return app


async def test_a_large_event_that_resumes_many_waits_is_stored_once_and_kept_while_named(clocked) -> None:
    """One event of 200 KB that forty runs wait on was copied into each of their steps
    (a sender's one megabyte became forty): the steps name it instead, every reader sees
    it, and retention keeps it until the last run that names it goes."""
    clock, make = clocked
    engine = await make(approval_app(), retention=DAY)
    started = await engine.send_many([{"name": "t/doc", "data": {"doc": "d1", "n": n}} for n in range(40)])
    runs = [(await runs_for_event(engine, e))[0]["id"] for e in started]
    for run_id in runs:
        await wait_run(engine, run_id, "waiting")
    note = "x" * 200_000
    approval = await engine.send({"name": "t/approved", "data": {"doc": "d1", "note": note}})
    for run_id in runs:
        await wait_run(engine, run_id, "sleeping")
    stored = await count(engine, "SELECT SUM(LENGTH(output)) FROM steps WHERE key = 'approval'")
    assert stored < 10_000, stored  # not 40 copies of 200 KB
    assert await count(engine, "SELECT COUNT(*) FROM steps WHERE output_event = ?", approval) == 40
    step = next(s for s in (await engine.get_run(runs[0]))["steps"] if s["name"] == "approval")
    assert step["output"]["data"]["note"] == note  # the API shows it as before

    clock.advance(2 * DAY)  # past the event's own retention: it started nothing, but steps name it
    await sweep(engine)
    assert (await engine.store.get_event(approval))["id"] == approval
    clock.advance(2 * DAY)  # the runs wake and end with what they were given
    if engine.worker:
        engine.worker.wake()
    for run_id in runs:
        assert (await wait_run(engine, run_id))["output"] == 200_000
    clock.advance(2 * DAY)
    await sweep(engine)
    assert all([await gone(engine, run_id) for run_id in runs])
    with pytest.raises(errors.NotFoundError):
        await engine.store.get_event(approval)
