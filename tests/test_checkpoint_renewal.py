"""PostgreSQL: a saved step extends its run's lease when the heartbeat's renewal is due, and
leaves the run's queue row alone earlier in a lease."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import psycopg
import pytest

import stepline
from tests.helpers import send_and_wait

STEPS, STEP_SECONDS = 10, 0.5  # busy for 5 s, longer than the 3 s lease


async def test_checkpoints_renew_a_lease_the_heartbeat_cannot(
    make_pg_engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The heartbeat passes over the queue rows the writer holds (on a slow link, most of
    the time): a run whose steps keep it busy for longer than its lease, while no heartbeat
    renews it, is kept by its own checkpoints and ends with each step run once, never
    stopped for want of a renewal."""
    app = stepline.App("checkpoint-renewal")
    executions: Counter[int] = Counter()
    first_started = asyncio.Event()

    @app.function(id="busy", trigger=stepline.TriggerEvent("renewal/busy"), retries=0)
    async def busy(ctx: stepline.Context) -> int:
        for i in range(STEPS):

            async def body(i: int = i) -> int:
                executions[i] += 1
                first_started.set()
                await asyncio.sleep(STEP_SECONDS)
                return i

            await ctx.step.run(f"s{i}", body)
        return STEPS

    engine = await make_pg_engine(app, lease=3.0)
    caplog.set_level(logging.WARNING, logger="stepline")

    async def hold_renewals() -> None:
        # The heartbeat's connection is taken by a statement outlasting the run: every
        # renewal waits behind it, as if each had passed over the run's row.
        await first_started.wait()
        await engine.store.db.renew(lambda conn: conn.execute("SELECT pg_sleep(6)"))

    holding = asyncio.ensure_future(hold_renewals())
    try:
        done = await send_and_wait(engine, {"name": "renewal/busy", "data": {}}, timeout=60)
    finally:
        await holding
    assert done["status"] == "completed", done
    assert executions == Counter(range(STEPS)), executions
    stopped = [r.getMessage() for r in caplog.records if "stops on this worker" in r.getMessage()]
    assert not stopped, stopped


async def test_a_checkpoint_early_in_a_fresh_lease_leaves_the_queue_row_alone(make_pg_engine: Any, postgres_url: str) -> None:
    """Every saved step also updated its run's queue row, which cost W1 about 8 % of its
    throughput on PostgreSQL. A step saved early in a lease (here: the second of a long
    one; a worker's first checkpoint renews, how long one takes to commit being unknown
    until then) is written without it: the queue row's version is not the checkpoint's."""
    app = stepline.App("checkpoint-no-renewal")
    versions: list[tuple[str, str]] = []

    @app.function(id="three-steps", trigger=stepline.TriggerEvent("renewal/fresh"), retries=0)
    async def three_steps(ctx: stepline.Context) -> str:
        await ctx.step.run("first", lambda: "one")
        await ctx.step.run("second", lambda: "two")

        def look() -> str:  # the second step's checkpoint committed before this step begins
            with psycopg.connect(postgres_url) as conn:
                row = conn.execute(
                    "SELECT q.xmin::text, s.xmin::text FROM queue q JOIN steps s ON s.run_id = q.run_id "
                    "WHERE q.run_id = %s AND s.key = 'second'",
                    (ctx.run_id,),
                ).fetchone()
            assert row is not None
            versions.append((row[0], row[1]))
            return "three"

        return str(await ctx.step.run("look", look))

    engine = await make_pg_engine(app, lease=60.0)  # no heartbeat's turn before the run ends
    done = await send_and_wait(engine, {"name": "renewal/fresh", "data": {}}, timeout=30)
    assert done["status"] == "completed", done
    ((queue_version, step_version),) = versions
    assert queue_version != step_version, "the second step's checkpoint wrote the queue row"
