"""``/api/v1/runs``: list, read, cancel, replay."""

from __future__ import annotations

import datetime as dt

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stepline import errors
from stepline.server import common
from stepline.server.responses import JSON, problem

_STATUSES = {"queued", "running", "sleeping", "waiting", "completed", "failed", "cancelled"}


def _time_ms(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        if value.isdigit():
            return int(value)
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise errors.ConfigError(f"{name}: expected ISO 8601 time or epoch milliseconds, got {value!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return int(parsed.timestamp() * 1000)


@common.guard
async def list_runs(request: Request) -> Response:
    denied = common.check_api_token(request)
    if denied is not None:
        return denied
    q = request.query_params
    status = q.get("status")
    if status is not None and status not in _STATUSES:
        return problem(400, f"status: expected one of {sorted(_STATUSES)}, got {status!r}")
    limit_text = q.get("limit", "50")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 500:
        return problem(400, f"limit: expected a whole number 1..500, got {limit_text!r}")
    limit = int(limit_text)
    runs = await common.engine(request).list_runs(
        function_id=q.get("function_id"),
        status=status,
        user_id=q.get("user_id"),
        since_ms=_time_ms(q.get("since"), "since"),
        until_ms=_time_ms(q.get("until"), "until"),
        before_id=q.get("cursor"),
        limit=limit,
    )
    cursor = runs[-1]["id"] if len(runs) == limit else None
    return JSON({"data": runs, "next_cursor": cursor})


@common.guard
async def get_run(request: Request) -> Response:
    denied = common.check_api_token(request)
    if denied is not None:
        return denied
    return JSON(await common.engine(request).get_run(request.path_params["run_id"]))


@common.guard
async def cancel_run(request: Request) -> Response:
    denied = common.check_api_token(request)
    if denied is not None:
        return denied
    run_id = request.path_params["run_id"]
    status = await common.engine(request).cancel(run_id, "cancelled through the API")
    return JSON({"id": run_id, "status": status})


@common.guard
async def replay_run(request: Request) -> Response:
    denied = common.check_api_token(request)
    if denied is not None:
        return denied
    new_id = await common.engine(request).replay(request.path_params["run_id"])
    return JSON({"id": new_id, "replay_of": request.path_params["run_id"]})


def routes() -> list[Route]:
    return [
        Route("/api/v1/runs", list_runs, methods=["GET"]),
        Route("/api/v1/runs/{run_id}", get_run, methods=["GET"]),
        Route("/api/v1/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
        Route("/api/v1/runs/{run_id}/replay", replay_run, methods=["POST"]),
    ]
