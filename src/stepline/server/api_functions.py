"""``/api/v1/functions/{id}/...``: a function's page (counts, durations, cost, recent runs),
pause and resume, invoke with a test payload, replay of its failed runs; and
``/api/v1/search``, which finds a run, event, function or user from what a person pasted."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stepline import errors
from stepline.server import common, id_route, responses
from stepline.server.responses import JSON, problem
from stepline.store import ops_functions

MAX_REASON = 1000


async def _body(request: Request, call: str, fields: tuple[str, ...]) -> dict[str, Any]:
    return await responses.read_object(request, max_bytes=common.body_limit(request), call=call, fields=fields)


def _function_id(request: Request) -> str:
    return str(request.path_params["function_id"])


def _time_field(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, (str, int)) or isinstance(value, bool)):
        raise errors.RequestError(f"{name}: expected an ISO 8601 time or epoch milliseconds")
    return common.parse_time(None if value is None else str(value), name)


@common.route(common.api_token)
async def function_summary(request: Request) -> Response:
    """``?window=24h``: run counts by outcome, p50/p95 and cost over the window; live counts,
    config, triggers, pause state and the newest runs."""
    window = common.parse_window(request.query_params.get("window"), "24h")
    since = int(time.time() * 1000 - window * 1000)
    summary = await common.engine(request).store.function_detail(_function_id(request), since)
    summary["window_seconds"] = window
    return JSON(summary)


@common.route(common.api_token)
async def pause(request: Request) -> Response:
    """Body: ``{"mode": "queue" | "skip", "reason": ...}`` (both optional; mode defaults to queue)."""
    body = await _body(request, "pause", ("mode", "reason"))
    mode = body.get("mode", "queue")
    if mode not in ops_functions.PAUSE_MODES:
        raise errors.RequestError(
            f"mode: expected 'queue' (runs wait until resumed) or 'skip' (events start no runs), got {mode!r}"
        )
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON or "\x00" in reason):
        raise errors.RequestError(f"reason: expected a string of at most {MAX_REASON} characters")
    return JSON(await common.engine(request).pause_function(_function_id(request), mode, reason))


@common.route(common.api_token)
async def resume(request: Request) -> Response:
    return JSON(await common.engine(request).resume_function(_function_id(request)))


@common.route(common.api_token)
async def invoke(request: Request) -> Response:
    """Body: ``{"data": {...}}``: a run of this function now, whatever its triggers; its flow
    control and a pause apply as to an event's run. 409, with the event's id, when they start
    none (a pause in skip mode, a rate limit, an idempotency key, a singleton)."""
    body = await _body(request, "invoke", ("data",))
    data = body.get("data", {})
    if not isinstance(data, dict):
        raise errors.RequestError("data: expected a JSON object (the event's data the run gets)")
    engine = common.engine(request)
    engine.validate_events([{"name": "stepline/function.invoked", "data": data}])  # the limits every event meets
    result = await engine.invoke_function(_function_id(request), data)
    if result["skipped"] is not None:
        return problem(409, str(result["message"]), event_id=result["event_id"], skipped=result["skipped"])
    return JSON({"event_id": result["event_id"], "run_id": result["run_id"]})


@common.route(common.api_token)
async def replay_failed(request: Request) -> Response:
    """Body: ``{"since": ..., "until": ..., "limit": 1000}``: replay each run that failed in
    the window (by when it failed) and was not replayed before."""
    body = await _body(request, "replay-failed", ("since", "until", "limit"))
    limit = body.get("limit", 1000)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10_000:
        raise errors.RequestError("limit: expected a whole number 1..10000")
    result = await common.engine(request).bulk_replay(
        _function_id(request), since_ms=_time_field(body, "since"), until_ms=_time_field(body, "until"), limit=limit
    )
    return JSON(result)


@common.route(common.api_token)
async def search(request: Request) -> Response:
    """``?q=``: a run or event id (whole, or the last characters lists show), an event id the
    sender chose, part of a function id, a user id, or an event name."""
    query = request.query_params.get("q", "").strip()
    if not query or len(query) > 256:
        raise errors.RequestError("q: expected 1..256 characters (a run or event id, function, user or event name)")
    return JSON(await common.engine(request).store.search(query, common.parse_limit(request.query_params.get("limit"), 20, 100)))


def routes() -> list[Route]:
    return [
        Route("/api/v1/search", search, methods=["GET"]),
        id_route.IdRoute("/api/v1/functions/{function_id}/summary", function_summary, methods=["GET"]),
        id_route.IdRoute("/api/v1/functions/{function_id}/pause", pause, methods=["POST"]),
        id_route.IdRoute("/api/v1/functions/{function_id}/resume", resume, methods=["POST"]),
        id_route.IdRoute("/api/v1/functions/{function_id}/invoke", invoke, methods=["POST"]),
        id_route.IdRoute("/api/v1/functions/{function_id}/replay-failed", replay_failed, methods=["POST"]),
    ]
