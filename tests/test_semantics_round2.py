"""What the docs promise of flow control and system events, on native functions:
priority behind a concurrency limit, future-dated events, function.finished and
function.cancelled, batchEvents.if, sleeps and waits side by side."""

from __future__ import annotations

import asyncio
from typing import Any

import stepline
from stepline.testing import TestEngine
from tests.helpers import eventually, runs_for_event, wait_run

VIP = "event.data.vip == true ? 120 : 0"


async def _reasons(engine: stepline.engine.Engine, run_ids: list[str]) -> list[str | None]:
    return [(await engine.get_run(r))["wait_reason"] for r in run_ids]


async def test_priority_orders_runs_parked_behind_a_concurrency_limit(make_engine) -> None:
    app = stepline.App("t")
    gate = asyncio.Event()
    order: list[str] = []

    @app.function(
        id="one-at-a-time", trigger=stepline.TriggerEvent("t/job"),
        concurrency=[stepline.Concurrency(1)], priority=stepline.Priority(run=VIP),
    )
    async def job(ctx: stepline.Context) -> None:
        order.append(ctx.event.data["name"])
        if ctx.event.data["name"] == "first":
            await ctx.step.run("hold", gate.wait)

    # Two workers on one database: the run parked by one may be woken by the other.
    engine = await make_engine(app)
    await make_engine(app)
    first = (await runs_for_event(engine, await engine.send({"name": "t/job", "data": {"name": "first"}})))[0]
    await wait_run(engine, first["id"], "running")
    waiting = []
    for name, vip in (("a", False), ("b", False), ("vip", True)):
        event_id = await engine.send({"name": "t/job", "data": {"name": name, "vip": vip}})
        waiting.append((await runs_for_event(engine, event_id))[0]["id"])
    await eventually(
        lambda: _all_parked(engine, waiting), what="the three runs to wait behind the limit (concurrency_limited)"
    )
    gate.set()
    for run_id in waiting:
        assert (await wait_run(engine, run_id))["status"] == "completed"
    assert order == ["first", "vip", "a", "b"]


async def _all_parked(engine: Any, run_ids: list[str]) -> bool:
    return await _reasons(engine, run_ids) == ["concurrency_limited"] * len(run_ids)


# --- events dated in the future --------------------------------------------------

HOUR_MS = 3600 * 1000


def _reminders() -> stepline.App:
    app = stepline.App("t")

    @app.function(id="remind", trigger=stepline.TriggerEvent("t/remind"),
                  cancel_on=[stepline.CancelOn("t/forget", match="data.id")])
    async def remind(ctx: stepline.Context) -> int | None:
        return ctx.event.ts

    @app.function(id="paced", trigger=stepline.TriggerEvent("t/paced"),
                  throttle=stepline.Throttle(limit=1, period="1h"))
    async def paced(ctx: stepline.Context) -> str:
        return str(ctx.event.data["n"])

    return app


async def test_a_future_ts_schedules_the_run_and_a_past_one_is_taken_as_given(db_url: str) -> None:
    async with TestEngine(_reminders(), db=db_url) as t:
        now = t.clock.now_ms()
        later = await t.send({"name": "t/remind", "data": {"id": "a"}, "ts": now + HOUR_MS})
        waiting = await t.result(later)
        assert (waiting.status, waiting.wait_reason) == ("queued", "scheduled")
        past = await t.wait(await t.send({"name": "t/remind", "data": {"id": "b"}, "ts": now - 24 * HOUR_MS}))
        assert past.status == "completed" and past.output == now - 24 * HOUR_MS  # not delayed, ts kept
        await t.advance("59m")
        assert (await t.result(later)).status == "queued"
        await t.advance("1m")
        done = await t.wait(later)
        assert done.status == "completed" and done.output == now + HOUR_MS
        forgotten = await t.send({"name": "t/remind", "data": {"id": "c"}, "ts": now + 5 * HOUR_MS})
        await t.send({"name": "t/forget", "data": {"id": "c"}})  # cancel_on listens from receipt, before ts
        assert (await t.result(forgotten)).status == "cancelled"


async def test_a_scheduled_run_takes_its_throttle_slot_when_it_comes_due(db_url: str) -> None:
    async with TestEngine(_reminders(), db=db_url) as t:
        now = t.clock.now_ms()
        tomorrow = [await t.send({"name": "t/paced", "data": {"n": n}, "ts": now + 2 * HOUR_MS}) for n in (1, 2)]
        today = await t.wait(await t.send({"name": "t/paced", "data": {"n": 0}}))
        assert today.status == "completed"  # the scheduled runs did not spend today's slot
        await t.advance("2h")
        results = [await t.result(s) for s in tomorrow]
        assert [r.status for r in results] == ["completed", "queued"] and results[1].wait_reason == "throttled"
        await t.advance("1h")
        assert (await t.wait(tomorrow[1])).status == "completed"


# --- sleeps and waits side by side ---------------------------------------------


def _side_by_side() -> stepline.App:
    app = stepline.App("t")

    @app.function(id="two-naps", trigger=stepline.TriggerEvent("t/naps"))
    async def naps(ctx: stepline.Context) -> str:
        await asyncio.gather(ctx.step.sleep("short", "1h"), ctx.step.sleep("long", "2h"))
        return "awake"

    @app.function(id="two-waits", trigger=stepline.TriggerEvent("t/waits"))
    async def waits(ctx: stepline.Context) -> list[Any]:
        found = await asyncio.gather(
            ctx.step.wait_for_event("a", event="t/a", timeout="1d"),
            ctx.step.wait_for_event("b", event="t/b", timeout="1d"),
        )
        return [None if e is None else e.data["n"] for e in found]

    return app


async def test_two_sleeps_in_one_parallel_block_run_side_by_side(db_url: str) -> None:
    async with TestEngine(_side_by_side(), db=db_url) as t:
        sent = await t.send({"name": "t/naps"})
        asleep = await t.result(sent)
        assert asleep.status == "sleeping" and [s.status for s in asleep.steps.values()] == ["sleeping", "sleeping"]
        await t.advance("1h")
        assert (await t.result(sent)).status == "sleeping"
        await t.advance("1h")  # both naps began together: two hours in all, not three
        assert (await t.wait(sent)).output == "awake"


async def test_two_waits_in_one_parallel_block_listen_together(db_url: str) -> None:
    async with TestEngine(_side_by_side(), db=db_url) as t:
        sent = await t.send({"name": "t/waits"})
        assert sorted((await t.result(sent)).steps) == ["a", "b"]
        await t.send({"name": "t/b", "data": {"n": 2}})  # the second wait's event comes first
        assert (await t.result(sent)).status == "waiting"
        await t.send({"name": "t/a", "data": {"n": 1}})
        assert (await t.wait(sent)).output == [1, 2]


# --- batch_events.if -------------------------------------------------------------


async def test_events_the_batch_if_refuses_run_alone_at_once(db_url: str) -> None:
    app = stepline.App("t")

    @app.function(id="rows", trigger=stepline.TriggerEvent("t/row"),
                  batch_events=stepline.Batch(max_size=3, timeout="1h", if_="event.data.batch == true"))
    async def rows(ctx: stepline.Context) -> list[int]:
        return [e.data["n"] for e in ctx.events]

    async with TestEngine(app, db=db_url) as t:
        first = await t.send({"name": "t/row", "data": {"n": 1, "batch": True}})
        alone = await t.send({"name": "t/row", "data": {"n": 2, "batch": False}})
        broken = await t.send({"name": "t/row", "data": {"n": 3}})  # the `if` fails on it: not batched either
        assert (await t.wait(alone)).output == [2] and (await t.wait(broken)).output == [3]
        await t.send({"name": "t/row", "data": {"n": 4, "batch": True}})
        await t.send({"name": "t/row", "data": {"n": 5, "batch": True}})
        assert (await t.wait(first)).output == [1, 4, 5]


# --- function.finished and function.cancelled ------------------------------------


def _watched() -> tuple[stepline.App, list[tuple[str, dict[str, Any]]]]:
    app = stepline.App("t")
    heard: list[tuple[str, dict[str, Any]]] = []

    @app.function(id="work", trigger=stepline.TriggerEvent("t/work"),
                  cancel_on=[stepline.CancelOn("t/stop", match="data.id")])
    async def work(ctx: stepline.Context) -> dict[str, Any]:
        if ctx.event.data.get("nap"):
            await ctx.step.sleep("nap", "1h")
        if ctx.event.data.get("fail"):
            raise stepline.NonRetriableError("no luck")
        return {"done": ctx.event.data["id"]}

    @app.function(id="on-finished", trigger=stepline.TriggerEvent(
        stepline.event.FUNCTION_FINISHED, if_="event.data.function_id == 'work'"))
    async def on_finished(ctx: stepline.Context) -> None:
        heard.append(("finished", ctx.event.data))

    @app.function(id="on-cancelled", trigger=stepline.TriggerEvent(stepline.event.FUNCTION_CANCELLED))
    async def on_cancelled(ctx: stepline.Context) -> None:
        heard.append(("cancelled", ctx.event.data))

    return app, heard


async def test_functions_hear_of_runs_that_finish_fail_or_are_cancelled(db_url: str) -> None:
    app, heard = _watched()
    async with TestEngine(app, db=db_url) as t:
        done = await t.send({"name": "t/work", "data": {"id": "a"}})
        await t.settle()
        (kind, data), = heard
        assert kind == "finished" and data["run_id"] == done.run_id and data["function_id"] == "work"
        assert data["result"] == {"done": "a"} and data["_inngest"] == {"status": "Completed"}
        assert data["event"]["name"] == "t/work" and data["events"] == [data["event"]] and "error" not in data
        heard.clear()

        failed = await t.send({"name": "t/work", "data": {"id": "b", "fail": True}})
        await t.settle()
        (kind, data), = heard
        assert kind == "finished" and data["run_id"] == failed.run_id and data["_inngest"] == {"status": "Failed"}
        assert data["error"]["message"] == "no luck" and "result" not in data
        heard.clear()

        sleeping = await t.send({"name": "t/work", "data": {"id": "c", "nap": True}})
        await t.send({"name": "t/stop", "data": {"id": "c"}})  # cancel_on, while no worker holds the run
        assert sorted(kind for kind, _ in heard) == ["cancelled", "finished"]
        assert all(d["run_id"] == sleeping.run_id and d["_inngest"] == {"status": "Cancelled"} for _, d in heard)
        # Runs started by function.finished tell of nothing (no loops); one started by
        # function.cancelled does tell of its end, as in Inngest.
        told = [e["body"] for e in await t.engine.store.list_events(limit=100) if e["name"].startswith("stepline/function.")]
        assert sorted((e["name"], e["data"]["function_id"]) for e in told) == [
            ("stepline/function.cancelled", "work"),
            ("stepline/function.failed", "work"),
            ("stepline/function.finished", "on-cancelled"),
            *[("stepline/function.finished", "work")] * 3,
        ]


async def test_nothing_is_written_for_endings_nobody_listens_to(db_url: str) -> None:
    app = stepline.App("quiet")

    @app.function(id="work", trigger=stepline.TriggerEvent("t/work"))
    async def work(ctx: stepline.Context) -> str:
        return "ok"

    async with TestEngine(app, db=db_url) as t:
        assert (await t.wait(await t.send({"name": "t/work"}))).output == "ok"
        assert [e["name"] for e in await t.engine.store.list_events(limit=100)] == ["t/work"]


# --- a future ts under debounce and singleton -----------------------------------


def _settling() -> stepline.App:
    app = stepline.App("t")

    @app.function(id="settle", trigger=stepline.TriggerEvent("t/settle"),
                  debounce=stepline.Debounce(period="1m", key="event.data.doc"),
                  timeouts=stepline.Timeouts(start="10m"))  # from ts, for a run scheduled then
    async def settle(ctx: stepline.Context) -> list[Any]:
        return [ctx.event.data["n"], ctx.event.ts]

    @app.function(id="settle-paced", trigger=stepline.TriggerEvent("t/settle-paced"),
                  debounce=stepline.Debounce(period="1m"), throttle=stepline.Throttle(limit=1, period="1h"))
    async def settle_paced(ctx: stepline.Context) -> int:
        return int(ctx.event.data["n"])

    @app.function(id="only-one", trigger=stepline.TriggerEvent("t/only-one"),
                  singleton=stepline.Singleton(key="event.data.doc", mode="skip"))
    async def only_one(ctx: stepline.Context) -> int:
        return int(ctx.event.data["n"])

    @app.function(id="one-unless-free", trigger=stepline.TriggerEvent("t/one-unless-free"),
                  singleton=stepline.Singleton(key="event.data.free ? false : event.data.doc", mode="skip"))
    async def one_unless_free(ctx: stepline.Context) -> int:
        await ctx.step.sleep("work", "1h")
        return int(ctx.event.data["n"])

    return app


async def test_a_singleton_key_that_gives_false_makes_the_run_no_singleton(db_url: str) -> None:
    """As on Inngest (singleton.SingletonKey: ErrNotASingleton), not one shared key "false"."""
    async with TestEngine(_settling(), db=db_url) as t:
        free = [await t.send({"name": "t/one-unless-free", "data": {"doc": "d", "free": True, "n": n}}) for n in (1, 2)]
        paid = [await t.send({"name": "t/one-unless-free", "data": {"doc": "d", "free": False, "n": n}}) for n in (3, 4)]
        assert [len(e.run_ids) for e in free + paid] == [1, 1, 1, 0]  # the second paid one is skipped
        await t.advance("1h")
        assert [(await t.wait(e)).output for e in free + paid[:1]] == [1, 2, 3]


async def test_a_debounced_event_dated_ahead_starts_at_its_ts_once_the_window_closes(db_url: str) -> None:
    """As on Inngest: the window lasts its period from receipt; then the run is scheduled at
    the kept event's ts, and a later event opens a window of its own."""
    async with TestEngine(_settling(), db=db_url) as t:
        now = t.clock.now_ms()
        ahead = await t.send({"name": "t/settle", "data": {"doc": "d", "n": 1}, "ts": now + HOUR_MS})
        await t.advance("1m")
        fired = await t.result(ahead)
        assert (fired.status, fired.wait_reason) == ("queued", "scheduled")
        after = await t.send({"name": "t/settle", "data": {"doc": "d", "n": 2}})
        await t.advance("1m")
        assert (await t.wait(after)).output == [2, now + 60_000]  # a window of its own, not folded into the first
        assert (await t.result(ahead)).status == "queued"
        await t.advance("58m")
        assert (await t.wait(ahead)).output == [1, now + HOUR_MS]


async def test_a_debounced_run_takes_its_throttle_slot_when_its_window_closes(db_url: str) -> None:
    async with TestEngine(_settling(), db=db_url) as t:
        first = await t.send({"name": "t/settle-paced", "data": {"n": 1}})
        await t.advance("1m")
        assert (await t.wait(first)).output == 1
        second = await t.send({"name": "t/settle-paced", "data": {"n": 2}})
        await t.send({"name": "t/settle-paced", "data": {"n": 3}})  # replaces it in the window
        await t.advance("1m")
        kept = await t.result(second)
        assert (kept.status, kept.wait_reason) == ("queued", "throttled")
        await t.advance("59m")  # one slot per hour from the first run's start (at 1m): none reserved by the window's events
        assert (await t.wait(second)).output == 3


async def test_a_scheduled_run_held_by_a_pause_when_due_still_takes_its_throttle_slot(db_url: str) -> None:
    """The slot is taken when the run may start, whatever held it when it came due (a
    pause, a full concurrency key): the run must not start without one."""
    async with TestEngine(_reminders(), db=db_url) as t:
        now = t.clock.now_ms()
        ahead = await t.send({"name": "t/paced", "data": {"n": 1}, "ts": now + HOUR_MS // 2})
        await t.engine.pause_function("paced")
        await t.advance("30m")
        assert (await t.result(ahead)).wait_reason == "function_paused"
        await t.engine.resume_function("paced")
        assert (await t.wait(ahead)).output == "1"
        after = await t.send({"name": "t/paced", "data": {"n": 2}})  # within the hour of the first's slot
        late = await t.result(after)
        assert (late.status, late.wait_reason) == ("queued", "throttled")
        await t.advance("1h")
        assert (await t.wait(after)).output == "2"


async def test_a_batch_that_fills_waits_for_its_throttle_slot(db_url: str) -> None:
    app = stepline.App("t")

    @app.function(id="paced-batch", trigger=stepline.TriggerEvent("t/paced-batch"),
                  batch_events=stepline.Batch(max_size=2, timeout="1h"), throttle=stepline.Throttle(limit=1, period="2h"))
    async def paced_batch(ctx: stepline.Context) -> list[int]:
        return [int(e.data["n"]) for e in ctx.events]

    async with TestEngine(app, db=db_url) as t:
        first = [await t.send({"name": "t/paced-batch", "data": {"n": n}}) for n in (1, 2)]
        assert (await t.wait(first[0])).output == [1, 2]
        second = [await t.send({"name": "t/paced-batch", "data": {"n": n}}) for n in (3, 4)]
        waiting = await t.result(second[0])  # full, but the throttle allows one start in two hours
        assert (waiting.status, waiting.wait_reason) == ("queued", "throttled")
        await t.advance("2h")
        assert (await t.wait(second[0])).output == [3, 4]
        third = await t.send({"name": "t/paced-batch", "data": {"n": 5}})
        await t.advance("1h")  # its timeout: the batch closes, and waits for the slot after the last
        assert (await t.result(third)).wait_reason == "throttled"
        fourth = [await t.send({"name": "t/paced-batch", "data": {"n": n}}) for n in (6, 7)]
        assert len(fourth[0].run_ids) == 1 and fourth[0].run_ids != third.run_ids  # a batch of their own
        await t.advance("1h")
        assert (await t.wait(third)).output == [5]
        assert (await t.result(fourth[0])).wait_reason == "throttled"


async def test_timeouts_start_of_a_debounced_or_batched_run_counts_from_when_its_window_closes(db_url: str) -> None:
    """As on Inngest, which creates such a run only then: a start timeout shorter than the
    window does not cancel every run."""
    app = stepline.App("t")

    @app.function(id="settle-soon", trigger=stepline.TriggerEvent("t/settle-soon"),
                  debounce=stepline.Debounce(period="1m"), timeouts=stepline.Timeouts(start="30s"))
    async def settle_soon(ctx: stepline.Context) -> int:
        return int(ctx.event.data["n"])

    @app.function(id="batch-soon", trigger=stepline.TriggerEvent("t/batch-soon"),
                  batch_events=stepline.Batch(max_size=10, timeout="1h"), timeouts=stepline.Timeouts(start="10m"))
    async def batch_soon(ctx: stepline.Context) -> list[int]:
        return [int(e.data["n"]) for e in ctx.events]

    async with TestEngine(app, db=db_url) as t:
        debounced = await t.send({"name": "t/settle-soon", "data": {"n": 1}})
        batched = await t.send({"name": "t/batch-soon", "data": {"n": 2}})
        await t.advance("1m")
        assert (await t.wait(debounced)).output == 1
        await t.advance("59m")
        assert (await t.wait(batched)).output == [2]


async def test_a_debounced_run_is_cancelled_by_what_matches_the_event_it_kept(db_url: str) -> None:
    app = stepline.App("t")

    @app.function(id="settle-cancellable", trigger=stepline.TriggerEvent("t/settle-c"),
                  debounce=stepline.Debounce(period="1m"), cancel_on=[stepline.CancelOn("t/settle-c.stop", match="data.order")])
    async def settle_cancellable(ctx: stepline.Context) -> str:
        return str(ctx.event.data["order"])

    async with TestEngine(app, db=db_url) as t:
        first = await t.send({"name": "t/settle-c", "data": {"order": "a"}})
        await t.send({"name": "t/settle-c", "data": {"order": "b"}})  # the run now has this event
        await t.send({"name": "t/settle-c.stop", "data": {"order": "a"}})  # the replaced event's: no match
        assert (await t.result(first)).status == "queued"
        await t.send({"name": "t/settle-c.stop", "data": {"order": "b"}})
        assert (await t.result(first)).status == "cancelled"


async def test_a_run_scheduled_for_later_holds_its_singleton_key_from_receipt(db_url: str) -> None:
    """Inngest takes a singleton's lock when it queues the run, whatever its ts."""
    async with TestEngine(_settling(), db=db_url) as t:
        now = t.clock.now_ms()
        ahead = await t.send({"name": "t/only-one", "data": {"doc": "d", "n": 1}, "ts": now + HOUR_MS})
        skipped = await t.send({"name": "t/only-one", "data": {"doc": "d", "n": 2}})
        other = await t.send({"name": "t/only-one", "data": {"doc": "e", "n": 3}})
        assert (await t.wait(other)).output == 3
        assert skipped.run_ids == ()
        await t.advance("1h")
        assert (await t.wait(ahead)).output == 1


# --- an invoke's timeout, and its parent's end, leave the invoked run alone ----------------


def _invoking() -> stepline.App:
    app = stepline.App("t")

    @app.function(id="slow-child", trigger=stepline.TriggerEvent("t/slow-child"))
    async def slow_child(ctx: stepline.Context) -> str:
        await ctx.step.sleep("work", "2h")
        return "child done"

    @app.function(id="impatient", trigger=stepline.TriggerEvent("t/impatient"))
    async def impatient(ctx: stepline.Context) -> str:
        try:
            return str(await ctx.step.invoke("child", function="slow-child", data={}, timeout="1h"))
        except stepline.StepError as exc:
            return exc.name

    @app.function(id="patient", trigger=stepline.TriggerEvent("t/patient"))
    async def patient(ctx: stepline.Context) -> str:
        return str(await ctx.step.invoke("child", function="slow-child", data={}))

    return app


async def test_an_invoke_that_times_out_or_whose_parent_is_cancelled_leaves_the_child_running(db_url: str) -> None:
    """As on Inngest: the parent's step fails with the timeout, and the invoked run goes on
    to its own end; cancelling the parent does not cancel it either."""
    async with TestEngine(_invoking(), db=db_url) as t:
        parent = await t.send({"name": "t/impatient"})
        await t.advance("1h")
        assert (await t.wait(parent)).output == "InvokeTimeout"
        (child,) = [r for r in await t.runs("slow-child")]
        assert child.status == "sleeping"
        await t.advance("1h")
        assert (await t.wait(child.id)).output == "child done"
        waiting = await t.send({"name": "t/patient"})
        assert (await t.result(waiting)).status == "waiting"
        (_, second) = sorted(await t.runs("slow-child"), key=lambda r: r.status != "completed")
        assert (await t.cancel(waiting)).status == "cancelled"
        await t.advance("2h")
        assert (await t.wait(second.id)).output == "child done"
