"""A run from event to completion, its read-out, and step results memoized."""

from __future__ import annotations

import stepline
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
