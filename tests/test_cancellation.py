"""Cancellation by API and by cancel_on; timeouts."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import stepline
from tests.helpers import LongCall, runs_for_event, wait_run


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
