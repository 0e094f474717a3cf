"""Cron: one run per tick across processes sharing a database; one catch-up after downtime."""

from __future__ import annotations

import stepline
from stepline.store import now_ms
from tests.helpers import eventually


def cron_app(schedule: str) -> stepline.App:
    app = stepline.App("cron")

    @app.function(id="tick", trigger=stepline.TriggerCron(schedule))
    async def tick(ctx: stepline.Context) -> int:
        return int(ctx.event.data["tick"])

    return app


async def test_each_tick_starts_exactly_one_run_with_two_workers(make_engine) -> None:
    schedule = "* * * * * */1"  # every second (croniter's sixth field is seconds)
    first = await make_engine(cron_app(schedule))
    await make_engine(cron_app(schedule))  # a second process on the same database

    async def three_ticks() -> list:
        runs = [r for r in await first.list_runs(function_id="tick") if r["status"] == "completed"]
        return runs if len(runs) >= 3 else []

    runs = await eventually(three_ticks, timeout=20, what="three cron runs")
    ticks = [r["output"] for r in runs]
    assert len(ticks) == len(set(ticks)), f"a tick started more than one run: {ticks}"
    events = [(await first.store.get_event(r["event_id"]))["name"] for r in runs]
    assert set(events) == {"stepline/scheduled.timer"}


async def test_missed_ticks_collapse_into_one_catch_up_run(make_engine) -> None:
    schedule = "0 0 1 1 *"  # once a year: only the catch-up can fire during the test
    engine = await make_engine(cron_app(schedule), run_worker=False)
    hour_ago = now_ms() - 3600_000
    await engine.store.db.write(lambda conn: conn.execute("UPDATE cron_schedules SET next_tick = ?", (hour_ago,)))
    worker = await make_engine(cron_app(schedule))

    async def one_run() -> list:
        return await worker.list_runs(function_id="tick")

    runs = await eventually(one_run, what="the catch-up run")
    # The catch-up run moved the next tick past now in the same commit: the missed hour
    # starts no burst (no other tick is due), and one run is all there is.
    schedules = await worker.store.cron_schedules(["tick"])
    assert schedules[0]["next_tick"] > now_ms()
    assert len(await worker.list_runs(function_id="tick")) == 1
    assert runs[0]["status"] in ("queued", "running", "completed")
