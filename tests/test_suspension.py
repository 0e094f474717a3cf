"""Sleep, wait_for_event, invoke and send_event: suspended runs free the worker."""

from __future__ import annotations

import collections
import datetime as dt

import stepline
from tests.helpers import eventually, runs_for_event, send_and_wait, wait_run


async def test_a_sleeping_run_frees_its_slot(make_engine) -> None:
    app = stepline.App("t")

    @app.function(id="sleeper", trigger=stepline.TriggerEvent("t/sleep"))
    async def sleeper(ctx: stepline.Context) -> str:
        await ctx.step.sleep("long", "2s")
        return "woke"

    @app.function(id="quick", trigger=stepline.TriggerEvent("t/quick"))
    async def quick(ctx: stepline.Context) -> str:
        return await ctx.step.run("q", lambda: "quick")

    engine = await make_engine(app, concurrency=1)
    event_id = await engine.send({"name": "t/sleep"})
    sleeping = (await runs_for_event(engine, event_id))[0]
    await wait_run(engine, sleeping["id"], "sleeping")
    quick_run = await send_and_wait(engine, {"name": "t/quick"})
    assert quick_run["status"] == "completed"
    assert (await engine.get_run(sleeping["id"]))["status"] == "sleeping"
    assert (await engine.get_run(sleeping["id"]))["wait_reason"] == "scheduled"
    done = await wait_run(engine, sleeping["id"])
    assert done["output"] == "woke"


async def test_sleep_until_a_datetime(make_engine) -> None:
    app = stepline.App("t")

    @app.function(id="until", trigger=stepline.TriggerEvent("t/until"))
    async def until(ctx: stepline.Context) -> str:
        target = dt.datetime.now(dt.timezone.utc) + dt.timedelta(milliseconds=200)
        when = await ctx.step.run("when", lambda: target.isoformat())
        await ctx.step.sleep_until("until", dt.datetime.fromisoformat(when))
        return when

    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "t/until"})
    woke = dt.datetime.fromisoformat(run["ended_at"].replace("Z", "+00:00"))
    assert woke >= dt.datetime.fromisoformat(run["output"])


async def test_wait_for_event_with_match(make_engine) -> None:
    app = stepline.App("t")

    @app.function(id="approve", trigger=stepline.TriggerEvent("doc/uploaded"))
    async def approve(ctx: stepline.Context) -> dict:
        got = await ctx.step.wait_for_event("approval", event="doc/approved", match="data.doc_id", timeout="30s")
        return {"by": got.data["by"] if got else None}

    engine = await make_engine(app)
    event_id = await engine.send({"name": "doc/uploaded", "data": {"doc_id": "d1"}})
    run = (await runs_for_event(engine, event_id))[0]
    waiting = await wait_run(engine, run["id"], "waiting")
    assert waiting["wait_reason"] == "waiting_for_event"
    unmatched = await engine.send({"name": "doc/approved", "data": {"doc_id": "other", "by": "mallory"}})
    matched = await engine.send({"name": "doc/approved", "data": {"doc_id": "d1", "by": "ada"}})
    done = await wait_run(engine, run["id"])
    assert done["output"] == {"by": "ada"}
    # The event that resumed the run says so, rather than that it did nothing.
    detail = await engine.store.event_detail(matched)
    assert detail["resumed_runs"] == [run["id"]] and detail["skipped"] == {}
    assert detail["why_no_runs"] == f"it resumed 1 waiting run(s) ({run['id']}) and started none"
    other = await engine.store.event_detail(unmatched)
    assert other["resumed_runs"] == [] and "no registered function has a trigger" in other["why_no_runs"]


async def test_wait_for_event_with_if_expression_and_timeout(make_engine) -> None:
    app = stepline.App("t")

    @app.function(id="w", trigger=stepline.TriggerEvent("t/w"))
    async def w(ctx: stepline.Context) -> dict:
        hit = await ctx.step.wait_for_event(
            "big", event="t/amount", if_="async.data.amount > event.data.min", timeout="20s"
        )
        miss = await ctx.step.wait_for_event("never", event="t/never", timeout="300ms")
        return {"hit": hit.data["amount"] if hit else None, "miss": miss}

    engine = await make_engine(app)
    event_id = await engine.send({"name": "t/w", "data": {"min": 10}})
    run = (await runs_for_event(engine, event_id))[0]
    await wait_run(engine, run["id"], "waiting")
    await engine.send({"name": "t/amount", "data": {"amount": 5}})
    await engine.send({"name": "t/amount", "data": {"amount": 50}})
    done = await wait_run(engine, run["id"])
    assert done["output"] == {"hit": 50, "miss": None}


async def test_invoke_returns_the_invoked_function_output_and_raises_its_failure(make_engine) -> None:
    app = stepline.App("t")

    @app.function(id="child", trigger=stepline.TriggerEvent("t/child-direct"))
    async def child(ctx: stepline.Context) -> dict:
        if ctx.event.data.get("fail"):
            raise stepline.NonRetriableError("child refused")
        return {"doubled": ctx.event.data["n"] * 2}

    @app.function(id="parent", trigger=stepline.TriggerEvent("t/parent"))
    async def parent(ctx: stepline.Context) -> dict:
        ok = await ctx.step.invoke("double", function=child, data={"n": 21})
        try:
            await ctx.step.invoke("refuse", function="child", data={"fail": True})
        except stepline.StepError as exc:
            return {"ok": ok, "failure": exc.error_message}
        return {"ok": ok}

    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "t/parent"})
    assert run["status"] == "completed", run["error"]
    assert run["output"]["ok"] == {"doubled": 42}
    assert "child refused" in run["output"]["failure"]
    children = await engine.list_runs(function_id="child")
    assert len(children) == 2 and all(c["parent_run_id"] == run["id"] for c in children)


async def test_send_event_sends_once_and_triggers_other_functions(make_engine) -> None:
    app = stepline.App("t")
    received: collections.Counter[str] = collections.Counter()

    @app.function(id="sender", trigger=stepline.TriggerEvent("t/send"))
    async def sender(ctx: stepline.Context) -> list:
        ids = await ctx.step.send_event("notify", {"name": "t/notified", "data": {"x": 1}})
        await ctx.step.sleep("nap", 0.05)  # replay after this must not send again
        return ids

    @app.function(id="receiver", trigger=stepline.TriggerEvent("t/notified"))
    async def receiver(ctx: stepline.Context) -> None:
        received[ctx.event.data["x"]] += 1

    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "t/send"})
    assert run["status"] == "completed"
    assert len(run["output"]) == 1
    notified = await runs_for_event(engine, run["output"][0])
    await wait_run(engine, notified[0]["id"])
    await eventually(lambda: _len(engine, "receiver"), what="one receiver run")
    assert len(await engine.list_runs(function_id="receiver")) == 1
    assert received == {1: 1}


async def _len(engine, function_id: str) -> int:  # type: ignore[no-untyped-def]
    return len(await engine.list_runs(function_id=function_id))


async def test_a_sleep_or_timeout_past_a_year_fails_the_run_with_a_clear_error(make_engine) -> None:
    """A duration from an event's data (``sleep(event.data.delay)``) past what the database
    can hold made the suspension unsavable: the run was never settled, its lease expired and
    it ran again, for ever. As on Inngest, a sleep may last at most 366 days: longer, the
    step fails, naming the limit; a retry delay that long is cut to the same bound."""
    app = stepline.App("t")
    tries: collections.Counter[str] = collections.Counter()

    @app.function(id="remind", trigger=stepline.TriggerEvent("t/remind"), retries=0)
    async def remind(ctx: stepline.Context) -> str:
        tries[str(ctx.event.data)] += 1
        kind, value = ctx.event.data["kind"], ctx.event.data["value"]
        if kind == "sleep":
            await ctx.step.sleep("wait", value)
        elif kind == "until":
            await ctx.step.sleep_until("wait", dt.datetime.fromisoformat(value))
        elif kind == "event":
            await ctx.step.wait_for_event("wait", event="t/never", timeout=value)
        else:
            await ctx.step.invoke("wait", function="remind", data={"kind": "sleep", "value": 0}, timeout=value)
        return "reminded"

    @app.function(id="later", trigger=stepline.TriggerEvent("t/later"), retries=1)
    async def later(ctx: stepline.Context) -> str:
        raise stepline.RetryAfterError("come back much later", delay=1e300)

    engine = await make_engine(app)
    for kind, value in (("sleep", 1e300), ("sleep", "400d"), ("until", "9999-12-31T00:00:00+00:00"),
                        ("event", 1e300), ("invoke", "100000000000d")):
        run = await send_and_wait(engine, {"name": "t/remind", "data": {"kind": kind, "value": value}}, "failed")
        assert "at most 366 days" in run["error"]["message"], (kind, run["error"])
    assert set(tries.values()) == {1}  # each failed at once, never ran again
    await send_and_wait(engine, {"name": "t/remind", "data": {"kind": "sleep", "value": "365d"}}, "sleeping")
    retried = await send_and_wait(engine, {"name": "t/later"}, "queued")

    async def due() -> str | None:
        return (await engine.store.run_schedule(retried["id"]))["due_at"]

    due_at = await eventually(due, what="the retry's due time")
    ahead = dt.datetime.fromisoformat(due_at.replace("Z", "+00:00")) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=365) < ahead <= dt.timedelta(days=366)
