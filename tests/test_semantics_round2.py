"""What the docs promise of flow control and system events, on native functions:
priority behind a concurrency limit, future-dated events, function.finished and
function.cancelled, batchEvents.if, sleeps and waits side by side."""

from __future__ import annotations

import asyncio
from typing import Any

import stepline
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
