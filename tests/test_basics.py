"""A run from event to completion, its read-out, and step results memoized."""

from __future__ import annotations

import stepline
from stepline import context
from tests.helpers import send_and_wait


async def test_event_starts_run_that_completes_with_output(make_engine) -> None:
    app = stepline.App("basics")
    calls: list[str] = []

    @app.function(id="greet", trigger=stepline.TriggerEvent("demo/greet"))
    async def greet(ctx: stepline.Context) -> dict:
        name = await ctx.step.run("upper", lambda: ctx.event.data["name"].upper())
        calls.append(name)
        await ctx.set_progress(100, "done")
        return {"hello": name}

    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "demo/greet", "data": {"name": "ada"}})
    assert run["status"] == "completed"
    assert run["output"] == {"hello": "ADA"}
    assert run["progress"] == 100 and run["progress_message"] == "done"
    assert [s["id"] for s in run["steps"]] == ["upper"]
    assert run["steps"][0]["output"] == "ADA"
    assert calls == ["ADA"]


async def test_a_completed_run_that_reported_progress_ends_at_100_and_a_failed_one_where_it_stopped(make_engine) -> None:
    app = stepline.App("progress-ends")

    @app.function(id="halfway", trigger=stepline.TriggerEvent("demo/halfway"), retries=0)
    async def halfway(ctx: stepline.Context) -> str:
        await ctx.set_progress(40, "reading")
        if ctx.event.data.get("fail"):
            raise ValueError("stopped at 40")
        return "done"

    @app.function(id="silent", trigger=stepline.TriggerEvent("demo/silent"))
    async def silent(ctx: stepline.Context) -> str:
        return "done"

    engine = await make_engine(app)
    completed = await send_and_wait(engine, {"name": "demo/halfway", "data": {}})
    assert completed["status"] == "completed" and completed["progress"] == 100
    assert completed["progress_message"] == "reading"
    failed = await send_and_wait(engine, {"name": "demo/halfway", "data": {"fail": True}})
    assert failed["status"] == "failed" and failed["progress"] == 40
    quiet = await send_and_wait(engine, {"name": "demo/silent", "data": {}})
    assert quiet["status"] == "completed" and quiet["progress"] is None


async def test_a_progress_message_is_text_of_a_bounded_length(make_engine) -> None:
    """A progress message is read with every run a list shows and sent on every stream: one
    built from an event's data was stored whole (a megabyte in each listing), a number was
    stored as text on PostgreSQL and failed the write on SQLite. Now it must be text; a long
    one is cut to context.MAX_PROGRESS_MESSAGE characters; one that is not text fails the run, naming it."""
    app = stepline.App("progress-text")

    @app.function(id="report", trigger=stepline.TriggerEvent("t/report"), retries=0)
    async def report(ctx: stepline.Context) -> str:
        message = ctx.event.data["message"]
        await ctx.set_progress(50, int(message) if message.isdigit() else message)
        return "ok"

    engine = await make_engine(app)
    long = await send_and_wait(engine, {"name": "t/report", "data": {"message": "é" * 100_000}})
    assert long["status"] == "completed", long["error"]
    assert long["progress_message"] == "é" * (context.MAX_PROGRESS_MESSAGE - 1) + "…"
    number = await send_and_wait(engine, {"name": "t/report", "data": {"message": "9" * 30}})
    assert number["status"] == "failed" and "message must be text" in number["error"]["message"], number["error"]
