"""Steps: memoized replay, loops, parallel steps, sync code, JSON results."""

from __future__ import annotations

import asyncio
import collections
import threading

import stepline
from tests.helpers import runs_for_event, send_and_wait, wait_run


async def test_committed_steps_run_once_across_a_suspension(make_engine) -> None:
    app = stepline.App("t")
    counts: collections.Counter[str] = collections.Counter()

    def count(name: str) -> str:
        counts[name] += 1
        return name

    @app.function(id="f", trigger=stepline.TriggerEvent("t/go"))
    async def f(ctx: stepline.Context) -> list:
        a = await ctx.step.run("a", count, "a")
        await ctx.step.sleep("nap", "50ms")  # suspends: the run resumes by replay
        b = await ctx.step.run("b", count, "b")
        await ctx.step.sleep("nap-2", 0.05)
        c = await ctx.step.run("c", count, "c")
        return [a, b, c]

    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "t/go"})
    assert run["status"] == "completed", run["error"]
    assert run["output"] == ["a", "b", "c"]
    assert counts == {"a": 1, "b": 1, "c": 1}
    assert [s["id"] for s in run["steps"]] == ["a", "nap", "b", "nap-2", "c"]


async def test_step_ids_repeat_in_loops_with_an_occurrence_counter(make_engine) -> None:
    app = stepline.App("t")
    calls: list[int] = []

    @app.function(id="loop", trigger=stepline.TriggerEvent("t/loop"))
    async def loop(ctx: stepline.Context) -> int:
        total = 0
        for page in range(4):
            total += await ctx.step.run("fetch-page", lambda p=page: calls.append(p) or p * 10)
            if page == 1:
                await ctx.step.sleep("pause", 0.02)
        return total

    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "t/loop"})
    assert run["output"] == 60
    assert calls == [0, 1, 2, 3]
    assert [s["id"] for s in run["steps"]] == ["fetch-page", "fetch-page:1", "pause", "fetch-page:2", "fetch-page:3"]


async def test_parallel_steps_with_gather(make_engine) -> None:
    app = stepline.App("t")
    running = 0
    peak = 0

    async def work(n: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        return n * n

    @app.function(id="par", trigger=stepline.TriggerEvent("t/par"))
    async def par(ctx: stepline.Context) -> list:
        squares = await asyncio.gather(*(ctx.step.run("square", work, n) for n in range(5)))
        await ctx.step.sleep("after", 0.01)
        return list(squares)

    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "t/par"})
    assert run["output"] == [0, 1, 4, 9, 16]
    assert peak == 5  # the bodies overlapped
    assert sorted(s["id"] for s in run["steps"] if s["kind"] == "run") == ["square", "square:1", "square:2", "square:3", "square:4"]


async def test_sync_handler_and_sync_step_bodies_run_off_the_event_loop(make_engine) -> None:
    app = stepline.App("t")
    threads: list[str] = []
    loop_thread = threading.current_thread().name

    def body(x: int) -> int:
        threads.append(threading.current_thread().name)
        return x + 1

    @app.function(id="sync", trigger=stepline.TriggerEvent("t/sync"))
    def sync_handler(ctx: stepline.SyncContext) -> dict:
        threads.append(threading.current_thread().name)
        one = ctx.step.run("one", body, 1)
        ctx.step.sleep("nap", 0.02)
        two = ctx.step.run("two", body, one)
        ctx.set_progress(50, "half")
        return {"two": two, "attempt": ctx.attempt}

    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "t/sync"})
    assert run["status"] == "completed", run["error"]
    assert run["output"] == {"two": 3, "attempt": 0}
    assert threads and all(name != loop_thread for name in threads)


async def test_a_result_that_is_not_json_fails_the_step_with_a_clear_error(make_engine) -> None:
    app = stepline.App("t")

    @app.function(id="bad", trigger=stepline.TriggerEvent("t/bad"), retries=2)
    async def bad(ctx: stepline.Context) -> None:
        await ctx.step.run("obj", lambda: object())

    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "t/bad"})
    assert run["status"] == "failed"
    step = run["steps"][0]
    assert step["attempts"] == 1  # not retried: it would fail the same way
    assert "JSON-serialisable" in step["error"]["message"]


async def test_results_survive_an_engine_restart_mid_run(make_engine, db_url) -> None:
    app = stepline.App("t")
    counts: collections.Counter[str] = collections.Counter()
    gate = asyncio.Event()

    @app.function(id="slow", trigger=stepline.TriggerEvent("t/slow"))
    async def slow(ctx: stepline.Context) -> str:
        await ctx.step.run("first", lambda: counts.update(["first"]) or 1)
        await ctx.step.sleep("wait", "300ms")
        await ctx.step.run("second", lambda: counts.update(["second"]) or 2)
        return "done"

    first = await make_engine(app)
    event_id = await first.send({"name": "t/slow"})
    run = (await runs_for_event(first, event_id))[0]
    await wait_run(first, run["id"], "sleeping")
    await first.stop()
    gate.set()
    second = await make_engine(app)
    done = await wait_run(second, run["id"])
    assert done["status"] == "completed"
    assert counts == {"first": 1, "second": 1}
