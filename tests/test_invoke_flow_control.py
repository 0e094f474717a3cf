"""An invoked run meets the invoked function's flow control, as an event's run does; an
invoke whose event starts no run fails at once, naming the function and the rule."""

from __future__ import annotations

import asyncio
from typing import Any

import stepline
from tests.helpers import eventually, send_and_wait, wait_run


async def _invoke(ctx: stepline.Context, step_id: str, function: str, data: dict[str, Any]) -> Any:
    """The invoked run's output, or the invoke's error message (a long timeout: a skipped
    invoke that waited for it would hold the test)."""
    try:
        return await ctx.step.invoke(step_id, function=function, data=data, timeout="1h")
    except stepline.StepError as exc:
        return f"{exc.name}: {exc.error_message}"


async def test_an_invoke_over_the_rate_limit_fails_at_once_naming_the_rule(make_engine) -> None:
    app = stepline.App("t")

    @app.function(
        id="rate-limited",
        trigger=stepline.TriggerEvent("t/rl"),
        rate_limit=stepline.RateLimit(limit=1, period="1m", key="event.data.user"),
    )
    async def limited(ctx: stepline.Context) -> str:
        return f"ran for {ctx.event.data['user']}"

    @app.function(id="invoker", trigger=stepline.TriggerEvent("t/go"))
    async def invoker(ctx: stepline.Context) -> list:
        return [
            await _invoke(ctx, "first", "rate-limited", {"user": "u1"}),
            await _invoke(ctx, "second", "rate-limited", {"user": "u1"}),
            await _invoke(ctx, "other-user", "rate-limited", {"user": "u2"}),
        ]

    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "t/go"})
    assert run["status"] == "completed", run["error"]
    first, second, other = run["output"]
    assert first == "ran for u1" and other == "ran for u2"
    assert second.startswith("InvokeSkipped: invoke: function 'rate-limited' started no run: its rate limit (1 per 60s")
    assert "its rate limit (1 per 60s, key event.data.user = 'u1') is used up" in second
    assert len(await engine.list_runs(function_id="rate-limited")) == 2
    # The invoke's event says why it started nothing, as a sent event would.
    invoked = await engine.store.list_events(name="stepline/function.invoked")
    assert sorted(str(e["skipped"]) for e in invoked) == ["{'rate-limited': 'rate_limited'}", "{}", "{}"]


async def test_an_invoke_reusing_an_idempotency_key_fails_at_once(make_engine) -> None:
    app = stepline.App("t")

    @app.function(id="idem", trigger=stepline.TriggerEvent("t/idem"), idempotency="event.data.key")
    async def idem(ctx: stepline.Context) -> str:
        return f"charged {ctx.event.data['key']}"

    @app.function(id="invoker", trigger=stepline.TriggerEvent("t/go"))
    async def invoker(ctx: stepline.Context) -> list:
        return [
            await _invoke(ctx, "first", "idem", {"key": "k1"}),
            await _invoke(ctx, "again", "idem", {"key": "k1"}),
        ]

    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "t/go"})
    assert run["status"] == "completed", run["error"]
    first, again = run["output"]
    assert first == "charged k1"
    assert again.startswith("InvokeSkipped: invoke: function 'idem' started no run: its idempotency key")
    assert "its idempotency key (event.data.key = 'k1') already started a run in the last 24 h" in again
    # Invokes and events share the key: an event with it is skipped too.
    event_id = await engine.send({"name": "t/idem", "data": {"key": "k1"}})
    assert (await engine.store.get_event(event_id))["skipped"] == {"idem": "idempotent"}
    assert len(await engine.list_runs(function_id="idem")) == 1


async def test_parallel_invokes_of_a_singleton_in_skip_mode_start_one_run(make_engine) -> None:
    app = stepline.App("t")

    @app.function(
        id="single-skip",
        trigger=stepline.TriggerEvent("t/single"),
        singleton=stepline.Singleton(key="event.data.k", mode="skip"),
    )
    async def single(ctx: stepline.Context) -> str:
        return "ran"

    @app.function(id="invoker", trigger=stepline.TriggerEvent("t/go"))
    async def invoker(ctx: stepline.Context) -> list:
        return list(await asyncio.gather(
            _invoke(ctx, "a", "single-skip", {"k": "same"}), _invoke(ctx, "b", "single-skip", {"k": "same"})
        ))

    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "t/go"})
    assert run["status"] == "completed", run["error"]
    assert run["output"][0] == "ran"
    assert run["output"][1] == (
        "InvokeSkipped: invoke: function 'single-skip' started no run: "
        "a run with key event.data.k = 'same' is in progress (singleton mode 'skip')"
    )
    assert len(await engine.list_runs(function_id="single-skip")) == 1


async def test_an_invoke_of_a_singleton_in_cancel_mode_cancels_the_earlier_invoked_run(make_engine) -> None:
    app = stepline.App("t")

    @app.function(
        id="single-cancel",
        trigger=stepline.TriggerEvent("t/single"),
        singleton=stepline.Singleton(key="event.data.k", mode="cancel"),
    )
    async def single(ctx: stepline.Context) -> str:
        await ctx.step.wait_for_event("release", event="t/release", timeout="1h")
        return f"ran for {ctx.event.data['who']}"

    @app.function(id="invoker", trigger=stepline.TriggerEvent("t/go"))
    async def invoker(ctx: stepline.Context) -> Any:
        return await _invoke(ctx, "call", "single-cancel", {"k": "same", "who": ctx.event.data["who"]})

    engine = await make_engine(app)
    first = await engine.send({"name": "t/go", "data": {"who": "first"}})
    first_run = (await engine.store.get_event(first))["runs"][0]["id"]
    first_child = (await eventually(lambda: engine.list_runs(function_id="single-cancel"), what="the first child"))[0]
    await wait_run(engine, first_child["id"], "waiting")
    second = await engine.send({"name": "t/go", "data": {"who": "second"}})
    second_run = (await engine.store.get_event(second))["runs"][0]["id"]
    done = await wait_run(engine, first_run)
    assert done["output"].startswith(f"Cancelled: invoked run {first_child['id']} cancelled: replaced by a newer run")
    await engine.send({"name": "t/release"})
    assert (await wait_run(engine, second_run))["output"] == "ran for second"


async def test_an_invoke_replaced_in_a_debounce_window_fails_and_the_run_answers_the_newer(make_engine) -> None:
    app = stepline.App("t")

    @app.function(
        id="debounced",
        trigger=stepline.TriggerEvent("t/deb"),
        debounce=stepline.Debounce(period="200ms", key="event.data.k"),
    )
    async def debounced(ctx: stepline.Context) -> str:
        return f"ran with {ctx.event.data['n']}"

    @app.function(id="invoker", trigger=stepline.TriggerEvent("t/go"))
    async def invoker(ctx: stepline.Context) -> list:
        return list(await asyncio.gather(
            _invoke(ctx, "a", "debounced", {"k": "x", "n": 1}), _invoke(ctx, "b", "debounced", {"k": "x", "n": 2})
        ))

    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "t/go"})
    assert run["status"] == "completed", run["error"]
    assert run["output"][0] == (
        "InvokeSkipped: invoke: function 'debounced' started no run: a later event replaced this one "
        "in its debounce window (the run answers that event's invoke)"
    )
    assert run["output"][1] == "ran with 2"
    children = await engine.list_runs(function_id="debounced")
    assert len(children) == 1 and children[0]["parent_run_id"] == run["id"]


async def test_invoked_runs_queue_behind_the_concurrency_limit_and_the_throttle(make_engine) -> None:
    app = stepline.App("t")
    release = asyncio.Event()

    @app.function(id="one-at-a-time", trigger=stepline.TriggerEvent("t/c"), concurrency=[stepline.Concurrency(limit=1)])
    async def one_at_a_time(ctx: stepline.Context) -> str:
        await ctx.step.run("work", release.wait)
        return "done"

    @app.function(
        id="throttled", trigger=stepline.TriggerEvent("t/t"), throttle=stepline.Throttle(limit=1, period="1h")
    )
    async def throttled(ctx: stepline.Context) -> str:
        return "done"

    @app.function(id="invoker", trigger=stepline.TriggerEvent("t/go"))
    async def invoker(ctx: stepline.Context) -> Any:
        return await _invoke(ctx, "call", ctx.event.data["fn"], {})

    engine = await make_engine(app, concurrency=8)
    await engine.send_many([{"name": "t/go", "data": {"fn": "one-at-a-time"}}] * 2)

    async def one_running_one_limited() -> list[dict]:
        runs = await engine.list_runs(function_id="one-at-a-time")
        reasons = sorted([str((await engine.get_run(r["id"]))["wait_reason"]) for r in runs])
        return runs if reasons == ["None", "concurrency_limited"] else []

    children = await eventually(one_running_one_limited, what="one invoked run executing, the other held by its limit")
    release.set()
    for child in children:
        assert (await wait_run(engine, child["id"]))["status"] == "completed"

    await engine.send_many([{"name": "t/go", "data": {"fn": "throttled"}}] * 2)

    async def one_done_one_throttled() -> list[str]:
        runs = [await engine.get_run(r["id"]) for r in await engine.list_runs(function_id="throttled")]
        states = sorted(f"{r['status']}/{r['wait_reason']}" for r in runs)
        return states if states == ["completed/None", "queued/throttled"] else []

    # The second start waits for its slot, an hour away, as an event's run would.
    await eventually(one_done_one_throttled, what="one invoked run done, the other waiting for its throttle slot")


async def test_an_invoke_of_a_function_paused_in_skip_mode_fails_at_once_and_starts_no_run(make_engine) -> None:
    app = stepline.App("t")

    @app.function(id="paused", trigger=stepline.TriggerEvent("t/p"))
    async def paused(ctx: stepline.Context) -> str:
        return "ran"

    @app.function(id="invoker", trigger=stepline.TriggerEvent("t/go"))
    async def invoker(ctx: stepline.Context) -> Any:
        return await _invoke(ctx, "call", "paused", {})

    engine = await make_engine(app)
    await engine.pause_function("paused", "skip", "maintenance")
    run = await send_and_wait(engine, {"name": "t/go"})
    assert run["status"] == "completed", run["error"]
    assert run["output"].startswith("InvokeSkipped: invoke: function 'paused' started no run: it is paused in skip mode")
    assert await engine.list_runs(function_id="paused") == []
    (invoked,) = await engine.store.list_events(name="stepline/function.invoked")
    assert invoked["skipped"] == {"paused": "function_paused"}


async def test_an_invoke_from_outside_a_run_meets_flow_control_and_a_pause(make_engine) -> None:
    """The API's and the dashboard's invoke (``POST /invoke/{slug}`` too) are invokes like a
    step's: rate limit, idempotency, singleton and a pause in skip mode apply."""
    app = stepline.App("t")

    @app.function(id="limited", trigger=stepline.TriggerEvent("t/rl"),
                  rate_limit=stepline.RateLimit(limit=1, period="1h", key="event.data.user"))
    async def limited(ctx: stepline.Context) -> str:
        return "ran"

    @app.function(id="idem", trigger=stepline.TriggerEvent("t/idem"), idempotency="event.data.key")
    async def idem(ctx: stepline.Context) -> str:
        return "charged"

    @app.function(id="single", trigger=stepline.TriggerEvent("t/single"),
                  singleton=stepline.Singleton(key="event.data.k", mode="skip"))
    async def single(ctx: stepline.Context) -> None:
        await ctx.step.sleep("hold", "1h")

    @app.function(id="batched", trigger=stepline.TriggerEvent("t/b"), batch_events=stepline.Batch(max_size=2, timeout="1h"))
    async def batched(ctx: stepline.Context) -> list:
        return [e.data["n"] for e in ctx.events]

    engine = await make_engine(app)
    gathered = [await engine.invoke_function("batched", {"n": n}) for n in (1, 2)]
    assert gathered[0]["run_id"] == gathered[1]["run_id"] and gathered[1]["skipped"] is None, gathered
    assert (await wait_run(engine, str(gathered[0]["run_id"])))["output"] == [1, 2]
    for function_id, data, rule in [
        ("limited", {"user": "u1"}, "its rate limit (1 per 3600s, key event.data.user = 'u1') is used up"),
        ("idem", {"key": "k1"}, "its idempotency key (event.data.key = 'k1') already started a run in the last 24 h"),
        ("single", {"k": "a"}, "a run with key event.data.k = 'a' is in progress (singleton mode 'skip')"),
    ]:
        first = await engine.invoke_function(function_id, data)
        assert first["run_id"] is not None and first["skipped"] is None, first
        again = await engine.invoke_function(function_id, data)
        assert again["run_id"] is None and again["message"] == f"invoke: function {function_id!r} started no run: {rule}"
        assert (await engine.store.get_event(again["event_id"]))["skipped"] == {function_id: again["skipped"]}
        assert len(await engine.list_runs(function_id=function_id)) == 1

    await engine.pause_function("limited", "skip", None)
    paused = await engine.invoke_function("limited", {"user": "u2"})
    assert (paused["run_id"], paused["skipped"]) == (None, "function_paused")
    await engine.pause_function("limited", "queue", None)  # queue mode: the run waits for the resume
    queued = await engine.invoke_function("limited", {"user": "u3"})
    assert queued["skipped"] is None

    async def held() -> bool:
        return (await engine.get_run(str(queued["run_id"])))["wait_reason"] == "function_paused"

    await eventually(held, what="the invoked run held by the pause")
    await engine.resume_function("limited")
    assert (await wait_run(engine, str(queued["run_id"])))["output"] == "ran"
