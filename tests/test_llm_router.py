"""Router: quick models direct, slow / reasoning / large contexts queued, env overrides."""

from __future__ import annotations

from typing import Any

import pytest

import stepline
from stepline.llm import Router, is_reasoning_model
from stepline.testing import FakeProvider
from tests.helpers import runs_for_event, wait_run


def test_routes_follow_the_queueing_rule() -> None:
    router = Router(quick_models=["gpt-4o-mini", "claude-3-haiku"], slow_models=["deepseek/deepseek-r1", "claude-3-opus"], env={})
    assert router.route("gpt-4o-mini", "hi") .queued is False
    assert router.route("openai/gpt-4o-mini", "hi").queued is False  # vendor prefix ignored
    assert router.route("claude-3-opus", "hi").reason == "slow model"
    assert router.route("o1-preview", "hi").reason == "reasoning model"
    assert router.route("some-new-model", "hi").reason == "model not in quick_models"
    big = router.route("gpt-4o-mini", "x " * 9000)
    assert big.queued and big.estimated_tokens > 4000
    # CJK text crosses the threshold at far fewer characters than chars/4 would say.
    assert router.route("gpt-4o-mini", "漢" * 6100).queued
    assert not router.route("gpt-4o-mini", "a" * 6100 * 2).queued


def test_env_overrides_and_rollback_switch() -> None:
    router = Router(quick_models=["a"], slow_models=["b"], env={"USE_QUEUE": "false"})
    assert not router.use_queue and not router.route("b", "x").queued
    router = Router(quick_models=["a"], slow_models=["b"], use_queue=False, env={"USE_QUEUE": "true", "QUICK_MODELS": "b, c", "SLOW_MODELS": "a"})
    assert router.use_queue and router.quick_models == ["b", "c"] and router.slow_models == ["a"]
    assert router.route("a", "x").queued and not router.route("c", "x").queued
    with pytest.raises(stepline.ConfigError, match="USE_QUEUE"):
        Router(env={"USE_QUEUE": "maybe"})
    with pytest.raises(stepline.ConfigError, match="token_threshold"):
        Router(token_threshold=0, env={})


@pytest.mark.parametrize(("model", "reasoning"), [
    ("o1-preview", True), ("o3-mini", True), ("deepseek/deepseek-r1", True), ("deepseek-reasoner", True),
    ("claude-3-7-sonnet-thinking", True), ("qwen/qwq-32b", True), ("gpt-4o-mini", False), ("llama3:8b", False), ("claude-3-haiku", False),
])
def test_reasoning_models_are_recognised(model: str, reasoning: bool) -> None:
    assert is_reasoning_model(model) is reasoning


async def test_generate_direct_and_queued(make_engine, fake: FakeProvider) -> None:
    app = stepline.App("routed")
    seen: list[dict[str, Any]] = []

    @app.function(id="slow", trigger=stepline.TriggerEvent("llm/generate.requested"))
    async def slow(ctx: stepline.Context) -> str:
        seen.append(ctx.event.data)
        reply = await ctx.step.ai.infer("call-model", model=ctx.event.data["model"], messages=ctx.event.data["messages"], llm=fake.llm(), **ctx.event.data["params"])
        return str(reply["text"])

    engine = await make_engine(app)
    router = Router(quick_models=["fake-quick"], slow_models=["fake-slow"], sender=app, llm=fake.llm(), env={})
    direct = await router.generate(user_id="u1", model="fake-quick", messages="hi")
    assert direct["status"] == "completed" and direct["text"] == "Simulated reply from fake-quick: hi"
    queued = await router.generate(user_id="u1", model="fake-slow", messages="hi", temperature=0.2, job_id="job-9")
    assert queued["status"] == "pending" and queued["job_id"] == "job-9"
    run = (await runs_for_event(engine, queued["event_id"]))[0]
    run = await wait_run(engine, run["id"])
    assert run["status"] == "completed" and run["output"] == "Simulated reply from fake-slow: hi"
    assert run["user_id"] == "u1"
    assert seen[0]["job_id"] == "job-9" and seen[0]["params"] == {"temperature": 0.2}
    assert fake.requests[-1].body["temperature"] == 0.2
    with pytest.raises(stepline.ConfigError, match="no sender"):
        await Router(env={}, llm=fake.llm()).generate(user_id="u", model="fake-slow", messages="x")
