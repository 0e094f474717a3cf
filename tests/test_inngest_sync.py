"""App sync: discovery, the apps API, re-registration (unchanged, changed, removed functions)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from stepline.inngest import runtime as runtime_mod
from tests.inngest_apps import py_app
from tests.inngest_apps.harness import Server, ThreadServer, free_port, stepline_server


@pytest.fixture
async def server(db_url: str) -> AsyncIterator[Server]:
    async with stepline_server(db_url) as server:
        yield server


def _function(app: str, fid: str, event: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:9/api/inngest?fnId={app}-{fid}&stepId=step"
    return {"id": f"{app}-{fid}", "name": fid, "triggers": [{"event": event}],
            "steps": {"step": {"id": "step", "name": "step", "runtime": {"type": "http", "url": url}}}}


async def test_discovery_finds_an_app_on_a_usual_port(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INNGEST_DEV", server.url)
    port = free_port()
    monkeypatch.setattr(runtime_mod, "DISCOVERY_PORTS", (port,))
    with ThreadServer(py_app.build(py_app.Recorder()), port):
        found = await server.runtime.discover()
        assert found == [f"http://127.0.0.1:{port}/api/inngest"]
        assert "py-app-steps" in server.runtime.functions()


async def test_apps_api_adds_lists_and_resyncs(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INNGEST_DEV", server.url)
    port = free_port()
    with ThreadServer(py_app.build(py_app.Recorder()), port):
        app_url = f"http://127.0.0.1:{port}/api/inngest"
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            added = await client.post("/api/v1/inngest/apps", json={"url": app_url})
            assert added.status_code == 200 and added.json()["error"] is None, added.text
            listed = (await client.get("/api/v1/inngest/apps")).json()["data"]
            assert listed[0]["name"] == "py-app" and "py-app-steps" in listed[0]["functions"]
            synced = (await client.post("/api/v1/inngest/apps/sync")).json()["data"]
            assert [s["error"] for s in synced] == [None]
            unreachable = await client.post("/api/v1/inngest/apps", json={"url": "http://127.0.0.1:9/api/inngest"})
            assert unreachable.status_code == 502 and "unreachable" in unreachable.json()["error"]


async def test_reregistration_is_idempotent_and_archives_removed_functions(server: Server) -> None:
    body = {"appName": "reg", "url": "http://127.0.0.1:9/api/inngest", "sdk": "py:v0.5.19",
            "functions": [_function("reg", "a", "reg/a"), _function("reg", "b", "reg/b")]}
    async with httpx.AsyncClient(base_url=server.url) as client:
        first = (await client.post("/fn/register", json=body)).json()
        again = (await client.post("/fn/register", json=body)).json()
        body["functions"] = body["functions"][:1]
        fewer = (await client.post("/fn/register", json=body)).json()
        native_clash = await client.post("/fn/register", json={**body, "appName": "other", "functions": [_function("reg", "a", "x/y")]})
        invalid = await client.post("/fn/register", json={**body, "functions": [{**_function("reg", "bad", "x"), "triggers": []}]})
    assert first["modified"] is True and again["modified"] is False and fewer["modified"] is True
    assert set(server.runtime.functions()) == {"reg-a"}
    async with httpx.AsyncClient(base_url=server.url) as client:  # the list says which one is gone
        listed = {f["id"]: f for f in (await client.get("/api/v1/functions")).json()["data"]}
    assert listed["reg-b"]["archived"] is True and listed["reg-a"]["archived"] is False
    event_id = await server.send("reg/b")
    assert (await server.engine.store.get_event(event_id))["runs"] == []  # the removed function starts nothing
    assert native_clash.status_code == 400 and "another app" in native_clash.json()["error"]
    assert invalid.status_code == 400 and "triggers" in invalid.json()["error"]


async def test_an_expression_calling_an_unknown_function_is_refused_at_sync(server: Server) -> None:
    """Accepted, the trigger would match no event, each failing at run time alone."""
    fn = _function("typo", "a", "typo/a")
    body = {"appName": "typo", "url": "http://127.0.0.1:9/api/inngest", "sdk": "js:v3.40.0",
            "functions": [{**fn, "triggers": [{"event": "typo/a", "expression": 'event.data.name.startWith("a")'}]}]}
    async with httpx.AsyncClient(base_url=server.url) as client:
        refused = await client.post("/fn/register", json=body)
        body["functions"] = [{**fn, "triggers": [{"event": "typo/a", "expression": 'event.data.name.startsWith("a")'}]}]
        fixed = await client.post("/fn/register", json=body)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert "'typo-a'" in error and """'event.data.name.startWith("a")'""" in error, error
    assert "unknown function 'startWith' (did you mean 'startsWith'?)" in error, error
    assert fixed.status_code == 200 and set(server.runtime.functions()) == {"typo-a"}, fixed.text


async def test_a_function_synced_before_unknown_names_were_refused_still_loads(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    """On upgrade, a stored SDK function whose expression calls an unknown function loads as
    before (failing where it calls it), with a warning to fix it, rather than having no
    handler for its runs until its app syncs again."""
    fn = _function("old", "a", "old/a")
    body = {"appName": "old", "url": "http://127.0.0.1:9/api/inngest", "sdk": "js:v3.40.0",
            "functions": [{**fn, "triggers": [{"event": "old/a", "expression": 'event.data.name.startsWith("a")'}]}]}
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.post("/fn/register", json=body)).status_code == 200

    def as_synced_before(conn: Any) -> None:  # the expression a release without the check took
        row = conn.one("SELECT config FROM functions WHERE id = 'old-a'")
        conn.execute("UPDATE functions SET config = ? WHERE id = 'old-a'", (row["config"].replace("startsWith", "startWith"),))

    await server.engine.store.db.write(as_synced_before)
    server.runtime._raw_versions.clear()  # as a process started on the upgraded release
    with caplog.at_level(logging.WARNING, logger="stepline"):
        await server.runtime.reload()
    assert set(server.runtime.functions()) == {"old-a"}
    assert any("old-a" in r.getMessage() and "'startWith' (did you mean 'startsWith'?)" in r.getMessage() for r in caplog.records)


async def test_a_fault_in_an_sdk_route_is_answered_in_json(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK routes answer in the SDKs' shapes, outside the API's error mapping: a fault there
    was Starlette's plain-text 'Internal Server Error'."""

    async def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.runtime, "register", broken)
    body = {"appName": "x", "url": "http://127.0.0.1:9/api/inngest", "sdk": "js:v3.40.0", "functions": [_function("x", "a", "x/a")]}
    async with httpx.AsyncClient(base_url=server.url) as client:
        reply = await client.post("/fn/register", json=body)
    assert reply.status_code == 500 and reply.headers["content-type"].startswith("application/json"), reply.text
    assert "server log" in reply.json()["error"] and "a bug" not in reply.text  # the details stay in the log


async def test_removing_an_app_stops_its_functions_matching_events(server: Server) -> None:
    body = {"appName": "gone", "url": "http://127.0.0.1:9/api/inngest", "sdk": "js:v4.24.0",
            "functions": [_function("gone", "a", "gone/a")]}
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.post("/fn/register", json=body)).status_code == 200
        ran = await server.send("gone/a")
        assert [r["function_id"] for r in (await server.engine.store.get_event(ran))["runs"]] == ["gone-a"]
        removed = await client.delete("/api/v1/inngest/apps", params={"app": "gone"})
        unknown = await client.delete("/api/v1/inngest/apps", params={"app": "never-synced"})
        nameless = await client.delete("/api/v1/inngest/apps")
        listed = (await client.get("/api/v1/inngest/apps")).json()["data"]
    assert removed.status_code == 200, removed.text
    assert removed.json() == {"removed": ["gone"], "urls": ["http://127.0.0.1:9/api/inngest"], "functions": ["gone-a"]}
    assert unknown.status_code == 404 and "stepline apps list" in unknown.json()["error"]
    assert nameless.status_code == 400
    assert listed == [] and "gone-a" not in server.runtime.functions()
    after = await server.send("gone/a")
    assert (await server.engine.store.get_event(after))["runs"] == []  # no run: the function no longer matches
    run = await server.engine.get_run((await server.engine.store.get_event(ran))["runs"][0]["id"])
    assert run["function_id"] == "gone-a"  # the run it made before is kept
