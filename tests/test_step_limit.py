"""A run may reach ``STEPLINE_MAX_STEPS_PER_RUN`` steps (Inngest's 1,000 by default): a new step
past it fails the run at once, naming the limit and the fix, so a loop of steps cannot grow a
run's journal (and every replay's reads) without bound. Saved steps always replay."""

from __future__ import annotations

from typing import Any

import pytest

import stepline
from tests.helpers import runs_for_event, send_and_wait, wait_run
from tests.inngest_apps import py_app
from tests.inngest_apps.harness import ThreadServer, free_port, stepline_server


def _looping_app(calls: list[int]) -> stepline.App:
    app = stepline.App("t")

    @app.function(id="loop", trigger=stepline.TriggerEvent("t/loop"), retries=3)
    async def loop(ctx: stepline.Context) -> int:
        calls.append(1)
        n = int(ctx.event.data["n"])
        for i in range(n):
            await ctx.step.run(f"item-{i}", lambda i=i: i)
        return n

    @app.function(id="across", trigger=stepline.TriggerEvent("t/across"), retries=3)
    async def across(ctx: stepline.Context) -> str:
        """Steps before a sleep are replayed after it, and count towards the limit."""
        for i in range(3):
            await ctx.step.run(f"before-{i}", lambda i=i: i)
        await ctx.step.sleep("nap", 0.05)
        for i in range(3):
            await ctx.step.run(f"after-{i}", lambda i=i: i)
        return "done"

    return app


async def test_a_loop_of_steps_past_the_limit_fails_its_run_once_naming_the_fix(make_engine: Any) -> None:
    calls: list[int] = []
    engine = await make_engine(_looping_app(calls), max_steps_per_run=5)
    run = await send_and_wait(engine, {"name": "t/loop", "data": {"n": 50}}, "failed")
    assert len(calls) == 1  # not retried: more attempts would only reach the same step
    assert [s["id"] for s in run["steps"]] == [f"item-{i}" for i in range(5)]
    assert all(s["status"] == "completed" for s in run["steps"])
    message = run["error"]["message"]
    assert run["error"]["name"] == "LimitError", run["error"]
    assert "'item-5' would be step 6" in message and "over the limit of 5 steps a run" in message
    assert "STEPLINE_MAX_STEPS_PER_RUN" in message and "fan out" in message


async def test_a_run_of_exactly_the_limit_completes(make_engine: Any) -> None:
    calls: list[int] = []
    engine = await make_engine(_looping_app(calls), max_steps_per_run=5)
    run = await send_and_wait(engine, {"name": "t/loop", "data": {"n": 5}}, "completed")
    assert run["output"] == 5 and len(run["steps"]) == 5


@pytest.mark.parametrize(("limit", "status"), [(7, "completed"), (6, "failed")])
async def test_steps_replayed_after_a_suspension_count_towards_the_limit(make_engine: Any, limit: int, status: str) -> None:
    """Three steps, a sleep, three more: seven in all, counted across the two executions."""
    engine = await make_engine(_looping_app([]), max_steps_per_run=limit)
    run = await send_and_wait(engine, {"name": "t/across"}, status)
    saved = [s["id"] for s in run["steps"]]
    if status == "completed":
        assert run["output"] == "done" and len(saved) == 7
    else:
        assert saved == ["before-0", "before-1", "before-2", "nap", "after-0", "after-1"]
        assert "'after-2' would be step 7" in run["error"]["message"]


async def test_saved_steps_replay_after_the_limit_is_lowered(make_engine: Any) -> None:
    """An operator lowering the limit does not break runs already past it: their saved steps
    replay, and only a new step is refused."""
    first = await make_engine(_looping_app([]), max_steps_per_run=100)
    asleep = await first.send({"name": "t/across"})
    await first.stop(grace=0.0)  # its run may be mid-sleep or done: either way its steps are saved
    second = await make_engine(_looping_app([]), max_steps_per_run=4)
    (started,) = await runs_for_event(second, asleep)
    run = await wait_run(second, started["id"], "completed", "failed")
    saved = [s["id"] for s in run["steps"]]
    assert saved[:4] == ["before-0", "before-1", "before-2", "nap"]
    if run["status"] == "failed":  # the first engine stopped before the steps after the sleep
        assert "over the limit of 4 steps a run" in run["error"]["message"]
        assert len(saved) == 4
    else:
        assert run["status"] == "completed" and len(saved) == 7


async def test_an_sdk_apps_steps_past_the_limit_fail_its_run(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python SDK's app: a sleep and a loop of three steps, then a parallel block of three,
    past a limit of four. The block is refused whole before any of it runs (as Inngest refuses a parallel
    plan past its limit), and the run fails."""
    async with stepline_server(db_url, max_steps_per_run=4) as server:
        monkeypatch.setenv("INNGEST_DEV", server.url)
        rec = py_app.Recorder()
        port = free_port()
        with ThreadServer(py_app.build(rec), port):
            await server.sync(f"http://127.0.0.1:{port}/api/inngest")
            run = await server.finished((await server.run_for(await server.send("py/repeated"), py_app.APP_ID + "-repeated"))["id"])
    assert run["status"] == "failed", run
    assert "would bring run" in run["error"]["message"] and "to 7 steps" in run["error"]["message"], run["error"]
    assert "over the limit of 4 steps a run" in run["error"]["message"], run["error"]
    assert "STEPLINE_MAX_STEPS_PER_RUN" in run["error"]["message"]
    assert len(run["steps"]) == 4  # a sleep and the loop's three; the parallel block's three were refused together
    assert [rec.counts[f"repeated.part.{i}"] for i in range(3)] == [0, 0, 0]  # none of them ran in the app
