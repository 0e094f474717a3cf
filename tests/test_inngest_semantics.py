"""Round-two semantics with the official SDKs, every version the suite pins (TS 4.x and 3.x,
Python's pinned and newest releases): priority behind a concurrency limit, batchEvents.if,
sleeps side by side, function.finished and function.cancelled, early continuation,
step names, future-dated events."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.helpers import eventually
from tests.inngest_apps import py_app
from tests.inngest_apps.harness import (
    PY_SDK_HERE,
    PY_SDKS,
    TS_SDKS,
    AppControl,
    NodeApp,
    PyAppProcess,
    Server,
    ThreadServer,
    free_port,
    python_with_sdk,
    stepline_server,
)

SDKS = [f"ts-{v}" for v in TS_SDKS] + [f"py-{v}" for v in PY_SDKS]


class App:
    """One SDK app under test, whichever its language: its names, what it did, its gates."""

    def __init__(self, language: str, control: AppControl) -> None:
        self.language = language
        self.prefix = f"{language}-app-"
        self.control = control

    def fn(self, name: str) -> str:
        return self.prefix + name

    def event(self, name: str) -> str:
        return f"{self.language}/{name}"

    async def seen(self, name: str) -> Any:
        return (await self.control.counts())["seen"].get(name)

    async def count(self, name: str) -> int:
        return int((await self.control.counts())["counts"].get(name) or 0)


@contextlib.asynccontextmanager
async def sdk_app(server: Server, sdk: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[App]:
    """The test app of ``sdk`` (``ts-v4``, ``py-0.5.19``, ...) pointed at ``server`` and synced."""
    language, version = sdk.split("-", 1)
    if language == "ts":
        with NodeApp({"INNGEST_DEV": server.url}, sdk=version) as node:
            await server.sync(node.url)
            yield App("ts", AppControl(node.port))
    elif version == PY_SDK_HERE:
        monkeypatch.setenv("INNGEST_DEV", server.url)
        port = free_port()
        with ThreadServer(py_app.build(py_app.Recorder()), port):
            await server.sync(f"http://127.0.0.1:{port}/api/inngest")
            yield App("py", AppControl(port))
    else:
        with PyAppProcess(python_with_sdk(version), {"INNGEST_DEV": server.url}) as proc:
            await server.sync(proc.url)
            yield App("py", AppControl(proc.port))


@pytest.fixture(params=SDKS)
async def env(request: pytest.FixtureRequest, db_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Server, App]]:
    async with stepline_server(db_url) as server, sdk_app(server, str(request.param), monkeypatch) as app:
        yield server, app


async def _waiting_behind_limit(server: Server, run_ids: list[str]) -> bool:
    reasons = [(await server.engine.get_run(r))["wait_reason"] for r in run_ids]
    return reasons == ["concurrency_limited"] * len(run_ids)


async def test_priority_orders_runs_waiting_behind_a_concurrency_limit(env: tuple[Server, App]) -> None:
    server, app = env
    first = (await server.run_for(await server.send(app.event("vip"), {"name": "first"}), app.fn("vip-queue")))["id"]
    await eventually(lambda: app.seen("vip.order"), what="the first run to hold the only slot")
    waiting = []
    for name, vip in (("a", False), ("b", False), ("vip", True)):
        event_id = await server.send(app.event("vip"), {"name": name, "vip": vip})
        waiting.append((await server.run_for(event_id, app.fn("vip-queue")))["id"])
    await eventually(lambda: _waiting_behind_limit(server, waiting), what="the runs to wait behind the limit")
    await app.control.open_gate("vip")
    for run_id in [first, *waiting]:
        assert (await server.finished(run_id))["status"] == "completed"
    assert await app.seen("vip.order") == ["first", "vip", "a", "b"]


async def test_batch_if_lets_refused_events_run_alone(env: tuple[Server, App]) -> None:
    server, app = env
    batched = await server.send(app.event("batch-if"), {"n": 1, "batch": True})
    alone = await server.send(app.event("batch-if"), {"n": 2, "batch": False})
    run = await server.finished((await server.run_for(alone, app.fn("batch-if")))["id"])
    assert run["status"] == "completed" and run["output"] == [2], run
    for n in (3, 4):
        await server.send(app.event("batch-if"), {"n": n, "batch": True})
    run = await server.finished((await server.run_for(batched, app.fn("batch-if")))["id"])
    assert run["output"] == [1, 3, 4], run


async def test_every_event_of_a_batch_lists_its_run_in_the_rest_api(env: tuple[Server, App]) -> None:
    """``GET /v1/events/{id}/runs`` (what apps poll for a result) listed a batched run only
    under the batch's first event: the others answered no run, however long one polled.
    A batch's run carries Inngest's ``batch_id`` (it had none); a run outside any batch none."""
    server, app = env
    sent = [await server.send(app.event("batch-if"), {"n": n, "batch": True}) for n in (1, 2, 3)]
    run = await server.finished((await server.run_for(sent[0], app.fn("batch-if")))["id"])
    assert run["output"] == [1, 2, 3], run
    async with httpx.AsyncClient(base_url=server.url) as client:
        for event_id in sent:
            runs = (await client.get(f"/v1/events/{event_id}/runs")).json()["data"]
            assert [(r["run_id"], r["status"], r["output"]) for r in runs] == [(run["id"], "Completed", [1, 2, 3])], event_id
            assert runs[0]["batch_id"] == run["id"], runs  # Inngest's mark of a batch's run
        assert (await client.get(f"/v1/runs/{run['id']}")).json()["data"]["batch_id"] == run["id"]
        alone = await server.send(app.event("batch-if"), {"n": 4, "batch": False})  # the batch's `if` refuses it
        alone_run = await server.finished((await server.run_for(alone, app.fn("batch-if")))["id"])
        assert alone_run["output"] == [4], alone_run
        shown = (await client.get(f"/v1/runs/{alone_run['id']}")).json()["data"]
        assert shown["status"] == "Completed" and "batch_id" not in shown, shown  # in no batch, as on Inngest


async def _both_sleeping(server: Server, run_id: str) -> list[str] | None:
    run = await server.engine.get_run(run_id)
    names = sorted(s["name"] for s in run["steps"] if s["status"] == "sleeping")
    return names if len(names) == 2 else None


async def test_two_sleeps_in_one_parallel_block_suspend_together(env: tuple[Server, App]) -> None:
    server, app = env
    run_id = (await server.run_for(await server.send(app.event("naps")), app.fn("two-naps")))["id"]
    assert await eventually(lambda: _both_sleeping(server, run_id), what="both sleeps taken at once") == ["long-nap", "short-nap"]
    run = await server.finished(run_id)
    assert run["status"] == "completed" and run["output"] == "awake", run


async def _both_waiting(server: Server, run_id: str) -> bool:
    run = await server.engine.get_run(run_id)
    return sorted(s["name"] for s in run["steps"] if s["status"] == "waiting") == ["wait-a", "wait-b"]


async def test_two_waits_in_one_parallel_block_listen_together(env: tuple[Server, App]) -> None:
    server, app = env
    run_id = (await server.run_for(await server.send(app.event("waits"), {"id": "w1"}), app.fn("two-waits")))["id"]
    await eventually(lambda: _both_waiting(server, run_id), what="both waits registered at once")
    await server.send(app.event("b"), {"id": "w1", "n": 2})  # the second wait's event comes first
    await server.send(app.event("a"), {"id": "w1", "n": 1})
    run = await server.finished(run_id)
    assert run["status"] == "completed" and run["output"] == [1, 2], run


async def test_function_finished_and_cancelled_reach_sdk_functions(env: tuple[Server, App]) -> None:
    server, app = env
    event_id = await server.send(app.event("steps"), {"name": "ada"})
    done = await server.finished((await server.run_for(event_id, app.fn("steps")))["id"])
    heard = await eventually(lambda: app.seen("finished"), what="inngest/function.finished to start on-finished")
    assert [{k: h[k] for k in ("run_id", "result", "status")} for h in heard] == [
        {"run_id": done["id"], "result": done["output"], "status": "Completed"}
    ]
    long_run = (await server.run_for(await server.send(app.event("long"), {"id": "x"}), app.fn("cancellable")))["id"]
    await server.status(long_run, "sleeping")
    await server.send(app.event("stop"), {"id": "x"})
    assert (await server.finished(long_run))["status"] == "cancelled"
    cancelled = await eventually(lambda: app.seen("cancelled"), what="inngest/function.cancelled to start on-cancelled")
    assert [c["run_id"] for c in cancelled] == [long_run]


async def test_steps_show_their_names_not_hashes(env: tuple[Server, App]) -> None:
    server, app = env
    run = await server.finished((await server.run_for(await server.send(app.event("sleep")), app.fn("sleeper")))["id"])
    assert [(s["name"], s["kind"]) for s in run["steps"]] == [("before", "run"), ("nap", "sleep"), ("after", "run")]
    assert all(len(s["id"]) == 40 for s in run["steps"])  # still keyed by the SDK's hashed ids


async def test_a_future_dated_event_schedules_the_run(env: tuple[Server, App]) -> None:
    server, app = env
    ts = int(time.time() * 1000) + 1500
    run = await server.run_for(await server.send(app.event("steps"), {"name": "later"}, ts=ts), app.fn("steps"))
    assert (run["status"], run["wait_reason"]) == ("queued", "scheduled")
    done = await server.finished(run["id"])
    assert done["status"] == "completed" and done["output"]["greeting"] == "hello LATER"
    assert dt.datetime.fromisoformat(done["started_at"]) >= dt.datetime.fromtimestamp(ts / 1000, dt.UTC)  # not before ts


async def test_an_on_failure_handler_is_retried_as_its_sdk_registers_it(env: tuple[Server, App]) -> None:
    """Inngest runs onFailure as the function ``<id>-failure``, with the retries its SDK
    registers: one in TypeScript, none in Python. The handler here throws the first time."""
    server, app = env
    run = await server.run_for(await server.send(app.event("failing-failure")), app.fn("failing-failure"))
    assert (await server.finished(run["id"]))["status"] == "failed"
    (handler,) = await eventually(lambda: server.runs_of(app.fn("failing-failure-failure")), what="the onFailure run")
    ended = await server.finished(handler["id"])
    if app.language == "ts":
        assert ended["status"] == "completed" and await app.count("failing-failure.onFailure") == 2
    else:
        assert ended["status"] == "failed" and await app.count("failing-failure.onFailure") == 1


@pytest.fixture(params=PY_SDKS)
async def py_env(request: pytest.FixtureRequest, db_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Server, App]]:
    async with stepline_server(db_url) as server, sdk_app(server, f"py-{request.param}", monkeypatch) as app:
        yield server, app


async def test_python_race_mode_lets_each_chain_advance_on_its_own(py_env: tuple[Server, App]) -> None:
    """ParallelMode.RACE: a chain of steps advances while a sibling step still runs."""
    server, app = py_env
    run_id = (await server.run_for(await server.send("py/chains"), app.fn("chains")))["id"]
    await eventually(lambda: app.count("chains.quick-2"), what="the quick chain's second step, the slow step still running")
    assert (await server.engine.get_run(run_id))["status"] == "running"
    await app.control.open_gate("chains")
    run = await server.finished(run_id)
    assert run["status"] == "completed" and run["output"] == ["q1q2", "slow"], run


@pytest.fixture
async def ts4_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Server, App]]:
    async with stepline_server(db_url) as server, sdk_app(server, "ts-v4", monkeypatch) as app:
        yield server, app


async def test_realtime_publish_reaches_the_run_stream(ts4_env: tuple[Server, App]) -> None:
    """TS 4.x ``step.realtime.publish`` and ``inngest.realtime.publish`` inside a step: the
    messages land on the run's stream (they once failed the run with 404 after 5 attempts)."""
    server, app = ts4_env
    run = await server.finished((await server.run_for(await server.send("ts/publish", {"id": "j1"}), app.fn("publisher")))["id"])
    assert run["status"] == "completed" and run["output"] == "published", run
    messages = await server.engine.store.run_messages(run["id"])
    assert [(m["topic"], m["data"]) for m in messages] == [("status", {"message": "started"}), ("tokens", "Hel"), ("tokens", "lo")]
    async with httpx.AsyncClient(base_url=server.url) as client:
        stream = (await client.get(f"/api/v1/runs/{run['id']}/stream", timeout=10)).text
        streamed = [json.loads(line[5:]) for line in stream.splitlines() if line.startswith("data:") and '"topic"' in line]
        assert [m["data"] for m in streamed] == [{"message": "started"}, "Hel", "lo"]
        outside = await client.post("/v1/realtime/publish?channel=c&topic=t", json={"x": 1})
        token = await client.post("/v1/realtime/token", json=[{"channel": "c", "name": "t", "kind": "run"}])
        ended = await client.post(f"/v1/realtime/publish?channel=c&topic=t&run_id={run['id']}", json={"late": True})
        hostile = [await client.post("/v1/realtime/publish", params={"channel": "c", "topic": topic, "run_id": run["id"]}, json={})
                   for topic in ("t\x1b[2J", "t\n2026 forged", "t\u202e", "t" * 300)]
    assert outside.status_code == 400 and "publish from inside a function run" in outside.json()["error"]
    assert token.status_code == 501 and "/api/v1/runs/{run_id}/stream" in token.json()["error"]
    assert ended.status_code == 409 and "is completed" in ended.json()["error"]
    for reply, says in zip(hostile, ("control character", "control character", "bidirectional", "STEPLINE_MAX_NAME_BYTES"), strict=True):
        assert reply.status_code == 400 and says in reply.json()["error"], reply.text
