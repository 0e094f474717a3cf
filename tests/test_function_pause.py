"""Pausing functions (queue and skip), bulk replay of failed runs, and what ties runs
together (cancel events, on_failure runs, invokes, replays), on both backends."""

from __future__ import annotations

from typing import Any

import stepline
from stepline.engine import Engine
from tests.helpers import eventually, runs_for_event, wait_run


def _app(counts: dict[str, int]) -> stepline.App:
    app = stepline.App("p")

    @app.function(id="work", trigger=stepline.TriggerEvent("p/work"))
    async def work(ctx: stepline.Context) -> int:
        counts["work"] = counts.get("work", 0) + 1
        return int(ctx.event.data.get("n", 0))

    @app.function(id="nap", trigger=stepline.TriggerEvent("p/nap"))
    async def nap(ctx: stepline.Context) -> str:
        await ctx.step.sleep("short", "300ms")
        counts["nap.after"] = counts.get("nap.after", 0) + 1
        return "woke"

    @app.function(id="other", trigger=stepline.TriggerEvent("p/work"))
    async def other(ctx: stepline.Context) -> str:
        counts["other"] = counts.get("other", 0) + 1
        return "other"

    return app


async def _run_of(engine: Engine, event_id: str, function_id: str) -> dict[str, Any]:
    runs = await eventually(lambda: _find(engine, event_id, function_id), what=f"a run of {function_id}")
    return runs


async def _find(engine: Engine, event_id: str, function_id: str) -> dict[str, Any] | None:
    return next((r for r in await runs_for_event(engine, event_id) if r["function_id"] == function_id), None)


async def test_queue_mode_holds_runs_across_a_restart_and_resume_runs_them_in_order(make_engine) -> None:
    counts: dict[str, int] = {}
    app = _app(counts)
    engine = await make_engine(app)
    paused = await engine.pause_function("work", "queue", reason="maintenance")
    assert paused["paused"]["mode"] == "queue"
    sent = [await engine.send({"name": "p/work", "data": {"n": n}}) for n in range(3)]
    held = [await _run_of(engine, event_id, "work") for event_id in sent]
    for run in held:
        await eventually(
            lambda run=run: _has_reason(engine, run["id"], "function_paused"), what="the run set aside by the pause"
        )
    # Other functions on the same events run as usual.
    for event_id in sent:
        await wait_run(engine, (await _run_of(engine, event_id, "other"))["id"], "completed")
    assert counts.get("work", 0) == 0
    overview = {f["id"]: f for f in await engine.store.functions_overview()}
    assert overview["work"]["paused"]["mode"] == "queue"
    assert overview["work"]["paused"]["reason"] == "maintenance"
    assert overview["other"]["paused"] is None

    # A new process on the same database: still paused, still held.
    await engine.stop(grace=1.0)
    counts.clear()
    engine = await make_engine(app)
    assert (await engine.store.paused_functions())["work"]["mode"] == "queue"
    late = await engine.send({"name": "p/work", "data": {"n": 3}})
    late_run = await _run_of(engine, late, "work")
    await eventually(lambda: _has_reason(engine, late_run["id"], "function_paused"), what="the later run held")
    assert counts.get("work", 0) == 0

    resumed = await engine.resume_function("work")
    assert resumed == {"function_id": "work", "was_paused": True, "resumed_runs": 4}
    done = [await wait_run(engine, r["id"], "completed") for r in [*held, late_run]]
    assert [d["output"] for d in done] == [0, 1, 2, 3]
    assert sorted(d["started_at"] for d in done) == [d["started_at"] for d in done]  # in the order they came
    assert counts["work"] == 4
    assert (await engine.store.paused_functions()) == {}


async def _has_reason(engine: Engine, run_id: str, reason: str) -> bool:
    run = await engine.get_run(run_id)
    return run["status"] == "queued" and run["wait_reason"] == reason


async def test_a_sleeping_run_that_wakes_while_paused_waits_for_the_resume(make_engine) -> None:
    counts: dict[str, int] = {}
    engine = await make_engine(_app(counts))
    run = (await runs_for_event(engine, await engine.send({"name": "p/nap"})))[0]
    await wait_run(engine, run["id"], "sleeping")
    await engine.pause_function("nap", "queue")
    await eventually(lambda: _has_reason(engine, run["id"], "function_paused"), what="the woken run held")
    assert counts.get("nap.after", 0) == 0
    await engine.resume_function("nap")
    done = await wait_run(engine, run["id"], "completed")
    assert done["output"] == "woke"
    assert counts["nap.after"] == 1


async def test_skip_mode_starts_no_runs_and_the_event_says_why(make_engine) -> None:
    counts: dict[str, int] = {}
    engine = await make_engine(_app(counts))
    await engine.pause_function("work", "skip")
    event_id = await engine.send({"name": "p/work", "data": {"n": 1}})
    await wait_run(engine, (await _run_of(engine, event_id, "other"))["id"], "completed")
    detail = await engine.store.event_detail(event_id)
    assert [r["function_id"] for r in detail["runs"]] == ["other"]
    assert {o["function_id"]: o["reason"] for o in detail["skipped_functions"]} == {"work": "function_paused"}
    # Switching to queue mode and resuming: later events run again; the skipped one stays skipped.
    await engine.pause_function("work", "queue")
    assert (await engine.store.paused_functions())["work"]["mode"] == "queue"
    await engine.resume_function("work")
    again = await engine.send({"name": "p/work", "data": {"n": 2}})
    assert (await wait_run(engine, (await _run_of(engine, again, "work"))["id"]))["output"] == 2
    assert counts["work"] == 1


async def test_pausing_an_unknown_function_or_mode_says_what_is_wrong(make_engine) -> None:
    engine = await make_engine(_app({}))
    try:
        await engine.pause_function("nope", "queue")
    except stepline.SteplineError as exc:
        assert "no function with id 'nope'" in str(exc)
    else:
        raise AssertionError("pausing an unknown function was accepted")
    try:
        await engine.pause_function("work", "hold")
    except stepline.SteplineError as exc:
        assert "mode: expected one of ['queue', 'skip']" in str(exc)
    else:
        raise AssertionError("an unknown mode was accepted")


async def test_bulk_replay_replays_each_failed_run_once(make_engine) -> None:
    app = stepline.App("b")
    fixed = {"yes": False}

    @app.function(id="fragile", trigger=stepline.TriggerEvent("b/go"), retries=0)
    async def fragile(ctx: stepline.Context) -> str:
        if not fixed["yes"]:
            raise stepline.NonRetriableError("broken")
        return "fine"

    engine = await make_engine(app)
    failed = []
    for _ in range(3):
        run = (await runs_for_event(engine, await engine.send({"name": "b/go"})))[0]
        failed.append(await wait_run(engine, run["id"], "failed"))
    fixed["yes"] = True
    first = await engine.bulk_replay("fragile")
    assert (first["matched"], first["replayed"], first["already_replayed"]) == (3, 3, 0)
    assert sorted(r["replay_of"] for r in first["runs"]) == sorted(r["id"] for r in failed)
    for item in first["runs"]:
        assert (await wait_run(engine, item["id"]))["output"] == "fine"
    second = await engine.bulk_replay("fragile")
    assert (second["matched"], second["replayed"], second["already_replayed"]) == (3, 0, 3)
    # A window that ends before the failures matches none of them.
    assert (await engine.bulk_replay("fragile", until_ms=1))["matched"] == 0
    links = await engine.store.run_links(failed[0]["id"])
    assert [(r["kind"], r["status"]) for r in links["replays"]] == [("replay", "completed")]


async def test_links_cancel_event_failure_handler_and_invoked_runs(make_engine) -> None:
    app = stepline.App("l")

    async def cleanup(ctx: stepline.Context) -> str:
        return "cleaned"

    @app.function(id="doomed", trigger=stepline.TriggerEvent("l/doomed"), retries=0, on_failure=cleanup)
    async def doomed(ctx: stepline.Context) -> None:
        raise stepline.NonRetriableError("no luck")

    @app.function(id="child", trigger=stepline.TriggerEvent("l/child"))
    async def child(ctx: stepline.Context) -> int:
        return 7

    @app.function(id="parent", trigger=stepline.TriggerEvent("l/parent"))
    async def parent(ctx: stepline.Context) -> int:
        return int(await ctx.step.invoke("call-child", function="child", data={}))

    @app.function(id="waiter", trigger=stepline.TriggerEvent("l/wait"),
                  cancel_on=[stepline.CancelOn("l/stop", match="data.job")])
    async def waiter(ctx: stepline.Context) -> None:
        await ctx.step.sleep("long", "1h")

    engine = await make_engine(app)
    failed = (await runs_for_event(engine, await engine.send({"name": "l/doomed"})))[0]
    await wait_run(engine, failed["id"], "failed")
    handler_runs = await eventually(
        lambda: _links(engine, failed["id"], "failure_handler_runs"), what="the on_failure run linked"
    )
    assert [r["function_id"] for r in handler_runs] == ["doomed-failure"]
    assert (await engine.store.run_links(handler_runs[0]["id"]))["handles_failure_of"]["id"] == failed["id"]

    top = (await runs_for_event(engine, await engine.send({"name": "l/parent"})))[0]
    assert (await wait_run(engine, top["id"]))["output"] == 7
    children = (await engine.store.run_links(top["id"]))["children"]
    assert [(c["function_id"], c["step"]) for c in children] == [("child", "call-child")]
    assert (await engine.store.run_links(children[0]["id"]))["parent"]["id"] == top["id"]

    sleeper = (await runs_for_event(engine, await engine.send({"name": "l/wait", "data": {"job": "j1"}})))[0]
    await wait_run(engine, sleeper["id"], "sleeping")
    stop_id = await engine.send({"name": "l/stop", "data": {"job": "j1"}})
    await wait_run(engine, sleeper["id"], "cancelled")
    assert [r["id"] for r in await engine.store.runs_cancelled_by(stop_id)] == [sleeper["id"]]
    assert (await engine.store.run_links(sleeper["id"]))["cancelled_by_event"] == stop_id


async def _links(engine: Engine, run_id: str, key: str) -> Any:
    return (await engine.store.run_links(run_id))[key]


async def test_search_finds_runs_events_functions_and_users(make_engine) -> None:
    engine = await make_engine(_app({}))
    event_id = await engine.send({"name": "p/work", "id": "order-42", "data": {"n": 1, "user_id": "u-search"}})
    run = await _run_of(engine, event_id, "work")
    await wait_run(engine, run["id"])
    by_id = await engine.store.search(run["id"])
    assert [r["id"] for r in by_id["runs"]] == [run["id"]]
    by_short = await engine.store.search(run["id"][-8:].lower())  # as lists show it, typed in lower case
    assert run["id"] in [r["id"] for r in by_short["runs"]]
    assert [e["id"] for e in (await engine.store.search(event_id))["events"]] == [event_id]
    assert [e["id"] for e in (await engine.store.search("order-42"))["events"]] == [event_id]  # the sender's id
    assert event_id in [e["id"] for e in (await engine.store.search("p/work"))["events"]]
    assert [f["id"] for f in (await engine.store.search("OTH"))["functions"]] == ["other"]
    assert (await engine.store.search("u-search"))["users"] == [{"user_id": "u-search", "runs": 2}]
    nothing = await engine.store.search("zzzz-none")
    assert (nothing["runs"], nothing["events"], nothing["functions"], nothing["users"]) == ([], [], [], [])


async def test_pause_holds_runs_handed_off_in_the_same_process(make_engine) -> None:
    """The hand-off (a run taken by this process's worker in the ingest) must not pass a pause."""
    counts: dict[str, int] = {}
    engine = await make_engine(_app(counts), handoff=True)
    await engine.pause_function("work", "queue")
    event_id = await engine.send({"name": "p/work", "data": {"n": 5}})
    run = await _run_of(engine, event_id, "work")
    await eventually(lambda: _has_reason(engine, run["id"], "function_paused"), what="the run held")
    assert counts.get("work", 0) == 0


async def test_cron_ticks_pass_in_skip_mode_and_wait_in_queue_mode(db_url: str) -> None:
    from stepline.testing import TestEngine

    app = stepline.App("c")
    ticks: list[str] = []

    @app.function(id="tick", trigger=stepline.TriggerCron("* * * * *"))
    async def tick(ctx: stepline.Context) -> None:
        ticks.append(ctx.run_id)

    async def next_tick_after(t: TestEngine, moment: int) -> bool:
        schedules = await t.engine.store.cron_schedules(["tick"])
        return bool(schedules) and schedules[0]["next_tick"] > moment

    async with TestEngine(app, db=db_url, start=1_800_000_000) as t:
        await t.engine.pause_function("tick", "skip")
        await t.advance("3m")
        # The cron loop (about once a second, on its own) takes the due tick and moves on.
        await eventually(lambda: next_tick_after(t, t.engine.store.now_ms()), what="the skipped tick to pass")
        assert await t.runs("tick") == []
        await t.engine.pause_function("tick", "queue")
        await t.advance("2m")
        held = await eventually(lambda: t.runs("tick"), what="the queued tick's run")
        await eventually(lambda: _has_reason(t.engine, held[0].id, "function_paused"), what="the tick's run held")
        assert ticks == []
        await t.engine.resume_function("tick")
        assert (await t.wait(held[0].id)).status == "completed" and ticks == [held[0].id]
