"""``create_app``: the Starlette application over one ``Engine``."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stepline.engine import Engine
from stepline.server import api_runs, common, responses
from stepline.server.common import ServerOptions, guard
from stepline.server.responses import JSON

async def _ingest(request: Request, payload: Any) -> Response:
    items = payload if isinstance(payload, list) else [payload]
    ids = await common.engine(request).send_many(items)
    return JSON({"ids": ids, "status": 200})


@guard
async def post_event_with_key(request: Request) -> Response:
    denied = common.check_event_key(request, request.path_params["event_key"])
    if denied is not None:
        return denied
    payload = await responses.read_json(request, max_bytes=common.options(request).max_body_bytes)
    return await _ingest(request, payload)


@guard
async def post_events(request: Request) -> Response:
    denied = common.check_api_token(request)
    if denied is not None:
        return denied
    payload = await responses.read_json(request, max_bytes=common.options(request).max_body_bytes)
    return await _ingest(request, payload)


@guard
async def health(request: Request) -> Response:
    engine = common.engine(request)
    worker = engine.worker
    return JSON(
        {
            "status": "ok",
            "database": engine.store.dialect,
            "worker": None if worker is None else {"id": worker.id, "in_flight": worker.in_flight},
        }
    )


def core_routes() -> list[Route]:
    return [
        Route("/health", health, methods=["GET"]),
        Route("/e/{event_key}", post_event_with_key, methods=["POST"]),
        Route("/api/v1/events", post_events, methods=["POST"]),
        *api_runs.routes(),
    ]


def create_app(engine: Engine, options: ServerOptions | None = None, *, extra_routes: list[Any] | None = None, middleware: list[Middleware] | None = None) -> Starlette:
    """The ASGI app. It does not start the engine: the CLI (or a test) does."""
    app = Starlette(routes=[*core_routes(), *(extra_routes or [])], middleware=middleware or [])
    app.state.engine = engine
    app.state.options = options or ServerOptions()
    return app
