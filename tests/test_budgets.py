"""Cost budgets on ai.infer steps: reserve the worst case, settle to the cost, pause or
fail when a budget has no room, resume when it has. Real prices from the bundled table
(the fake provider priced as OpenAI), the fake provider on loopback, both backends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import stepline
from stepline import budgets as budgets_mod
from stepline.llm import LLM
from stepline.llm import budget as llm_budget
from stepline.store.records import Lease
from stepline.testing import FakeProvider, Reply, Reset, TestEngine, Truncate
from tests.helpers import eventually, runs_for_event, send_and_wait, wait_run

MODEL = "gpt-4o-mini"  # priced by the bundled genai-prices table as an OpenAI model
PROMPT = "How many legs does a spider have?"
MAX_TOKENS = 100


def priced(fake: FakeProvider) -> LLM:
    """The fake provider priced like OpenAI: costs come from the bundled price table."""
    return LLM([fake.provider("fake", pricing_id="openai", self_hosted=False)], default="fake", prices={})


def worst_case(llm: LLM) -> budgets_mod.Charge:
    """What one call of these tests reserves."""
    return llm_budget.spend(llm, MODEL, PROMPT, None, {"max_tokens": MAX_TOKENS}).worst


def chat_app(llm: LLM, *budgets: stepline.Budget, app_id: str = "budgets", stream: bool = False, **options: Any) -> stepline.App:
    app = stepline.App(app_id)

    @app.function(id="chat", trigger=stepline.TriggerEvent("chat/asked"), budgets=list(budgets), **options)
    async def chat(ctx: stepline.Context) -> dict[str, Any]:
        reply = await ctx.step.ai.infer("answer", model=MODEL, messages=PROMPT, llm=llm, max_tokens=MAX_TOKENS, stream=stream)
        return {"text": reply["text"], "cost_usd": reply["cost_usd"]}

    return app


def asked(user: str, **data: Any) -> dict[str, Any]:
    return {"name": "chat/asked", "data": {"user_id": user, **data}}


async def key_state(engine: Any, budget: str, key: str) -> dict[str, Any]:
    return await engine.store.budget_key(budget, key)


async def exceeded_events(engine: Any) -> list[dict[str, Any]]:
    return await engine.store.list_events(name=budgets_mod.EXCEEDED_EVENT)


# --- declaring ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"period": "1d"}, "give limit_usd, limit_tokens, or both"),
        ({"limit_usd": -1, "period": "1d"}, "Budget.limit_usd"),
        ({"limit_usd": "event.data.plan ==", "period": "1d"}, "Budget.limit_usd"),
        ({"limit_usd": 5, "period": "soon"}, "Budget.period"),
        ({"limit_usd": 5, "period": "1d", "scope": "env"}, "Budget.scope"),
        ({"limit_usd": 5, "period": "1d", "on_exceeded": "drop"}, "Budget.on_exceeded"),
        ({"limit_usd": 5, "period": "1d", "name": "per/user"}, "Budget.name"),
        ({"limit_tokens": 0, "period": "1d"}, "Budget.limit_tokens"),
    ],
)
def test_a_budget_declared_wrongly_fails_at_declaration(options: dict[str, Any], message: str) -> None:
    with pytest.raises(stepline.ConfigError, match=message):
        stepline.Budget(**options)


def test_budgets_are_named_after_their_owner_period_and_key() -> None:
    app = stepline.App("shop", budgets=[stepline.Budget(limit_usd=200.0, period="30d")])

    @app.function(id="chat", trigger=stepline.TriggerEvent("chat/asked"),
                  budgets=[stepline.Budget(limit_usd=5.0, period="1d", key="event.data.user_id")])
    async def chat(ctx: stepline.Context) -> None: ...

    names = [(b.name, b.scope) for b in chat.config.budgets]
    assert names == [("chat:1d:user_id", "fn"), ("shop:30d", "app")]
    assert chat.config.to_dict()["budgets"][0]["limit_usd"] == 5.0
    with pytest.raises(stepline.ConfigError, match="two budgets are named"):
        app.function(id="twice", trigger=stepline.TriggerEvent("x"),
                     budgets=[stepline.Budget(limit_usd=1, period="1d"), stepline.Budget(limit_tokens=10, period="1d")])


# --- reserve and settle --------------------------------------------------------------


async def test_a_call_reserves_its_worst_case_and_settles_to_its_cost(make_engine, fake: FakeProvider) -> None:
    llm = priced(fake)
    fake.script(Reply(text="Eight.", delay=0.5))
    engine = await make_engine(chat_app(llm, stepline.Budget(limit_usd=5.0, period="1d", key="event.data.user_id")))
    event_id = await engine.send(asked("u1"))
    worst = worst_case(llm)

    async def reserved() -> dict[str, Any] | None:
        state = await key_state(engine, "chat:1d:user_id", "u1")
        return state if state["reserved_usd"] > 0 else None

    during = await eventually(reserved, what="the call's reservation while it is in flight")
    assert during["reserved_usd"] == pytest.approx(worst.usd) and during["reserved_tokens"] == worst.tokens
    run = await wait_run(engine, (await runs_for_event(engine, event_id))[0]["id"])
    assert run["status"] == "completed"
    cost = run["output"]["cost_usd"]
    assert 0 < cost < worst.usd and run["steps"][0]["output"]["cost_source"] == "genai-prices"
    after = await key_state(engine, "chat:1d:user_id", "u1")
    usage = run["steps"][0]["output"]["usage"]
    assert after["spent_usd"] == pytest.approx(cost) and after["spent_tokens"] == usage["total_tokens"]
    assert (after["reserved_usd"], after["reserved_tokens"], after["calls"]) == (0, 0, 1)
    assert after["limit_usd"] == 5.0 and after["period_end"] - after["period_start"] == 86_400_000
    assert after["spent_usd"] == pytest.approx((await engine.store.run_usage(run["id"]))["cost_usd"], abs=1e-6)  # rounded there


async def test_fail_fails_the_step_at_once_without_calling_the_provider(make_engine, fake: FakeProvider) -> None:
    llm = priced(fake)
    tiny = worst_case(llm).usd / 2
    budget = stepline.Budget(limit_usd=tiny, period="1d", key="event.data.user_id", on_exceeded="fail")
    engine = await make_engine(chat_app(llm, budget, retries=3))
    first = await send_and_wait(engine, asked("u1"))
    second = await send_and_wait(engine, asked("u1"))
    for run in (first, second):
        assert run["status"] == "failed"
        step = run["steps"][0]
        assert step["status"] == "failed" and step["attempts"] == 1  # a NonRetriableError: no retries
        assert step["error"]["name"] == "BudgetExceeded"
        message = step["error"]["message"]
        assert "'chat:1d:user_id'" in message and "'u1'" in message and budgets_mod.usd(tiny) in message
    assert fake.requests == []
    events = await exceeded_events(engine)
    assert len(events) == 1  # once per budget, key and period
    data = events[0]["body"]["data"]
    assert (data["budget"], data["key"], data["on_exceeded"], data["function_id"]) == ("chat:1d:user_id", "u1", "fail", "chat")
    assert data["limit_usd"] == pytest.approx(tiny) and data["call_usd"] == pytest.approx(worst_case(llm).usd)


async def test_a_refusal_that_finds_several_budgets_exceeded_tells_of_each(make_engine, fake: FakeProvider) -> None:
    llm = priced(fake)
    per_user = stepline.Budget(limit_usd=0.0, period="1d", key="event.data.user_id", on_exceeded="fail")
    everyone = stepline.Budget(limit_tokens=1, period="1d", on_exceeded="fail")
    engine = await make_engine(chat_app(llm, per_user, everyone, retries=0))
    for _ in range(2):
        assert (await send_and_wait(engine, asked("u1")))["status"] == "failed"
    events = await exceeded_events(engine)
    # One event per budget, key and period: both budgets were over on the first call; none more on the second.
    assert sorted((e["body"]["data"]["budget"], e["body"]["data"]["key"]) for e in events) == [
        ("chat:1d", "*"), ("chat:1d:user_id", "u1"),
    ]
    assert all(e["body"]["data"]["run_id"] is not None for e in events)
    assert fake.requests == []


async def test_a_limit_can_depend_on_the_event(make_engine, fake: FakeProvider) -> None:
    llm = priced(fake)
    tiny = worst_case(llm).usd / 2
    budget = stepline.Budget(
        limit_usd=f'event.data.plan == "pro" ? 20.0 : {tiny!r}', period="1d", key="event.data.user_id", on_exceeded="fail"
    )
    engine = await make_engine(chat_app(llm, budget))
    free = await send_and_wait(engine, asked("free-user", plan="free"))
    pro = await send_and_wait(engine, asked("pro-user", plan="pro"))
    assert free["status"] == "failed" and pro["status"] == "completed"
    assert (await key_state(engine, "chat:1d:user_id", "pro-user"))["limit_usd"] == 20.0
    assert (await key_state(engine, "chat:1d:user_id", "free-user"))["limit_usd"] == pytest.approx(tiny)


# --- pause and resume ----------------------------------------------------------------


async def test_a_paused_run_holds_no_slot_and_resumes_when_its_limit_is_raised(make_engine, fake: FakeProvider) -> None:
    llm = priced(fake)
    worst = worst_case(llm)
    fake.on_model(MODEL, Reply(text="Eight legs.", completion_tokens=MAX_TOKENS))  # each call costs about its worst case
    budget = stepline.Budget(limit_tokens=worst.tokens + 10, period="1d", key="event.data.user_id")
    engine = await make_engine(chat_app(llm, budget, concurrency=[stepline.Concurrency(limit=1)]))
    assert (await send_and_wait(engine, asked("u1")))["status"] == "completed"

    paused = await send_and_wait(engine, asked("u1"), "waiting")
    assert paused["wait_reason"] == "budget_exceeded"
    detail = paused["budget"]
    assert (detail["budget"], detail["key"], detail["step"]) == ("chat:1d:user_id", "u1", "answer")
    assert detail["limit_tokens"] == worst.tokens + 10 and detail["call_tokens"] == worst.tokens
    assert detail["spent_tokens"] > 0 and detail["period_end"] > detail["period_start"]
    assert paused["steps"] == []  # the step has not begun: no attempt is spent on waiting
    # Concurrency 1, and the paused run holds no slot: another user's run goes ahead.
    assert (await send_and_wait(engine, asked("u2")))["status"] == "completed"
    assert len(fake.requests) == 2

    state = await engine.set_budget_limit("chat:1d:user_id", "u1", None, worst.tokens * 3)
    assert state["resumed_runs"] == [paused["id"]] and state["override"] == {"limit_usd": None, "limit_tokens": worst.tokens * 3}
    resumed = await wait_run(engine, paused["id"])
    assert resumed["status"] == "completed" and resumed["steps"][0]["attempts"] == 1
    assert "budget" not in resumed and len(fake.requests) == 3


async def test_a_settle_that_leaves_room_wakes_a_paused_run(make_engine, fake: FakeProvider) -> None:
    llm = priced(fake)
    worst = worst_case(llm)
    fake.script(Reply(text="Eight.", delay=0.6))  # the first call is slow; both cost far less than their worst case
    budget = stepline.Budget(limit_usd=worst.usd * 1.5, period="1d", key="event.data.user_id")
    engine = await make_engine(chat_app(llm, budget))
    first = (await runs_for_event(engine, await engine.send(asked("u1"))))[0]["id"]
    await eventually(lambda: len(fake.requests) == 1, what="the first call to be in flight")
    second = (await runs_for_event(engine, await engine.send(asked("u1"))))[0]["id"]
    await wait_run(engine, second, "waiting")  # the first call's reservation leaves no room
    assert (await wait_run(engine, first))["status"] == "completed"
    assert (await wait_run(engine, second))["status"] == "completed"  # woken by the first one's settle, same period
    state = await key_state(engine, "chat:1d:user_id", "u1")
    assert state["calls"] == 2 and state["spent_usd"] <= worst.usd * 1.5 and state["reserved_usd"] == 0


async def test_a_paused_run_resumes_when_the_period_rolls_over(db_url: str, fake: FakeProvider) -> None:
    llm = priced(fake)
    worst = worst_case(llm)
    fake.on_model(MODEL, Reply(text="Eight legs.", completion_tokens=MAX_TOKENS))
    budget = stepline.Budget(limit_tokens=worst.tokens + 10, period="1d", key="event.data.user_id")
    async with TestEngine(chat_app(llm, budget), db=db_url) as t:
        assert (await t.wait(await t.send(asked("u1")))).status == "completed"
        second = await t.send(asked("u1"))
        result = await t.result(second)
        assert (result.status, result.wait_reason) == ("waiting", "budget_exceeded")
        await t.advance("1d")  # the next period: the key has spent nothing yet
        assert (await t.wait(second)).status == "completed"
        assert len(fake.requests) == 2
        state = await t.engine.store.budget_key("chat:1d:user_id", "u1")
        assert state["calls"] == 1 and state["spent_tokens"] > 0  # this period's row: the second call alone


# --- many runs, one budget -----------------------------------------------------------


async def test_many_concurrent_runs_cannot_overshoot_a_small_budget(make_engine, fake: FakeProvider) -> None:
    """Two engines (two processes' workers) on one database, 40 runs at once against a
    budget with room for ten calls' worst cases: the spend never passes the limit."""
    llm = priced(fake)
    worst = worst_case(llm)
    fake.on_model(MODEL, Reply(text="Eight legs.", completion_tokens=MAX_TOKENS, delay=0.05))
    limit = worst.usd * 10.5
    budget = stepline.Budget(limit_usd=limit, period="1d", on_exceeded="fail")
    app = chat_app(llm, budget, retries=0)
    engines = [await make_engine(app), await make_engine(app)]
    sent = await asyncio.gather(*(engines[i % 2].send(asked(f"u{i}")) for i in range(40)))
    runs = [await wait_run(engines[0], (await runs_for_event(engines[0], e))[0]["id"]) for e in sent]
    completed = [r for r in runs if r["status"] == "completed"]
    refused = [r for r in runs if r["status"] == "failed"]
    assert len(completed) + len(refused) == 40
    assert all(r["steps"][0]["error"]["name"] == "BudgetExceeded" for r in refused)
    state = await key_state(engines[0], "chat:1d", "*")
    spent = sum(r["output"]["cost_usd"] for r in completed)
    assert state["spent_usd"] == pytest.approx(spent) and state["reserved_usd"] == 0
    overshoot = state["spent_usd"] - limit
    print(f"budget ${limit:.8f}: {len(completed)} calls ran, {len(refused)} refused, spent ${spent:.8f}, overshoot ${overshoot:.8f}")
    assert overshoot <= 1e-12  # never past the limit: each call cost less than its reservation
    assert len(completed) >= 10  # the first ten reservations always fit
    assert len(fake.requests) == len(completed)


# --- what a reservation outlives -----------------------------------------------------


async def test_a_reservation_stops_counting_once_its_run_loses_the_lease(make_engine, fake: FakeProvider) -> None:
    llm = priced(fake)
    app = chat_app(llm, stepline.Budget(limit_usd=5.0, period="1d", key="event.data.user_id"))
    engine = await make_engine(app, run_worker=False)
    await engine.send(asked("u1"))
    claimed, _ = await engine.store.claim("w-gone", ["chat"], 1, 30_000)
    run = claimed[0]
    lease = Lease(run.run_id, "w-gone", run.epoch)
    checks = budgets_mod.checks([b.to_dict() for b in app.functions[0].config.budgets], run.event)
    hold = await engine.store.reserve_budget(lease, run.run_id, "answer", 1, checks, budgets_mod.Charge(0.5, 1000), {})
    assert hold.refusal is None
    assert (await key_state(engine, "chat:1d:user_id", "u1"))["reserved_usd"] == 0.5
    await engine.store.release([lease])  # the worker crashed between reserve and settle; its lease is gone
    assert (await key_state(engine, "chat:1d:user_id", "u1"))["reserved_usd"] == 0
    # A stale reservation cannot be renewed by its old lease, and the next reservation clears it.
    with pytest.raises(stepline.LeaseLost):
        await engine.store.reserve_budget(lease, run.run_id, "answer", 1, checks, budgets_mod.Charge(0.5, 1000), {})
    hold = await engine.store.reserve_budget(None, "direct:x", "direct", 1, checks, budgets_mod.Charge(4.9, 10), {}, expires_at=engine.store.now_ms() + 60_000)
    assert hold.refusal is None  # 4.9 fits: the 0.5 left by the lost lease no longer counts


async def test_tokens_billed_to_a_failed_attempt_are_recorded_on_it_and_counted(make_engine, fake: FakeProvider) -> None:
    llm = priced(fake)
    text = " ".join(f"word{i}" for i in range(80))
    fake.script(Reset(after=6), Truncate(after=6), Reply(text="Eight."))  # two streams cut after output began
    engine = await make_engine(chat_app(llm, stepline.Budget(limit_usd=5.0, period="1d", key="event.data.user_id"), stream=True))
    fake.on_model(MODEL, Reply(text=text))
    run = await send_and_wait(engine, asked("u1"))
    assert run["status"] == "completed"
    step = run["steps"][0]
    assert step["attempts"] == 3
    billed = [a["error"]["billed"] for a in step["attempt_history"][:2]]
    for record in billed:
        assert record["usage"]["completion_tokens"] > 0 and record["cost_usd"] > 0 and record["estimated"] is True
    state = await key_state(engine, "chat:1d:user_id", "u1")
    assert state["calls"] == 3
    assert state["spent_usd"] == pytest.approx(run["output"]["cost_usd"] + sum(b["cost_usd"] for b in billed))
    usage = await engine.store.run_usage(run["id"])  # the cost views count them too
    assert usage["calls"] == 3 and usage["cost_usd"] == pytest.approx(state["spent_usd"], abs=1e-6)


# --- app budgets ---------------------------------------------------------------------


async def test_an_app_budget_is_one_spend_across_its_functions(make_engine, fake: FakeProvider) -> None:
    llm = priced(fake)
    worst = worst_case(llm)
    fake.on_model(MODEL, Reply(text="Eight legs.", completion_tokens=MAX_TOKENS))
    app = stepline.App(
        "shop", budgets=[stepline.Budget(limit_tokens=worst.tokens + 10, period="30d", key="event.data.user_id", on_exceeded="fail")]
    )

    for function_id, trigger in (("chat", "chat/asked"), ("summary", "summary/asked")):
        @app.function(id=function_id, trigger=stepline.TriggerEvent(trigger), retries=0)
        async def ask(ctx: stepline.Context) -> str:
            reply = await ctx.step.ai.infer("answer", model=MODEL, messages=PROMPT, llm=llm, max_tokens=MAX_TOKENS)
            return str(reply["text"])

    engine = await make_engine(app)
    assert (await send_and_wait(engine, asked("u1")))["status"] == "completed"
    summary = await send_and_wait(engine, {"name": "summary/asked", "data": {"user_id": "u1"}})
    assert summary["status"] == "failed" and "'shop:30d:user_id'" in summary["steps"][0]["error"]["message"]
    assert (await send_and_wait(engine, {"name": "summary/asked", "data": {"user_id": "u2"}}))["status"] == "completed"
    listing = await engine.store.budgets()
    assert [b["name"] for b in listing["budgets"]] == ["shop:30d:user_id"]
    assert sorted(listing["budgets"][0]["functions"]) == ["chat", "summary"]
    assert {(k["key"], k["calls"]) for k in listing["data"]} == {("u1", 1), ("u2", 1)}
