"""``POST /e/{key}`` taken before Starlette's layers answers as the route does, leaves SDK
senders to the Inngest route, and gives way to an app's own middleware."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

import stepline
from stepline.server import create_app
from stepline.server.common import ServerOptions
from tests import server_live
from tests.server_live import LiveServer, serve  # noqa: F401 - fixture

SDK = {"X-Inngest-SDK": "inngest-js:v3.27.0"}


def app() -> stepline.App:
    app = stepline.App("route")

    @app.function(id="echo", trigger=stepline.TriggerEvent("route/echo"))
    async def echo(ctx: stepline.Context) -> dict:
        return dict(ctx.event.data)

    return app


def client(server: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30)


def test_the_event_route_answers_as_before(serve) -> None:  # noqa: F811
    api = client(serve(app()))
    ok = api.post("/e/dev", json=[{"name": "route/echo", "data": {"n": 1}}, {"name": "route/echo", "data": {"n": 2}}])
    assert ok.status_code == 200 and ok.headers["content-type"] == "application/json"
    assert ok.json()["status"] == 200 and len(ok.json()["ids"]) == 2
    bad = api.post("/e/dev", json={"data": {}})
    assert bad.status_code == 400 and "'name' is required" in bad.json()["error"] and "ids" not in bad.json()
    empty = api.post("/e/dev", content=b"", headers={"content-type": "application/json"})
    assert empty.status_code == 400 and "empty" in empty.json()["error"]
    # An SDK sender's events go to the Inngest route, which answers in the SDKs' shape.
    sdk_bad = api.post("/e/dev", json={"data": {}}, headers=SDK)
    assert sdk_bad.status_code == 400 and sdk_bad.json()["ids"] == []
    # Other methods and paths are Starlette's as ever.
    assert api.get("/e/dev").status_code == 405
    assert api.post("/e/").status_code == 404


def test_a_wrong_event_key_is_refused_on_the_direct_path(serve) -> None:  # noqa: F811
    server = serve(app(), options=ServerOptions(dev=False, event_key="right-key", api_token="token-1"))
    api = client(server)
    assert api.post("/e/wrong-key", json={"name": "route/echo"}).status_code == 401
    assert api.post("/e/right-key", json={"name": "route/echo"}).status_code == 200


def test_nul_in_the_url_is_refused_and_an_escaped_percent_is_not(serve) -> None:  # noqa: F811
    api = client(serve(app()))
    assert api.post("/e/de%00v", json={"name": "route/echo"}).status_code == 400
    refused = api.get("/api/v1/events", params={"name": "a\x00b"})
    assert refused.status_code == 400 and "NUL" in refused.json()["error"]
    assert api.get("/api/v1/events?name=%2500").status_code == 200  # the text "%00", no NUL
    assert api.post("/e/dev?x=%00", json={"name": "route/echo"}).status_code == 400


class Counting:
    """An app's own middleware: counts the requests it sees."""

    seen: list[str] = []

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            Counting.seen.append(scope["path"])
        await self.app(scope, receive, send)


def test_an_apps_own_middleware_sees_the_events_posted(serve, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    def with_middleware(engine: Any, options: ServerOptions) -> Any:
        return create_app(engine, options, middleware=[Middleware(Counting)])

    monkeypatch.setattr(server_live, "create_app", with_middleware)
    Counting.seen.clear()
    api = client(serve(app()))
    assert api.post("/e/dev", json={"name": "route/echo"}).status_code == 200
    assert "/e/dev" in Counting.seen


def test_the_servers_own_data_inngest_is_dropped_from_every_sender(serve) -> None:  # noqa: F811
    """``data._inngest`` carries what only the server sets (an invoke's correlation, a finished
    run's status): Inngest's server drops it from every event it receives, SDK or not; so do
    ``/e/{key}`` (with and without the SDK header) and ``/api/v1/events``."""
    api = client(serve(app()))
    forged = {"n": 1, "_inngest": {"fn_id": "route-echo", "correlation_id": "01ABC.step"}}
    sent = [
        api.post("/e/dev", json={"name": "route/echo", "data": forged}),
        api.post("/e/dev", json={"name": "route/echo", "data": forged}, headers=SDK),
        api.post("/api/v1/events", json=[{"name": "route/echo", "data": forged}]),
    ]
    for answer in sent:
        assert answer.status_code == 200, answer.text
        event_id = answer.json()["ids"][0]
        assert api.get(f"/api/v1/events/{event_id}").json()["body"]["data"] == {"n": 1}
        run = server_live.run_of_event(api, event_id)
        assert server_live.run_status(api, run["id"])["output"] == {"n": 1}
