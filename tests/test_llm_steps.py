"""ctx.step.ai.infer as a durable step, against the fake provider over loopback HTTP."""

from __future__ import annotations

from typing import Any

import pytest

import stepline
from stepline.llm import LLM, Price
from stepline.testing import (
    FakeProvider,
    Reply,
    Reset,
    StreamError,
    Truncate,
    insufficient_quota,
    rate_limited,
    server_error,
)
from tests.helpers import eventually, runs_for_event, send_and_wait, wait_run


def infer_app(llm: LLM, **infer: Any) -> stepline.App:
    app = stepline.App("llm-steps")

    @app.function(id="ask", trigger=stepline.TriggerEvent("llm/ask"), retries=3)
    async def ask(ctx: stepline.Context) -> dict[str, Any]:
        reply = await ctx.step.ai.infer(
            "call-model", model=ctx.event.data.get("model", "fake-quick"), messages=ctx.event.data["prompt"], llm=llm, **infer
        )
        return {"text": reply["text"], "cost": reply["cost_usd"]}

    return app


async def llm_usage_rows(engine: Any, run_id: str) -> list[dict[str, Any]]:
    return await engine.store.db.read(lambda conn: conn.all("SELECT * FROM llm_usage WHERE run_id = ?", (run_id,)))


async def test_infer_checkpoints_result_and_records_usage(make_engine, fake: FakeProvider) -> None:
    fake.script(Reply(text="four", prompt_tokens=12, completion_tokens=3, cached_tokens=2, cost=0.0025))
    engine = await make_engine(infer_app(fake.llm()))
    run = await send_and_wait(engine, {"name": "llm/ask", "data": {"prompt": "2+2?", "user_id": "u7"}})
    assert run["status"] == "completed"
    assert run["output"] == {"text": "four", "cost": 0.0025}
    step = run["steps"][0]
    assert step["kind"] == "ai.infer" and step["attempts"] == 1
    assert step["output"]["usage"]["prompt_tokens"] == 12
    meta = step["meta"]
    assert meta["provider"] == "fake" and meta["model"] == "fake-quick"
    assert meta["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "reasoning_tokens": 0, "cached_tokens": 2}
    assert meta["cost_usd"] == 0.0025 and meta["cost_source"] == "provider"
    assert isinstance(meta["latency_ms"], int)
    rows = await llm_usage_rows(engine, run["id"])
    assert len(rows) == 1
    row = rows[0]
    assert (row["user_id"], row["function_id"], row["model"]) == ("u7", "ask", "fake-quick")
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (12, 3, 2)
    assert row["cost_usd"] == pytest.approx(0.0025)
    sent = fake.requests[0]
    assert sent.body["messages"] == [{"role": "user", "content": "2+2?"}]
    assert sent.headers["authorization"] == "Bearer fake-key"


async def test_stream_publishes_partial_output_and_checkpoints_final_text(make_engine, fake: FakeProvider) -> None:
    text = " ".join(f"word{i}" for i in range(60))
    fake.script(Reply(text=text))
    engine = await make_engine(infer_app(fake.llm(), stream=True))
    run = await send_and_wait(engine, {"name": "llm/ask", "data": {"prompt": "talk"}})
    assert run["status"] == "completed" and run["output"]["text"] == text
    messages = [m for m in await engine.store.run_messages(run["id"]) if m["topic"] == "ai"]
    assert len(messages) >= 2  # pieces arrived before the end
    bodies = [m["data"] for m in messages]
    assert "".join(b["delta"] for b in bodies) == text
    assert bodies[-1]["done"] is True and bodies[-1]["finish_reason"] == "stop"
    assert fake.requests[0].body["stream"] is True
    assert fake.requests[0].body["stream_options"] == {"include_usage": True}
    assert run["steps"][0]["meta"]["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(rate_limited(retry_after_ms=30), id="429-retry-after-ms"),
        pytest.param(rate_limited(retry_after="0"), id="429-retry-after"),
        pytest.param(server_error(503), id="503"),
        pytest.param(Truncate(after=3), id="stream-without-finish"),
        pytest.param(Reset(after=2), id="reset-chunked"),
        pytest.param(Reset(after=2, chunked=False), id="reset-close-delimited"),
        pytest.param(StreamError(after=2), id="error-event-after-200"),
    ],
)
async def test_retryable_failures_retry_the_step(make_engine, fake: FakeProvider, failure: Any) -> None:
    fake.script(failure, Reply(text="recovered"))
    engine = await make_engine(infer_app(fake.llm(), stream=True))
    run = await send_and_wait(engine, {"name": "llm/ask", "data": {"prompt": "hi"}})
    assert run["status"] == "completed" and run["output"]["text"] == "recovered"
    step = run["steps"][0]
    assert step["attempts"] == 2
    assert len(fake.requests) == 2
    assert step["attempt_history"][0]["error"]["name"] in ("RateLimited", "ProviderError", "TruncatedResponse")


async def test_rate_limit_waits_exactly_as_told(make_engine, fake: FakeProvider) -> None:
    fake.script(rate_limited(retry_after_ms=40), Reply(text="ok"))
    engine = await make_engine(infer_app(fake.llm()))
    run = await send_and_wait(engine, {"name": "llm/ask", "data": {"prompt": "hi"}})
    error = run["steps"][0]["attempt_history"][0]["error"]
    assert error["name"] == "RateLimited"
    assert "the provider asked for a 0.04s wait (retry-after)" in error["message"]


async def test_5xx_burst_then_success(make_engine, fake: FakeProvider) -> None:
    fake.script(server_error(500), server_error(502), server_error(529), Reply(text="finally"))
    engine = await make_engine(infer_app(fake.llm()))
    run = await send_and_wait(engine, {"name": "llm/ask", "data": {"prompt": "hi"}})
    assert run["status"] == "completed" and run["steps"][0]["attempts"] == 4


@pytest.mark.parametrize(
    ("failure", "needle"),
    [
        (insufficient_quota(), "out of quota"),
        (server_error(500, **{"x-should-retry": "false"}), "said not to retry"),
    ],
)
async def test_non_retryable_failures_fail_at_once(make_engine, fake: FakeProvider, failure: Any, needle: str) -> None:
    fake.script(failure, Reply(text="never reached"))
    engine = await make_engine(infer_app(fake.llm()))
    run = await send_and_wait(engine, {"name": "llm/ask", "data": {"prompt": "hi"}})
    assert run["status"] == "failed"
    step = run["steps"][0]
    assert step["attempts"] == 1 and step["status"] == "failed"
    assert step["error"]["name"] == "ProviderRejected" and needle in step["error"]["message"]
    assert len(fake.requests) == 1
    assert await llm_usage_rows(engine, run["id"]) == []


async def test_anthropic_wire_through_a_step(make_engine, fake: FakeProvider) -> None:
    fake.script(Reply(text="bonjour", prompt_tokens=10, cached_tokens=4, completion_tokens=2))
    engine = await make_engine(infer_app(fake.llm(), stream=True, max_completion_tokens=64))
    run = await send_and_wait(engine, {"name": "llm/ask", "data": {"prompt": "hi", "model": "fake-anthropic:claude-test"}})
    assert run["status"] == "completed" and run["output"]["text"] == "bonjour"
    meta = run["steps"][0]["meta"]
    assert meta["provider"] == "fake-anthropic" and meta["model"] == "claude-test"
    # Anthropic counts cache reads outside input_tokens; the record counts them inside.
    assert meta["usage"]["prompt_tokens"] == 10 and meta["usage"]["cached_tokens"] == 4
    sent = fake.requests[0]
    assert sent.path == "/v1/messages" and sent.body["max_tokens"] == 64
    assert sent.headers["x-api-key"] == "fake-key" and sent.headers["anthropic-version"]


async def test_cost_from_price_override_and_price_table(make_engine, fake: FakeProvider) -> None:
    priced = LLM(
        [fake.provider("fake", self_hosted=True), fake.provider("openai", self_hosted=False)],
        default="fake",
        prices={"fake:tuned": Price(input_per_mtok=1.0, output_per_mtok=2.0)},
    )
    fake.script(
        Reply(text="a", prompt_tokens=1000, completion_tokens=500),
        Reply(text="b", prompt_tokens=1000, completion_tokens=500),
        Reply(text="c", prompt_tokens=1000, completion_tokens=500),
    )
    app = stepline.App("costs")

    @app.function(id="costs", trigger=stepline.TriggerEvent("llm/costs"))
    async def costs(ctx: stepline.Context) -> list[Any]:
        out = []
        for model in ("tuned", "local-llama", "openai:gpt-4o-mini"):
            reply = await ctx.step.ai.infer("call", model=model, messages="x", llm=priced)
            out.append([reply["cost_usd"], reply["cost_source"]])
        return out

    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "llm/costs"})
    assert run["status"] == "completed", run["error"]
    override, self_hosted, table = run["output"]
    assert override == [pytest.approx(0.002), "override"]  # 1000 x $1/M + 500 x $2/M
    assert self_hosted == [0.0, "self-hosted"]
    assert table[1] == "genai-prices" and table[0] > 0
    assert [s["id"] for s in run["steps"]] == ["call", "call:1", "call:2"]


async def test_completed_infer_is_not_called_again_on_replay(make_engine, fake: FakeProvider) -> None:
    llm = fake.llm()
    app = stepline.App("replay")

    @app.function(id="twice", trigger=stepline.TriggerEvent("llm/twice"))
    async def twice(ctx: stepline.Context) -> str:
        first = await ctx.step.ai.infer("first", model="m", messages="one", llm=llm)
        await ctx.step.sleep("nap", "50ms")  # suspends; the run resumes by replaying its journal
        second = await ctx.step.ai.infer("second", model="m", messages="two", llm=llm)
        return first["text"] + " | " + second["text"]

    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "llm/twice"})
    assert run["status"] == "completed"
    assert run["output"] == "Simulated reply from m: one | Simulated reply from m: two"
    assert len(fake.requests) == 2


async def test_cancel_closes_the_upstream_stream(make_engine, fake: FakeProvider) -> None:
    fake.script(Reply(text=" ".join(["slow"] * 400), chunk_delay=0.05))
    engine = await make_engine(infer_app(fake.llm(), stream=True))
    event_id = await engine.send({"name": "llm/ask", "data": {"prompt": "hi"}})

    async def streaming() -> Any:
        runs = (await engine.store.get_event(event_id))["runs"]
        return runs and await engine.store.run_messages(runs[0]["id"]) and runs[0]

    run = await eventually(streaming, what="the stream to start")
    await engine.cancel(run["id"])
    done = await wait_run(engine, run["id"])
    assert done["status"] == "cancelled"
    await eventually(lambda: _async(fake.disconnects == 1), what="the fake to see the client hang up")


async def _async(value: Any) -> Any:
    return value


async def test_default_llm_comes_from_the_environment(make_engine, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in fake.env().items():
        monkeypatch.setenv(name, value)
    app = stepline.App("env")

    @app.function(id="env", trigger=stepline.TriggerEvent("llm/env"))
    async def env(ctx: stepline.Context) -> dict[str, Any]:
        return await ctx.step.ai.infer("call", model="llama3:8b", messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], max_tokens=5)

    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "llm/env"})
    assert run["status"] == "completed", run["error"]
    assert run["output"]["provider"] == "fake" and run["output"]["model"] == "llama3:8b"
    assert run["output"]["cost_source"] == "self-hosted"
    assert fake.requests[0].body["max_tokens"] == 5  # self-hosted servers get max_tokens


async def test_sync_handler_gets_a_clear_error(make_engine, fake: FakeProvider) -> None:
    app = stepline.App("sync-ai")
    llm = fake.llm()

    @app.function(id="sync-ai", trigger=stepline.TriggerEvent("llm/sync"), retries=0)
    def sync_ai(ctx: stepline.Context) -> Any:
        return ctx.step.ai.infer("call", model="m", messages="x", llm=llm)

    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "llm/sync"})
    assert run["status"] == "failed"
    assert "needs an async def handler" in run["error"]["message"]
    assert fake.requests == []


async def test_unknown_provider_prefix_fails_before_any_call(make_engine, fake: FakeProvider) -> None:
    engine = await make_engine(infer_app(LLM([], prices={})))
    run = await send_and_wait(engine, {"name": "llm/ask", "data": {"prompt": "hi"}})
    assert run["status"] == "failed" and "no LLM provider is configured" in run["error"]["message"]
    assert run["steps"] == []


async def test_a_model_call_finished_after_the_run_was_lost_is_counted_in_usage(make_engine, fake: FakeProvider) -> None:
    """A worker that lost its run (another took it over) while a model call was in flight
    saves nothing of the step, and the new holder calls the model again; but the provider
    billed the first call too. Budgets counted it and the usage views did not: it is now
    filed under ``<step>@lease<epoch>``, beside the step's own row once it runs again."""
    fake.script(Reply(text="late", prompt_tokens=10, completion_tokens=5, cost=0.004, delay=0.5))
    engine = await make_engine(infer_app(fake.llm()), lease=30.0)  # the call ends before a heartbeat finds the loss
    event_id = await engine.send({"name": "llm/ask", "data": {"prompt": "hi", "user_id": "u1"}})
    (run,) = await runs_for_event(engine, event_id)
    await eventually(lambda: fake.requests or None, what="the model call in flight")
    await engine.store.db.write(lambda conn: conn.execute(  # another worker took the run over
        "UPDATE queue SET lease_owner = 'w-other', lease_epoch = lease_epoch + 1 WHERE run_id = ?", (run["id"],)
    ))

    async def filed() -> list[dict[str, Any]] | None:
        return await llm_usage_rows(engine, run["id"]) or None

    (row,) = await eventually(filed, what="the lost call's usage")
    assert row["step_key"].startswith("call-model@lease") and (row["user_id"], row["function_id"]) == ("u1", "ask")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (10, 5) and row["cost_usd"] == pytest.approx(0.004)
    assert await engine.store.db.read(lambda conn: conn.all("SELECT key FROM steps WHERE run_id = ?", (run["id"],))) == []
