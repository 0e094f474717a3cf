"""PostgreSQL: the tables that grow with every run get fresh planner statistics after a
burst, as the queue does, so statements prepared while they were small (a journal read,
a run's end) are planned again for their size instead of scanning them whole. Where
autovacuum is off, or has not come round yet, nothing else would."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import stepline
from stepline.store import postgres
from tests.helpers import eventually


def analysed(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT relname, last_analyze FROM pg_stat_user_tables WHERE relname IN ('queue', 'runs', 'events', 'steps')"
        ).fetchall()
    return {name: last for name, last in rows}


async def test_a_burst_of_runs_refreshes_the_statistics_of_the_tables_that_grow(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, make_pg_engine: Any
) -> None:
    monkeypatch.setattr(postgres, "ANALYZE_AFTER_RUNS", 50)
    app = stepline.App("growth")

    @app.function(id="grow", trigger=stepline.TriggerEvent("growth/go"))
    async def grow(ctx: stepline.Context) -> None:
        return None

    engine = await make_pg_engine(app, run_worker=False)
    await engine.send_many([{"name": "growth/go", "data": {"i": i}} for i in range(40)])
    assert set(analysed(postgres_url).values()) == {None}  # under the threshold
    await engine.send_many([{"name": "growth/go", "data": {"i": i}} for i in range(40)])

    async def all_analysed() -> bool:
        found = analysed(postgres_url)
        return len(found) == 4 and all(last is not None for last in found.values())

    await eventually(all_analysed, timeout=10, what="ANALYZE of queue, runs, events and steps after 80 new runs")
