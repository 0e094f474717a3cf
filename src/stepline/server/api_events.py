"""Events in: ``POST /e/{key}`` and ``POST /api/v1/events``; events out: list and one
event with the runs it started, or why it started none."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from stepline.server import common
from stepline.server.responses import JSON


async def ingest(request: Request) -> Response:
    events = await common.events_of_body(request, max_bytes=common.body_limit(request))
    ids = await common.engine(request).send_validated(events)
    return JSON({"ids": ids, "status": 200})


@common.route(common.event_key)
async def post_event_with_key(request: Request) -> Response:
    return await ingest(request)


class DirectEvents:
    """``POST /e/{key}`` from senders other than the Inngest SDKs, handed straight to its
    handler (``post_event_with_key``, with its access rule, checks and answers) before
    Starlette's middleware, router and exception layers, which cost more than the rest of
    the request. Everything else goes on to Starlette; the HTTP guard sits in front of both.
    Used only when the app has no middleware of the user's, which must see every request."""

    def __init__(self, app: ASGIApp, starlette: Starlette) -> None:
        self.app = app
        self.starlette = starlette

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = _event_key_path(scope)
        if key is None:
            await self.app(scope, receive, send)
            return
        scope["app"] = self.starlette
        scope["path_params"] = {"event_key": key}
        response = await post_event_with_key(Request(scope, receive, send))
        await response(scope, receive, send)


def _event_key_path(scope: Scope) -> str | None:
    """The key of a ``POST /e/{key}`` that the route itself would answer (not an SDK's, whose
    shapes the Inngest route takes), else None."""
    if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
        return None
    path: str = scope["path"]
    if not path.startswith("/e/") or len(path) == 3 or "/" in path[3:]:
        return None
    if any(name == b"x-inngest-sdk" for name, _ in scope["headers"]):
        return None
    return path[3:]


@common.route(common.api_token)
async def post_events(request: Request) -> Response:
    return await ingest(request)


@common.route(common.api_token)
async def list_events(request: Request) -> Response:
    q = request.query_params
    limit = common.parse_limit(q.get("limit"))
    events = await common.engine(request).store.list_events(
        name=q.get("name") or None,
        since_ms=common.parse_time(q.get("since"), "since"),
        until_ms=common.parse_time(q.get("until"), "until"),
        before_id=q.get("cursor") or None,
        limit=limit,
    )
    return JSON({"data": events, "next_cursor": events[-1]["id"] if len(events) == limit else None})


@common.route(common.api_token)
async def get_event(request: Request) -> Response:
    store = common.engine(request).store
    detail = await store.event_detail(request.path_params["event_id"])
    detail["cancelled_runs"] = await store.runs_cancelled_by(detail["id"])  # by its cancel_on rules
    if detail["cancelled_runs"] and not detail["runs"] and not detail["skipped_functions"]:
        detail["why_no_runs"] = f"it cancelled {len(detail['cancelled_runs'])} run(s) (cancel_on) and started none"
    return JSON(detail)


def routes() -> list[Route]:
    return [
        Route("/e/{event_key}", post_event_with_key, methods=["POST"]),
        Route("/api/v1/events", post_events, methods=["POST"]),
        Route("/api/v1/events", list_events, methods=["GET"]),
        Route("/api/v1/events/{event_id}", get_event, methods=["GET"]),
    ]
