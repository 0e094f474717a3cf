"""Concurrent small ingests in one process (a server's requests, one event each) each hand
their run to the worker: an offer holds only the slots its ingest can fill."""

from __future__ import annotations

import asyncio

import stepline
from tests.helpers import wait_run
from tests.test_handoff import HeldClaims, run_ids_of, settle


async def test_concurrent_single_event_sends_all_start_at_ingest(make_engine, db_url) -> None:
    app = stepline.App("handoff-concurrent")

    @app.function(id="each", trigger=stepline.TriggerEvent("handoff/each"), retries=0)
    async def each(ctx: stepline.Context) -> int:
        return int(ctx.event.data["n"])

    engine = await make_engine(app, concurrency=50)
    await settle(engine)
    claims = HeldClaims(engine, held=False)
    event_ids = await asyncio.gather(*(engine.send({"name": "handoff/each", "data": {"n": n}}) for n in range(16)))
    runs = [run_ids_of(db_url, e)[0] for e in event_ids]
    assert [(await wait_run(engine, r))["output"] for r in runs] == list(range(16))
    assert claims.claimed == []  # every run was taken at its ingest, none through the queue


async def test_an_offer_holds_the_slots_its_events_can_fill(make_engine) -> None:
    app = stepline.App("handoff-slots")

    @app.function(id="a", trigger=stepline.TriggerEvent("handoff/slots"), retries=0)
    async def a(ctx: stepline.Context) -> None:
        return None

    @app.function(id="b", trigger=stepline.TriggerEvent("handoff/slots"), retries=0)
    async def b(ctx: stepline.Context) -> None:
        return None

    engine = await make_engine(app, concurrency=50)
    await settle(engine)
    one = engine.worker.offer(1)
    three = engine.worker.offer(3)
    assert (one.limit, three.limit) == (2, 6)  # one run of each function per event
    rest = engine.worker.offer()
    assert rest is not None and rest.limit == 50 - 2 - 6
    for offer in (one, three, rest):
        engine.worker.adopt(offer, committed=False)
