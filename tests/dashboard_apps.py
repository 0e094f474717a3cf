"""Functions the dashboard, function-API and CLI tests drive beside ``tests.server_apps``:
a model call, a long crawl, a retried step, a throttle, a cancel rule, an invoke, a
failure handler."""

from __future__ import annotations

import asyncio
from typing import Any

import stepline
from stepline.llm import LLM

# How many times `shaky.flaky-call` fails before it succeeds (a test sets it).
SHAKY = {"failures": 2}
CALLS: dict[str, int] = {}


def make_app(llm: LLM | None = None) -> stepline.App:
    """``llm``: where ``ask`` sends its model call (a FakeProvider's ``llm()`` in tests)."""
    app = stepline.App("dash")

    @app.function(id="ask", trigger=stepline.TriggerEvent("dash/ask"))
    async def ask(ctx: stepline.Context) -> dict[str, Any]:
        prompt = await ctx.step.run("build-prompt", lambda: str(ctx.event.data.get("prompt", "hello")))
        reply = await ctx.step.ai.infer("call-model", model="fake-quick", messages=prompt, llm=llm)
        return {"text": reply["text"], "cost_usd": reply["cost_usd"]}

    @app.function(id="crawl", trigger=stepline.TriggerEvent("dash/crawl"))
    async def crawl(ctx: stepline.Context) -> dict[str, int]:
        pages = int(ctx.event.data.get("pages", 3))
        total = 0
        for page in range(pages):
            rows = await ctx.step.run("fetch-page", lambda page=page: list(range(page % 3 + 1)))
            total += await ctx.step.run("save-page", lambda rows=rows: len(rows))
            await ctx.set_progress(100 * (page + 1) / pages, f"page {page + 1} of {pages}")
        return {"pages": pages, "rows": total}

    @app.function(id="shaky", trigger=stepline.TriggerEvent("dash/shaky"), retries=4)
    async def shaky(ctx: stepline.Context) -> str:
        return str(await ctx.step.run("flaky-call", _flaky_call))

    @app.function(id="paced", trigger=stepline.TriggerEvent("dash/paced"),
                  throttle=stepline.Throttle(limit=1, period="1h"))
    async def paced(ctx: stepline.Context) -> str:
        return "paced"

    @app.function(id="watch", trigger=stepline.TriggerEvent("dash/watch"),
                  cancel_on=[stepline.CancelOn("dash/stop", match="data.job")])
    async def watch(ctx: stepline.Context) -> None:
        await ctx.step.sleep("long", "1h")

    @app.function(id="child", trigger=stepline.TriggerEvent("dash/child"))
    async def child(ctx: stepline.Context) -> int:
        return int(ctx.event.data.get("x", 1)) * 2

    @app.function(id="parent", trigger=stepline.TriggerEvent("dash/parent"))
    async def parent(ctx: stepline.Context) -> int:
        return int(await ctx.step.invoke("call-child", function="child", data={"x": 21}))

    async def tidy(ctx: stepline.Context) -> str:
        return "tidied"

    @app.function(id="doomed", trigger=stepline.TriggerEvent("dash/doomed"), retries=0, on_failure=tidy)
    async def doomed(ctx: stepline.Context) -> None:
        await ctx.step.run("explode", _explode)

    @app.function(id="solo", trigger=stepline.TriggerEvent("dash/solo"), concurrency=[stepline.Concurrency(limit=1)])
    async def solo(ctx: stepline.Context) -> str:
        await ctx.step.run("hold", _hold, float(ctx.event.data.get("hold", 0)))
        return "done"

    @app.function(id="wobbly", trigger=stepline.TriggerEvent("dash/wobbly"), retries=2)
    async def wobbly(ctx: stepline.Context) -> str:
        CALLS["wobbly"] = CALLS.get("wobbly", 0) + 1
        if CALLS["wobbly"] == 1:
            raise RuntimeError("the function body broke (outside any step)")
        return "steady"

    return app


async def _hold(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "held"


def _flaky_call() -> str:
    CALLS["flaky-call"] = CALLS.get("flaky-call", 0) + 1
    if CALLS["flaky-call"] <= SHAKY["failures"]:
        raise RuntimeError(f"upstream 503 (attempt {CALLS['flaky-call']})")
    return "fine"


def _explode() -> None:
    raise stepline.NonRetriableError("doomed (simulated failure)")


app = make_app()
