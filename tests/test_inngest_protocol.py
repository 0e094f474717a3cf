"""Replies the official SDKs rarely send, from a scripted fake app: RunComplete, the legacy
Step op, empty replies, answers without the SDK header, stream framing; and an app that
is down when its run is due."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.helpers import eventually
from tests.inngest_apps.harness import Server, ThreadServer, free_port, stepline_server

SDK = {"x-inngest-sdk": "inngest-js:v4.24.0", "x-inngest-req-version": "2"}


def h(step: str) -> str:
    return hashlib.sha1(step.encode()).hexdigest()


class FakeApp:
    """Answers call requests from a script per function; records the bodies it got."""

    def __init__(self) -> None:
        self.calls: dict[str, list[dict[str, Any]]] = {}
        self.app = Starlette(routes=[Route("/api/inngest", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        fn = request.query_params["fnId"].removeprefix("fake-")
        body = orjson.loads(await request.body())
        calls = self.calls.setdefault(fn, [])
        calls.append(body)
        n = len(calls)
        if fn == "complete":
            return _json(206, [{"op": "RunComplete", "id": h("complete"), "data": {"ok": 1}}])
        if fn == "legacy":
            if n == 1:
                return _json(206, [{"op": "Step", "id": h("a"), "name": "a", "data": {"data": "A"}}])
            return _json(200, {"memo": body["steps"][h("a")], "stack": body["ctx"]["stack"]})
        if fn == "empty":
            return _json(206, [])
        if fn == "noheader":
            return _json(200, "done", sdk=n > 1)
        if fn == "gateway":  # a proxy in front of an app that is restarting, then the app
            return Response(b"Bad Gateway", status_code=502) if n == 1 else _json(200, "through")
        if fn == "restarting":
            return _json(200, "back")
        if fn == "streamed":
            inner = {"status": 200, "headers": SDK, "body": orjson.dumps({"streamed": True}).decode()}
            return Response(b"  " + orjson.dumps(inner), status_code=201, headers=SDK, media_type="application/json")
        return _json(500, {"name": "Error", "message": f"unknown function {fn}"})


def _json(status: int, body: Any, *, sdk: bool = True) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=SDK if sdk else {}, media_type="application/json")


async def _register(server: Server, url: str, names: tuple[str, ...]) -> None:
    functions = [
        {"id": f"fake-{name}", "name": name, "triggers": [{"event": f"fake/{name}"}],
         "steps": {"step": {"id": "step", "name": "step", "retries": {"attempts": 2},
                            "runtime": {"type": "http", "url": f"{url}?fnId=fake-{name}&stepId=step"}}}}
        for name in names
    ]
    async with httpx.AsyncClient() as client:
        reply = await client.post(f"{server.url}/fn/register", json={"appname": "fake", "url": url, "functions": functions})
    assert reply.status_code == 200, reply.text


@pytest.fixture
async def env(db_url: str) -> AsyncIterator[tuple[Server, FakeApp]]:
    fake = FakeApp()
    port = free_port()
    async with stepline_server(db_url) as server:
        with ThreadServer(fake.app, port):
            await _register(server, f"http://127.0.0.1:{port}/api/inngest", ("complete", "legacy", "empty", "noheader", "streamed", "gateway"))
            yield server, fake


async def _run(server: Server, name: str) -> dict[str, Any]:
    event_id = await server.send(f"fake/{name}")
    return await server.finished((await server.run_for(event_id, f"fake-{name}"))["id"])


async def test_run_complete_op_finishes_the_run(env: tuple[Server, FakeApp]) -> None:
    run = await _run(env[0], "complete")
    assert run["status"] == "completed" and run["output"] == {"ok": 1}


async def test_legacy_step_op_is_unwrapped_and_memoized(env: tuple[Server, FakeApp]) -> None:
    server, fake = env
    run = await _run(server, "legacy")
    assert run["output"] == {"memo": {"data": "A"}, "stack": {"stack": [h("a")], "current": 1}}
    first = fake.calls["legacy"][0]
    assert first["version"] == -1 and first["use_api"] is False and first["ctx"]["max_attempts"] == 3
    assert first["events"] == [first["event"]] and isinstance(first["event"]["ts"], int)
    assert fake.calls["legacy"][1]["version"] == 2  # the version the app chose, sent back


async def test_endless_empty_replies_fail_the_run(env: tuple[Server, FakeApp]) -> None:
    run = await _run(env[0], "empty")
    assert run["status"] == "failed" and "no new step" in run["error"]["message"]


async def test_answer_without_sdk_header_is_retried(env: tuple[Server, FakeApp]) -> None:
    run = await _run(env[0], "noheader")
    assert run["status"] == "completed" and run["output"] == "done"
    assert run["function_attempts"][0]["error"]["name"] == "NotAnSDK"


async def test_a_gateway_answering_for_an_app_that_is_down_counts_as_unreachable(env: tuple[Server, FakeApp]) -> None:
    run = await _run(env[0], "gateway")
    assert run["status"] == "completed" and run["output"] == "through"
    assert run["function_attempts"][0]["error"]["name"] == "AppUnreachable"  # retried on the unreachable schedule


async def test_streamed_reply_is_unwrapped(env: tuple[Server, FakeApp]) -> None:
    run = await _run(env[0], "streamed")
    assert run["status"] == "completed" and run["output"] == {"streamed": True}


async def test_an_app_down_when_its_run_is_due_is_retried_on_the_unreachable_schedule(db_url: str) -> None:
    """A refused connection (an app restarting) was retried on the ordinary backoff and used
    up the function's retries in seconds: it waits for the unreachable schedule (1 s here,
    Inngest's 15 s, 30 s, 1 m, ... by default), so the app is back when the retry comes."""
    fake = FakeApp()
    port = free_port()
    async with stepline_server(db_url, unreachable_backoff=(1.0,)) as server:
        await _register(server, f"http://127.0.0.1:{port}/api/inngest", ("restarting",))
        run_id = (await server.run_for(await server.send("fake/restarting"), "fake-restarting"))["id"]

        async def first_attempt_failed() -> dict[str, Any] | None:
            run = await server.engine.get_run(run_id)
            return run if run["function_attempts"] or run["status"] in ("failed", "completed") else None

        run = await eventually(first_attempt_failed, what="the first attempt to fail")
        failed_at = time.monotonic()
        assert run["status"] == "queued", run  # not failed: its retries were not used up at once
        assert run["function_attempts"][0]["error"]["name"] == "AppUnreachable"
        with ThreadServer(fake.app, port):  # the app is back
            run = await server.finished(run_id)
            assert run["status"] == "completed" and run["output"] == "back", run
            assert len(fake.calls["restarting"]) == 1 and len(run["function_attempts"]) == 1
            assert time.monotonic() - failed_at >= 0.8  # the unreachable backoff, not the 20 ms one
