"""A stopping worker starts nothing new: runs a claim brings back after the stop began go
back to the queue, not into steps that the stop then cuts (or leaves leased to a worker
that is gone)."""

from __future__ import annotations

import asyncio
from typing import Any

import stepline
from tests.helpers import runs_for_event
from tests.test_handoff import query


async def test_runs_claimed_while_the_worker_stops_are_handed_back_unstarted(make_engine: Any, db_url: str) -> None:
    app = stepline.App("stop-claim")
    started: list[str] = []

    @app.function(id="stop-claim", trigger=stepline.TriggerEvent("stop/claim"), retries=0)
    async def fn(ctx: stepline.Context) -> None:
        async def body() -> str:
            started.append(ctx.run_id)
            await asyncio.sleep(0.5)
            return "done"

        await ctx.step.run("s1", body)

    engine = await make_engine(app, handoff=False)  # through the queue: a claim takes the run
    worker = engine.worker
    assert worker is not None
    store = engine.store
    claim = store.claim
    claimed, let_go = asyncio.Event(), asyncio.Event()

    async def held_claim(*args: Any, **kwargs: Any) -> Any:
        result = await claim(*args, **kwargs)
        if result[0]:  # the claim committed its leases; its answer arrives once the stop began
            claimed.set()
            await let_go.wait()
        return result

    store.claim = held_claim  # type: ignore[method-assign]
    event_id = await engine.send({"name": "stop/claim", "data": {}})
    await asyncio.wait_for(claimed.wait(), 10)
    stopping = asyncio.create_task(worker.stop(grace=5.0))
    await asyncio.sleep(0)  # the stop has begun
    let_go.set()
    await stopping
    await asyncio.sleep(0.2)  # what a wrongly started run would do meanwhile

    (run,) = await runs_for_event(engine, event_id)
    assert started == []
    assert query(db_url, "SELECT lease_owner FROM queue WHERE run_id = ?", (run["id"],)) == [(None,)]
