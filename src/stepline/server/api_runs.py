"""``/api/v1/runs``: list, read, cancel, replay, rerun from the failed step, bulk
cancel, per-run browser tokens."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Scope

from stepline.server import common, responses, stream, tokens
from stepline.server.responses import JSON, problem
from stepline.store.records import RunStatus

STATUSES = tuple(str(s) for s in RunStatus)
MAX_TOKEN_TTL = 24 * 3600


@common.route(common.api_token)
async def list_runs(request: Request) -> Response:
    q = request.query_params
    status = q.get("status")
    if status is not None and status not in STATUSES:
        return problem(400, f"status: expected one of {', '.join(STATUSES)}, got {status!r}")
    limit = common.parse_limit(q.get("limit"))
    runs = await common.engine(request).store.list_runs(
        function_id=q.get("function_id") or None,
        status=status,
        user_id=q.get("user_id") or None,
        since_ms=common.parse_time(q.get("since"), "since"),
        until_ms=common.parse_time(q.get("until"), "until"),
        before_id=q.get("cursor") or None,
        limit=limit,
    )
    cursor = runs[-1]["id"] if len(runs) == limit else None
    return JSON({"data": runs, "next_cursor": cursor})


def _cors(response: Response, by_run_token: bool) -> Response:
    # A run token travels in the URL, never in a cookie, so any origin may read with it.
    if by_run_token:
        response.headers["access-control-allow-origin"] = "*"
    return response


@common.route(common.run_access)
async def get_run(request: Request) -> Response:
    run_id = request.path_params["run_id"]
    store = common.engine(request).store
    run = await store.get_run(run_id)
    run["usage"] = await store.run_usage(run_id)  # tokens and cost, as apps' job tables show them
    run["step_usage"] = await store.step_usage(run_id)  # each model call's tokens and cost, by step key
    run["schedule"] = await store.run_schedule(run_id)  # when a queued run is due (throttled, scheduled, retrying)
    if not common.by_run_token(request):  # a run token reads its own run, not the runs around it
        run["links"] = await store.run_links(run_id)
    for step in run["steps"]:  # SDK steps stored before their names were: the name the SDK reported
        sdk_name = ((step.get("meta") or {}).get("inngest") or {}).get("name")
        if sdk_name and step["name"] == step["id"]:
            step["name"] = sdk_name
    return _cors(JSON(run), common.by_run_token(request))


@common.route(common.run_access)
async def stream_run(request: Request) -> Response:
    run_id = request.path_params["run_id"]
    return _cors(await stream.run_events(request, run_id), common.by_run_token(request))


@common.route(common.api_token)
async def cancel_run(request: Request) -> Response:
    run_id = request.path_params["run_id"]
    status = await common.engine(request).cancel(run_id, "cancelled through the API")
    return JSON({"id": run_id, "status": status})


@common.route(common.api_token)
async def replay_run(request: Request) -> Response:
    new_id = await common.engine(request).replay(request.path_params["run_id"])
    return JSON({"id": new_id, "replay_of": request.path_params["run_id"]})


@common.route(common.api_token)
async def rerun_from_failed_step(request: Request) -> Response:
    return JSON(await common.engine(request).rerun_from_failed_step(request.path_params["run_id"]))


async def _optional_object(request: Request, call: str, fields: tuple[str, ...]) -> dict[str, Any]:
    return await responses.read_object(request, max_bytes=common.body_limit(request), call=call, fields=fields)


@common.route(common.api_token)
async def bulk_cancel(request: Request) -> Response:
    """Body: ``{"function_id": ..., "since": ..., "until": ..., "reason": ..., "limit": ...}``."""
    body = await _optional_object(request, "bulk-cancel", ("function_id", "since", "until", "reason", "limit"))
    function_id = body.get("function_id")
    if not isinstance(function_id, str) or not function_id or "\x00" in function_id:
        return problem(400, "function_id: required, the id of the function whose runs to cancel")
    since, until = body.get("since"), body.get("until")
    for name, value in (("since", since), ("until", until)):
        if value is not None and (not isinstance(value, (str, int)) or isinstance(value, bool)):
            return problem(400, f"{name}: expected an ISO 8601 time or epoch milliseconds")
    reason = body.get("reason", "cancelled in bulk through the API")
    if not isinstance(reason, str) or len(reason) > 1000 or "\x00" in reason:
        return problem(400, "reason: expected a string of at most 1000 characters")
    limit = body.get("limit", 1000)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10_000:
        return problem(400, "limit: expected a whole number 1..10000")
    results = await common.engine(request).bulk_cancel(
        function_id,
        since_ms=common.parse_time(None if since is None else str(since), "since"),
        until_ms=common.parse_time(None if until is None else str(until), "until"),
        reason=reason,
        limit=limit,
    )
    return JSON({"cancelled": len(results), "runs": results})


@common.route(common.api_token)
async def mint_token(request: Request) -> Response:
    """A run token for a browser (the API token itself never leaves the app's backend)."""
    run_id = request.path_params["run_id"]
    body = await _optional_object(request, "run token", ("ttl_seconds",))
    ttl = body.get("ttl_seconds", tokens.DEFAULT_TTL)
    if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not 1 <= ttl <= MAX_TOKEN_TTL:
        return problem(400, f"ttl_seconds: expected a number 1..{MAX_TOKEN_TTL}")
    await common.engine(request).store.get_run(run_id)  # 404 for an unknown run
    token = tokens.mint_run_token(run_id, common.signing_key(request), ttl=float(ttl))
    expires = tokens.token_expiry(token)
    return JSON({"run_id": run_id, "token": token, "expires_at": responses.iso_seconds(expires)})


class _RunRoute(Route):
    """``/api/v1/runs/{run_id}``, leaving ``/api/v1/runs/bulk-cancel`` to its own route: matched
    too, a GET there read a run named 'bulk-cancel' (404) and the 405's ``Allow`` listed GET."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE and child["path_params"].get("run_id") == "bulk-cancel":
            return Match.NONE, {}
        return match, child


def routes() -> list[Route]:
    return [
        Route("/api/v1/runs", list_runs, methods=["GET"]),
        Route("/api/v1/runs/bulk-cancel", bulk_cancel, methods=["POST"]),
        _RunRoute("/api/v1/runs/{run_id}", get_run, methods=["GET"]),
        Route("/api/v1/runs/{run_id}/stream", stream_run, methods=["GET"]),
        Route("/api/v1/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
        Route("/api/v1/runs/{run_id}/replay", replay_run, methods=["POST"]),
        Route("/api/v1/runs/{run_id}/rerun-from-failed-step", rerun_from_failed_step, methods=["POST"]),
        Route("/api/v1/runs/{run_id}/token", mint_token, methods=["POST"]),
    ]
