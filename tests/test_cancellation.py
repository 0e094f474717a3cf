"""Cancellation by API and by cancel_on; timeouts."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import stepline
from tests.helpers import LongCall, counting_statements, runs_for_event, wait_run


async def test_cancel_a_sleeping_run(make_engine) -> None:
    app = stepline.App("t")
    after = 0

    @app.function(id="s", trigger=stepline.TriggerEvent("t/s"))
    async def s(ctx: stepline.Context) -> None:
        nonlocal after
        await ctx.step.sleep("long", "1h")
        after += 1

    engine = await make_engine(app)
    run = (await runs_for_event(engine, await engine.send({"name": "t/s"})))[0]
    sleeping = await wait_run(engine, run["id"], "sleeping")
    assert [(st["id"], st["status"]) for st in sleeping["steps"]] == [("long", "sleeping")]
    assert await engine.cancel(run["id"]) == "cancelled"
    done = await wait_run(engine, run["id"])
    assert done["status"] == "cancelled"
    assert after == 0
    # An ended run shows no step still sleeping: the open step was closed with it.
    (step,) = done["steps"]
    assert (step["status"], step["wake_at"]) == ("cancelled", None)
    assert step["ended_at"] is not None
    assert await engine.cancel(run["id"]) == "cancelled"  # idempotent


async def test_cancel_a_running_run_cancels_its_in_flight_step(make_engine) -> None:
    app = stepline.App("t")
    long_call = LongCall()
    later_steps = 0

    @app.function(id="r", trigger=stepline.TriggerEvent("t/r"))
    async def r(ctx: stepline.Context) -> None:
        nonlocal later_steps
        await ctx.step.run("long", long_call)
        later_steps += 1

    engine = await make_engine(app)
    run = (await runs_for_event(engine, await engine.send({"name": "t/r"})))[0]
    await long_call.wait_started()
    assert await engine.cancel(run["id"]) == "cancelling"
    done = await wait_run(engine, run["id"])
    assert done["status"] == "cancelled"
    assert long_call.interrupted.is_set()
    assert later_steps == 0


async def test_cancel_on_match_if_and_timeout(make_engine) -> None:
    app = stepline.App("t")

    @app.function(
        id="job",
        trigger=stepline.TriggerEvent("llm/generate.requested"),
        cancel_on=[
            stepline.CancelOn("llm/generate.cancel", match="data.job_id"),
            stepline.CancelOn("user/deleted", if_="async.data.user == event.data.user"),
            stepline.CancelOn("t/too-late", match="data.job_id", timeout="200ms"),
        ],
    )
    async def job(ctx: stepline.Context) -> None:
        await ctx.step.sleep("think", "1h")

    engine = await make_engine(app)
    first = (await runs_for_event(engine, await engine.send({"name": "llm/generate.requested", "data": {"job_id": "j1", "user": "u1"}})))[0]
    second = (await runs_for_event(engine, await engine.send({"name": "llm/generate.requested", "data": {"job_id": "j2", "user": "u2"}})))[0]
    third = (await runs_for_event(engine, await engine.send({"name": "llm/generate.requested", "data": {"job_id": "j3", "user": "u3"}})))[0]
    for run in (first, second, third):
        await wait_run(engine, run["id"], "sleeping")

    await engine.send({"name": "llm/generate.cancel", "data": {"job_id": "nope"}})
    await engine.send({"name": "llm/generate.cancel", "data": {"job_id": "j1"}})
    assert (await wait_run(engine, first["id"]))["status"] == "cancelled"

    await engine.send({"name": "user/deleted", "data": {"user": "u2"}})
    assert (await wait_run(engine, second["id"]))["status"] == "cancelled"

    await asyncio.sleep(0.3)  # past the third rule's timeout: the event no longer cancels
    await engine.send({"name": "t/too-late", "data": {"job_id": "j3"}})  # a cancel would commit with the event
    assert (await engine.get_run(third["id"]))["status"] == "sleeping"


async def test_finish_timeout_cancels_a_run_that_takes_too_long(make_engine) -> None:
    app = stepline.App("t")

    @app.function(id="slow", trigger=stepline.TriggerEvent("t/slow"), timeouts=stepline.Timeouts(finish="300ms"))
    async def slow(ctx: stepline.Context) -> None:
        await ctx.step.run("forever", asyncio.sleep, 30)

    engine = await make_engine(app)
    run = (await runs_for_event(engine, await engine.send({"name": "t/slow"})))[0]
    done = await wait_run(engine, run["id"])
    assert done["status"] == "cancelled"
    assert done["error"]["name"] == "FinishTimeout"


def ended_at(run: dict) -> float:
    return dt.datetime.fromisoformat(run["ended_at"].replace("Z", "+00:00")).timestamp()


def started_at(run: dict) -> float:
    return dt.datetime.fromisoformat(run["started_at"].replace("Z", "+00:00")).timestamp()


async def test_finish_timeout_cancels_a_sleeping_or_waiting_run_at_its_deadline(make_engine) -> None:
    """A run suspended in a sleep or a wait past its finish deadline was cancelled only when
    it woke (an hour later): it is cancelled at the deadline, counted from its start, and
    the open step stays not completed. So is one woken before its deadline that then waits
    behind a full concurrency key."""
    app = stepline.App("t")
    release = asyncio.Event()
    after: list[str] = []

    @app.function(id="sleeper", trigger=stepline.TriggerEvent("t/sleeper"), timeouts=stepline.Timeouts(finish="1500ms"))
    async def sleeper(ctx: stepline.Context) -> None:
        await ctx.step.run("first", lambda: "ok")
        await ctx.step.sleep("long", "1h")
        after.append("sleeper")

    @app.function(id="waiter", trigger=stepline.TriggerEvent("t/waiter"), timeouts=stepline.Timeouts(finish="1500ms"))
    async def waiter(ctx: stepline.Context) -> None:
        await ctx.step.wait_for_event("reply", event="t/reply", timeout="1h")
        after.append("waiter")

    shared = stepline.Concurrency(1, key='"shared"', scope="env")

    @app.function(id="napper", trigger=stepline.TriggerEvent("t/napper"), timeouts=stepline.Timeouts(finish="1500ms"),
                  concurrency=shared)
    async def napper(ctx: stepline.Context) -> None:
        await ctx.step.sleep("nap", "300ms")
        after.append("napper")

    @app.function(id="holder", trigger=stepline.TriggerEvent("t/holder"), concurrency=shared)
    async def holder(ctx: stepline.Context) -> None:
        await ctx.step.run("hold", release.wait)

    engine = await make_engine(app)
    runs = {}
    for name in ("sleeper", "waiter", "napper"):
        runs[name] = (await runs_for_event(engine, await engine.send({"name": f"t/{name}"})))[0]
    await wait_run(engine, runs["sleeper"]["id"], "sleeping")
    await wait_run(engine, runs["waiter"]["id"], "waiting")
    await wait_run(engine, runs["napper"]["id"], "sleeping")
    held = (await runs_for_event(engine, await engine.send({"name": "t/holder"})))[0]
    await wait_run(engine, held["id"], "running")  # the napper wakes behind it, its key full
    for name, open_step in (("sleeper", "long"), ("waiter", "reply"), ("napper", "nap")):
        done = await wait_run(engine, runs[name]["id"], timeout=10)
        assert done["status"] == "cancelled" and done["error"]["name"] == "FinishTimeout", done
        assert ended_at(done) - started_at(done) < 4, done  # at the deadline (1.5 s), not the wake-up
        if name != "napper":  # the napper's sleep was over; it waited for its slot
            steps = {st["id"]: st["status"] for st in done["steps"]}
            assert steps[open_step] == "cancelled", steps
    assert after == []
    assert (await engine.get_run(held["id"]))["status"] == "running"  # the run holding the key goes on
    release.set()
    assert (await wait_run(engine, held["id"]))["status"] == "completed"


async def test_start_timeout_cancels_runs_behind_a_throttle_or_a_full_key_at_their_deadline(make_engine) -> None:
    """A run waiting for its throttle slot, or parked behind a full concurrency key, was
    checked only when its slot came (an hour later, behind an hour-long run): it is
    cancelled at its deadline, and the run that holds the key goes on."""
    app = stepline.App("t")
    release = asyncio.Event()

    @app.function(id="throttled", trigger=stepline.TriggerEvent("t/throttled"), timeouts=stepline.Timeouts(start="1s"),
                  throttle=stepline.Throttle(limit=1, period="1h"))
    async def throttled(ctx: stepline.Context) -> str:
        return "ran"

    @app.function(id="held", trigger=stepline.TriggerEvent("t/held"), timeouts=stepline.Timeouts(start="1s"),
                  concurrency=stepline.Concurrency(1))
    async def held(ctx: stepline.Context) -> str:
        await ctx.step.run("hold", release.wait)
        return "ran"

    engine = await make_engine(app)
    sent = time.time()
    throttled_ids = await engine.send_many([{"name": "t/throttled", "data": {"n": n}} for n in range(2)])
    first_held = await engine.send({"name": "t/held", "data": {"n": 0}})
    holder = (await runs_for_event(engine, first_held))[0]
    await wait_run(engine, holder["id"], "running")
    behind = (await runs_for_event(engine, await engine.send({"name": "t/held", "data": {"n": 1}})))[0]
    late_throttled = (await runs_for_event(engine, throttled_ids[1]))[0]
    for run in (late_throttled, behind):
        done = await wait_run(engine, run["id"], timeout=15)
        assert done["status"] == "cancelled" and done["error"]["name"] == "StartTimeout", done
        assert ended_at(done) - sent < 5  # at the deadline, not when the slot came (1 h, or never)
    assert (await wait_run(engine, (await runs_for_event(engine, throttled_ids[0]))[0]["id"]))["output"] == "ran"
    release.set()
    assert (await wait_run(engine, holder["id"]))["output"] == "ran"


async def test_start_timeout_cancels_a_run_that_waited_too_long(make_engine) -> None:
    app = stepline.App("t")

    @app.function(id="late", trigger=stepline.TriggerEvent("t/late"), timeouts=stepline.Timeouts(start="100ms"))
    async def late(ctx: stepline.Context) -> str:
        return "ran"

    sender = await make_engine(app, run_worker=False)
    run = (await runs_for_event(sender, await sender.send({"name": "t/late"})))[0]
    await asyncio.sleep(0.3)
    worker = await make_engine(app)
    done = await wait_run(worker, run["id"])
    assert done["status"] == "cancelled"
    assert done["error"]["name"] == "StartTimeout"


async def test_an_event_cancelling_many_runs_costs_a_few_statements_not_several_per_run(make_engine) -> None:
    """One event whose cancel_on rule matches N runs cancelled them one by one, 8 statements
    each, in the ingest's transaction: 20,000 runs held PostgreSQL's writer (every other
    ingest) 20 s. They are now cancelled a few statements per 512 runs; each still ends
    cancelled, names the event, and keeps no wait behind. A run a worker holds is asked to
    stop, as before."""
    app = stepline.App("t")
    holding = LongCall()

    @app.function(id="nap", trigger=stepline.TriggerEvent("t/nap"), cancel_on=[stepline.CancelOn("t/stop")])
    async def nap(ctx: stepline.Context) -> None:
        await ctx.step.sleep("long", "1h")

    @app.function(id="busy", trigger=stepline.TriggerEvent("t/busy"), cancel_on=[stepline.CancelOn("t/stop")])
    async def busy(ctx: stepline.Context) -> None:
        await ctx.step.run("long", holding)

    engine = await make_engine(app)
    ids = await engine.send_many([{"name": "t/nap", "data": {"i": i}} for i in range(60)])
    napping = [run for event_id in ids for run in await runs_for_event(engine, event_id)]
    for run in napping:
        await wait_run(engine, run["id"], "sleeping")
    (held,) = await runs_for_event(engine, await engine.send({"name": "t/busy"}))
    await holding.wait_started()

    with counting_statements() as statements:
        stop = await engine.send({"name": "t/stop"})
    (counted,) = statements
    assert counted < 40, f"{counted} statements to cancel {len(napping) + 1} runs"
    for run in napping:
        assert (await wait_run(engine, run["id"]))["status"] == "cancelled"
    assert sorted(r["id"] for r in await engine.store.runs_cancelled_by(stop)) == sorted(r["id"] for r in [*napping, held])
    assert (await wait_run(engine, held["id"]))["status"] == "cancelled"
    assert holding.interrupted.is_set()
    assert await engine.store.db.read(lambda conn: conn.scalar("SELECT COUNT(*) AS n FROM waits")) == 0
