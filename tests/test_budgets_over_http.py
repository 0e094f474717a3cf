"""A web process's quick calls under the server's budgets: a Router whose sender is an
AsyncClient reserves each direct call on the server (``/api/v1/budget-reservations``),
settles it, and files it in ``llm_usage`` with its user. The production topology on
loopback: an API server that holds no app code (``stepline start --no-worker``; it reads
the budgets from the registered functions), a worker engine with the app, the fake
provider; both backends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

import stepline
from stepline.llm import LLM, Router
from stepline.llm import budget as llm_budget
from stepline.server.common import ServerOptions
from stepline.testing import FakeProvider, Reply
from tests.helpers import eventually, runs_for_event, wait_run
from tests.server_live import LiveServer, serve  # noqa: F401 - fixture
from tests.test_budgets_api import (  # the same queued function
    BUDGET,
    GENERATE,
    MAX_TOKENS,
    MODEL,
    PROMPT,
    generate_app,
)

SLOW = "fake-slow"
EVENT_KEY = "web-event-key"
TOKEN = "web-api-token"
PRODUCTION = ServerOptions(dev=False, event_key=EVENT_KEY, api_token=TOKEN)
RESERVATIONS = "/api/v1/budget-reservations"


def priced(fake: FakeProvider) -> LLM:
    return LLM([fake.provider("fake", pricing_id="openai", self_hosted=False)], default="fake", prices={})


def worst(llm: LLM) -> Any:
    """What one quick call of these tests reserves (the Router's messages for PROMPT)."""
    return llm_budget.spend(llm, MODEL, [{"role": "user", "content": PROMPT}], None, {"max_tokens": MAX_TOKENS}).worst


class Web:
    """A web process: a Router over an AsyncClient, and an API client for checking."""

    def __init__(self, server: LiveServer, llm: LLM, *, api_token: str | None = TOKEN) -> None:
        self.sender = stepline.AsyncClient(server.url, EVENT_KEY, api_token=api_token)
        self.router = Router(quick_models=[MODEL], slow_models=[SLOW], sender=self.sender, llm=llm, env={})
        self.api = httpx.AsyncClient(base_url=server.url, headers={"authorization": f"Bearer {TOKEN}"})

    async def ask(self, user: str, model: str = MODEL) -> dict[str, Any]:
        return await self.router.generate(user_id=user, model=model, messages=PROMPT, max_tokens=MAX_TOKENS)

    async def key(self, user: str) -> dict[str, Any]:
        response = await self.api.get(f"/api/v1/budgets/{BUDGET}/{user}")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self.sender.aclose()
        await self.api.aclose()


@pytest.fixture
async def deploy(make_engine, serve) -> AsyncIterator[Any]:  # noqa: F811
    """``await deploy(llm, budget)`` → (worker engine, API server, web process)."""
    webs: list[Web] = []

    async def start(llm: LLM, budget: stepline.Budget, **web: Any) -> tuple[Any, LiveServer, Web]:
        engine = await make_engine(generate_app(llm, budget))  # the worker registers the app's functions
        server = serve(options=PRODUCTION, run_worker=False)  # an API server without the app's code
        webs.append(Web(server, llm, **web))
        return engine, server, webs[-1]

    yield start
    for web in webs:
        await web.close()


async def test_quick_calls_are_reserved_settled_and_filed_with_their_user(deploy, fake: FakeProvider) -> None:
    llm = priced(fake)
    _, _, web = await deploy(llm, stepline.Budget(limit_usd=5.0, period="1d", key="event.data.user_id"))
    replies = [await web.ask("u1"), await web.ask("u1"), await web.ask("u2")]
    assert [(r["status"], r["route"]) for r in replies] == [("completed", "quick model")] * 3
    u1, u2 = await web.key("u1"), await web.key("u2")
    assert (u1["calls"], u2["calls"]) == (2, 1)
    assert u1["spent_usd"] == pytest.approx(replies[0]["cost_usd"] + replies[1]["cost_usd"])
    assert u1["spent_tokens"] == sum(r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"] for r in replies[:2])
    assert u1["reserved_usd"] == 0 and u2["reserved_usd"] == 0  # settled, nothing left held
    metrics = (await web.api.get("/api/v1/metrics", params={"window": "1h"})).json()
    by_user = {u["user_id"]: u for u in metrics["usage_by_user"]}  # llm_usage rows, with the user id
    assert (by_user["u1"]["calls"], by_user["u2"]["calls"]) == (2, 1)
    assert by_user["u2"]["cost_usd"] == pytest.approx(replies[2]["cost_usd"], abs=1e-6)
    (model,) = metrics["usage_by_model"]
    assert (model["model"], model["calls"]) == (MODEL, 3)


async def test_a_fail_budget_refuses_a_quick_call_once_spent(deploy, fake: FakeProvider) -> None:
    llm = priced(fake)
    fake.on_model(MODEL, Reply(text="Eight legs.", completion_tokens=MAX_TOKENS))
    budget = stepline.Budget(limit_tokens=worst(llm).tokens + 10, period="1d", key="event.data.user_id", on_exceeded="fail")
    _, _, web = await deploy(llm, budget)
    first = await web.ask("u1")
    assert first["status"] == "completed"
    with pytest.raises(stepline.BudgetExceeded) as raised:
        await web.ask("u1")
    refusal = raised.value
    assert (refusal.budget, refusal.key, refusal.on_exceeded, refusal.limit_tokens) == (BUDGET, "u1", "fail", budget.limit_tokens)
    assert refusal.spent_tokens == first["usage"]["prompt_tokens"] + first["usage"]["completion_tokens"]
    assert "raise the limit" in str(refusal)
    assert len(fake.requests) == 1  # refused before calling
    assert (await web.ask("u2"))["status"] == "completed"  # another user's budget is their own


async def test_a_pause_budget_queues_the_quick_call_and_its_run_waits(deploy, fake: FakeProvider) -> None:
    llm = priced(fake)
    fake.on_model(MODEL, Reply(text="Eight legs.", completion_tokens=MAX_TOKENS))
    budget = stepline.Budget(limit_tokens=worst(llm).tokens + 10, period="1d", key="event.data.user_id")
    engine, _, web = await deploy(llm, budget)
    assert (await web.ask("u1"))["status"] == "completed"
    queued = await web.ask("u1")
    assert queued["status"] == "pending" and f"budget '{BUDGET}' has no room for key 'u1'" in queued["route"]
    run = (await runs_for_event(engine, queued["event_id"]))[0]
    paused = await wait_run(engine, run["id"], "waiting")
    assert paused["wait_reason"] == "budget_exceeded" and len(fake.requests) == 1
    raised = await web.api.put(f"/api/v1/budgets/{BUDGET}/u1", json={"limit_tokens": budget.limit_tokens * 3})  # type: ignore[operator]
    assert raised.status_code == 200 and raised.json()["resumed_runs"] == [run["id"]]
    assert (await wait_run(engine, run["id"]))["status"] == "completed"
    assert len(fake.requests) == 2


async def test_concurrent_quick_calls_do_not_overshoot_a_small_budget(deploy, fake: FakeProvider) -> None:
    llm = priced(fake)
    fake.on_model(MODEL, Reply(text="Eight legs.", completion_tokens=MAX_TOKENS, delay=0.2))
    limit = worst(llm).usd * 3.5
    _, _, web = await deploy(llm, stepline.Budget(limit_usd=limit, period="1d", key="event.data.user_id", on_exceeded="fail"))
    outcomes = await asyncio.gather(*(web.ask("u1") for _ in range(12)), return_exceptions=True)
    completed = [o for o in outcomes if isinstance(o, dict)]
    refused = [o for o in outcomes if isinstance(o, stepline.BudgetExceeded)]
    assert len(completed) + len(refused) == 12, outcomes
    assert len(completed) >= 3 and refused  # three worst cases fit at once; the others are refused
    state = await web.key("u1")
    assert state["spent_usd"] == pytest.approx(sum(r["cost_usd"] for r in completed)) and state["reserved_usd"] == 0
    assert state["spent_usd"] <= limit + 1e-12  # each call cost less than its reservation: never past the limit
    assert len(fake.requests) == len(completed)


async def test_an_unsettled_reservation_stops_holding_after_its_ttl(deploy, fake: FakeProvider) -> None:
    llm = priced(fake)
    _, _, web = await deploy(llm, stepline.Budget(limit_usd=1.0, period="1d", key="event.data.user_id", on_exceeded="fail"))
    event = {"name": GENERATE, "data": {"user_id": "u1"}}
    held = await web.api.post(RESERVATIONS, json={"event": event, "usd": 0.9, "tokens": 10, "ttl_s": 1})
    assert held.status_code == 200, held.text
    assert held.json()["holds"] == [{"budget": BUDGET, "key": "u1", "period_start": held.json()["holds"][0]["period_start"]}]
    refused = await web.api.post(RESERVATIONS, json={"event": event, "usd": 0.2, "tokens": 10})
    assert refused.status_code == 402
    assert refused.json()["budget_exceeded"] == {
        "budget": BUDGET, "key": "u1", "spent_usd": 0.9, "spent_tokens": 10, "limit_usd": 1.0, "limit_tokens": None,
        "on_exceeded": "fail",
    }
    # The process that reserved never settles (it died): after its ttl the hold no longer counts.
    async def released() -> bool:
        return (await web.key("u1"))["reserved_usd"] == 0

    await eventually(released, what="the unsettled reservation to expire")
    fits = await web.api.post(RESERVATIONS, json={"event": event, "usd": 0.2, "tokens": 10})
    assert fits.status_code == 200, fits.text


async def test_the_event_key_alone_cannot_reserve_read_spend_or_change_limits(deploy, fake: FakeProvider) -> None:
    llm = priced(fake)
    _, server, web = await deploy(llm, stepline.Budget(limit_usd=5.0, period="1d", key="event.data.user_id"), api_token=None)
    with pytest.raises(stepline.ConfigError, match="api_token"):
        await web.ask("u1")  # a quick call is never made outside the budgets
    assert fake.requests == []
    assert (await web.ask("u1", model=SLOW))["status"] == "pending"  # sending (the queue) needs only the event key
    with_key = {"authorization": f"Bearer {EVENT_KEY}"}
    async with httpx.AsyncClient(base_url=server.url, headers=with_key) as attacker:
        event = {"name": GENERATE, "data": {"user_id": "u1"}}
        assert (await attacker.post(RESERVATIONS, json={"event": event, "usd": 1e9, "tokens": 1})).status_code == 401
        as_header = {"x-stepline-event-key": EVENT_KEY, "authorization": ""}
        refused = await attacker.post(RESERVATIONS, json={"event": event, "usd": 1e9, "tokens": 1}, headers=as_header)
        assert refused.status_code == 403 and "API token" in refused.json()["error"]  # budgets apply: no hold, no spend shown
        assert "spent" not in refused.text
        wrong = await attacker.post(RESERVATIONS, json={"event": event, "usd": 1.0}, headers={**as_header, "x-stepline-event-key": "guess"})
        assert wrong.status_code == 401
        assert (await attacker.get("/api/v1/budgets")).status_code == 401
        assert (await attacker.put(f"/api/v1/budgets/{BUDGET}/u1", json={"limit_usd": 1e6})).status_code == 401
    assert (await web.key("u1"))["limit_usd"] == 5.0 and (await web.key("u1"))["reserved_usd"] == 0


async def test_a_budget_declared_after_the_server_read_an_event_name_applies_to_its_reservations(
    make_engine, serve, fake: FakeProvider  # noqa: F811
) -> None:
    """SQLite's readers kept, for the life of the server, which functions each event name
    triggered as they first read it: a budget that a deploy declared later was never applied
    to reservations for that name (an event-key client was told that nothing applied, and
    made its calls outside the budget), and every name a client asked about stayed in memory."""
    server = serve(options=PRODUCTION, run_worker=False)  # no functions registered yet
    event = {"name": GENERATE, "data": {"user_id": "u1"}}
    async with httpx.AsyncClient(base_url=server.url, headers={"x-stepline-event-key": EVENT_KEY}) as client:

        async def reservations() -> set[int]:  # at once: every reader thread reads the name
            replies = await asyncio.gather(*(client.post(RESERVATIONS, json={"event": event, "usd": 1.0}) for _ in range(16)))
            return {reply.status_code for reply in replies}

        assert await reservations() == {200}  # no budget applies yet
        await make_engine(generate_app(priced(fake), stepline.Budget(limit_usd=5.0, period="1d", key="event.data.user_id")))
        assert await reservations() == {403}  # the deploy's budget applies: the API token is needed


async def test_reservation_requests_are_checked_and_an_event_without_budgets_only_files_its_usage(
    deploy, fake: FakeProvider
) -> None:
    llm = priced(fake)
    _, _, web = await deploy(llm, stepline.Budget(limit_usd=5.0, period="1d", key="event.data.user_id"))
    event = {"name": GENERATE, "data": {"user_id": "u1"}}
    bad_reservations = [
        ({}, "reservation.event"),
        ({"event": event, "usd": -1}, "reservation.usd"),
        ({"event": event, "tokens": 1.5}, "reservation.tokens"),
        ({"event": event, "ttl_s": 10**9}, "reservation.ttl_s"),
        ({"event": event, "budget": "x"}, "reservation: unknown field(s) ['budget']; it takes event, usd,"),
        ({"event": event, "ttl": 60}, "reservation: unknown field(s) ['ttl'] (did you mean 'ttl_s'?)"),
        ({"event": {"name": ""}}, "name"),
    ]
    for body, message in bad_reservations:
        response = await web.api.post(RESERVATIONS, json=body)
        assert response.status_code == 400 and message in response.json()["error"], (body, response.text)
    unbudgeted = await web.api.post(RESERVATIONS, json={"event": {"name": "other/thing", "user": {"id": "u9"}}, "usd": 1.0})
    assert unbudgeted.status_code == 200
    reserved = unbudgeted.json()
    assert reserved["holds"] == [] and reserved["user_id"] == "u9" and reserved["id"].startswith("direct:")
    settle = f"{RESERVATIONS}/{reserved['id']}/settle"
    bad_settles = [
        ("/api/v1/budget-reservations/run-1/settle", {}, "not a reservation id"),
        (settle, {"holds": [{"budget": BUDGET}]}, "settle.holds[0]"),
        (settle, {"usage": {"model": MODEL, "text": "hi"}}, "settle.usage: unknown field(s) ['text']"),
        (settle, {"hold": []}, "settle: unknown field(s) ['hold'] (did you mean 'holds'?)"),
        (settle, {"usage": {"model": MODEL, "usage": {"prompt_tokens": -1}}}, "settle.usage.usage.prompt_tokens"),
        (settle, {"user_id": "u9\n2026 forged"}, "settle.user_id 'u9\\n2026 forged' contains a control character"),
        (settle, {"user_id": "u\u202e9"}, "contains a bidirectional formatting character (U+202E)"),
    ]
    for path, body, message in bad_settles:
        response = await web.api.post(path, json=body)
        assert response.status_code == 400 and message in response.json()["error"], (body, response.text)
    usage = {"provider": "fake", "model": MODEL, "usage": {"prompt_tokens": 7, "completion_tokens": 3}, "cost_usd": 0.25}
    settled = await web.api.post(settle, json={"usd": 0.25, "tokens": 10, "user_id": "u9", "usage": usage})
    assert settled.json() == {"id": reserved["id"], "settled": 0}
    metrics = (await web.api.get("/api/v1/metrics", params={"window": "1h"})).json()
    assert [(u["user_id"], u["calls"], u["cost_usd"]) for u in metrics["usage_by_user"]] == [("u9", 1, 0.25)]


async def test_without_the_api_token_quick_calls_of_events_no_budget_applies_to_go_through(
    make_engine, serve, fake: FakeProvider  # noqa: F811
) -> None:
    """An app that declares no budgets needs no API token for its quick calls: the server
    tells an event-key client that nothing applies, and the call is made (not filed)."""
    llm = priced(fake)
    app = stepline.App("web")

    @app.function(id="generate", trigger=stepline.TriggerEvent(GENERATE), retries=0)
    async def generate(ctx: stepline.Context) -> str:
        return "queued"

    await make_engine(app)
    server = serve(options=PRODUCTION, run_worker=False)
    web = Web(server, llm, api_token=None)
    try:
        reply = await web.ask("u1")
        assert reply["status"] == "completed" and reply["route"] == "quick model"
        assert len(fake.requests) == 1
        metrics = (await web.api.get("/api/v1/metrics", params={"window": "1h"})).json()
        assert metrics["usage_by_user"] == []  # nothing filed without the token
        async with httpx.AsyncClient(base_url=server.url, headers={"x-stepline-event-key": EVENT_KEY}) as client:
            answer = await client.post(RESERVATIONS, json={"event": {"name": GENERATE, "data": {"user_id": "u1"}}, "usd": 1.0})
            assert answer.status_code == 200 and answer.json()["id"] is None and answer.json()["holds"] == []
            settle = await client.post(f"{RESERVATIONS}/direct:01ABC/settle", json={"usd": 5.0})
            assert settle.status_code == 401  # settling (adding spend) always needs the token
    finally:
        await web.close()
