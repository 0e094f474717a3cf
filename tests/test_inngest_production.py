"""Production mode: signed requests both ways, keys required, a wrong signing key refused."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from stepline.inngest import protocol, signing
from tests.inngest_apps import py_app
from tests.inngest_apps.harness import (
    PY_SDK_HERE,
    PY_SDKS,
    NodeApp,
    PyAppProcess,
    Server,
    ThreadServer,
    free_port,
    python_with_sdk,
    stepline_server,
)

KEY = "signkey-prod-" + "ab12" * 16
WRONG = "signkey-prod-" + "cd34" * 16
EVENT_KEY = "prod-event-key"


def cloud_env(server: Server, signing_key: str) -> dict[str, str]:
    """What an app sets to use a production Stepline server instead of Inngest's cloud."""
    return {
        "INNGEST_DEV": "0",
        "INNGEST_BASE_URL": server.url,
        "INNGEST_SIGNING_KEY": signing_key,
        "INNGEST_EVENT_KEY": EVENT_KEY,
    }


@pytest.fixture
async def server(db_url: str) -> AsyncIterator[Server]:
    async with stepline_server(db_url, dev=False, signing_key=KEY, event_key=EVENT_KEY) as server:
        yield server


async def test_signed_app_syncs_and_runs(server: Server) -> None:
    with NodeApp(cloud_env(server, KEY)) as node:
        await server.sync(node.url)
        event_id = await server.send("ts/steps", {"name": "ada"}, key=EVENT_KEY)
        run = await server.finished((await server.run_for(event_id, "ts-app-steps"))["id"])
        assert run["status"] == "completed", run
        assert run["output"]["greeting"] == "hello ADA"
        event_id = await server.send("ts/send", {"k": 1}, key=EVENT_KEY)  # the SDK sends with its event key
        run = await server.finished((await server.run_for(event_id, "ts-app-sender"))["id"])
        assert run["status"] == "completed", run


async def test_wrong_signing_key_is_refused(server: Server) -> None:
    with NodeApp(cloud_env(server, WRONG)) as node:
        status = await server.runtime.sync(node.url)
        assert status.error is not None  # its registration carried the wrong key
        assert not [f for f in await server.engine.store.list_functions() if f["app_id"] == "ts-app"]
        # ...and the app refuses a call request signed with a key it does not hold.
        body = {"event": {"name": "ts/steps", "data": {"name": "x"}, "id": "e1", "ts": 1, "user": {}}, "events": [],
                "steps": {}, "ctx": {"run_id": "r1", "attempt": 0, "disable_immediate_execution": False, "use_api": False,
                                     "stack": {"stack": [], "current": 0}}, "version": -1, "use_api": False}
        body["events"] = [body["event"]]
        meta = {"url": node.url + "?fnId=ts-app-steps&stepId=step", "retries": 0}
        with pytest.raises(protocol.SDKRetriableError, match="refused our signature"):
            await server.runtime.call(meta, "step", body, run_id="r1")


async def test_register_needs_the_signing_key(server: Server) -> None:
    body = {"appName": "x", "url": "http://127.0.0.1:9/api/inngest", "functions": []}
    async with httpx.AsyncClient() as client:
        missing = await client.post(f"{server.url}/fn/register", json=body)
        wrong = await client.post(f"{server.url}/fn/register", json=body, headers={"authorization": f"Bearer {signing.hashed_key(WRONG)}"})
        right = await client.post(f"{server.url}/fn/register", json=body, headers={"authorization": f"Bearer {signing.hashed_key(KEY)}"})
        dev_app = await client.post(
            f"{server.url}/fn/register", json=body,
            headers={"authorization": f"Bearer {signing.hashed_key(KEY)}", "x-inngest-expected-server-kind": "dev"},
        )
        bad_event_key = await client.post(f"{server.url}/e/nope", json={"name": "a/b"}, headers={"x-inngest-sdk": "js:v4"})
    assert missing.status_code == 401 and "STEPLINE_INNGEST_SIGNING_KEY" in missing.json()["error"]
    assert wrong.status_code == 401
    assert right.status_code == 200 and right.json()["ok"] is True
    assert dev_app.status_code == 400 and "server kind" in dev_app.json()["error"]
    assert bad_event_key.status_code == 401


async def test_python_sdk_in_production_mode(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in cloud_env(server, KEY).items():
        monkeypatch.setenv(name, value)
    port = free_port()
    with ThreadServer(py_app.build(py_app.Recorder()), port):
        async with httpx.AsyncClient() as client:
            unsigned = await client.get(f"http://127.0.0.1:{port}/api/inngest")
        assert unsigned.status_code == 401  # production mode: it checks every signature
        await server.sync(f"http://127.0.0.1:{port}/api/inngest")
        event_id = await server.send("py/send", {"k": 3}, key=EVENT_KEY)  # the step sends with INNGEST_EVENT_KEY
        run = await server.finished((await server.run_for(event_id, "py-app-sender"))["id"])
        assert run["status"] == "completed", run
        sent = (await server.engine.store.get_event(run["output"][0]))
        assert sent["name"] == "py/sent"


@pytest.mark.parametrize("version", PY_SDKS)
async def test_python_app_with_a_wrong_signing_key_is_reported_not_ok(
    server: Server, version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Python SDK answers the sync's PUT with 200 and our refusal in its body: the sync
    must still be reported as failed, with the reason, as for the TypeScript SDK."""
    env = cloud_env(server, WRONG)
    with contextlib.ExitStack() as stack:
        if version == PY_SDK_HERE:
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            port = free_port()
            stack.enter_context(ThreadServer(py_app.build(py_app.Recorder()), port))
            url = f"http://127.0.0.1:{port}/api/inngest"
        else:
            url = stack.enter_context(PyAppProcess(python_with_sdk(version), env)).url
        status = await server.runtime.sync(url)
        assert status.error is not None and "signing key" in status.error, status
        async with httpx.AsyncClient(base_url=server.url, headers={"authorization": "Bearer token"}) as client:
            listed = (await client.get("/api/v1/inngest/apps")).json()["data"]
            resynced = (await client.post("/api/v1/inngest/apps/sync")).json()["data"]
        assert [a["error"] for a in listed if a["url"] == url] == [status.error]
        assert "signing key" in resynced[0]["error"]
        assert not [f for f in await server.engine.store.list_functions() if f["app_id"] == "py-app"]
