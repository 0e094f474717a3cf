"""Functions the server, API and dashboard tests drive (also run by a worker subprocess)."""

from __future__ import annotations

from typing import Any

import stepline

app = stepline.App("srv")

# Step executions per (function, step), to prove reruns reuse committed steps.
EXECUTIONS: dict[str, int] = {}
# Flip to let `flaky` pass its second step (a "fixed bug" before a rerun).
FIXED = {"flaky": False}


def _count(name: str) -> None:
    EXECUTIONS[name] = EXECUTIONS.get(name, 0) + 1


@app.function(id="greet", trigger=stepline.TriggerEvent("srv/greet"))
async def greet(ctx: stepline.Context) -> dict[str, Any]:
    name = await ctx.step.run("name", lambda: str(ctx.event.data.get("name", "world")))
    await ctx.set_progress(50, "greeting")
    await ctx.publish({"token": "Hello"})
    await ctx.publish({"token": f", {name}"}, topic="tokens")
    await ctx.set_progress(100, "done")
    return {"greeting": f"Hello, {name}"}


@app.function(id="nap", trigger=stepline.TriggerEvent("srv/nap"))
async def nap(ctx: stepline.Context) -> None:
    await ctx.step.run("before", lambda: "ok")
    await ctx.step.sleep("long", "1h")


@app.function(id="chatty", trigger=stepline.TriggerEvent("srv/chatty"))
async def chatty(ctx: stepline.Context) -> dict[str, Any]:
    """Publishes a message, waits for a go-ahead event, then publishes the rest."""
    count = int(ctx.event.data.get("count", 3))
    await ctx.publish({"part": 0})
    await ctx.set_progress(10, "waiting for go")
    await ctx.step.wait_for_event("go", event="srv/go", match="data.job", timeout="5m")
    for i in range(1, count):
        await ctx.publish({"part": i})
        await ctx.set_progress(10 + 90 * i / max(1, count - 1), f"part {i}")
    return {"parts": count}


def _first() -> str:
    _count("flaky.first")
    return "first-result"


def _second() -> str:
    _count("flaky.second")
    if not FIXED["flaky"]:
        raise stepline.NonRetriableError("second step broke (simulated bug)")
    return "second-result"


@app.function(id="flaky", trigger=stepline.TriggerEvent("srv/flaky"), retries=0)
async def flaky(ctx: stepline.Context) -> dict[str, Any]:
    first = await ctx.step.run("first", _first)
    second = await ctx.step.run("second", _second)
    return {"first": first, "second": second}


@app.function(id="picky", trigger=stepline.TriggerEvent("srv/picky", if_="event.data.ok == true"))
async def picky(ctx: stepline.Context) -> str:
    return "ok"


@app.function(id="boom", trigger=stepline.TriggerEvent("srv/boom"), retries=0)
async def boom(ctx: stepline.Context) -> None:
    await ctx.step.run("explode", _explode)


def _explode() -> None:
    raise stepline.NonRetriableError("boom (simulated failure)")


@app.function(id="limited", trigger=stepline.TriggerEvent("srv/limited"), rate_limit=stepline.RateLimit(limit=1, period="1h"))
async def limited(ctx: stepline.Context) -> str:
    return "ran"


@app.function(id="settle", trigger=stepline.TriggerEvent("srv/settle"), debounce=stepline.Debounce(period="1h"))
async def settle(ctx: stepline.Context) -> str:
    return "settled"


@app.function(id="gather", trigger=stepline.TriggerEvent("srv/gather"), batch_events=stepline.Batch(max_size=2, timeout="1h"))
async def gather(ctx: stepline.Context) -> int:
    return len(ctx.events)
