"""on_failure, event de-duplication, idempotency, triggers with `if`."""

from __future__ import annotations

import logging

import pytest

import stepline
from tests.helpers import eventually, runs_for_event, send_and_wait, wait_run


async def test_on_failure_runs_once_with_the_original_event_and_the_error(make_engine) -> None:
    app = stepline.App("t")
    seen: list[dict] = []

    async def handle_failure(ctx: stepline.Context) -> None:
        seen.append({"name": ctx.event.name, **ctx.event.data})

    @app.function(id="doomed", trigger=stepline.TriggerEvent("t/doomed"), retries=1, on_failure=handle_failure)
    async def doomed(ctx: stepline.Context) -> None:
        await ctx.step.run("explode", lambda: 1 / 0)

    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "t/doomed", "data": {"job": "j9"}})
    assert run["status"] == "failed"
    await eventually(lambda: _done_runs(engine, "doomed-failure"), what="the on_failure run")
    assert len(seen) == 1  # the handler's run has ended, and nothing starts another
    failure = seen[0]
    assert failure["name"] == "stepline/function.failed"
    assert failure["function_id"] == "doomed" and failure["run_id"] == run["id"]
    assert failure["event"]["data"] == {"job": "j9"}
    assert failure["error"]["name"] == "StepError" and "division by zero" in failure["error"]["message"]


async def test_a_failing_on_failure_handler_is_logged_not_looped(make_engine, caplog) -> None:
    app = stepline.App("t")
    calls = 0

    async def broken_handler(ctx: stepline.Context) -> None:
        nonlocal calls
        calls += 1
        raise stepline.NonRetriableError("the failure handler itself failed")

    @app.function(id="doomed", trigger=stepline.TriggerEvent("t/doomed"), retries=0, on_failure=broken_handler)
    async def doomed(ctx: stepline.Context) -> None:
        raise stepline.NonRetriableError("first failure")

    engine = await make_engine(app)
    with caplog.at_level(logging.ERROR, logger="stepline.executor"):
        await send_and_wait(engine, {"name": "t/doomed"})
        failed = await eventually(lambda: _done_runs(engine, "doomed-failure"), what="the handler run")
    assert failed[0]["status"] == "failed"  # ended: an on_failure handler is never retried
    assert calls == 1
    assert len(await engine.list_runs()) == 2  # the run and its handler, nothing more
    assert "on_failure handler doomed-failure failed" in caplog.text


async def _done_runs(engine, function_id: str) -> list:  # type: ignore[no-untyped-def]
    runs = await engine.list_runs(function_id=function_id)
    return [r for r in runs if r["status"] in ("completed", "failed", "cancelled")]


async def test_events_with_an_id_are_deduplicated(make_engine) -> None:
    app = stepline.App("t")

    @app.function(id="once", trigger=stepline.TriggerEvent("t/once"))
    async def once(ctx: stepline.Context) -> None:
        return None

    engine = await make_engine(app)
    first = await engine.send({"name": "t/once", "id": "order-7"})
    second = await engine.send({"name": "t/once", "id": "order-7"})
    third = await engine.send({"name": "t/once", "id": "order-8"})
    assert first == second != third
    await runs_for_event(engine, third)
    await eventually(lambda: _done_runs(engine, "once"), what="runs")
    assert len(await engine.list_runs(function_id="once")) == 2


async def test_an_id_reused_by_an_event_of_another_name_keeps_both_events(make_engine) -> None:
    """A sender reusing a business id for two kinds of event (an order's id for its creation
    and its shipping) lost the second: de-duplication by id alone answered it with the first
    event's id. An id de-duplicates events of its name; each kind's own resends still count
    once, in a request of several too, whichever of the two was sent last."""
    app = stepline.App("t")

    @app.function(id="created", trigger=stepline.TriggerEvent("t/order.created"))
    async def created(ctx: stepline.Context) -> str:
        return str(ctx.event.data["what"])

    @app.function(id="shipped", trigger=stepline.TriggerEvent("t/order.shipped"))
    async def shipped(ctx: stepline.Context) -> str:
        return str(ctx.event.data["what"])

    engine = await make_engine(app)
    made = await engine.send({"name": "t/order.created", "id": "order-9", "data": {"what": "made"}})
    sent = await engine.send({"name": "t/order.shipped", "id": "order-9", "data": {"what": "sent"}})
    assert made != sent
    assert await engine.send({"name": "t/order.created", "id": "order-9", "data": {"what": "made"}}) == made
    assert await engine.send({"name": "t/order.shipped", "id": "order-9", "data": {"what": "sent"}}) == sent
    again = await engine.send_many([
        {"name": "t/order.shipped", "id": "order-9", "data": {"what": "sent"}},
        {"name": "t/order.created", "id": "order-9", "data": {"what": "made"}},
        {"name": "t/order.paid", "id": "order-9", "data": {"what": "paid"}},
        {"name": "t/order.paid", "id": "order-9", "data": {"what": "paid"}},
    ])
    assert again[:2] == [sent, made] and again[2] == again[3] not in (made, sent)
    for event_id, function_id, output in ((made, "created", "made"), (sent, "shipped", "sent")):
        (run,) = await runs_for_event(engine, event_id)
        assert (await wait_run(engine, run["id"], "completed"))["output"] == output
        assert len(await engine.list_runs(function_id=function_id)) == 1


async def test_idempotency_key_starts_one_run_per_key(make_engine) -> None:
    app = stepline.App("t")

    @app.function(id="idem", trigger=stepline.TriggerEvent("t/idem"), idempotency="event.data.user_id")
    async def idem(ctx: stepline.Context) -> None:
        return None

    engine = await make_engine(app)
    ids = [await engine.send({"name": "t/idem", "data": {"user_id": u}}) for u in ("a", "a", "b")]
    await eventually(lambda: _done_count(engine, "idem", 2), what="two runs")
    skipped = await engine.store.get_event(ids[1])
    assert skipped["runs"] == [] and skipped["skipped"] == {"idem": "idempotent"}


async def _done_count(engine, function_id: str, n: int) -> bool:  # type: ignore[no-untyped-def]
    return len(await _done_runs(engine, function_id)) == n


async def test_trigger_if_filters_events(make_engine) -> None:
    app = stepline.App("t")

    @app.function(id="vip", trigger=stepline.TriggerEvent("t/order", if_="event.data.total >= 100"))
    async def vip(ctx: stepline.Context) -> int:
        return int(ctx.event.data["total"])

    engine = await make_engine(app)
    small = await engine.send({"name": "t/order", "data": {"total": 5}})
    missing = await engine.send({"name": "t/order", "data": {}})  # a missing field is "no match"
    big = await engine.send({"name": "t/order", "data": {"total": 150}})
    run = (await runs_for_event(engine, big))[0]
    assert (await wait_run(engine, run["id"]))["output"] == 150
    assert (await engine.store.get_event(small))["runs"] == []
    assert (await engine.store.get_event(missing))["runs"] == []


async def test_events_list_in_one_request_are_all_or_nothing(make_engine) -> None:
    app = stepline.App("t")
    engine = await make_engine(app)
    try:
        await engine.send_many([{"name": "t/ok"}, {"data": {}}])
    except stepline.EventError as exc:
        assert "event[1]" in str(exc) and "'name' is required" in str(exc)
    else:
        raise AssertionError("a list with a bad event must be refused")
    assert await engine.store.list_events() == []


async def test_wildcard_triggers_match_by_prefix(make_engine) -> None:
    app = stepline.App("t")

    @app.function(id="audit", trigger=stepline.TriggerEvent("app/user.*"))
    async def audit(ctx: stepline.Context) -> str:
        return ctx.event.name

    @app.function(id="everything", trigger=stepline.TriggerEvent("app/*"))
    async def everything(ctx: stepline.Context) -> str:
        return ctx.event.name

    engine = await make_engine(app)
    created = await engine.send({"name": "app/user.created"})
    billed = await engine.send({"name": "app/billing.paid"})
    other = await engine.send({"name": "other/user.created"})
    assert sorted(r["function_id"] for r in await runs_for_event(engine, created, 2)) == ["audit", "everything"]
    assert [r["function_id"] for r in await runs_for_event(engine, billed)] == ["everything"]
    assert (await engine.store.get_event(other))["runs"] == []
    with pytest.raises(stepline.ConfigError, match="wildcard"):
        stepline.TriggerEvent("app/*/created")
