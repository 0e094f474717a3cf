"""When a completed step's checkpoint is written.

The result goes back to the function at once; the checkpoint is committed before the
run's next step begins (or on the next turn of the loop, whichever comes first), and a
function that returns right after its last step has that step written by the finish's
own transaction. These tests read the database from outside the engine while the
function runs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import stepline
from tests.helpers import runs_for_event, wait_run
from tests.test_handoff import query


def saved_steps(db_url: str, run_id: str) -> list[tuple[Any, ...]]:
    return query(db_url, "SELECT key, status, output FROM steps WHERE run_id = ? ORDER BY seq", (run_id,))


class SubmitCounter:
    """Counts checkpoints submitted on their own (not carried by a finish)."""

    def __init__(self, engine: Any) -> None:
        self.count = 0
        store = engine.store
        original = store.checkpoint_soon

        def counting(*args: Any) -> Any:
            self.count += 1
            return original(*args)

        store.checkpoint_soon = counting


async def test_a_step_is_committed_before_the_next_step_begins(make_engine, db_url) -> None:
    app = stepline.App("ckpt-order")
    seen_by_second: list[list[tuple[Any, ...]]] = []

    @app.function(id="two", trigger=stepline.TriggerEvent("ckpt/two"), retries=0)
    async def two(ctx: stepline.Context) -> str:
        first = await ctx.step.run("first", lambda: "one")
        return await ctx.step.run("second", lambda: seen_by_second.append(saved_steps(db_url, ctx.run_id)) or first + "+two")

    engine = await make_engine(app)
    counter = SubmitCounter(engine)
    run_id = (await runs_for_event(engine, await engine.send({"name": "ckpt/two", "data": {}})))[0]["id"]
    done = await wait_run(engine, run_id)
    assert done["status"] == "completed" and done["output"] == "one+two"
    assert seen_by_second == [[("first", "completed", '"one"')]]  # durable before the second began
    assert saved_steps(db_url, run_id) == [("first", "completed", '"one"'), ("second", "completed", '"one+two"')]
    assert counter.count == 1  # the first on its own; the second rode with the finish


async def test_the_last_step_is_written_with_the_finish(make_engine, db_url) -> None:
    app = stepline.App("ckpt-last")

    @app.function(id="one", trigger=stepline.TriggerEvent("ckpt/one"), retries=0)
    async def one(ctx: stepline.Context) -> dict[str, int]:
        return await ctx.step.run("only", lambda: {"n": ctx.event.data["n"]})

    engine = await make_engine(app)
    counter = SubmitCounter(engine)
    ids = await engine.send_many([{"name": "ckpt/one", "data": {"n": n}} for n in range(20)])
    for n, event_id in enumerate(ids):
        run_id = (await runs_for_event(engine, event_id))[0]["id"]
        done = await wait_run(engine, run_id)
        assert done["status"] == "completed" and done["output"] == {"n": n}
        assert saved_steps(db_url, run_id) == [("only", "completed", f'{{"n":{n}}}')]
    assert counter.count == 0


async def test_a_step_followed_by_other_awaits_is_committed_on_the_next_turn(make_engine, db_url) -> None:
    app = stepline.App("ckpt-turn")
    in_pause = asyncio.Event()
    resume = asyncio.Event()

    @app.function(id="pause", trigger=stepline.TriggerEvent("ckpt/pause"), retries=0)
    async def pause(ctx: stepline.Context) -> str:
        value = await ctx.step.run("before", lambda: "saved")
        in_pause.set()
        await resume.wait()  # not a step: the run holds its slot, the checkpoint must not wait for it
        return value

    engine = await make_engine(app)
    run_id = (await runs_for_event(engine, await engine.send({"name": "ckpt/pause", "data": {}})))[0]["id"]
    await asyncio.wait_for(in_pause.wait(), 10)
    for _ in range(200):
        if saved_steps(db_url, run_id):
            break
        await asyncio.sleep(0.01)
    assert saved_steps(db_url, run_id) == [("before", "completed", '"saved"')]
    resume.set()
    assert (await wait_run(engine, run_id))["output"] == "saved"


async def test_steps_before_a_failure_are_saved_before_the_retry(make_engine, db_url) -> None:
    app = stepline.App("ckpt-fail")
    attempts: list[list[tuple[Any, ...]]] = []

    @app.function(id="flaky", trigger=stepline.TriggerEvent("ckpt/flaky"), retries=1)
    async def flaky(ctx: stepline.Context) -> str:
        value = await ctx.step.run("kept", lambda: "kept")
        if ctx.attempt == 0:
            raise RuntimeError("the function body fails once, after its step")
        attempts.append(saved_steps(db_url, ctx.run_id))
        return value

    engine = await make_engine(app)
    run_id = (await runs_for_event(engine, await engine.send({"name": "ckpt/flaky", "data": {}})))[0]["id"]
    done = await wait_run(engine, run_id)
    assert done["status"] == "completed" and done["output"] == "kept"
    assert attempts == [[("kept", "completed", '"kept"')]]  # the retry replayed it, not re-ran it
