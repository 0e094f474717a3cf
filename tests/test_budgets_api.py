"""Budgets from the outside: the HTTP API (list, one key, override), `stepline budgets`,
a paused run's detail, per-model usage in the metrics, and Router's direct calls
under the same budgets. A real server on loopback, the fake provider, both backends."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from click.testing import CliRunner

import stepline
from stepline import cli
from stepline.llm import LLM, Router
from stepline.llm import budget as llm_budget
from stepline.testing import FakeProvider, Reply
from tests.helpers import eventually, runs_for_event, wait_run
from tests.server_live import LiveServer, run_of_event, run_status, serve  # noqa: F401 - fixture

MODEL = "gpt-4o-mini"  # priced by the bundled genai-prices table as an OpenAI model
PROMPT = "How many legs does a spider have?"
MAX_TOKENS = 100
BUDGET = "generate:1d:user_id"
GENERATE = "llm/generate.requested"


def priced(fake: FakeProvider) -> LLM:
    return LLM([fake.provider("fake", pricing_id="openai", self_hosted=False)], default="fake", prices={})


def worst_tokens(llm: LLM, prompt: Any = PROMPT) -> int:
    return llm_budget.spend(llm, MODEL, prompt, None, {"max_tokens": MAX_TOKENS}).worst.tokens


def generate_app(llm: LLM, budget: stepline.Budget) -> stepline.App:
    """A queued model call as LLM apps make it: the Router sends GENERATE, this makes the call as a step."""
    app = stepline.App("budget-api")

    @app.function(id="generate", trigger=stepline.TriggerEvent(GENERATE), budgets=[budget], retries=0)
    async def generate(ctx: stepline.Context) -> str:
        data = ctx.event.data
        reply = await ctx.step.ai.infer("call-model", model=data["model"], messages=data["messages"], llm=llm, **data["params"])
        return str(reply["text"])

    return app


def generate_event(user: str) -> dict[str, Any]:
    messages = [{"role": "user", "content": PROMPT}]
    return {"name": GENERATE, "data": {"user_id": user, "model": MODEL, "messages": messages, "params": {"max_tokens": MAX_TOKENS}}}


def one_call_per_period(fake: FakeProvider, llm: LLM, **options: Any) -> stepline.Budget:
    """A per-user token budget with room for one call a day: each call costs about its worst case."""
    fake.on_model(MODEL, Reply(text="Eight legs.", completion_tokens=MAX_TOKENS))
    messages = generate_event("x")["data"]["messages"]
    return stepline.Budget(limit_tokens=worst_tokens(llm, messages) + 10, period="1d", key="event.data.user_id", **options)


def test_budgets_over_http_a_paused_run_and_an_override_that_resumes_it(serve, fake: FakeProvider) -> None:  # noqa: F811
    llm = priced(fake)
    budget = one_call_per_period(fake, llm)
    server: LiveServer = serve(generate_app(llm, budget))
    with httpx.Client(base_url=server.url) as client:
        first = run_of_event(client, client.post("/api/v1/events", json=generate_event("u1")).json()["ids"][0])
        assert run_status(client, first["id"])["status"] == "completed"
        second = run_of_event(client, client.post("/api/v1/events", json=generate_event("u1")).json()["ids"][0])
        paused = run_status(client, second["id"], "waiting")
        assert paused["wait_reason"] == "budget_exceeded"
        assert (paused["budget"]["budget"], paused["budget"]["key"]) == (BUDGET, "u1")
        assert paused["budget"]["limit_tokens"] == budget.limit_tokens

        listing = client.get("/api/v1/budgets").json()
        assert [b["name"] for b in listing["budgets"]] == [BUDGET] and listing["budgets"][0]["functions"] == ["generate"]
        (state,) = listing["data"]
        assert (state["key"], state["calls"], state["paused_runs"], state["exceeded"]) == ("u1", 1, 1, True)
        assert 0 < state["spent_tokens"] <= budget.limit_tokens and state["reserved_tokens"] == 0
        assert state["period_end"] - state["period_start"] == 86_400_000

        for body, status, words in [
            ({"limit": 5}, 400, "budget limits: unknown field(s) ['limit']"),
            ({"limit_usd": -1}, 400, "limit_usd"),
            ({"limit_tokens": 2.5}, 400, "limit_tokens"),
            ({}, 400, "and/or {\"limit_tokens\""),
        ]:
            reply = client.put(f"/api/v1/budgets/{BUDGET}/u1", json=body)
            assert reply.status_code == status and words in reply.json()["error"], reply.text
        missing = client.put("/api/v1/budgets/no-such-budget/u1", json={"limit_usd": 1})
        assert missing.status_code == 404 and BUDGET in missing.json()["error"]
        assert client.get("/api/v1/budgets", params={"budget": "nope"}).status_code == 404

        raised = client.put(f"/api/v1/budgets/{BUDGET}/u1", json={"limit_tokens": budget.limit_tokens * 3})
        assert raised.status_code == 200, raised.text
        assert raised.json()["resumed_runs"] == [second["id"]] and raised.json()["limit_tokens"] == budget.limit_tokens * 3
        assert run_status(client, second["id"])["status"] == "completed"
        after = client.get(f"/api/v1/budgets/{BUDGET}/u1").json()
        assert after["calls"] == 2 and after["paused_runs"] == 0
        assert after["override"] == {"limit_usd": None, "limit_tokens": budget.limit_tokens * 3}
        cleared = client.put(f"/api/v1/budgets/{BUDGET}/u1", json={"limit_usd": None, "limit_tokens": None}).json()
        assert cleared["override"] is None and cleared["limit_tokens"] == budget.limit_tokens
    assert len(fake.requests) == 2


def test_stepline_budgets_list_show_and_set(serve, fake: FakeProvider) -> None:  # noqa: F811
    llm = priced(fake)
    budget = one_call_per_period(fake, llm)
    server: LiveServer = serve(generate_app(llm, budget))
    runner = CliRunner()

    def stepline_cli(*args: str) -> str:
        result = runner.invoke(cli.main, [*args, "--url", server.url])
        assert result.exit_code == 0, result.output
        return result.output

    with httpx.Client(base_url=server.url) as client:
        first = run_of_event(client, client.post("/api/v1/events", json=generate_event("u1")).json()["ids"][0])
        run_status(client, first["id"])
        second = run_of_event(client, client.post("/api/v1/events", json=generate_event("u1")).json()["ids"][0])
        run_status(client, second["id"], "waiting")
        listed = stepline_cli("budgets", "list")
        assert f"{BUDGET}: fn budget, per event.data.user_id" in listed and "u1" in listed
        shown = stepline_cli("budgets", "show", BUDGET, "u1")
        assert f"{budget.limit_tokens} tok" in shown and shown.rstrip().endswith("1")  # one paused run
        raised = stepline_cli("budgets", "set", BUDGET, "u1", "--tokens", str(budget.limit_tokens * 3))
        assert f"resumed 1 paused run(s): {second['id']}" in raised and "(override)" in raised
        assert run_status(client, second["id"])["status"] == "completed"
        assert "(override)" not in stepline_cli("budgets", "set", BUDGET, "u1", "--clear")
    refused = runner.invoke(cli.main, ["budgets", "set", BUDGET, "u1", "--url", server.url])
    assert refused.exit_code != 0 and "--usd and/or --tokens, or --clear" in refused.output
    unknown = runner.invoke(cli.main, ["budgets", "show", "nope", "u1", "--url", server.url])
    assert unknown.exit_code != 0 and "no budget named 'nope'" in unknown.output


def test_metrics_show_usage_per_model(serve, fake: FakeProvider) -> None:  # noqa: F811
    llm = priced(fake)
    server: LiveServer = serve(generate_app(llm, stepline.Budget(limit_usd=5.0, period="1d")))
    with httpx.Client(base_url=server.url) as client:
        for user in ("u1", "u2"):
            run = run_of_event(client, client.post("/api/v1/events", json=generate_event(user)).json()["ids"][0])
            assert run_status(client, run["id"])["status"] == "completed"
        metrics = client.get("/api/v1/metrics").json()
        (model,) = metrics["usage_by_model"]
        assert (model["provider"], model["model"], model["calls"]) == ("fake", MODEL, 2)
        assert model["cost_usd"] == pytest.approx(sum(u["cost_usd"] for u in metrics["usage_by_user"]))
        assert f'stepline_llm_cost_usd_total{{provider="fake",model="{MODEL}"}}' in client.get("/metrics").text


# --- Router's direct calls ------------------------------------------------------------


def router(app: stepline.App, llm: LLM) -> Router:
    return Router(quick_models=[MODEL], sender=app, llm=llm, env={})


async def test_a_direct_call_counts_against_the_budgets_and_is_filed_with_its_user(make_engine, fake: FakeProvider) -> None:
    llm = priced(fake)
    app = generate_app(llm, stepline.Budget(limit_usd=5.0, period="1d", key="event.data.user_id"))
    engine = await make_engine(app)
    reply = await router(app, llm).generate(user_id="u1", model=MODEL, messages=PROMPT, max_tokens=MAX_TOKENS)
    assert reply["status"] == "completed" and reply["route"] == "quick model"
    state = await engine.store.budget_key(BUDGET, "u1")
    assert state["calls"] == 1 and state["spent_usd"] == pytest.approx(reply["cost_usd"]) and state["reserved_usd"] == 0
    usage = await engine.store.metrics_overview(0, 0)  # the direct call is filed in llm_usage, with its user
    (user,) = usage["usage_by_user"]
    (model,) = usage["usage_by_model"]
    assert (user["user_id"], user["calls"], model["model"]) == ("u1", 1, MODEL)
    assert user["cost_usd"] == pytest.approx(reply["cost_usd"], abs=1e-6)


async def test_a_direct_call_past_a_fail_budget_raises_before_calling(make_engine, fake: FakeProvider) -> None:
    llm = priced(fake)
    budget = stepline.Budget(limit_usd=0.0, period="1d", key="event.data.user_id", on_exceeded="fail")
    app = generate_app(llm, budget)
    await make_engine(app)
    with pytest.raises(stepline.BudgetExceeded) as raised:
        await router(app, llm).generate(user_id="u1", model=MODEL, messages=PROMPT, max_tokens=MAX_TOKENS)
    assert (raised.value.budget, raised.value.key, raised.value.limit_usd) == (BUDGET, "u1", 0.0)
    assert fake.requests == []


async def test_a_direct_call_past_a_pause_budget_is_queued_and_its_run_waits(make_engine, fake: FakeProvider) -> None:
    llm = priced(fake)
    budget = one_call_per_period(fake, llm)
    app = generate_app(llm, budget)
    engine = await make_engine(app)
    routed = router(app, llm)
    first = await routed.generate(user_id="u1", model=MODEL, messages=PROMPT, max_tokens=MAX_TOKENS)
    assert first["status"] == "completed"
    second = await routed.generate(user_id="u1", model=MODEL, messages=PROMPT, max_tokens=MAX_TOKENS)
    assert second["status"] == "pending" and f"budget '{BUDGET}' has no room for key 'u1'" in second["route"]
    run = (await runs_for_event(engine, second["event_id"]))[0]
    paused = await wait_run(engine, run["id"], "waiting")
    assert paused["wait_reason"] == "budget_exceeded" and len(fake.requests) == 1
    await engine.set_budget_limit(BUDGET, "u1", None, budget.limit_tokens * 3)  # type: ignore[operator]
    assert (await wait_run(engine, run["id"]))["status"] == "completed"
    await eventually(lambda: len(fake.requests) == 2, what="the queued call")
