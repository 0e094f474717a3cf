"""Functions whose expressions a hostile event can make fail (division by zero, overflow),
for the hostile-input tests."""

from __future__ import annotations

from typing import Any

import stepline

app = stepline.App("hostile")

INT64_MAX = "9223372036854775807"


@app.function(id="divides", trigger=stepline.TriggerEvent("h/div", if_="10 / event.data.d > 1"))
async def divides(ctx: stepline.Context) -> str:
    return "divided"


@app.function(id="patterned", trigger=stepline.TriggerEvent("h/pattern", if_="event.data.s.matches(event.data.p)"))
async def patterned(ctx: stepline.Context) -> str:
    return "matched"


@app.function(id="always", trigger=stepline.TriggerEvent("h/div"))
async def always(ctx: stepline.Context) -> str:
    return "always"


@app.function(id="overflows", trigger=stepline.TriggerEvent("h/ovf", if_=f"event.data.n + {INT64_MAX} > 0"))
async def overflows(ctx: stepline.Context) -> str:
    return "overflowed"


@app.function(id="waiter", trigger=stepline.TriggerEvent("h/wait.start"))
async def waiter(ctx: stepline.Context) -> dict[str, Any]:
    got = await ctx.step.wait_for_event(
        "reply", event="h/reply", if_=f"async.data.n + {INT64_MAX} > event.data.floor", timeout="1h"
    )
    return {"got": None if got is None else got.data}


@app.function(
    id="cancellable",
    trigger=stepline.TriggerEvent("h/cancel.start"),
    cancel_on=[stepline.CancelOn("h/cancel.stop", if_="10 / async.data.d == 5")],
)
async def cancellable(ctx: stepline.Context) -> None:
    await ctx.step.sleep("long", "1h")


@app.function(id="after-stop", trigger=stepline.TriggerEvent("h/cancel.stop"))
async def after_stop(ctx: stepline.Context) -> str:
    return "stopped"


KEY = "10 / event.data.d"


@app.function(
    id="keyed",
    trigger=stepline.TriggerEvent("h/keys"),
    concurrency=[stepline.Concurrency(2, key=KEY)],
    throttle=stepline.Throttle(limit=100, period="1s", key=KEY),
    idempotency=f"string({KEY})",
    priority=stepline.Priority(run=KEY),
)
async def keyed(ctx: stepline.Context) -> str:
    return "keyed"


@app.function(id="echo", trigger=stepline.TriggerEvent("h/echo.*"))
async def echo(ctx: stepline.Context) -> dict[str, Any]:
    return {"name": ctx.event.name}


@app.function(
    id="long-keyed",
    trigger=stepline.TriggerEvent("h/long-keys"),
    concurrency=[stepline.Concurrency(2, key="event.data.pad")],
    throttle=stepline.Throttle(limit=100, period="1s", key="event.data.pad"),
    idempotency="event.data.pad",
)
async def long_keyed(ctx: stepline.Context) -> str:
    return "long-keyed"


@app.function(id="relay", trigger=stepline.TriggerEvent("h/relay"), retries=0)
async def relay(ctx: stepline.Context) -> None:
    await ctx.step.send_event("forward", {"name": "h/relayed", "data": {"s": "a\x00"}})


@app.function(id="returns-blob", trigger=stepline.TriggerEvent("h/blob"))
async def returns_blob(ctx: stepline.Context) -> Any:
    return ctx.event.data.get("blob")  # what a sender made large, returned as the run's output
