"""PostgreSQL across a slow link: runs finish, each step once, with leases short for the link."""

from __future__ import annotations

import logging
from collections import Counter

import psycopg
import pytest

import stepline
from stepline.engine import Engine
from stepline.store import open_store
from tests.chaos.proxy import CuttingProxy
from tests.conftest import TEST_SETTINGS
from tests.helpers import eventually

RUNS, STEPS = 20, 5


async def test_runs_finish_each_step_once_over_a_200_ms_link_with_a_3_s_lease(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With 200 ms round trips and a 3 s lease, 20 runs of 5 steps never finished: a group
    commit cost two round trips per operation and held the runs' queue rows for seconds, the
    heartbeat passed over those rows (and took five round trips itself), so leases ran out,
    the worker stopped its runs, released them one slow commit after another, claimed them
    again and lost them again. Every run now ends with each step's body run once, and no
    run stops for want of a renewal."""
    proxy = CuttingProxy("127.0.0.1", 5432, delay=0.1).start()  # each way: 200 ms round trips
    url = postgres_url.replace(":5432/", f":{proxy.port}/")
    executions: Counter[str] = Counter()
    app = stepline.App("slow-link")

    @app.function(id="five-steps", trigger=stepline.TriggerEvent("slow/job"))
    async def five_steps(ctx: stepline.Context) -> int:
        total = 0
        for i in range(STEPS):

            async def body(i: int = i) -> int:
                executions[f"{ctx.run_id}:{i}"] += 1
                return i

            total += await ctx.step.run(f"s{i}", body)
        return total

    def ended() -> list[tuple[str, str]] | None:
        with psycopg.connect(postgres_url) as conn:  # not through the slow link
            rows = conn.execute("SELECT status, output FROM runs WHERE function_id = 'five-steps'").fetchall()
        return rows if len(rows) == RUNS and all(status != "queued" and status != "running" for status, _ in rows) else None

    caplog.set_level(logging.WARNING, logger="stepline")
    assert TEST_SETTINGS.lease == 3.0
    engine = Engine(open_store(url, migrate_now=False), TEST_SETTINGS.replace(db=url), [app])
    await engine.start()
    try:
        await engine.send_many([{"name": "slow/job", "data": {"n": n}} for n in range(RUNS)])
        rows = await eventually(ended, timeout=120, interval=0.5, what="every run to end")
    finally:
        await engine.stop(grace=1.0)
        proxy.stop()
    assert rows == [("completed", "10")] * RUNS
    assert len(executions) == RUNS * STEPS and set(executions.values()) == {1}, executions
    stopped = [r.getMessage() for r in caplog.records if "stops on this worker" in r.getMessage()]
    assert not stopped, stopped[:3]
