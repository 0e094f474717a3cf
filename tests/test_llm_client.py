"""The provider client and the fake provider, over real HTTP on loopback.

The official ``openai`` client is the oracle that the fake speaks the real format.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator

import httpx
import openai
import orjson
import pytest

from stepline import errors
from stepline.llm import (
    LLM,
    Provider,
    ProviderError,
    ProviderRejected,
    RateLimited,
    TruncatedResponse,
    providers,
    tokens,
)
from stepline.llm import errors as llm_errors
from stepline.testing import (
    Fail,
    FakeProvider,
    Reply,
    Reset,
    StreamError,
    Truncate,
    insufficient_quota,
    rate_limited,
    server_error,
)


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(cost_per_mtok=2.0) as server:
        yield server


# --- the fake, as the official client sees it -------------------------------------------


def test_openai_client_reads_a_completion_with_usage_and_cost(fake: FakeProvider) -> None:
    client = openai.OpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0)
    fake.script(Reply(text="Hello there", reasoning="think first", cached_tokens=1))
    reply = client.chat.completions.create(model="fake-quick", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "Hello there"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    assert reply.usage.completion_tokens_details.reasoning_tokens > 0
    assert reply.usage.prompt_tokens_details.cached_tokens == 1
    assert reply.usage.model_extra["cost"] > 0  # OpenRouter-style cost is kept as an extra field


def test_openai_client_streams_with_final_usage_chunk(fake: FakeProvider) -> None:
    client = openai.OpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0)
    fake.script(Reply(text="one two three"))
    chunks = list(
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "count"}], stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


def test_openai_client_honours_the_fakes_retry_after_and_error_codes(fake: FakeProvider) -> None:
    client = openai.OpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=1)
    fake.script(rate_limited(retry_after_ms=20), Reply(text="after wait"))
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert reply.choices[0].message.content == "after wait"
    fake.script(insufficient_quota(), insufficient_quota())
    with pytest.raises(openai.RateLimitError) as caught:
        openai.OpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.code == "insufficient_quota"
    fake.script(StreamError(after=2))
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True))


def test_anthropic_format_over_plain_http(fake: FakeProvider) -> None:
    body = {"model": "claude-x", "max_tokens": 10, "system": "terse", "messages": [{"role": "user", "content": "hi"}]}
    reply = httpx.post(f"{fake.anthropic_base_url}/v1/messages", json=body).json()
    assert reply["type"] == "message" and reply["stop_reason"] == "end_turn"
    assert reply["content"][0]["type"] == "text" and set(reply["usage"]) >= {"input_tokens", "output_tokens"}
    with httpx.stream("POST", f"{fake.anthropic_base_url}/v1/messages", json={**body, "stream": True}) as response:
        names = [line.split(": ", 1)[1] for line in response.iter_lines() if line.startswith("event: ")]
    assert names[0] == "message_start" and names[-1] == "message_stop" and "content_block_delta" in names
    fake.script(Fail(status=529, message="Overloaded"))
    failed = httpx.post(f"{fake.anthropic_base_url}/v1/messages", json=body)
    assert failed.status_code == 529 and failed.json()["error"]["type"] == "overloaded_error"


def test_scenario_header_and_request_log(fake: FakeProvider) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    response = httpx.post(f"{fake.openai_base_url}/chat/completions", json=body, headers={"x-fake-scenario": "429"})
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    assert fake.requests[-1].scenario == "429" and fake.requests[-1].body == body


# --- our client ---------------------------------------------------------------------------


async def test_client_collects_reasoning_and_reports_cost(fake: FakeProvider) -> None:
    llm = fake.llm()
    fake.script(Reply(text="answer", reasoning="because", prompt_tokens=100, completion_tokens=20))
    pieces: list[str] = []

    async def on_delta(text: str) -> None:
        pieces.append(text)

    done = await llm.complete(model="r1", messages="why?", stream=True, on_delta=on_delta)
    assert done.text == "answer" and "".join(pieces) == "answer" and done.reasoning == "because"
    assert done.cost_source == "provider" and done.cost_usd == pytest.approx(120 * 2.0 / 1e6)
    fake.script(Reply(text="anthropic", reasoning="hmm"))
    done = await llm.complete(model="fake-anthropic:claude", messages="x", stream=True)
    assert done.text == "anthropic" and done.reasoning == "hmm" and done.finish_reason == "end_turn"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        (rate_limited(retry_after_ms=1500), RateLimited),
        (rate_limited(), ProviderError),  # no header: back off
        (server_error(503), ProviderError),
        (Fail(status=529, code="overloaded_error"), ProviderError),
        (insufficient_quota(), ProviderRejected),
        (Fail(status=400, message="context too long"), ProviderRejected),
        (Fail(status=401), ProviderRejected),
        (Fail(status=402), ProviderRejected),
        (Fail(status=403), ProviderRejected),
        (Fail(status=404), ProviderRejected),
        (Fail(status=502, raw_body=b"<html>Bad gateway</html>"), ProviderError),
        (Truncate(), TruncatedResponse),
    ],
)
async def test_errors_are_mapped_at_the_boundary(fake: FakeProvider, behaviour: object, expected: type, stream: bool) -> None:
    fake.script(behaviour)  # type: ignore[arg-type]
    with pytest.raises(expected) as caught:
        await fake.llm().complete(model="m", messages="x", stream=stream)
    error = caught.value
    assert error.provider == "fake"  # type: ignore[attr-defined]
    if isinstance(error, RateLimited):
        assert error.delay_seconds() == pytest.approx(1.5)
    if isinstance(error, ProviderRejected):
        assert isinstance(error, errors.NonRetriableError)
        assert error.status in (400, 401, 402, 403, 404, 429)


@pytest.mark.parametrize("chunked", [True, False])
async def test_a_reset_mid_stream_is_retryable(fake: FakeProvider, chunked: bool) -> None:
    fake.script(Reset(after=3, chunked=chunked))
    with pytest.raises(ProviderError):  # chunked: a read error; close-delimited: no finish marker
        await fake.llm().complete(model="m", messages="x", stream=True)


def test_rejection_messages_say_what_to_fix() -> None:
    def message(status: int, body: object = b"{}", **headers: str) -> str:
        return str(llm_errors.from_status("openai", status, headers, body, model="gpt-x", base_url="http://h/v1", key_hint="OPENAI_API_KEY"))

    assert "check OPENAI_API_KEY" in message(401)
    assert "add credits" in message(402)
    assert "check the model name and the base URL http://h/v1" in message(404)
    assert "fix the call" in message(400, {"error": {"message": "bad", "code": "invalid"}})
    assert "lack access" in message(403)
    budget = llm_errors.from_status("openrouter", 402, {"retry-after": "3"}, b"{}", model="m", base_url="b", key_hint="k")
    assert isinstance(budget, RateLimited) and budget.delay_seconds() == 3
    spend = {"type": "error", "error": {"type": "rate_limit_error", "message": "cap", "details": {"error_code": "enforced_spend_limit_reached"}}}
    assert isinstance(llm_errors.from_status("anthropic", 429, {}, spend, model="m", base_url="b", key_hint="k"), ProviderRejected)


def test_retry_after_header_forms() -> None:
    assert llm_errors.retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert llm_errors.retry_after_seconds({"retry-after": "7"}) == 7
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert llm_errors.retry_after_seconds({"retry-after": date}, now=now) == pytest.approx(30, abs=1)
    assert llm_errors.retry_after_seconds({}) is None


async def test_connection_refused_is_retryable() -> None:
    llm = LLM([Provider(name="gone", base_url="http://127.0.0.1:9/v1", connect_timeout=2)])
    with pytest.raises(ProviderError, match="cannot talk to gone"):
        await llm.complete(model="m", messages="x")


def test_provider_config_from_env_and_model_prefixes() -> None:
    found, default = providers.from_env({"OPENROUTER_API_KEY": "k1", "ANTHROPIC_API_KEY": "k2", "OLLAMA_BASE_URL": "http://127.0.0.1:11434/v1"})
    assert [p.name for p in found] == ["openrouter", "anthropic", "ollama"] and default == "openrouter"
    llm = LLM(found, default=default, prices={})
    assert llm.resolve("deepseek/deepseek-r1")[0].name == "openrouter"
    assert llm.resolve("anthropic:claude-sonnet-4-5") == (found[1], "claude-sonnet-4-5")
    assert llm.resolve("llama3:8b")[1] == "llama3:8b"  # not a provider prefix
    assert found[2].self_hosted and found[2].max_tokens_field == "max_tokens"
    with pytest.raises(errors.ConfigError, match="STEPLINE_LLM_PROVIDER"):
        providers.from_env({"STEPLINE_LLM_PROVIDER": "nope"})
    with pytest.raises(errors.ConfigError, match="no LLM provider is configured"):
        LLM([], prices={}).resolve("m")


def test_token_estimate_is_script_aware() -> None:
    english = "The quick brown fox jumps over the lazy dog. " * 20
    japanese = "日本語の文章はトークンが多くなります。" * 20
    assert tokens.estimate_text(english) == pytest.approx(len(english) / 4, rel=0.01)
    assert tokens.estimate_text(japanese) == pytest.approx(len(japanese) / 1.5, rel=0.01)
    assert tokens.estimate_text(japanese) > 2 * len(japanese) / 4  # plain chars/4 would undercount
    assert tokens.estimate_messages([{"role": "user", "content": "abcd"}]) == 1 + tokens.PER_MESSAGE


TOOL = (("get_weather", '{"city": "Paris", "unit": "celsius"}'),)


def test_openai_client_reads_tool_calls_and_skips_keepalive_comments(fake: FakeProvider) -> None:
    client = openai.OpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0)
    fake.script(Reply(text="", tool_calls=TOOL))
    message = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "weather?"}]).choices[0].message
    assert message.tool_calls[0].function.name == "get_weather"
    assert message.tool_calls[0].function.arguments == TOOL[0][1]
    fake.script(Reply(text="still here", keepalive_comments=3))
    chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "still here"


@pytest.mark.parametrize("model", ["m", "fake-anthropic:claude"])
async def test_client_assembles_streamed_tool_call_fragments(fake: FakeProvider, model: str) -> None:
    fake.script(Reply(text="let me check", tool_calls=TOOL, keepalive_comments=2))
    done = await fake.llm().complete(model=model, messages="weather in Paris?", stream=True)
    assert done.text == "let me check"
    assert done.finish_reason in ("tool_calls", "tool_use")
    assert done.tool_calls == [{"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": TOOL[0][1]}}]
    fake.script(Reply(text="", tool_calls=TOOL))
    plain = await fake.llm().complete(model=model, messages="again")
    assert plain.tool_calls[0]["function"]["name"] == "get_weather"
    assert orjson.loads(plain.tool_calls[0]["function"]["arguments"]) == orjson.loads(TOOL[0][1])


async def test_a_silent_provider_times_out_as_retryable(fake: FakeProvider) -> None:
    fake.script(Reply(text="too late", delay=5))
    with pytest.raises(ProviderError, match="ReadTimeout"):
        await fake.llm(read_timeout=0.2).complete(model="m", messages="x")
    fake.script(Reply(text="slow but steady " * 5, chunk_delay=0.05))  # gaps under the limit are fine
    done = await fake.llm(read_timeout=0.5).complete(model="m", messages="x", stream=True)
    assert done.text.startswith("slow but steady")


async def test_repeated_cancellation_still_closes_the_stream(fake: FakeProvider) -> None:
    import asyncio

    fake.script(Reply(text="tick " * 400, chunk_delay=0.05))
    started = asyncio.Event()

    async def on_delta(text: str) -> None:
        started.set()
        await asyncio.sleep(0.01)  # a publish in progress when the run is cancelled

    call = asyncio.ensure_future(fake.llm().complete(model="m", messages="x", stream=True, on_delta=on_delta))
    await started.wait()
    for _ in range(3):  # a cancelled run can be cancelled by more than one path
        call.cancel()
        await asyncio.sleep(0)
    with pytest.raises(asyncio.CancelledError):
        await call
    for _ in range(200):
        if fake.disconnects:
            break
        await asyncio.sleep(0.02)
    assert fake.disconnects == 1
