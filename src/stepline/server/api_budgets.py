"""Cost budgets: spend against limits per key (``GET /api/v1/budgets``), one key, and an
operator's override of one key's limit (``PUT``), which resumes its paused runs at once."""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stepline import errors
from stepline.server import common
from stepline.server.responses import JSON, read_object

LIMIT_FIELDS = ("limit_usd", "limit_tokens")


@common.route(common.api_token)
async def list_budgets(request: Request) -> Response:
    """``?budget=`` one budget's keys; ``?limit=`` keys at most (default 500). Each key in its
    current period: spent, reserved by calls in flight, limit, period end, paused runs."""
    budget = request.query_params.get("budget") or None
    limit = common.parse_limit(request.query_params.get("limit"), default=500, maximum=5000)
    return JSON(await common.engine(request).store.budgets(budget, limit))


@common.route(common.api_token)
async def get_budget_key(request: Request) -> Response:
    budget, key = request.path_params["budget"], request.path_params["key"]
    return JSON(await common.engine(request).store.budget_key(budget, key))


def _limits(body: dict[str, Any]) -> tuple[float | None, int | None]:
    unknown = sorted(set(body) - set(LIMIT_FIELDS))
    if unknown:
        raise errors.RequestError(f"unknown field(s) {unknown}: send limit_usd and/or limit_tokens (null removes one)")
    if not any(field in body for field in LIMIT_FIELDS):
        raise errors.RequestError(
            'send {"limit_usd": 20.0} and/or {"limit_tokens": 100000}; both null goes back to the declared limits'
        )
    usd, tokens = body.get("limit_usd"), body.get("limit_tokens")
    if usd is not None and (isinstance(usd, bool) or not isinstance(usd, (int, float)) or not math.isfinite(usd) or usd < 0):
        raise errors.RequestError(f"limit_usd: expected US dollars >= 0 or null, got {usd!r}")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or not 0 < tokens < 2**62):
        raise errors.RequestError(f"limit_tokens: expected a whole number > 0 or null, got {tokens!r}")
    return (None if usd is None else float(usd)), tokens


@common.route(common.api_token)
async def put_budget_key(request: Request) -> Response:
    """Body ``{"limit_usd": 20.0, "limit_tokens": null}``: this key's limits from now on
    (an override of the declared ones, across periods); both null removes the override.
    The key's paused runs are made due at once."""
    body = await read_object(request, max_bytes=common.engine(request).settings.max_api_body_bytes)
    limit_usd, limit_tokens = _limits(body)
    budget, key = request.path_params["budget"], request.path_params["key"]
    return JSON(await common.engine(request).set_budget_limit(budget, key, limit_usd, limit_tokens))


def routes() -> list[Route]:
    return [
        Route("/api/v1/budgets", list_budgets, methods=["GET"]),
        Route("/api/v1/budgets/{budget}/{key:path}", get_budget_key, methods=["GET"]),
        Route("/api/v1/budgets/{budget}/{key:path}", put_budget_key, methods=["PUT"]),
    ]
