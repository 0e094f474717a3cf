"""Runs cancelled while they wait for their throttle slot give it back: the runs behind move up
as the rule says (``flow.give_back_slots``), checked on random lines against the rule itself,
with and without start deadlines."""

from __future__ import annotations

import random
from typing import Any

import pytest

import stepline
from tests.helpers import runs_for_event, wait_run
from tests.test_handoff import query

HOUR = 3600 * 1000


def _app(start_timeout: str | None) -> stepline.App:
    app = stepline.App("t")

    @app.function(
        id="line",
        trigger=stepline.TriggerEvent("t/line"),
        throttle=stepline.Throttle(limit=1, period="1h", key="event.data.user"),
        cancel_on=[stepline.CancelOn("t/line.stop", match="data.group")],
        timeouts=stepline.Timeouts(start=start_timeout) if start_timeout else None,
    )
    async def line(ctx: stepline.Context) -> None:
        await ctx.step.sleep("nap", "1h")

    return app


def _waiting(db_url: str) -> dict[str, tuple[int, int, int | None]]:
    """run id -> (throttle slot, due, start deadline) of every run waiting in the line."""
    rows = query(db_url, "SELECT run_id, throttle_slot, due_at, start_by FROM queue WHERE throttle_slot IS NOT NULL")
    return {str(r[0]): (int(r[1]), int(r[2]), None if r[3] is None else int(r[3])) for r in rows}


def _expected(before: dict[str, tuple[int, int, int | None]], gone: set[str]) -> dict[str, tuple[int, int, int | None]]:
    """The rule, row by row: behind the first slot given back, the n-th run (by slot, then id)
    takes the n-th smallest slot of the line; its due time follows its slot unless its start
    deadline comes first."""
    slots = sorted(before[r][0] for r in gone)
    stay = sorted(((v[0], r) for r, v in before.items() if r not in gone))
    behind = [(slot, r) for slot, r in stay if slot > slots[0]]
    line = sorted(slots + [slot for slot, _ in behind])
    out = {r: before[r] for _, r in stay}
    for (old, run), new in zip(behind, line):
        _, due, start_by = before[run]
        if start_by is not None:
            deadline = start_by + 1
            due = min(new, deadline) if due == min(old, deadline) else due
        elif due == old:
            due = new
        out[run] = (new, due, start_by)
    return out


async def _line(engine: Any, n: int, groups: int, rng: random.Random, user: str = "u") -> list[tuple[str, str]]:
    """(run id, group) of ``n`` runs of ``user`` waiting in line behind one that started."""
    first = await engine.send({"name": "t/line", "data": {"user": user, "group": "started"}})
    await wait_run(engine, (await runs_for_event(engine, first))[0]["id"], "sleeping")  # its slot is spent
    groups_sent = [f"g{rng.randrange(groups)}" for _ in range(n)]
    ids = await engine.send_many([{"name": "t/line", "data": {"user": user, "group": g}} for g in groups_sent])
    return [((await runs_for_event(engine, event_id))[0]["id"], g) for event_id, g in zip(ids, groups_sent)]


@pytest.mark.parametrize("start_timeout", [None, "30h"])
async def test_cancelled_runs_give_their_slots_back_as_the_rule_says(make_engine: Any, start_timeout: str | None) -> None:
    """40 runs in line over 8 groups; groups are cancelled one at a time (each a few runs
    ending together). With a 30 h start timeout the runs past 30 slots meet their deadline first."""
    rng = random.Random(20261207)
    engine = await make_engine(_app(start_timeout))
    runs = await _line(engine, 40, 8, rng)
    url = engine.settings.db
    for group in rng.sample([f"g{i}" for i in range(8)], 5):
        before = _waiting(url)
        members = {run_id for run_id, g in runs if g == group and run_id in before}
        if not members:
            continue
        await engine.send({"name": "t/line.stop", "data": {"group": group}})
        for run_id in members:
            await wait_run(engine, run_id, "cancelled")
        assert _waiting(url) == _expected(before, members), group
    # The throttle's state stepped back a slot per run given back: a newcomer queues right
    # behind the last run still in line, not behind the ones that left.
    last = max(slot for slot, _, _ in _waiting(url).values())
    newcomer = (await runs_for_event(engine, await engine.send({"name": "t/line", "data": {"user": "u", "group": "new"}})))[0]
    assert _waiting(url)[newcomer["id"]][0] == last + HOUR
