"""Retries: backoff, RetryAfterError, NonRetriableError, StepError, recorded attempts."""

from __future__ import annotations

import time

import stepline
from tests.helpers import send_and_wait


async def test_a_failing_step_is_retried_then_succeeds_and_attempts_are_recorded(make_engine) -> None:
    app = stepline.App("t")
    attempts: list[int] = []

    @app.function(id="flaky", trigger=stepline.TriggerEvent("t/flaky"), retries=3)
    async def flaky(ctx: stepline.Context) -> int:
        async def call() -> int:
            attempts.append(ctx.attempt)
            if len(attempts) < 3:
                raise ConnectionError(f"boom {len(attempts)}")
            return 42

        return await ctx.step.run("call", call)

    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "t/flaky"})
    assert run["status"] == "completed"
    assert run["output"] == 42
    step = run["steps"][0]
    assert step["attempts"] == 3
    history = step["attempt_history"]
    assert [h["attempt"] for h in history] == [1, 2, 3]
    assert [h["error"]["message"] if h["error"] else None for h in history] == ["boom 1", "boom 2", None]
    assert history[0]["error"]["name"] == "ConnectionError"
    assert attempts == [0, 1, 2]  # ctx.attempt counts the retries of the step being retried


async def test_retries_spent_raise_step_error_that_the_function_can_catch(make_engine) -> None:
    app = stepline.App("t")
    calls = 0

    @app.function(id="recover", trigger=stepline.TriggerEvent("t/recover"), retries=2)
    async def recover(ctx: stepline.Context) -> dict:
        async def always_fails() -> None:
            nonlocal calls
            calls += 1
            raise ValueError("model unavailable")

        try:
            await ctx.step.run("call-model", always_fails)
        except stepline.StepError as exc:
            fallback = await ctx.step.run("fallback", lambda: "cached answer")
            return {"error": exc.name, "message": exc.error_message, "answer": fallback}
        return {}

    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "t/recover"})
    assert run["status"] == "completed"
    assert run["output"] == {"error": "ValueError", "message": "model unavailable", "answer": "cached answer"}
    assert calls == 3  # first attempt + 2 retries
    failed = run["steps"][0]
    assert failed["status"] == "failed" and failed["attempts"] == 3


async def test_uncaught_step_error_fails_the_run_without_more_retries(make_engine) -> None:
    app = stepline.App("t")
    calls = 0

    @app.function(id="fails", trigger=stepline.TriggerEvent("t/fails"), retries=1)
    async def fails(ctx: stepline.Context) -> None:
        def boom() -> None:
            nonlocal calls
            calls += 1
            raise RuntimeError("nope")

        await ctx.step.run("boom", boom)

    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "t/fails"})
    assert run["status"] == "failed"
    assert run["error"]["name"] == "StepError"
    assert "nope" in run["error"]["message"]
    assert calls == 2


async def test_non_retriable_error_fails_at_once(make_engine) -> None:
    app = stepline.App("t")
    calls = 0

    @app.function(id="nr", trigger=stepline.TriggerEvent("t/nr"), retries=5)
    async def nr(ctx: stepline.Context) -> None:
        async def bad_request() -> None:
            nonlocal calls
            calls += 1
            raise stepline.NonRetriableError("400: the prompt is empty")

        await ctx.step.run("call", bad_request)

    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "t/nr"})
    assert run["status"] == "failed"
    assert calls == 1
    assert run["steps"][0]["error"]["name"] == "NonRetriableError"


async def test_retry_after_error_waits_exactly_as_told(make_engine) -> None:
    app = stepline.App("t")
    seen: list[float] = []

    @app.function(id="ra", trigger=stepline.TriggerEvent("t/ra"), retries=2)
    async def ra(ctx: stepline.Context) -> str:
        async def limited() -> str:
            seen.append(time.time())
            if len(seen) == 1:
                raise stepline.RetryAfterError("429 rate limited", delay=0.6)
            return "ok"

        return await ctx.step.run("call", limited)

    # retry_base is 20 ms in tests: a wait of 0.6 s can only come from RetryAfterError.
    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "t/ra"})
    assert run["output"] == "ok"
    assert seen[1] - seen[0] >= 0.6


async def test_errors_outside_steps_retry_the_function(make_engine) -> None:
    app = stepline.App("t")
    step_calls = 0
    body_calls = 0

    @app.function(id="body", trigger=stepline.TriggerEvent("t/body"), retries=2)
    async def body(ctx: stepline.Context) -> int:
        nonlocal step_calls, body_calls

        def once() -> int:
            nonlocal step_calls
            step_calls += 1
            return 7

        value = await ctx.step.run("once", once)
        body_calls += 1
        if body_calls < 3:
            raise KeyError("not yet")
        return value + ctx.attempt

    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "t/body"})
    assert run["status"] == "completed"
    assert run["output"] == 9  # attempt 2 (0-based)
    assert step_calls == 1  # the committed step was memoized on each retry
    assert len(run["function_attempts"]) == 2


async def test_backoff_grows_exponentially_with_jitter() -> None:
    import random

    from stepline.engine import retry

    rng = random.Random(7)
    delays = [retry.backoff_seconds(n, base=1.0, maximum=60.0, rng=rng) for n in range(1, 8)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(60.0, 2 ** (n - 1))
        assert ceiling * 0.5 <= delay <= ceiling
    assert delays[-1] > delays[0] * 8


def test_an_unreachable_app_is_retried_on_inngests_schedule_not_the_backoff() -> None:
    """An attempt that could not reach its SDK app at all (a restart) waits 15 s, 30 s, 1 m,
    ... 2 h (plus up to 30 s, at most the delay itself), the last repeated; an error the
    app answered keeps the ordinary backoff."""
    import random

    import pytest

    from stepline import errors, settings
    from stepline.engine import retry
    from stepline.inngest import protocol

    rng = random.Random(3)
    schedule = settings.Settings().unreachable_backoff
    inngest = [15, 30, 60, 120, 300, 600, 1200, 2400, 3600, 7200, 7200]
    for attempt, base in enumerate(inngest, start=1):
        delay = retry.unreachable_seconds(attempt, schedule, rng=rng)
        assert base <= delay <= base + min(30, base), (attempt, delay)
    assert 0.2 <= retry.unreachable_seconds(1, (0.2,)) <= 0.4  # a short schedule's jitter stays short

    unreachable = protocol.AppUnreachableError({"name": "AppUnreachable", "message": "refused"})
    answered = protocol.SDKRetriableError({"name": "Error", "message": "boom"})
    assert isinstance(unreachable, errors.UnreachableError) and not isinstance(answered, errors.UnreachableError)
    defaults = settings.Settings()
    assert retry.delay_for(unreachable, 1, defaults) >= 15
    assert retry.delay_for(answered, 1, defaults) <= 1  # STEPLINE_RETRY_BASE

    env = settings.from_env({"STEPLINE_UNREACHABLE_BACKOFF": "500ms, 2s,1m"})
    assert env.unreachable_backoff == (0.5, 2.0, 60.0)
    with pytest.raises(errors.ConfigError, match="STEPLINE_UNREACHABLE_BACKOFF='15s,soon': expected durations separated by commas"):
        settings.from_env({"STEPLINE_UNREACHABLE_BACKOFF": "15s,soon"})
