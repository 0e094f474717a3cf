"""The official TypeScript SDK against a Stepline server, over loopback: 4.x on node:http
and 3.x (still most production apps) on Express, the same app written against each."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from stepline.testing import FakeProvider
from tests.helpers import eventually
from tests.inngest_apps.harness import TS_SDKS, NodeApp, Server, stepline_server

FN = "ts-app-"


@pytest.fixture(params=TS_SDKS)
def sdk(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def env(db_url: str, sdk: str) -> AsyncIterator[tuple[Server, NodeApp]]:
    async with stepline_server(db_url) as server:
        with NodeApp({"INNGEST_DEV": server.url}, sdk=sdk) as node:  # the one setting an app needs to move
            await server.sync(node.url)
            yield server, node


async def _run(server: Server, name: str, function: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    event_id = await server.send(name, data or {})
    return await server.finished((await server.run_for(event_id, FN + function))["id"])


async def test_sync_registers_functions(env: tuple[Server, NodeApp]) -> None:
    server, _ = env
    functions = {f["id"]: f["config"] for f in await server.engine.store.list_functions()}
    assert FN + "steps" in functions and FN + "nonretry-failure" in functions
    assert functions[FN + "flaky"]["retries"] == 3
    assert functions[FN + "throttled"]["throttle"]["limit"] == 1
    assert functions[FN + "limited"]["concurrency"][0]["limit"] == 1
    assert functions[FN + "debounced"]["debounce"]["period"] == 1.0
    # concurrency as most TS code writes it, an object (it was once stored as [] and not enforced)
    assert functions[FN + "vip-queue"]["concurrency"] == [{"limit": 1, "key": None, "scope": "fn"}]
    assert functions[FN + "per-user"]["concurrency"] == [{"limit": 2, "key": "event.data.user", "scope": "fn"}]
    assert functions[FN + "batch-if"]["batch_events"]["if"] == "event.data.batch == true"
    assert server.runtime.list_apps()[0]["sdk"].startswith("js:")


async def test_cancel_on_until_a_date_ends_then_for_every_run(env: tuple[Server, NodeApp]) -> None:
    """A ``cancelOn`` whose ``timeout`` is a Date (sent as an RFC 3339 time) listened for the
    time between the sync and that moment, counted from each run's start; on Inngest, and now
    here, it listens until that moment."""
    server, _ = env
    until = int(dt.datetime(2030, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
    functions = {f["id"]: f["config"] for f in await server.engine.store.list_functions()}
    assert functions[FN + "cancel-until"]["cancel_on"][0]["until_ms"] == until
    event_id = await server.send("ts/cancel-until", {"id": "c1"})
    run_id = (await server.run_for(event_id, FN + "cancel-until"))["id"]
    await server.status(run_id, "sleeping")
    expiry = await server.engine.store.db.read(
        lambda conn: conn.scalar("SELECT expires_at FROM waits WHERE run_id = ? AND step_key IS NULL", (run_id,))
    )
    assert expiry == until
    await server.send("ts/cancel-until.stop", {"id": "c1"})
    assert (await server.finished(run_id))["status"] == "cancelled"


@pytest.mark.parametrize("sdk", ["v4"], indirect=True)  # defer() exists in the TypeScript SDK 4.x only
async def test_defer_fails_the_run_naming_the_op(env: tuple[Server, NodeApp]) -> None:
    """``defer()`` (TS 4, experimental) sends ``DeferAdd``, which was dropped without a word: the
    run completed and the deferred run never started. Now the run fails, naming the op."""
    server, _ = env
    run = await _run(server, "ts/defer", "deferrer")
    assert run["status"] == "failed", run
    assert run["error"]["name"] == "UnsupportedStep", run["error"]
    assert "defer()" in run["error"]["message"] and "DeferAdd (defer 'later')" in run["error"]["message"], run["error"]
    assert run["attempt"] == 0  # refused once, not retried


async def test_step_run_and_output(env: tuple[Server, NodeApp]) -> None:
    server, node = env
    run = await _run(server, "ts/steps", "steps", {"name": "ada"})
    assert run["status"] == "completed", run
    assert run["output"] == {"greeting": "hello ADA", "attempt": 0}
    counts = (await node.counts())["counts"]
    assert counts["steps.first"] == 1 and counts["steps.second"] == 1


async def test_sleep(env: tuple[Server, NodeApp]) -> None:
    server, _ = env
    run = await _run(server, "ts/sleep", "sleeper")
    assert run["status"] == "completed" and run["output"] == "1-1"
    assert [s["kind"] for s in run["steps"]] == ["run", "sleep", "run"]


async def test_wait_for_event_match_and_timeout(env: tuple[Server, NodeApp]) -> None:
    server, _ = env
    matched = (await server.run_for(await server.send("ts/wait", {"id": "a"}), FN + "waiter"))["id"]
    timed_out = (await server.run_for(await server.send("ts/wait", {"id": "b"}), FN + "waiter"))["id"]
    await server.status(matched, "waiting")
    await server.send("ts/approve", {"id": "a", "by": "grace"})
    assert (await server.finished(matched))["output"] == {"approvedBy": "grace", "name": "ts/approve"}
    run = await server.finished(timed_out)
    assert run["status"] == "completed" and run["output"] is None


async def test_invoke(env: tuple[Server, NodeApp]) -> None:
    server, _ = env
    run = await _run(server, "ts/parent", "parent", {"n": 21})
    assert run["status"] == "completed", run
    assert run["output"] == {"child": {"doubled": 42, "event": "inngest/function.invoked"}}


async def test_errors_the_server_makes_reach_user_code_named(env: tuple[Server, NodeApp]) -> None:
    """An invoke that times out, and one of a function nobody registered, fail in user code
    with their name and message: the SDK's schema refuses an error whose stack is null,
    and its code then sees only "Unknown error"."""
    server, _ = env
    run = await _run(server, "ts/invoke-errors", "invoke-errors")
    assert run["status"] == "completed", run
    timed_out, missing = run["output"]["timedOut"], run["output"]["missing"]
    assert "Timed out waiting for invoked function" in timed_out["message"], timed_out
    assert "nope-nothing" in missing["message"] and "Unknown error" not in missing["message"], missing


async def test_an_invoked_runs_failure_reaches_the_parent_as_reported(env: tuple[Server, NodeApp]) -> None:
    """The parent's StepError carries the child's own message and cause (Inngest resumes the
    invoke with the child's error as reported), not the engine's summary of the run's end."""
    server, _ = env
    event_id = await server.send("ts/checkout", {"order": "o1"})
    parent = await server.run_for(event_id, FN + "checkout")

    async def child_sleeping() -> bool:
        runs = await server.runs_of(FN + "stoppable")
        return bool(runs) and runs[0]["status"] == "sleeping"

    await eventually(child_sleeping, what="the invoked run to sleep")
    await server.send("ts/stoppable.stop", {"order": "o1"})
    run = await server.finished(parent["id"])
    assert run["status"] == "completed", run
    pay, wait = run["output"]["pay"], run["output"]["wait"]
    assert pay["message"] == "payment declined", pay
    assert pay["cause"]["message"] == "card_declined: insufficient funds", pay  # (TS 3 names every cause "Error")
    assert wait["message"] == "cancelled by event 'ts/stoppable.stop' (cancel_on)", wait


async def test_inngests_own_cel_functions_in_if_expressions(env: tuple[Server, NodeApp]) -> None:
    """date(), now_minus() in a trigger's `if` and lowercase() in a wait's `if` mean what they
    mean on Inngest (they failed on every event before: no run, no match)."""
    server, _ = env
    now = dt.datetime.now(dt.UTC)
    stale = await server.send("ts/signup", {"at": (now - dt.timedelta(days=3)).isoformat(), "email": "old@example.com"})
    fresh = await server.send("ts/signup", {"at": now.isoformat(), "email": "Ada@Example.com"})
    run = await server.run_for(fresh, FN + "verify-email")
    assert (await server.engine.store.get_event(stale))["runs"] == []  # signed up too long ago: condition false
    await server.status(run["id"], "waiting")
    await server.send("ts/email.clicked", {"email": "someone@example.com"})
    await server.send("ts/email.clicked", {"email": "ada@example.COM"})
    done = await server.finished(run["id"])
    assert done["status"] == "completed" and done["output"] == "verified ada@example.COM", done


async def test_invokes_meet_the_invoked_functions_flow_control(env: tuple[Server, NodeApp]) -> None:
    """A second invoke over a rate limit, with a used idempotency key, or beside a running
    singleton (skip) fails at once in user code, naming the function and the rule."""
    server, _ = env
    run = await _run(server, "ts/flow-invoker", "flow-invoker")
    assert run["status"] == "completed", run
    out = run["output"]
    skipped = f"InvokeSkipped: invoke: function '{FN}"
    assert out["rateLimited"][0] == "ran for u1" and out["rateLimited"][1].startswith(skipped + "rate-limited' started no run: its rate limit")
    assert out["idem"][0] == "ran for k1" and out["idem"][1].startswith(skipped + "idem' started no run: its idempotency key")
    assert sorted(out["single"], key=len)[0] == "ran"
    assert sorted(out["single"], key=len)[1].startswith(skipped + "single-skip' started no run: a run with key")
    for function in ("rate-limited", "idem", "single-skip"):
        assert len(await server.engine.list_runs(function_id=FN + function)) == 1, function


async def test_send_event(env: tuple[Server, NodeApp]) -> None:
    server, node = env
    run = await _run(server, "ts/send", "sender", {"k": 7})
    assert run["status"] == "completed" and len(run["output"]["ids"]) == 1
    seen = await eventually(lambda: _seen(node, "on-sent"), what="the sent event's function")
    assert seen == {"k": 7}


async def test_parallel_fan_in(env: tuple[Server, NodeApp]) -> None:
    server, node = env
    run = await _run(server, "ts/parallel", "parallel")
    assert run["status"] == "completed", run
    assert run["output"] == [10, 20, 30, 60]
    counts = (await node.counts())["counts"]
    assert [counts[f"parallel.{n}"] for n in (1, 2, 3)] == [1, 1, 1]


async def test_an_id_repeated_in_a_loop_and_in_parallel(env: tuple[Server, NodeApp]) -> None:
    """Each repeat of a step id (the SDK's "item:1", ...) is its own step, run once, its value
    given back to its own call; a sleepUntil in the past goes on at once."""
    server, node = env
    run = await _run(server, "ts/repeated", "repeated")
    assert run["status"] == "completed", run
    assert run["output"] == {"serial": [0, 10, 20], "parallel": ["p0", "p1", "p2"]}
    counts = (await node.counts())["counts"]
    assert [counts[f"repeated.{kind}.{i}"] for kind in ("item", "part") for i in range(3)] == [1] * 6
    assert {s["id"] for s in run["steps"]} >= {_sha1(n) for n in ("item", "item:1", "item:2", "part", "part:1", "part:2")}


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


async def test_retries_until_success(env: tuple[Server, NodeApp]) -> None:
    server, node = env
    run = await _run(server, "ts/flaky", "flaky")
    assert run["status"] == "completed" and run["output"] == "ok after 3"
    assert (await node.counts())["counts"]["flaky"] == 3


async def test_non_retriable_and_on_failure(env: tuple[Server, NodeApp]) -> None:
    server, node = env
    run = await _run(server, "ts/nonretry", "nonretry")
    assert run["status"] == "failed" and run["error"]["message"] == "permanent failure"
    assert (await node.counts())["counts"]["nonretry"] == 1
    seen = await eventually(lambda: _seen(node, "nonretry.onFailure"), what="onFailure")
    # The failed run's event, whole, as Inngest sends it: `user` an object even when the event had none.
    assert seen == {"name": "inngest/function.failed", "message": "permanent failure", "user": {}}


async def test_retry_after(env: tuple[Server, NodeApp]) -> None:
    server, node = env
    run = await _run(server, "ts/retry-after", "retry-after")
    assert run["status"] == "completed" and run["output"] == "done"
    first, second = (await node.counts())["seen"]["retry-after.times"]
    assert second - first >= 1.5


async def test_cancel_on(env: tuple[Server, NodeApp]) -> None:
    server, node = env
    run_id = (await server.run_for(await server.send("ts/long", {"id": "x"}), FN + "cancellable"))["id"]
    await server.status(run_id, "sleeping")
    await server.send("ts/stop", {"id": "y"})  # a cancel would commit with this event
    assert (await server.engine.get_run(run_id))["status"] == "sleeping"
    await server.send("ts/stop", {"id": "x"})
    assert (await server.finished(run_id))["status"] == "cancelled"
    assert "cancellable.end" not in (await node.counts())["counts"]


async def test_double_arithmetic_on_whole_number_fields(env: tuple[Server, NodeApp]) -> None:
    """``event.data.total * 1.1`` with ``total: 100`` (JSON numbers are doubles on Inngest) was
    a CEL type error here, int times double: the trigger never fired, the wait never matched."""
    server, _ = env
    run_id = (await server.run_for(await server.send("ts/order", {"total": 100}), FN + "big-order"))["id"]
    await server.status(run_id, "waiting")
    await server.send("ts/order.paid", {"amount": 40})  # under half: no match
    await server.send("ts/order.paid", {"amount": 60})
    run = await server.finished(run_id)
    assert (run["status"], run["output"]) == ("completed", 60), run
    small = await server.send("ts/order", {"total": 90})  # 99.0: the trigger's `if` is false
    assert (await server.engine.store.get_event(small))["runs"] == []


async def test_a_wildcard_over_inngest_names_hears_system_events(env: tuple[Server, NodeApp]) -> None:
    """A trigger ``inngest/function.*`` (one function for every ending, as Inngest's wildcards
    allow) was matched as written, against names the engine never sends: it never ran."""
    server, node = env
    ok = await _run(server, "ts/wild-target", "wild-target")
    failed = await _run(server, "ts/wild-target", "wild-target", {"fail": True})
    assert (ok["status"], failed["status"]) == ("completed", "failed")
    expected = sorted([
        ("inngest/function.finished", ok["id"]),
        ("inngest/function.finished", failed["id"]),
        ("inngest/function.failed", failed["id"]),
    ])

    async def heard() -> list[tuple[str, str]] | None:
        got = sorted((w["name"], w["run_id"]) for w in (await node.counts())["seen"].get("wild", []))
        return got if len(got) >= len(expected) else None

    assert await eventually(heard, timeout=20, what="the wildcard function to hear both endings") == expected


async def test_a_step_that_throws_undefined_fails_as_error_undefined(env: tuple[Server, NodeApp]) -> None:
    """``throw undefined`` in a step failed the run with KeyError 'stack' (Stepline's own
    traceback as the error), message "None", and one more attempt of the whole function
    after the step had failed for good."""
    server, node = env
    for function, tries in (("throw-undefined", 1), ("throw-undefined-retried", 3)):
        run = await _run(server, f"ts/{function}", function)
        assert run["status"] == "failed", run
        assert (run["error"]["name"], run["error"]["message"]) == ("Error", "undefined"), run["error"]
        assert "Traceback" not in str(run["error"]) and "KeyError" not in str(run["error"]), run["error"]
        (step,) = run["steps"]
        assert step["status"] == "failed" and step["attempts"] == tries, step
        assert (step["error"]["name"], step["error"]["message"]) == ("Error", "undefined"), step
        assert run["function_attempts"] == [] and run["attempt"] == 0, run  # no attempt of the function after the step's
        assert (await node.counts())["counts"][function] == tries


async def test_a_step_over_the_output_limit_is_named_as_the_app_names_it(env: tuple[Server, NodeApp]) -> None:
    """The error named the step by the hash the SDK sends as its id."""
    server, _ = env
    run = await _run(server, "ts/big-step", "big-step")
    assert run["status"] == "failed", run
    assert "step 'make-it-big' returned" in run["error"]["message"] and "over the step output limit" in run["error"]["message"], run["error"]


async def test_finish_timeout_cancels_a_sleeping_or_waiting_run(env: tuple[Server, NodeApp]) -> None:
    server, node = env
    for data in ({}, {"wait": True}):
        run = await _run(server, "ts/finish-timeout", "finish-timeout", data)
        assert run["status"] == "cancelled" and run["error"]["name"] == "FinishTimeout", run
        assert _seconds(run["ended_at"]) - _seconds(run["started_at"]) < 6, run  # at the deadline (2 s), not in an hour
        assert [s["status"] for s in run["steps"]] == ["cancelled"], run["steps"]
    assert "finish-timeout.after" not in (await node.counts())["counts"]


def _seconds(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


async def _seen(node: NodeApp, name: str) -> Any:
    return (await node.counts())["seen"].get(name)


async def test_throttle_spaces_run_starts_per_key(env: tuple[Server, NodeApp]) -> None:
    server, _ = env
    ids = [await server.send("ts/throttled", {"user": "u1", "n": n}) for n in range(3)]
    other = await server.send("ts/throttled", {"user": "u2"})
    runs = [await server.finished((await server.run_for(i, FN + "throttled"))["id"]) for i in [*ids, other]]
    assert all(r["status"] == "completed" for r in runs), runs
    starts = sorted(_seconds(r["started_at"]) for r in runs[:3])
    # 1 per second for u1: each start no earlier than its slot (a start made late by load
    # does not move the next slot, so two starts may be closer than a second)
    assert starts[1] - starts[0] >= 0.95 and starts[2] - starts[0] >= 1.95, starts
    # u2 has its own budget: not queued behind u1's slots (as the fourth, it would start after all three)
    assert _seconds(runs[3]["started_at"]) < starts[2], (starts, runs[3]["started_at"])


async def test_concurrency_limit_serializes_steps(env: tuple[Server, NodeApp]) -> None:
    server, _ = env
    ids = [await server.send("ts/limited", {"n": n}) for n in range(3)]
    runs = [await server.finished((await server.run_for(i, FN + "limited"))["id"]) for i in ids]
    spans = sorted((r["output"]["start"], r["output"]["end"]) for r in runs)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 0.01, spans  # never two at once


async def test_debounce_runs_once_with_last_event(env: tuple[Server, NodeApp]) -> None:
    server, node = env
    for n in range(3):
        await server.send("ts/debounced", {"user": "u1", "n": n})
    seen = await eventually(lambda: _seen(node, "debounced"), timeout=10, what="the debounced run")
    assert seen == {"user": "u1", "n": 2}

    async def completed() -> list[dict[str, Any]]:
        runs = await server.runs_of(FN + "debounced")
        return runs if runs and all(r["status"] == "completed" for r in runs) else []

    runs = await eventually(completed, timeout=10, what="the debounced run to complete")
    # Its window closed with it: no debounce is left to start another run.
    assert await server.engine.store.db.read(lambda conn: conn.scalar("SELECT COUNT(*) AS n FROM debounces")) == 0
    assert len(runs) == 1
    assert (await node.counts())["counts"]["debounced"] == 1


async def test_streamed_replies_and_large_state_endpoints(db_url: str) -> None:
    """INNGEST_STREAMING makes the app answer 201 and stream the real reply; the run's state
    is also readable the way an SDK reads it when the request would be too large."""
    async with stepline_server(db_url) as server:
        with NodeApp({"INNGEST_DEV": server.url, "INNGEST_STREAMING": "true"}) as node:
            await server.sync(node.url)
            run = await _run(server, "ts/steps", "steps", {"name": "ada"})
            assert run["status"] == "completed" and run["output"]["greeting"] == "hello ADA", run
            async with httpx.AsyncClient() as client:
                batch = (await client.get(f"{server.url}/v0/runs/{run['id']}/batch")).json()
                actions = (await client.get(f"{server.url}/v0/runs/{run['id']}/actions")).json()
                missing = await client.get(f"{server.url}/v0/runs/nope/batch")
            assert [e["name"] for e in batch] == ["ts/steps"] and batch[0]["data"] == {"name": "ada"}
            assert sorted(v["data"] for v in actions.values()) == ["ADA", "hello ADA"]
            assert all(len(k) == 40 for k in actions)  # the SDK's hashed step ids
            assert missing.status_code == 404


async def test_ai_infer_and_fetch_are_made_by_the_server(env: tuple[Server, NodeApp]) -> None:
    server, _ = env
    with FakeProvider() as provider:
        data = {"q": "ping", "baseUrl": provider.openai_base_url, "fetchUrl": f"{server.url}/health"}
        run = await _run(server, "ts/ask", "asker", data)
        assert run["status"] == "completed", run
        assert "ping" in run["output"]["answer"]
        assert run["output"]["fetched"] == 200 and '"status"' in run["output"]["body"]
        assert len(provider.requests) == 1  # memoized: the replayed steps did not call it again
    ask = next(s for s in run["steps"] if s["kind"] == "ai.infer")
    assert ask["meta"]["model"] and ask["meta"]["usage"]["prompt_tokens"] > 0


async def test_parallel_model_calls_take_a_concurrency_slot_each(env: tuple[Server, NodeApp]) -> None:
    """``concurrency: {limit: 2, key}`` over ``Promise.all`` of 5 ``step.ai.infer``: as on
    Inngest, each step executing takes a slot, so the provider never sees more than 2 of a
    user's calls at once, across that user's runs; each call is made once."""
    server, _ = env
    with FakeProvider(latency=0.2) as provider:
        data = {"user": "u1", "baseUrl": provider.openai_base_url}
        ids = [await server.send("ts/fan-ask", data) for _ in range(2)]
        runs = [await server.finished((await server.run_for(i, FN + "fan-ask"))["id"], timeout=60) for i in ids]
        assert [r["status"] for r in runs] == ["completed"] * 2, runs
        assert 1 <= provider.most_at_once <= 2, provider.most_at_once
        assert len(provider.requests) == 10  # memoized: none made again
    assert all(len(r["output"]) == 5 and all("q" in answer for answer in r["output"]) for r in runs), runs


async def test_promise_race_continues_when_the_first_branch_settles(env: tuple[Server, NodeApp]) -> None:
    """Inngest's early continuation (v4: group.parallel race mode; v3: its default): the step
    after the race runs while the slow branch is still running; the slow branch's step is
    still committed before the run ends."""
    server, node = env
    run_id = (await server.run_for(await server.send("ts/race"), FN + "racer"))["id"]
    await eventually(lambda: _count(node, "race.after"), what="the step after the race, with the slow branch still running")
    assert (await node.counts())["counts"].get("race.slow") is None
    assert (await server.engine.get_run(run_id))["status"] == "running"  # it waits for the slow branch to end
    await node.open_gate("race")
    run = await server.finished(run_id)
    assert run["status"] == "completed" and run["output"] == "winner: fast", run
    steps = {s["name"]: s for s in run["steps"]}
    assert steps["slow"]["status"] == "completed" and steps["slow"]["output"] == "slow"
    assert [s["name"] for s in run["steps"]].index("fast") < [s["name"] for s in run["steps"]].index("after")


async def _count(node: NodeApp, name: str) -> int:
    return int((await node.counts())["counts"].get(name) or 0)


async def test_failed_parallel_step_is_raised_in_user_code(env: tuple[Server, NodeApp]) -> None:
    server, _ = env
    run = await _run(server, "ts/parallel-fail", "parallel-fail")
    assert run["status"] == "completed", run
    assert run["output"] == "caught Error: bad branch"
    bad = next(s for s in run["steps"] if s["status"] == "failed")
    assert bad["error"]["message"] == "bad branch" and bad["error"].get("__serialized") is True


async def test_cron_function_gets_the_scheduled_timer_event(env: tuple[Server, NodeApp]) -> None:
    server, _ = env
    store = server.engine.store
    (schedule,) = await store.cron_schedules([FN + "nightly"])
    assert schedule["cron"] == "0 3 * * *" and schedule["timezone"] == "Europe/Paris"
    run_id = await store.fire_cron(FN + "nightly", schedule["position"], schedule["next_tick"], schedule["next_tick"] + 86_400_000)
    assert run_id is not None  # the tick the worker's cron loop would fire at 03:00 Paris time
    run = await server.finished(run_id)
    assert run["status"] == "completed", run
    # As Inngest sends it: the schedule as declared (an app with several tells them apart by
    # it, TZ= included) and the tick's time, which names the event too
    tick = dt.datetime.fromtimestamp(schedule["next_tick"] / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert run["output"] == {"event": "inngest/scheduled.timer", "id": tick, "cron": "TZ=Europe/Paris 0 3 * * *", "scheduledAt": tick}


async def test_parallel_branch_retries_alone(env: tuple[Server, NodeApp]) -> None:
    server, node = env
    run = await _run(server, "ts/parallel-retry", "parallel-retry")
    assert run["status"] == "completed" and run["output"] == "ab", run
    counts = (await node.counts())["counts"]
    assert counts["pr.steady"] == 1 and counts["pr.wobbly"] == 2


async def test_wait_for_signal_resumed_by_send_signal(env: tuple[Server, NodeApp]) -> None:
    server, _ = env
    run_id = (await server.run_for(await server.send("ts/await-signal", {"id": "7"}), FN + "signal-waiter"))["id"]
    await server.status(run_id, "waiting")
    sender = await _run(server, "ts/send-signal", "signal-sender", {"id": "7", "by": "grace"})
    assert sender["status"] == "completed" and sender["output"] == {"runId": run_id}, sender
    run = await server.finished(run_id)
    assert run["status"] == "completed" and run["output"] == {"signal": "approve-7", "data": {"by": "grace"}}, run
    async with httpx.AsyncClient() as client:
        nobody = await client.post(f"{server.url}/v1/signals", json={"signal": "approve-8", "data": {}})
    assert nobody.status_code == 404


async def test_wait_beside_the_send_that_causes_the_reply(env: tuple[Server, NodeApp]) -> None:
    server, _ = env
    started = time.monotonic()
    run = await _run(server, "ts/start-ping", "pinger", {"id": "p1"})
    assert run["status"] == "completed" and run["output"] == {"id": "p1", "pong": True}, run
    assert time.monotonic() - started < 15  # the reply was caught, not the 20 s timeout


async def _step_output(server: Server, run_id: str, name: str) -> Any:
    run = await server.engine.get_run(run_id)
    step = next((s for s in run["steps"] if s["name"] == name and s["status"] == "completed"), None)
    return None if step is None else step["output"]


async def test_the_function_goes_on_past_a_race_a_wait_lost(env: tuple[Server, NodeApp]) -> None:
    """The step after the race runs at once, not when the losing wait times out (in an hour).
    The run itself ends when the SDK says so: TS 3 at once; TS 4, as on Inngest, only once the
    losing wait is resolved too (it reports it until then)."""
    server, node = env
    run_id = (await server.run_for(await server.send("ts/race-wait"), FN + "race-wait"))["id"]
    after = await eventually(lambda: _step_output(server, run_id, "after-wait"), what="the step after the race")
    assert after == "winner: quick"
    if node.sdk == "v3":
        assert (await server.finished(run_id))["output"] == "winner: quick"


async def test_a_wait_raced_against_a_sleep_goes_on_when_the_event_comes(env: tuple[Server, NodeApp]) -> None:
    server, _ = env
    run_id = (await server.run_for(await server.send("ts/approval", {"id": "r1"}), FN + "approval"))["id"]
    await server.status(run_id, "waiting")
    await server.send("ts/approved", {"id": "r1", "by": "grace"})
    decided = await eventually(lambda: _step_output(server, run_id, "decide"), what="the decision, not after the hour-long sleep")
    assert decided == "approved by grace"
