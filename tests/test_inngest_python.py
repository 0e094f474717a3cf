"""The official Python SDK (FastAPI) against a Stepline server, over real HTTP on loopback:
the release pinned by the dev extra in this process, and the newest release from a venv of
its own (``.venv-sdk/``) in a process of its own."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.helpers import eventually
from tests.inngest_apps import py_app
from tests.inngest_apps.harness import (
    PY_SDK_HERE,
    PY_SDKS,
    PyAppProcess,
    Server,
    ThreadServer,
    free_port,
    python_with_sdk,
    stepline_server,
)

FN = py_app.APP_ID + "-"


@pytest.fixture(params=PY_SDKS)
async def env(
    request: pytest.FixtureRequest, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Server, py_app.Recorder | PyAppProcess]]:
    async with stepline_server(db_url) as server:
        if request.param != PY_SDK_HERE:
            with PyAppProcess(python_with_sdk(request.param), {"INNGEST_DEV": server.url}) as app:
                await server.sync(app.url)
                yield server, app
            return
        monkeypatch.setenv("INNGEST_DEV", server.url)  # the one setting an app needs to move
        rec = py_app.Recorder()
        port = free_port()
        with ThreadServer(py_app.build(rec), port):
            await server.sync(f"http://127.0.0.1:{port}/api/inngest")
            yield server, rec


async def test_sync_registers_functions_with_config(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    server, _ = env
    functions = {f["id"]: f for f in await server.engine.store.list_functions()}
    assert FN + "steps" in functions and FN + "nonretry-failure" in functions
    flaky = functions[FN + "flaky"]["config"]
    assert flaky["retries"] == 3 and flaky["app_id"] == "py-app"
    cancel = functions[FN + "cancellable"]["config"]["cancel_on"]
    assert cancel[0]["event"] == "py/stop"
    apps = server.runtime.list_apps()
    assert apps[0]["name"] == "py-app" and apps[0]["sdk"].startswith("py:") and apps[0]["error"] is None


async def test_step_run_memoized_and_output(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    server, rec = env
    event_id = await server.send("py/steps", {"name": "ada"})
    run = await server.finished((await server.run_for(event_id, FN + "steps"))["id"])
    assert run["status"] == "completed", run
    assert run["output"] == {"greeting": "hello ADA", "attempt": 0}
    assert rec.counts["steps.first"] == 1 and rec.counts["steps.second"] == 1
    assert [s["meta"]["inngest"]["name"] for s in run["steps"]] == ["first", "second"]
    assert [s["name"] for s in run["steps"]] == ["first", "second"]  # the names people read, not the hashes
    assert [s["output"] for s in run["steps"]] == ["ADA", "hello ADA"]


async def test_two_steps_sharing_an_id_fail_saying_so(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    server, _ = env
    event_id = await server.send("py/collide", {})
    run = await server.finished((await server.run_for(event_id, FN + "collide"))["id"])
    assert run["status"] == "failed", run
    assert "most likely two steps share an id" in run["error"]["message"], run["error"]


async def test_a_step_named_with_a_nul_runs_once_and_shows_it_replaced(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    server, rec = env
    event_id = await server.send("py/nul-name", {})
    run = await server.finished((await server.run_for(event_id, FN + "nul-name"))["id"])
    assert run["status"] == "completed", run
    assert [s["name"] for s in run["steps"]] == ["id\ufffdx"]
    assert rec.counts["nul-name.step"] == 1


async def test_a_step_returning_half_a_utf16_pair_gets_a_replacement_character(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    """As Inngest's server reads it (Go's JSON): the run failed as "the app reported no new step"."""
    server, _ = env
    event_id = await server.send("py/half-pair", {})
    run = await server.finished((await server.run_for(event_id, FN + "half-pair"))["id"])
    assert run["status"] == "completed", run
    assert run["output"] == "x\ufffdy" and run["steps"][0]["output"] == "x\ufffdy"


async def test_a_wait_with_a_bad_expression_fails_naming_the_users_step(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    server, _ = env
    event_id = await server.send("py/bad-wait", {})
    run = await server.finished((await server.run_for(event_id, FN + "bad-wait"))["id"])
    assert run["status"] == "failed", run
    assert "waitForEvent approval" in run["error"]["message"] and "async.data.id ==" in run["error"]["message"], run["error"]


async def test_sleep_suspends_and_resumes(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    server, rec = env
    event_id = await server.send("py/sleep")
    run_id = (await server.run_for(event_id, FN + "sleeper"))["id"]
    await server.status(run_id, "sleeping")
    run = await server.finished(run_id)
    assert run["status"] == "completed" and run["output"] == "1-1"
    assert rec.counts["sleep.before"] == 1 and rec.counts["sleep.after"] == 1
    kinds = [s["kind"] for s in run["steps"]]
    assert kinds == ["run", "sleep", "run"]


async def test_wait_for_event_match_and_timeout(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    server, _ = env
    matched = (await server.run_for(await server.send("py/wait", {"id": "a"}), FN + "waiter"))["id"]
    timed_out = (await server.run_for(await server.send("py/wait", {"id": "b"}), FN + "waiter"))["id"]
    await server.status(matched, "waiting")
    await server.send("py/approve", {"id": "other", "by": "nobody"})
    await server.send("py/approve", {"id": "a", "by": "grace"})
    run = await server.finished(matched)
    assert run["output"] == {"approved_by": "grace", "name": "py/approve"}
    run = await server.finished(timed_out)
    assert run["status"] == "completed" and run["output"] is None


async def test_invoke_returns_child_result(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    server, _ = env
    run_id = (await server.run_for(await server.send("py/parent", {"n": 21}), FN + "parent"))["id"]
    run = await server.finished(run_id)
    assert run["status"] == "completed", run
    assert run["output"] == {"child": {"doubled": 42, "event": "inngest/function.invoked"}}


async def test_send_event_starts_other_function(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    server, rec = env
    run = await server.finished((await server.run_for(await server.send("py/send", {"k": 7}), FN + "sender"))["id"])
    assert run["status"] == "completed" and len(run["output"]) == 1
    await eventually(lambda: _async(rec.counts["on-sent"] == 1), what="the sent event's function")
    assert rec.seen["on-sent"] == {"k": 7}


async def test_parallel_steps_fan_in(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    server, rec = env
    run = await server.finished((await server.run_for(await server.send("py/parallel"), FN + "parallel"))["id"])
    assert run["status"] == "completed", run
    assert run["output"] == [10, 20, 30, 60]
    assert [rec.counts[f"parallel.{n}"] for n in (1, 2, 3)] == [1, 1, 1]


async def test_an_id_repeated_in_a_loop_and_in_parallel(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    """Each repeat of a step id (the SDK's "item:1", ...) is its own step, run once, its value
    given back to its own call; a sleep_until in the past goes on at once."""
    server, rec = env
    run = await server.finished((await server.run_for(await server.send("py/repeated"), FN + "repeated"))["id"])
    assert run["status"] == "completed", run
    assert run["output"] == {"serial": [0, 10, 20], "parallel": ["p0", "p1", "p2"]}
    assert [rec.counts[f"repeated.{kind}.{i}"] for kind in ("item", "part") for i in range(3)] == [1] * 6
    hashed = {hashlib.sha1(n.encode()).hexdigest() for n in ("item", "item:1", "item:2", "part", "part:1", "part:2")}
    assert {s["id"] for s in run["steps"]} >= hashed


async def test_step_retries_until_success(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    server, rec = env
    run = await server.finished((await server.run_for(await server.send("py/flaky"), FN + "flaky"))["id"])
    assert run["status"] == "completed" and run["output"] == "ok after 3"
    assert rec.counts["flaky"] == 3
    step = run["steps"][0]
    assert step["attempts"] == 3 and [a["error"]["message"] for a in step["attempt_history"][:2]] == [
        "transient failure 1",
        "transient failure 2",
    ]


async def test_non_retriable_error_fails_at_once_and_runs_on_failure(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    server, rec = env
    run = await server.finished((await server.run_for(await server.send("py/nonretry"), FN + "nonretry"))["id"])
    assert run["status"] == "failed"
    assert rec.counts["nonretry"] == 1
    assert run["error"]["message"] == "permanent failure"
    await eventually(lambda: _async(rec.counts["nonretry.on_failure"] == 1), what="the on_failure handler")
    seen = rec.seen["nonretry.on_failure"]
    assert seen["name"] == "inngest/function.failed"
    assert seen["error"]["message"] == "permanent failure"


async def test_retry_after_waits_as_told(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    server, rec = env
    run = await server.finished((await server.run_for(await server.send("py/retry-after"), FN + "retry-after"))["id"])
    assert run["status"] == "completed" and run["output"] == "done"
    first, second = rec.seen["retry-after.times"]
    assert second - first >= 1.5  # asked for 2 s; the test base backoff is 20 ms


async def test_cancel_on_event_cancels_sleeping_run(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    server, rec = env
    run_id = (await server.run_for(await server.send("py/long", {"id": "x"}), FN + "cancellable"))["id"]
    await server.status(run_id, "sleeping")
    await server.send("py/stop", {"id": "y"})  # a cancel would commit with this event
    assert (await server.engine.get_run(run_id))["status"] == "sleeping"
    await server.send("py/stop", {"id": "x"})
    run = await server.finished(run_id)
    assert run["status"] == "cancelled"
    assert rec.counts["cancellable.start"] == 1 and rec.counts["cancellable.end"] == 0


async def _async(value: Any) -> Any:
    return value


async def test_function_level_error_retries_the_run(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    server, rec = env
    run = await server.finished((await server.run_for(await server.send("py/fn-retry"), FN + "fn-retry"))["id"])
    assert run["status"] == "completed", run
    assert run["output"] == {"attempt": 1, "before": 1}
    assert rec.counts["fn-retry.before"] == 1  # the memoized step did not run again
    assert [a["error"]["message"] for a in run["function_attempts"]] == ["flaky function body"]


async def test_step_error_caught_in_user_code(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    server, rec = env
    run = await server.finished((await server.run_for(await server.send("py/recover"), FN + "recover"))["id"])
    assert run["status"] == "completed", run
    assert run["output"] == "recovered from ValueError: no luck"
    assert rec.counts["recover.fails"] == 1
    assert [s["status"] for s in run["steps"]] == ["failed", "completed"]


async def test_invoked_child_failure_reaches_the_parent(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    server, _ = env
    run = await server.finished((await server.run_for(await server.send("py/careful-parent"), FN + "careful-parent"))["id"])
    assert run["status"] == "completed", run
    assert run["output"]["child_error"] == "child says no"  # the child's own message, as on Inngest


async def test_batch_delivers_events_together(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    server, _ = env
    ids = [await server.send("py/batched", {"n": n}) for n in range(3)]
    run = await server.finished((await server.run_for(ids[0], FN + "batched"))["id"])
    assert run["status"] == "completed", run
    assert run["output"] == [0, 1, 2]


async def test_invoke_endpoint_starts_a_function_directly(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    server, _ = env
    async with httpx.AsyncClient(base_url=server.url) as client:
        reply = (await client.post(f"/invoke/{FN}child", json={"data": {"n": 5}})).json()
        unknown = await client.post("/invoke/py-app-nope", json={"data": {}})
    run = await server.finished(reply["run_id"])
    assert run["status"] == "completed" and run["output"] == {"doubled": 10, "event": "inngest/function.invoked"}
    assert unknown.status_code == 404 and "could not find function" in unknown.json()["error"]


async def test_idempotency_and_rate_limit_skip_runs(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    server, _ = env
    orders = [await server.send("py/order", {"order": o}) for o in ("o1", "o1", "o2")]
    searches = [await server.send("py/search", {"q": q, "user": u}) for q, u in (("a", "u1"), ("b", "u1"), ("c", "u1"), ("d", "u2"))]
    await eventually(lambda: _finished_count(server, FN + "once-per-order", 2), what="two order runs")
    await eventually(lambda: _finished_count(server, FN + "rate-limited", 3), what="three search runs")
    assert sorted(r["output"] for r in await server.runs_of(FN + "once-per-order")) == ["o1", "o2"]
    assert sorted(r["output"] for r in await server.runs_of(FN + "rate-limited")) == ["a", "b", "d"]
    skipped = [(await server.engine.store.get_event(e))["skipped"] for e in [*orders, *searches]]
    assert skipped[1] == {FN + "once-per-order": "idempotent"}
    assert skipped[5] == {FN + "rate-limited": "rate_limited"}
    assert [s for i, s in enumerate(skipped) if i not in (1, 5)] == [{}] * 5


async def _finished_count(server: Server, function_id: str, count: int) -> bool:
    runs = await server.runs_of(function_id)
    return len([r for r in runs if r["status"] == "completed"]) >= count


async def test_inngest_rest_api_for_polling_results(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    """Apps often send an event, then poll Inngest's REST API for the run's output."""
    server, _ = env
    event_id = await server.send("py/steps", {"name": "rest"})
    async with httpx.AsyncClient(base_url=server.url) as client:

        async def completed() -> list[dict[str, Any]] | None:
            runs = (await client.get(f"/v1/events/{event_id}/runs")).json()["data"]
            return runs if runs and runs[0]["status"] == "Completed" else None

        runs = await eventually(completed, what="the REST API to report the run completed")
        assert runs[0]["output"] == {"greeting": "hello REST", "attempt": 0}
        assert runs[0]["function_id"] == FN + "steps" and runs[0]["event_id"] == event_id
        one = (await client.get(f"/v1/runs/{runs[0]['run_id']}")).json()["data"]
        assert one["status"] == "Completed"
        sleeping = (await server.run_for(await server.send("py/long", {"id": "z"}), FN + "cancellable"))["id"]
        await server.status(sleeping, "sleeping")
        assert (await client.delete(f"/v1/runs/{sleeping}")).status_code == 200
        assert (await server.finished(sleeping))["status"] == "cancelled"
        assert (await client.delete(f"/v1/runs/{runs[0]['run_id']}")).status_code == 409
        assert (await client.get("/v1/runs/nope")).status_code == 404


async def test_inngest_rest_api_bulk_cancellation(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    """``POST /v1/cancellations`` (Inngest's bulk cancel: app, function, start window, ``if``)
    answered 404, as did listing and deleting cancellations."""
    server, _ = env
    started = [(await server.run_for(await server.send("py/long", {"id": i}), FN + "cancellable"))["id"] for i in ("a", "b", "keep")]
    for run_id in started:
        await server.status(run_id, "sleeping")
    await asyncio.sleep(0.2)
    before = dt.datetime.now(dt.UTC)
    await asyncio.sleep(0.2)
    late = (await server.run_for(await server.send("py/long", {"id": "late"}), FN + "cancellable"))["id"]
    window = {"app_id": "py-app", "function_id": "cancellable", "started_before": before.isoformat().replace("+00:00", "Z")}
    async with httpx.AsyncClient(base_url=server.url) as client:
        refused = [
            (await client.post("/v1/cancellations", json={**window, "started_befor": "x"}), "started_befor"),
            (await client.post("/v1/cancellations", json={"app_id": "py-app", "function_id": "cancellable"}), "started_before is required"),
            (await client.post("/v1/cancellations", json={**window, "started_after": "2999-01-01T00:00:00Z"}), "started_after must be before"),
            (await client.post("/v1/cancellations", json={**window, "if": "event.data.id =="}), "if"),
        ]
        for reply, says in refused:
            assert reply.status_code == 400 and says in reply.json()["error"], reply.text
        unknown = await client.post("/v1/cancellations", json={**window, "function_id": "nope"})
        assert unknown.status_code == 404 and "no function 'nope' in app 'py-app'" in unknown.json()["error"]
        reply = await client.post("/v1/cancellations", json={**window, "if": "event.data.id != 'keep'"})
        assert reply.status_code == 200, reply.text
        made = reply.json()["data"]
        assert (made["kind"], made["function_id"], made["if"], made["cancelled"]) == ("bulk_run", FN + "cancellable", "event.data.id != 'keep'", 2)
        assert [(await server.finished(r))["status"] for r in started[:2]] == ["cancelled", "cancelled"]
        assert (await server.engine.get_run(started[2]))["status"] == "sleeping"  # its event fails the `if`
        assert (await server.engine.get_run(late))["status"] == "sleeping"  # started after the window
        listed = (await client.get("/v1/cancellations")).json()["data"]
        assert [c["id"] for c in listed] == [made["id"]]
        assert (await client.delete(f"/v1/cancellations/{made['id']}")).json()["data"] == {"ok": True}
        assert (await client.get("/v1/cancellations")).json()["data"] == []
        assert (await client.delete(f"/v1/cancellations/{made['id']}")).status_code == 404
        for run_id in (started[2], late):
            assert (await client.delete(f"/v1/runs/{run_id}")).status_code == 200


async def test_inngest_rest_api_run_jobs_app_functions_and_run_metadata(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    """``GET /v1/runs/{id}/jobs`` and ``GET /v1/apps/{app}/functions`` answered 404 (no route),
    and ``POST /v1/runs/{id}/metadata`` a 404 that did not say why."""
    server, _ = env
    done = (await server.run_for(await server.send("py/steps", {"name": "jobs"}), FN + "steps"))["id"]
    sleeping = (await server.run_for(await server.send("py/long", {"id": "jobs"}), FN + "cancellable"))["id"]
    await server.status(sleeping, "sleeping")
    await server.finished(done)
    async with httpx.AsyncClient(base_url=server.url) as client:
        reply = await client.get(f"/v1/runs/{sleeping}/jobs")
        assert reply.status_code == 200, reply.text
        [job] = reply.json()["data"]
        assert (job["JobID"], job["kind"], job["attempt"], job["Raw"]) == (sleeping, "sleep", 0, None)
        assert dt.datetime.fromisoformat(job["at"]) > dt.datetime.now(dt.UTC) and job["position"] >= 0
        assert (await client.get(f"/v1/runs/{done}/jobs")).json()["data"] == []  # ended: nothing queued
        assert (await client.get("/v1/runs/nope/jobs")).status_code == 404

        functions = (await client.get("/v1/apps/py-app/functions")).json()
        assert isinstance(functions, list)  # bare, as Inngest answers it
        listed = {f["id"]: f for f in functions}
        cancellable = listed[FN + "cancellable"]
        assert cancellable["config"]["id"] == FN + "cancellable" and cancellable["config"]["triggers"]
        assert cancellable["archived_at"] == "0001-01-01T00:00:00Z" and cancellable["name"]
        assert len({f["internal_id"] for f in functions}) == len(functions) and len({f["app_id"] for f in functions}) == 1
        assert (await client.get("/v1/apps/no-such-app/functions")).json() == []

        metadata = await client.post(f"/v1/runs/{sleeping}/metadata", json={"target": {}, "metadata": []})
        assert metadata.status_code == 403 and "run metadata is not kept" in metadata.json()["error"], metadata.text
        assert (await client.delete(f"/v1/runs/{sleeping}")).status_code == 200


async def test_inngest_rest_api_reads_an_event(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    """``GET /v1/events/{id}`` answered 404 for every event: apps read an event back by the id
    their send answered, in Inngest's shape."""
    server, _ = env
    event_id = await server.send("py/steps", {"name": "read"}, id="order-7", user={"email": "a@b.c"}, ts=1_700_000_000_000)
    plain_id = await server.send("py/steps", {"name": "plain"})
    async with httpx.AsyncClient(base_url=server.url) as client:
        reply = await client.get(f"/v1/events/{event_id}")
        assert reply.status_code == 200, reply.text
        event = reply.json()["data"]
        assert event["internal_id"] == event_id and event["id"] == "order-7"
        assert (event["name"], event["data"], event["user"], event["ts"]) == ("py/steps", {"name": "read"}, {"email": "a@b.c"}, 1_700_000_000_000)
        assert event["received_at"] and "fetched_at" in reply.json()["metadata"]
        plain = (await client.get(f"/v1/events/{plain_id}")).json()["data"]
        assert plain["id"] == plain_id and plain["data"] == {"name": "plain"} and "user" not in plain
        missing = await client.get("/v1/events/01JZZZZZZZZZZZZZZZZZZZZZZZ")
        assert missing.status_code == 404 and "no event" in missing.json()["error"]


async def test_inngest_rest_api_lists_events(env: tuple[Server, py_app.Recorder | PyAppProcess]) -> None:
    """``GET /v1/events`` answered 404: Inngest's list of the apps' events, newest first, by
    name and time, a page at a time (``cursor``: the last ``internal_id``), without the
    engine's own events (a run's end sends one)."""
    server, _ = env
    sent = [await server.send("py/steps", {"name": n}) for n in ("one", "two", "three")]
    await server.finished((await server.run_for(sent[-1], FN + "steps"))["id"])
    async with httpx.AsyncClient(base_url=server.url) as client:
        everything = (await client.get("/v1/events", params={"limit": 500})).json()["data"]
        assert [e["internal_id"] for e in everything] == sent[::-1], everything  # no stepline/function.finished
        first = (await client.get("/v1/events", params={"name": "py/steps", "limit": 2})).json()["data"]
        assert [e["data"]["name"] for e in first] == ["three", "two"]
        rest = (await client.get("/v1/events", params={"name": "py/steps", "cursor": first[-1]["internal_id"]})).json()["data"]
        assert [e["data"]["name"] for e in rest] == ["one"]
        later = (await client.get("/v1/events", params={"received_after": "2999-01-01T00:00:00Z"})).json()["data"]
        assert later == []
        bad = await client.get("/v1/events", params={"received_before": "yesterday"})
        assert bad.status_code == 400 and "received_before" in bad.json()["error"]
