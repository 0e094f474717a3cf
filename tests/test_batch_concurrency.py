"""A batch that fills while its function's concurrency is full waits for a slot like any run:
filling makes it due, never lets it past the limit."""

from __future__ import annotations

import asyncio
from typing import Any

import stepline
from tests.helpers import eventually, runs_for_event, wait_run


async def test_a_batch_that_fills_behind_a_full_concurrency_limit_waits_for_a_slot(make_engine: Any) -> None:
    app = stepline.App("t")
    gate = asyncio.Event()
    running: list[int] = []
    peak = [0]

    @app.function(
        id="batched",
        trigger=stepline.TriggerEvent("t/b"),
        batch_events=stepline.Batch(max_size=2, timeout="1h"),
        concurrency=stepline.Concurrency(limit=1),
    )
    async def batched(ctx: stepline.Context) -> int:
        running.append(1)
        peak[0] = max(peak[0], len(running))
        try:
            await ctx.step.run("work", gate.wait)
        finally:
            running.pop()
        return len(ctx.events)

    engine = await make_engine(app)
    first = [await engine.send({"name": "t/b", "data": {"i": i}}) for i in range(2)]  # fills: starts, holds the slot
    (run_a,) = await runs_for_event(engine, first[0])
    await eventually(lambda: running, what="the first batch to start")
    second = [await engine.send({"name": "t/b", "data": {"i": i}}) for i in range(2, 4)]  # fills behind the limit
    (run_b,) = await runs_for_event(engine, second[0])
    await asyncio.sleep(1.0)  # time for a claim that ignored the limit to start it
    assert (await engine.get_run(run_b["id"]))["status"] == "queued" and peak[0] == 1
    gate.set()
    assert (await wait_run(engine, run_a["id"], "completed"))["output"] == 2
    assert (await wait_run(engine, run_b["id"], "completed"))["output"] == 2
    assert peak[0] == 1
