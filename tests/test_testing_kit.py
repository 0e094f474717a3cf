"""The test kit (stepline.testing.TestEngine): the real engine in-process, step mocks, a test clock.

Each behaviour runs on the kit's own temporary SQLite database and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Iterator
from typing import Any

import pytest

import stepline
import stepline.llm
from stepline.llm import providers
from stepline.settings import Settings
from stepline.testing import (
    FakeProvider,
    NotSettled,
    Reply,
    RunNotFinished,
    SyncTestEngine,
    TestEngine,
)

# --- the functions under test ------------------------------------------------------------

app = stepline.App("kit")
CALLS: dict[str, int] = {}


def load(doc_id: str) -> str:
    CALLS["load"] = CALLS.get("load", 0) + 1
    return f"the text of {doc_id}, which is long"


def summarise_text(text: str) -> dict[str, Any]:
    raise AssertionError("the real summariser must not run when the step is mocked")


@app.function(id="summarise", trigger=stepline.TriggerEvent("doc/uploaded"), retries=3)
async def summarise(ctx: stepline.Context) -> dict[str, Any]:
    text = await ctx.step.run("load", load, ctx.event.data["doc_id"])
    summary = await ctx.step.run("summarise", summarise_text, text)
    await ctx.step.sleep("cool-down", "1h")
    approval = await ctx.step.wait_for_event("approval", event="doc/approved", match="data.doc_id", timeout="1d")
    return {"summary": summary, "approved": approval is not None and approval.data["by"]}


async def call_api(attempt_log: list[str]) -> str:
    raise AssertionError("mocked in every test")


@app.function(id="flaky", trigger=stepline.TriggerEvent("flaky/go"), retries=2)
async def flaky(ctx: stepline.Context) -> Any:
    return await ctx.step.run("call-api", call_api, [])


@app.function(id="ask", trigger=stepline.TriggerEvent("chat/asked"), retries=1)
async def ask(ctx: stepline.Context) -> dict[str, Any]:
    reply = await ctx.step.ai.infer("call-model", model=ctx.event.data.get("model", "gpt-4o-mini"),
                                    messages=[{"role": "user", "content": ctx.event.data["q"]}], temperature=0)
    return {"text": reply["text"], "cost_usd": reply["cost_usd"], "tokens": reply["usage"]["total_tokens"]}


@app.function(id="child", trigger=stepline.TriggerEvent("child/go"))
async def child(ctx: stepline.Context) -> dict[str, Any]:
    return {"doubled": await ctx.step.run("double", lambda n: 2 * n, ctx.event.data["n"])}


@app.function(id="parent", trigger=stepline.TriggerEvent("parent/go"), retries=0)
async def parent(ctx: stepline.Context) -> dict[str, Any]:
    try:
        got = await ctx.step.invoke("call-child", function=child, data={"n": ctx.event.data["n"]}, timeout="1h")
    except stepline.StepError as exc:
        return {"failed": exc.name, "message": exc.error_message}
    return {"got": got}


@app.function(id="fan-out", trigger=stepline.TriggerEvent("fan/go"))
async def fan_out(ctx: stepline.Context) -> list[str]:
    return await ctx.step.run("send-children", app.send, [{"name": "child/go", "data": {"n": n}} for n in (1, 2)])


@app.function(id="sync-steps", trigger=stepline.TriggerEvent("sync/go"))
def sync_steps(ctx: stepline.SyncContext) -> dict[str, Any]:
    first = ctx.step.run("first", lambda: "real first")
    ctx.step.sleep("pause", "10m")
    second = ctx.step.run("second", lambda: "real second")
    return {"first": first, "second": second}


def mark_failed(ctx: stepline.Context) -> dict[str, Any]:
    return {"failed_run": ctx.event.data["run_id"], "error": ctx.event.data["error"]["name"]}


@app.function(id="fragile", trigger=stepline.TriggerEvent("fragile/go"), retries=1, on_failure=mark_failed)
async def fragile(ctx: stepline.Context) -> None:
    await ctx.step.run("write", lambda: "written")
    raise RuntimeError(f"the function itself failed on attempt {ctx.attempt}")


@app.function(id="long-haul", trigger=stepline.TriggerEvent("haul/go"))
async def long_haul(ctx: stepline.Context) -> list[str]:
    leg_one = await ctx.step.run("leg-one", skip_a_day)
    return [leg_one, await ctx.step.run("leg-two", lambda: "arrived")]


@app.function(id="deadline", trigger=stepline.TriggerEvent("deadline/go"))
async def deadline(ctx: stepline.Context) -> str:
    await ctx.step.sleep_until("until-new-year", dt.datetime(2031, 1, 1, tzinfo=dt.timezone.utc))
    return ctx.event.data["greeting"]


@app.function(id="hangs", trigger=stepline.TriggerEvent("hang/go"))
async def hangs(ctx: stepline.Context) -> None:
    await ctx.step.run("forever", asyncio.sleep, 3600)


KIT: list[TestEngine] = []  # the engine a step body reaches, for the clock test


def skip_a_day() -> str:
    CALLS["leg-one"] = CALLS.get("leg-one", 0) + 1
    KIT[0].clock.advance(86400)  # a day passes on the test clock while the run holds its lease
    return "a day later"


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def kit_db(request: pytest.FixtureRequest) -> str | None:
    """None: the kit's own temporary SQLite database; else a fresh PostgreSQL database."""
    CALLS.clear()
    return None if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def no_provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, _ in providers.ENV_VARS:
        monkeypatch.setenv(name, "")
    stepline.llm.set_default(None)
    yield
    stepline.llm.set_default(None)


# --- mocks -----------------------------------------------------------------------------------


async def test_a_mocked_step_is_journaled_and_replayed_and_the_rest_run_for_real(kit_db: str | None) -> None:
    async with TestEngine(app, db=kit_db) as t:
        mock = t.mock_step("summarise", return_value={"text": "short"})
        sent = await t.send({"name": "doc/uploaded", "data": {"doc_id": "d1"}})
        await t.advance("1h")  # the run resumes from its journal after the sleep: nothing runs twice
        await t.send({"name": "doc/approved", "data": {"doc_id": "d1", "by": "ana"}})
        result = await t.wait(sent)

    assert result.status == "completed" and result.error is None
    assert result.output == {"summary": {"text": "short"}, "approved": "ana"}
    assert result.steps["summarise"].output == {"text": "short"} and result.steps["summarise"].attempts == 1
    assert result.steps["load"].output == "the text of d1, which is long" and result.steps["load"].kind == "run"
    assert CALLS["load"] == 1 and mock.call_count == 1
    assert mock.calls[0].args == ("the text of d1, which is long",) and mock.calls[0].kwargs == {}
    assert result.step("approval").output["data"]["by"] == "ana"


async def test_side_effects_answer_each_attempt_in_turn(kit_db: str | None) -> None:
    async with TestEngine(app, db=kit_db) as t:
        mock = t.mock_step("call-api", side_effect=[TimeoutError("the API timed out"), ConnectionError, "third time lucky"])
        sent = await t.send({"name": "flaky/go"})
        assert (await t.result(sent)).steps["call-api"].status == "retrying"
        await t.advance("10m")
        await t.advance("10m")
        result = await t.wait(sent)
    assert result.output == "third time lucky"
    step = result.steps["call-api"]
    assert step.attempts == 3 and [e.name for e in step.attempt_errors] == ["TimeoutError", "ConnectionError"]
    assert step.attempt_errors[0].message == "the API timed out"
    assert mock.call_count == 3 and mock.calls[0].args == ([],)


async def test_a_callable_side_effect_gets_the_steps_arguments(kit_db: str | None) -> None:
    async with TestEngine(app, db=kit_db) as t:
        t.mock_step("load", side_effect=lambda doc_id: f"fake text of {doc_id}")
        seen: list[str] = []

        async def summarise_fake(text: str) -> dict[str, str]:
            seen.append(text)
            return {"text": text.upper()}

        t.mock_step("summarise", side_effect=summarise_fake)
        sent = await t.send({"name": "doc/uploaded", "data": {"doc_id": "d2"}})
        result = await t.result(sent)
    assert seen == ["fake text of d2"] and result.steps["summarise"].output == {"text": "FAKE TEXT OF D2"}
    assert "load" not in CALLS  # the real body never ran


async def test_a_non_retriable_mock_fails_the_step_at_once_and_the_run(kit_db: str | None) -> None:
    async with TestEngine(app, db=kit_db) as t:
        t.mock_step("call-api", raises=stepline.NonRetriableError("the key was refused"))
        result = await t.wait(await t.send({"name": "flaky/go"}))
    assert result.status == "failed"
    assert result.error is not None and result.error.name == "StepError" and "the key was refused" in result.error.message
    step = result.steps["call-api"]
    assert step.status == "failed" and step.attempts == 1
    assert step.error is not None and step.error.name == "NonRetriableError"


async def test_retries_spent_fail_the_run_with_every_attempt_recorded(kit_db: str | None) -> None:
    async with TestEngine(app, db=kit_db, settings=Settings(retry_base=0, retry_max=0)) as t:  # no backoff: retries at once
        mock = t.mock_step("call-api", raises=ValueError("bad answer"))
        result = await t.wait(await t.send({"name": "flaky/go"}))
    assert result.status == "failed" and mock.call_count == 3  # retries=2
    assert result.steps["call-api"].attempts == 3 and len(result.steps["call-api"].attempt_errors) == 3


async def test_ai_infer_is_mocked_by_step_id_without_any_provider(kit_db: str | None, no_provider: None) -> None:
    async with TestEngine(app, db=kit_db) as t:
        mock = t.mock_step("call-model", return_value={"text": "short", "usage": {"total_tokens": 7}})
        result = await t.wait(await t.send({"name": "chat/asked", "data": {"q": "summarise this"}}))
        t.mock_step("call-model", return_value="just text")
        plain = await t.wait(await t.send({"name": "chat/asked", "data": {"q": "again", "model": "o3"}}))
        t.unmock_step("call-model")
        unmocked = await t.wait(await t.send({"name": "chat/asked", "data": {"q": "for real"}}))
    assert result.status == "completed" and result.output == {"text": "short", "cost_usd": 0.0, "tokens": 7}
    step = result.steps["call-model"]
    assert step.kind == "ai.infer" and step.output["model"] == "gpt-4o-mini" and step.meta["provider"] == "mock"
    assert mock.calls[0].kwargs == {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "summarise this"}], "temperature": 0}
    assert plain.output["text"] == "just text" and plain.steps["call-model"].output["model"] == "o3"
    assert unmocked.status == "failed" and unmocked.error is not None and "no LLM provider is configured" in unmocked.error.message


async def test_unmocked_ai_infer_steps_still_reach_the_provider(kit_db: str | None) -> None:
    with FakeProvider() as fake:
        stepline.llm.set_default(fake.llm())
        try:
            fake.script(Reply(text="from the fake provider"))
            async with TestEngine(app, db=kit_db) as t:
                result = await t.wait(await t.send({"name": "chat/asked", "data": {"q": "hi"}}))
        finally:
            stepline.llm.set_default(None)
    assert result.output["text"] == "from the fake provider" and len(fake.requests) == 1
    assert result.steps["call-model"].meta["provider"] == "fake"


async def test_invoke_is_mocked_by_step_id_and_no_child_run_starts(kit_db: str | None) -> None:
    async with TestEngine(app, db=kit_db) as t:
        mock = t.mock_step("call-child", return_value={"doubled": 84})
        mocked = await t.wait(await t.send({"name": "parent/go", "data": {"n": 42}}))
        assert await t.runs("child") == []
        t.mock_step("call-child", raises=LookupError("no such customer"))
        failed = await t.wait(await t.send({"name": "parent/go", "data": {"n": 1}}))
        t.unmock_step("call-child")
        real = await t.wait(await t.send({"name": "parent/go", "data": {"n": 5}}))
        children = await t.runs("child")
    assert mocked.output == {"got": {"doubled": 84}} and mocked.steps["call-child"].kind == "invoke"
    assert mock.calls[0].kwargs == {"function": "child", "data": {"n": 42}}
    assert failed.output == {"failed": "LookupError", "message": "no such customer"}  # failed at once, as an invoked run does
    assert failed.steps["call-child"].attempts == 1
    assert real.output == {"got": {"doubled": 10}}
    assert [c.parent_run_id for c in children] == [real.id] and children[0].output == {"doubled": 10}


async def test_steps_are_listed_in_the_order_the_function_reached_them(kit_db: str | None) -> None:
    # The test clock stands still, so every step starts in the same millisecond: only their
    # sequence numbers order them (a suspension once shared the number of the step before it).
    async with TestEngine(app, db=kit_db) as t:
        t.mock_step("summarise", return_value={"text": "s"})
        sent = await t.send({"name": "doc/uploaded", "data": {"doc_id": "d0"}})
        suspended = await t.result(sent)
        await t.advance("1h")
        await t.send({"name": "doc/approved", "data": {"doc_id": "d0", "by": "ana"}})
        result = await t.wait(sent)
    assert list(suspended.steps) == ["load", "summarise", "cool-down"]
    assert list(result.steps) == ["load", "summarise", "cool-down", "approval"]


async def test_app_send_in_the_code_under_test_reaches_the_test_engine(kit_db: str | None) -> None:
    async with TestEngine(app, db=kit_db) as t:
        parent_run = await t.wait(await t.send({"name": "fan/go"}))
        children = await t.runs("child")
    assert parent_run.status == "completed" and len(parent_run.output) == 2
    assert sorted(c.output["doubled"] for c in children) == [2, 4]  # already ended: the engine had settled


# --- time --------------------------------------------------------------------------------------


async def test_a_sleep_ends_only_when_the_clock_is_moved_past_it(kit_db: str | None) -> None:
    async with TestEngine(app, db=kit_db) as t:
        t.mock_step("summarise", return_value={"text": "s"})
        sent = await t.send({"name": "doc/uploaded", "data": {"doc_id": "d3"}})
        sleeping = await t.result(sent)
        with pytest.raises(RunNotFinished, match=r"step 'cool-down' \(sleep\) is sleeping until .*1h ahead on the test clock"):
            await t.wait(sent)
        await t.advance("59m")
        assert (await t.result(sent)).status == "sleeping"
        await t.advance("1m")
        waiting = await t.result(sent)
    assert sleeping.status == "sleeping" and sleeping.wait_reason == "scheduled"
    assert sleeping.steps["cool-down"].wake_at is not None
    assert waiting.status == "waiting" and waiting.wait_reason == "waiting_for_event"
    assert waiting.steps["cool-down"].status == "completed"


async def test_wait_for_event_resolves_on_a_matching_event_only(kit_db: str | None) -> None:
    async with TestEngine(app, db=kit_db) as t:
        t.mock_step("summarise", return_value={"text": "s"})
        sent = await t.send({"name": "doc/uploaded", "data": {"doc_id": "d4"}})
        await t.advance("1h")
        other = await t.send({"name": "doc/approved", "data": {"doc_id": "someone-else", "by": "bob"}})
        still = await t.result(sent)
        approved = await t.send({"name": "doc/approved", "data": {"doc_id": "d4", "by": "ana"}})
        result = await t.wait(sent)
    assert other.run_ids == () and approved.run_ids == ()  # they start no run: they resolve waits
    assert still.status == "waiting" and still.steps["approval"].status == "waiting"
    assert result.output["approved"] == "ana"


async def test_a_wait_times_out_when_the_clock_passes_its_timeout(kit_db: str | None) -> None:
    async with TestEngine(app, db=kit_db) as t:
        t.mock_step("summarise", return_value={"text": "s"})
        sent = await t.send({"name": "doc/uploaded", "data": {"doc_id": "d5"}})
        await t.advance("1h")
        await t.advance("23h59m")
        assert (await t.result(sent)).status == "waiting"
        await t.advance("1m")
        result = await t.wait(sent)
        late = await t.send({"name": "doc/approved", "data": {"doc_id": "d5", "by": "ana"}})
    assert result.output == {"summary": {"text": "s"}, "approved": False}
    assert result.steps["approval"].output is None and late.run_ids == ()


async def test_a_retry_backoff_passes_only_with_the_clock(kit_db: str | None) -> None:
    async with TestEngine(app, db=kit_db) as t:
        t.mock_step("call-api", side_effect=[stepline.RetryAfterError("rate limited", 30), "done"])
        sent = await t.send({"name": "flaky/go"})
        with pytest.raises(RunNotFinished, match=r"step 'call-api' failed attempt 1 \(RetryAfterError: rate limited\)"):
            await t.wait(sent)
        await t.advance("29s")
        waiting = await t.result(sent)
        await t.advance("1s")
        result = await t.wait(sent)
    assert waiting.status == "queued" and waiting.wait_reason == "retry_backoff"
    assert result.output == "done" and result.steps["call-api"].attempts == 2


async def test_a_retry_at_a_given_time_is_counted_on_the_test_clock(kit_db: str | None) -> None:
    async with TestEngine(app, db=kit_db) as t:
        await t.advance("1d")  # the test clock is now a day ahead of the real one
        t.mock_step("call-api", side_effect=[stepline.RetryAfterError("come back later", t.now + dt.timedelta(hours=2)), "done"])
        sent = await t.send({"name": "flaky/go"})
        await t.advance("1h59m")
        waiting = await t.result(sent)
        await t.advance("1m")
        result = await t.wait(sent)
    assert waiting.status == "queued" and result.output == "done"


async def test_sleep_until_a_date_and_a_clock_that_starts_there(kit_db: str | None) -> None:
    new_years_eve = dt.datetime(2030, 12, 31, 12, tzinfo=dt.timezone.utc)
    async with TestEngine(app, db=kit_db, start=new_years_eve) as t:
        sent = await t.send({"name": "deadline/go", "data": {"greeting": "happy new year"}})
        before = await t.result(sent)
        await t.advance("12h")
        result = await t.wait(sent)
        assert t.now == dt.datetime(2031, 1, 1, tzinfo=dt.timezone.utc)
    assert before.steps["until-new-year"].wake_at == dt.datetime(2031, 1, 1, tzinfo=dt.timezone.utc)
    assert result.output == "happy new year"


async def test_skipping_time_never_makes_a_held_lease_look_expired(kit_db: str | None) -> None:
    # Leases are on the database's clock and the worker's fence on time.monotonic: a day skipped
    # while a run executes must not stop it, nor let its steps run twice.
    async with TestEngine(app, db=kit_db) as t:
        KIT[:] = [t]
        result = await t.wait(await t.send({"name": "haul/go"}))
    KIT.clear()
    assert result.status == "completed" and result.output == ["a day later", "arrived"]
    assert CALLS["leg-one"] == 1 and result.steps["leg-one"].attempts == 1


async def test_a_function_retry_waits_for_the_clock_and_on_failure_runs_once(kit_db: str | None) -> None:
    async with TestEngine(app, db=kit_db) as t:
        sent = await t.send({"name": "fragile/go"})
        first = await t.result(sent)
        with pytest.raises(RunNotFinished, match=r"the function failed attempt 1 \(RuntimeError: the function itself failed on attempt 0\)"):
            await t.wait(sent)
        await t.advance("1h")
        result = await t.wait(sent)
        handlers = await t.runs("fragile-failure")
    assert first.status == "queued" and first.wait_reason == "retry_backoff"
    assert result.status == "failed" and result.error is not None
    assert result.error.message == "the function itself failed on attempt 1"
    assert result.steps["write"].attempts == 1  # a committed step is not run again by the function's retry
    assert [h.output for h in handlers] == [{"failed_run": result.id, "error": "RuntimeError"}]


# --- sync code -------------------------------------------------------------------------------


async def test_sync_handlers_get_mocks_and_time_skipping(kit_db: str | None) -> None:
    async with TestEngine(app, db=kit_db) as t:
        mock = t.mock_step("second", return_value="mocked second")
        sent = await t.send({"name": "sync/go"})
        assert (await t.result(sent)).status == "sleeping"
        await t.advance("10m")
        result = await t.wait(sent)
    assert result.output == {"first": "real first", "second": "mocked second"} and mock.call_count == 1


def test_sync_test_engine_for_tests_that_are_not_async(kit_db: str | None) -> None:
    with SyncTestEngine(app, db=kit_db) as t:
        t.mock_step("summarise", return_value={"text": "sync"})
        sent = t.send({"name": "doc/uploaded", "data": {"doc_id": "d6"}})
        t.advance("1h")
        t.send({"name": "doc/approved", "data": {"doc_id": "d6", "by": "sam"}})
        result = t.wait(sent)
        cancelled = t.cancel(t.send({"name": "doc/uploaded", "data": {"doc_id": "d7"}}))
    assert result.output == {"summary": {"text": "sync"}, "approved": "sam"}
    assert cancelled.status == "cancelled"


# --- failures of the test itself ----------------------------------------------------------------


async def test_a_step_that_never_returns_is_reported_not_waited_for_forever(kit_db: str | None) -> None:
    async with TestEngine(app, db=kit_db, timeout=0.3) as t:
        with pytest.raises(NotSettled, match=r"still executing \(a step that never returns\?\)"):
            await t.send({"name": "hang/go"})
        t.mock_step("forever", return_value=None)
    # leaving the block stopped the engine with the step still in flight


async def test_mistakes_get_errors_that_say_what_to_do(kit_db: str | None) -> None:
    with pytest.raises(stepline.ConfigError, match="give one of return_value=, raises= or side_effect=, not return_value and raises"):
        TestEngine(app).mock_step("x", return_value=1, raises=ValueError)
    with pytest.raises(stepline.ConfigError, match="not return_value and side_effect"):
        TestEngine(app).mock_step("x", return_value=None, side_effect=[1])
    with pytest.raises(stepline.ConfigError, match="raises= takes an exception or exception class"):
        TestEngine(app).mock_step("x", raises="boom")  # type: ignore[arg-type]
    with pytest.raises(stepline.ConfigError, match="TestEngine takes stepline.App objects"):
        TestEngine("not an app")  # type: ignore[arg-type]
    async with TestEngine(app, db=kit_db, settings=Settings(retry_base=0, retry_max=0)) as t:
        t.mock_step("call-api", side_effect=[ValueError("once")])
        exhausted = await t.wait(await t.send({"name": "flaky/go"}))
        nothing = await t.send({"name": "nobody/listens"})
        with pytest.raises(stepline.NotFoundError, match="started 0 runs"):
            await t.wait(nothing)
        with pytest.raises(stepline.ConfigError, match="advance: duration must not be negative"):
            await t.advance(-1)
    assert exhausted.status == "failed"
    assert exhausted.steps["call-api"].error is not None
    assert "called 2 times, but side_effect lists 1 outcomes" in exhausted.steps["call-api"].error.message


async def test_each_engine_has_its_own_database_removed_at_the_end() -> None:
    async with TestEngine(app) as first:
        first.mock_step("summarise", return_value={"text": "one"})
        await first.send({"name": "doc/uploaded", "data": {"doc_id": "a"}})
        path = first.engine.store.url
        assert os.path.exists(path)
    async with TestEngine(app) as second:
        assert await second.runs() == []
        assert second.engine.store.url != path
    assert not os.path.exists(path)
