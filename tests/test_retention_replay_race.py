"""A replay or rerun that commits while a sweep deletes its source run keeps the event
(PostgreSQL, where the sweep writes on a connection of its own).

The replay read the old run and its event, then wrote the new run; a sweep that deleted
the old run meanwhile saw no other run pointing at the event and deleted it too. The new
run then pointed at no event: claims join runs with their events, so it was never claimed,
queued for ever. The replay now locks the run it copies, so the sweep waits for it (and
then sees the new run), or the replay finds the run gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest

import stepline
from stepline.engine import Engine
from tests.helpers import eventually, runs_for_event, wait_run
from tests.test_handoff import query

DAY_MS = 86_400_000


def _app() -> stepline.App:
    app = stepline.App("race")

    # A throttle makes creating the new run take a lock the sweep never needs: held from
    # outside, it parks the replay between its read and its commit.
    @app.function(id="race", trigger=stepline.TriggerEvent("race/go"), retries=0, throttle=stepline.Throttle(limit=1000, period=1))
    async def race(ctx: stepline.Context) -> None:
        await ctx.step.run("only", lambda: "done")
        if not ctx.event.data.get("ok"):
            raise RuntimeError("fails, to be rerun")

    return app


@pytest.mark.parametrize("action", ["replay", "rerun"])
async def test_a_replay_racing_a_sweep_keeps_the_event_of_its_new_run(
    make_pg_engine: Callable[..., Awaitable[Engine]], postgres_url: str, action: str
) -> None:
    app = _app()
    replaying = await make_pg_engine(app, retention_interval=0.0)
    sweeping = await make_pg_engine(app, run_worker=False, retention_interval=0.0)  # another process
    event_id = await replaying.send({"name": "race/go", "data": {}})
    (old,) = await runs_for_event(replaying, event_id)
    await wait_run(replaying, old["id"], "failed")
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # past its retention (7 d)
        conn.execute("UPDATE runs SET ended_at = ended_at - %s WHERE id = %s", (30 * DAY_MS, old["id"]))

    blocker = await psycopg.AsyncConnection.connect(postgres_url)
    await blocker.execute("LOCK TABLE flow_state IN EXCLUSIVE MODE")
    start: Any = replaying.replay if action == "replay" else replaying.rerun_from_failed_step
    replay = asyncio.ensure_future(start(old["id"]))

    async def replay_parked() -> bool:
        waiting = query(postgres_url, "SELECT COUNT(*) FROM pg_locks WHERE NOT granted AND relation = 'flow_state'::regclass")
        return waiting[0][0] > 0

    await eventually(replay_parked, what="the replay to wait for flow_state")
    sweep = asyncio.ensure_future(sweeping.retention.sweep(force=True))
    # Unfenced, the sweep deletes the old run and its event now; fenced, it waits for the replay.
    for _ in range(50):
        if not query(postgres_url, "SELECT 1 FROM events WHERE id = ?", (event_id,)) or sweep.done():
            break
        await asyncio.sleep(0.02)
    await blocker.rollback()
    await blocker.close()
    await sweep
    new = await replay
    new_id = new if isinstance(new, str) else new["id"]

    assert query(postgres_url, "SELECT COUNT(*) FROM runs r JOIN events e ON e.id = r.event_id WHERE r.id = ?", (new_id,)) == [(1,)]
    assert (await wait_run(replaying, new_id))["status"] == "failed"  # claimed and run again
