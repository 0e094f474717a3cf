"""Throttle, rate limit, debounce, batching, priority and singleton."""

from __future__ import annotations

import asyncio
import datetime as dt

import stepline
from tests.helpers import eventually, runs_for_event, wait_run
from tests.test_handoff import query


def started(run: dict) -> float:
    return dt.datetime.fromisoformat(run["started_at"].replace("Z", "+00:00")).timestamp()


async def finished_runs(engine, function_id: str, n: int, timeout: float = 30) -> list[dict]:  # type: ignore[no-untyped-def]
    async def check() -> list[dict]:
        runs = [r for r in await engine.list_runs(function_id=function_id, limit=500) if r["status"] == "completed"]
        return runs if len(runs) >= n else []

    return await eventually(check, timeout=timeout, what=f"{n} completed runs of {function_id}")


async def test_throttle_paces_starts_per_key_and_leaves_other_keys_alone(make_engine) -> None:
    app = stepline.App("t")

    @app.function(
        id="llm",
        trigger=stepline.TriggerEvent("t/llm"),
        throttle=stepline.Throttle(limit=5, period="2s", key="event.data.user_id"),
    )
    async def llm(ctx: stepline.Context) -> None:
        return None

    engine = await make_engine(app)
    ids = await engine.send_many([{"name": "t/llm", "data": {"user_id": "u1"}}] * 20)
    other = await engine.send({"name": "t/llm", "data": {"user_id": "u2"}})
    first_wait = (await runs_for_event(engine, ids[-1]))[0]
    assert first_wait["wait_reason"] == "throttled"
    runs = await finished_runs(engine, "llm", 21)
    u1 = sorted(started(r) for r in runs if r["user_id"] == "u1")
    u2 = [started(r) for r in runs if r["user_id"] == "u2"]
    interval = 2.0 / 5
    for i, at in enumerate(u1):
        # five start at once, then one per period/limit; never earlier than the slot
        assert at - u1[0] >= max(0, i - 4) * interval - 0.05, (i, at - u1[0])
    assert u1[-1] - u1[0] >= 15 * interval - 0.05
    assert u2[0] < u1[6]  # u2's only run did not wait behind u1's backlog
    assert (await runs_for_event(engine, other))[0]["status"] == "completed"


async def test_rate_limit_drops_and_records_the_reason(make_engine) -> None:
    app = stepline.App("t")

    @app.function(
        id="sync-company",
        trigger=stepline.TriggerEvent("t/company.updated"),
        rate_limit=stepline.RateLimit(limit=2, period="1h", key="event.data.company"),
    )
    async def sync_company(ctx: stepline.Context) -> None:
        return None

    engine = await make_engine(app)
    ids = await engine.send_many([{"name": "t/company.updated", "data": {"company": "acme"}}] * 5)
    other = await engine.send({"name": "t/company.updated", "data": {"company": "globex"}})
    await finished_runs(engine, "sync-company", 3)
    outcomes = [await engine.store.get_event(i) for i in ids]
    assert [len(e["runs"]) for e in outcomes] == [1, 1, 0, 0, 0]
    assert [e["skipped"].get("sync-company") for e in outcomes[2:]] == ["rate_limited"] * 3
    assert len((await engine.store.get_event(other))["runs"]) == 1


async def test_debounce_collapses_a_burst_into_one_run_with_the_last_event(make_engine) -> None:
    app = stepline.App("t")

    @app.function(
        id="reindex",
        trigger=stepline.TriggerEvent("t/doc.edited"),
        debounce=stepline.Debounce(period="300ms", key="event.data.doc"),
    )
    async def reindex(ctx: stepline.Context) -> int:
        return int(ctx.event.data["rev"])

    engine = await make_engine(app)
    for rev in range(1, 6):
        await engine.send({"name": "t/doc.edited", "data": {"doc": "d1", "rev": rev}})
    await engine.send({"name": "t/doc.edited", "data": {"doc": "d2", "rev": 99}})
    pending = await engine.list_runs(function_id="reindex")
    assert {r["wait_reason"] for r in pending} == {"debouncing"}
    await finished_runs(engine, "reindex", 2)
    # Both windows closed with their runs (no debounce row is left to start another).
    assert query(engine.settings.db, "SELECT COUNT(*) FROM debounces WHERE function_id = 'reindex'") == [(0,)]
    runs = await engine.list_runs(function_id="reindex")
    assert sorted(r["output"] for r in runs) == [5, 99]


async def test_debounce_keeps_the_held_event_over_one_with_an_older_ts(make_engine) -> None:
    """As on Inngest: an event whose ts is older than the held one's came out of order and
    changes nothing (it neither replaces the event nor moves the start)."""
    app = stepline.App("t")

    @app.function(
        id="reindex",
        trigger=stepline.TriggerEvent("t/doc.edited"),
        debounce=stepline.Debounce(period="300ms", key="event.data.doc"),
    )
    async def reindex(ctx: stepline.Context) -> str:
        return str(ctx.event.data["rev"])

    engine = await make_engine(app)
    now = engine.store.now_ms()
    newer = await engine.send({"name": "t/doc.edited", "data": {"doc": "d1", "rev": "newer"}, "ts": now})
    older = await engine.send({"name": "t/doc.edited", "data": {"doc": "d1", "rev": "older"}, "ts": now - 60_000})
    (run,) = await finished_runs(engine, "reindex", 1)
    assert run["output"] == "newer" and run["event_id"] == newer
    assert (await engine.store.get_event(older))["skipped"] == {"reindex": "debounced"}
    latest = await engine.send({"name": "t/doc.edited", "data": {"doc": "d1", "rev": "latest"}, "ts": now - 60_000})
    runs = await finished_runs(engine, "reindex", 2)  # a new window: nothing is held to be older than
    assert {r["output"] for r in runs} == {"newer", "latest"} and latest in {r["event_id"] for r in runs}


async def test_debounce_timeout_forces_a_start(make_engine) -> None:
    app = stepline.App("t")

    @app.function(
        id="digest",
        trigger=stepline.TriggerEvent("t/tick"),
        debounce=stepline.Debounce(period="400ms", timeout="1s"),
    )
    async def digest(ctx: stepline.Context) -> int:
        return int(ctx.event.data["n"])

    engine = await make_engine(app)
    sent_at: list[float] = []
    for n in range(25):  # one event every 100 ms for 2.5 s: never a 400 ms pause
        await engine.send({"name": "t/tick", "data": {"n": n}})
        sent_at.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.1)
    runs = await finished_runs(engine, "digest", 1, timeout=10)
    first = min(runs, key=started)
    # it started while the burst went on, which only the 1 s timeout allows
    assert first["output"] < 20
    assert len(await engine.list_runs(function_id="digest")) >= 2


async def test_batching_delivers_groups_by_size_timeout_and_key(make_engine) -> None:
    app = stepline.App("t")

    @app.function(
        id="bulk",
        trigger=stepline.TriggerEvent("t/item"),
        batch_events=stepline.Batch(max_size=3, timeout="500ms", key="event.data.tenant"),
    )
    async def bulk(ctx: stepline.Context) -> dict:
        return {"tenant": ctx.event.data["tenant"], "items": [e.data["i"] for e in ctx.events]}

    engine = await make_engine(app)
    for i in range(7):
        await engine.send({"name": "t/item", "data": {"tenant": "a", "i": i}})
    await engine.send({"name": "t/item", "data": {"tenant": "b", "i": 100}})
    runs = await finished_runs(engine, "bulk", 4)
    groups = sorted((r["output"]["tenant"], r["output"]["items"]) for r in runs)
    assert groups == [("a", [0, 1, 2]), ("a", [3, 4, 5]), ("a", [6]), ("b", [100])]


async def test_batching_reports_batching_while_it_waits(make_engine) -> None:
    app = stepline.App("t")

    @app.function(id="slowbatch", trigger=stepline.TriggerEvent("t/sb"), batch_events=stepline.Batch(max_size=10, timeout="1h"))
    async def slowbatch(ctx: stepline.Context) -> int:
        return len(ctx.events)

    engine = await make_engine(app)
    event_id = await engine.send({"name": "t/sb"})
    run = (await runs_for_event(engine, event_id))[0]
    assert run["status"] == "queued" and run["wait_reason"] == "batching"


async def test_priority_reorders_a_backlog(make_engine) -> None:
    app = stepline.App("t")
    order: list[str] = []

    @app.function(id="jobs", trigger=stepline.TriggerEvent("t/job"), priority=stepline.Priority(run="event.data.prio"))
    async def jobs(ctx: stepline.Context) -> None:
        order.append(ctx.event.data["name"])

    sender = await make_engine(app, run_worker=False)
    for i in range(5):
        await sender.send({"name": "t/job", "data": {"name": f"normal-{i}", "prio": 0}})
    await sender.send({"name": "t/job", "data": {"name": "late", "prio": -120}})
    await sender.send({"name": "t/job", "data": {"name": "urgent", "prio": 600}})
    await make_engine(app, concurrency=1)
    await finished_runs(sender, "jobs", 7)
    # +600 s sorts ahead of the backlog, -120 s behind it (it is not delayed on an idle queue)
    assert order == ["urgent", *[f"normal-{i}" for i in range(5)], "late"]


async def test_singleton_skip_and_cancel(make_engine) -> None:
    app = stepline.App("t")
    gate = asyncio.Event()

    @app.function(id="skip", trigger=stepline.TriggerEvent("t/skip"), singleton=stepline.Singleton(key="event.data.user"))
    async def skip(ctx: stepline.Context) -> None:
        await ctx.step.run("hold", gate.wait)

    @app.function(id="replace", trigger=stepline.TriggerEvent("t/replace"), singleton=stepline.Singleton(mode="cancel"))
    async def replace(ctx: stepline.Context) -> str:
        await ctx.step.sleep("think", "1h" if ctx.event.data["n"] == 1 else "10ms")
        return "second"

    engine = await make_engine(app)
    first = (await runs_for_event(engine, await engine.send({"name": "t/skip", "data": {"user": "u1"}})))[0]
    await wait_run(engine, first["id"], "running")
    skipped = await engine.send({"name": "t/skip", "data": {"user": "u1"}})
    other_user = await engine.send({"name": "t/skip", "data": {"user": "u2"}})
    assert (await engine.store.get_event(skipped))["skipped"] == {"skip": "singleton"}
    assert len((await engine.store.get_event(other_user))["runs"]) == 1
    gate.set()
    await wait_run(engine, first["id"])
    after = await engine.send({"name": "t/skip", "data": {"user": "u1"}})  # the first ended: allowed again
    assert len(await runs_for_event(engine, after)) == 1

    old = (await runs_for_event(engine, await engine.send({"name": "t/replace", "data": {"n": 1}})))[0]
    await wait_run(engine, old["id"], "sleeping")
    new = (await runs_for_event(engine, await engine.send({"name": "t/replace", "data": {"n": 2}})))[0]
    assert (await wait_run(engine, old["id"]))["status"] == "cancelled"
    assert (await wait_run(engine, new["id"]))["output"] == "second"


async def test_throttle_state_survives_a_restart(make_engine) -> None:
    app = stepline.App("t")

    @app.function(id="thr", trigger=stepline.TriggerEvent("t/thr"), throttle=stepline.Throttle(limit=1, period="1h"))
    async def thr(ctx: stepline.Context) -> None:
        return None

    first = await make_engine(app)
    await first.send({"name": "t/thr"})
    await finished_runs(first, "thr", 1)
    await first.stop()
    second = await make_engine(app)
    late = (await runs_for_event(second, await second.send({"name": "t/thr"})))[0]
    assert late["wait_reason"] == "throttled"  # the slot used before the restart still counts
    # It is due only once the slot taken before the restart has passed: not now.
    ((due_at,),) = query(second.settings.db, "SELECT due_at FROM queue WHERE run_id = ?", (late["id"],))
    assert due_at > second.store.now_ms()
    assert (await second.get_run(late["id"]))["status"] == "queued"


def limited_app(limit: int, running: list[int], peak: list[int], key: str | None = None) -> stepline.App:
    """One function under a concurrency limit whose step records how many run at once."""
    app = stepline.App("t")

    @app.function(id="limited", trigger=stepline.TriggerEvent("t/limited"), concurrency=stepline.Concurrency(limit, key=key))
    async def limited(ctx: stepline.Context) -> None:
        async def work() -> None:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            await asyncio.sleep(0.3)
            running[0] -= 1

        await ctx.step.run("work", work)

    return app


async def test_runs_already_queued_follow_a_lowered_concurrency_limit(make_engine) -> None:
    """A deploy (or an SDK app's re-sync) that lowers a limit: the runs already in the queue
    kept the limit of their creation, and started all at once."""
    running, peak = [0], [0]
    sender = await make_engine(limited_app(5, running, peak), run_worker=False)
    await sender.send_many([{"name": "t/limited", "data": {"n": n}} for n in range(5)])
    engine = await make_engine(limited_app(1, running, peak))
    await finished_runs(engine, "limited", 5)
    assert peak[0] == 1


async def test_runs_parked_behind_a_limit_follow_a_raised_one(make_engine) -> None:
    running, peak = [0], [0]
    first = await make_engine(limited_app(1, running, peak))
    await first.send_many([{"name": "t/limited", "data": {"n": n}} for n in range(5)])

    async def parked() -> bool:
        runs = await first.list_runs(function_id="limited")
        return sum(r["wait_reason"] == "concurrency_limited" for r in runs) >= 3

    await eventually(parked, what="runs parked behind the limit of 1")
    await first.stop()
    running[0], peak[0] = 0, 0
    second = await make_engine(limited_app(4, running, peak))
    await finished_runs(second, "limited", 5)
    assert peak[0] >= 3  # the parked ones ran side by side, not one by one under the old limit


async def test_runs_already_queued_take_a_changed_concurrency_key(make_engine) -> None:
    """A limit per user becomes one for the whole function: each queued run's key is
    computed again from its event, so they no longer run side by side under their old keys."""
    running, peak = [0], [0]
    sender = await make_engine(limited_app(1, running, peak, key="event.data.user"), run_worker=False)
    await sender.send_many([{"name": "t/limited", "data": {"user": f"u{n}"}} for n in range(4)])
    engine = await make_engine(limited_app(1, running, peak))
    await finished_runs(engine, "limited", 4)
    assert peak[0] == 1



async def test_a_run_cancelled_while_throttled_gives_its_slot_to_the_runs_behind(make_engine) -> None:
    """Inngest counts a throttled run when it starts: one cancelled in line holds nobody up.
    A run that started keeps its slot spent."""
    app = stepline.App("t")

    @app.function(
        id="thr-cancel",
        trigger=stepline.TriggerEvent("t/thr-cancel"),
        throttle=stepline.Throttle(limit=1, period="1h", key="event.data.user"),
        cancel_on=[stepline.CancelOn("t/thr-cancel.stop", match="data.group")],
    )
    async def thr(ctx: stepline.Context) -> None:
        await ctx.step.sleep("nap", "1h")

    engine = await make_engine(app)
    hour = 3600 * 1000

    def due(run_id: str) -> int:
        ((at,),) = query(engine.settings.db, "SELECT due_at FROM queue WHERE run_id = ?", (run_id,))
        return int(at)

    async def send(group: str, user: str = "u1") -> str:
        event = {"name": "t/thr-cancel", "data": {"user": user, "group": group}}
        return str((await runs_for_event(engine, await engine.send(event)))[0]["id"])

    first = await send("a")
    await wait_run(engine, first, "sleeping")  # started: its slot is spent
    b, c, d, e = [await send(group) for group in ("b", "c", "b", "e")]
    other_user = await send("z", user="u2")
    slots = [due(run) for run in (b, c, d, e)]
    assert [later - earlier for earlier, later in zip(slots, slots[1:])] == [hour] * 3
    assert (await engine.get_run(b))["wait_reason"] == "throttled"

    await engine.cancel(first)  # a run that started keeps its slot: nobody moves up
    await wait_run(engine, first, "cancelled")
    assert [due(run) for run in (b, c, d, e)] == slots

    await engine.cancel(c)  # one in the middle: those behind it move up one slot each
    await wait_run(engine, c, "cancelled")
    assert [due(b), due(d), due(e)] == [slots[0], slots[1], slots[2]]
    newcomer = await send("n")  # and the next run comes one slot sooner
    assert due(newcomer) == slots[3]

    await engine.send({"name": "t/thr-cancel.stop", "data": {"group": "b"}})  # two at once
    await wait_run(engine, b, "cancelled")
    await wait_run(engine, d, "cancelled")
    assert [due(e), due(newcomer)] == [slots[0], slots[1]]
    late = await send("l")
    assert due(late) == slots[2]
    await wait_run(engine, other_user, "sleeping")  # another key: never in this line


async def test_runs_that_time_out_waiting_for_their_throttle_slot_give_it_back(make_engine) -> None:
    app = stepline.App("t")

    @app.function(
        id="thr-start",
        trigger=stepline.TriggerEvent("t/thr-start"),
        throttle=stepline.Throttle(limit=1, period="1h"),
        timeouts=stepline.Timeouts(start="1s"),
    )
    async def thr(ctx: stepline.Context) -> None:
        await ctx.step.sleep("nap", "1h")

    engine = await make_engine(app)

    def next_slot() -> int:  # the throttle's state: when the next run to come may start, plus one period
        ((tat,),) = query(engine.settings.db, "SELECT tat FROM flow_state WHERE key = 't:thr-start'")
        return int(tat)

    async def send() -> str:
        return str((await runs_for_event(engine, await engine.send({"name": "t/thr-start"})))[0]["id"])

    await wait_run(engine, await send(), "sleeping")
    before = next_slot()
    waiting = [await send(), await send()]
    assert next_slot() == before + 2 * 3600 * 1000
    for run in waiting:  # each falls due at its start deadline, long before its slot
        assert (await wait_run(engine, run, "cancelled"))["error"]["name"] == "StartTimeout"
    assert next_slot() == before  # neither started: the next run takes the first of their slots


async def test_a_scheduled_run_cancelled_after_it_met_its_throttle_gives_the_slot_back(make_engine) -> None:
    app = stepline.App("t")

    @app.function(id="thr-ts", trigger=stepline.TriggerEvent("t/thr-ts"), throttle=stepline.Throttle(limit=1, period="1h"))
    async def thr(ctx: stepline.Context) -> None:
        await ctx.step.sleep("nap", "1h")

    engine = await make_engine(app)

    def next_slot() -> int:
        ((tat,),) = query(engine.settings.db, "SELECT tat FROM flow_state WHERE key = 't:thr-ts'")
        return int(tat)

    first = (await runs_for_event(engine, await engine.send({"name": "t/thr-ts"})))[0]["id"]
    await wait_run(engine, first, "sleeping")
    before = next_slot()
    soon = {"name": "t/thr-ts", "ts": engine.store.now_ms() + 300}  # takes its slot when it falls due
    run = (await runs_for_event(engine, await engine.send(soon)))[0]["id"]
    await eventually(
        lambda: query(engine.settings.db, "SELECT 1 FROM runs WHERE id = ? AND wait_reason = 'throttled'", (run,)),
        what="the scheduled run waiting for its throttle slot",
    )
    assert next_slot() == before + 3600 * 1000
    await engine.cancel(run)
    await wait_run(engine, run, "cancelled")
    assert next_slot() == before
