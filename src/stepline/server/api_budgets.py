"""Cost budgets: spend against limits per key (``GET /api/v1/budgets``), one key, an
operator's override of one key's limit (``PUT``), which resumes its paused runs at once,
and the reservations of model calls that clients make outside any run
(``/api/v1/budget-reservations``: ``AsyncClient.call_within_budgets``, a web process's
``Router``). All of them take the API token: their answers show a key's spend and limit,
and a settle adds spend to any key until its period ends. One exception: a client that
holds only the event key may ask to reserve for an event that no budget applies to, and is
told so (nothing is held, nothing is filed), so an app without budgets needs no token for
its quick calls; for an event that budgets apply to, it is told to send the API token."""

from __future__ import annotations

import math
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stepline import budgets, errors, shown_text
from stepline import event as event_mod
from stepline.budgets import Charge
from stepline.engine import budget_gate
from stepline.server import common
from stepline.server.responses import JSON, check_fields, problem, read_object

LIMIT_FIELDS = ("limit_usd", "limit_tokens")
EVENT_KEY_HEADER = "x-stepline-event-key"  # a client without the API token (AsyncClient(api_token=None))
_BY_EVENT_KEY = "stepline.budgets.by_event_key"  # request.scope: the reservation came with the event key alone


def token_or_event_key(request: Request) -> Response | None:
    """The API token (or a session), or else the event key in ``X-Stepline-Event-Key``, which
    only learns whether budgets apply to an event (see ``reserve_direct_call``)."""
    supplied = request.headers.get(EVENT_KEY_HEADER)
    if supplied is None or common.options(request).dev or request.headers.get("authorization") or common.has_session(request):
        return common.api_token(request)
    denied = common.check_secret(request, common.EVENT_KEY, supplied, common.options(request).event_key,
                                 f"wrong event key in {EVENT_KEY_HEADER}")
    if denied is None:
        request.scope[_BY_EVENT_KEY] = True
    return denied


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
    body = await read_object(request, max_bytes=common.engine(request).settings.max_api_body_bytes,
                             call="budget limits", fields=LIMIT_FIELDS)
    limit_usd, limit_tokens = _limits(body)
    budget, key = request.path_params["budget"], request.path_params["key"]
    return JSON(await common.engine(request).set_budget_limit(budget, key, limit_usd, limit_tokens))


# --- direct calls: reserve, then settle -----------------------------------------------

RESERVE_FIELDS = ("event", "usd", "tokens", "describe", "ttl_s")
SETTLE_FIELDS = ("holds", "usd", "tokens", "user_id", "usage")
USAGE_FIELDS = ("provider", "model", "usage", "cost_usd", "latency_ms")
TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens", "cache_write_tokens", "total_tokens")
DEFAULT_TTL_S = 900.0
MAX_TTL_S = 86_400.0  # a reservation never settled stops counting after this at most
MAX_HOLDS = 64
MAX_TEXT = 4096  # bytes of a hold's budget or key, a usage's provider or model
_CALL_ID = re.compile(re.escape(budget_gate.DIRECT_PREFIX) + r"[0-9A-Za-z]{1,64}")


def _usd(body: dict[str, Any], name: str, where: str) -> float:
    value = body.get(name, 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1e9:
        raise errors.RequestError(f"{where}.{name}: expected US dollars from 0 to 1e9, got {value!r}")
    return float(value)


def _count(body: dict[str, Any], name: str, where: str) -> int:
    value = body.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**62:
        raise errors.RequestError(f"{where}.{name}: expected a whole number of tokens >= 0, got {value!r}")
    return value


def _text(value: Any, where: str, *, optional: bool = True, max_bytes: int = MAX_TEXT) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value.encode()) > max_bytes or "\x00" in value:
        raise errors.RequestError(
            f"{where}: expected 1-{max_bytes} bytes of text without NUL{' or null' if optional else ''}, got {value!r:.120}"
        )
    return value


@common.route(token_or_event_key)
async def reserve_direct_call(request: Request) -> Response:
    """Body ``{"event": {...}, "usd": 0.0006, "tokens": 1300, "describe"?, "ttl_s"?: 900}``:
    reserve a model call's worst case (``usd``, ``tokens``) under the budgets a run of
    ``event`` would meet. 200 ``{"id", "holds", "user_id", "expires_at"}``: make the call,
    then settle ``id`` with ``holds``; 402 with ``budget_exceeded`` when a budget has no room.
    With the event key alone: 200 with ``"id": null`` when no budget applies to the event
    (make the call; there is nothing to settle), 403 when one does."""
    engine = common.engine(request)
    # The body carries an event: the event limit bounds it.
    body = await read_object(request, max_bytes=common.body_limit(request), call="reservation", fields=RESERVE_FIELDS)
    if not isinstance(body.get("event"), dict):
        raise errors.RequestError('reservation.event: send the event the call is for, {"name": ..., "data": {...}}')
    event = engine.validate_events([body["event"]])[0].to_dict()
    worst = Charge(_usd(body, "usd", "reservation"), _count(body, "tokens", "reservation"))
    describe = body.get("describe") or ""
    if not isinstance(describe, str) or len(describe) > 1000:
        raise errors.RequestError(f"reservation.describe: expected text of 1000 characters at most, got {describe!r:.80}")
    ttl_s = body.get("ttl_s", DEFAULT_TTL_S)
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not 1 <= ttl_s <= MAX_TTL_S:
        raise errors.RequestError(f"reservation.ttl_s: expected seconds from 1 to {MAX_TTL_S:.0f}, got {ttl_s!r}")
    if request.scope.get(_BY_EVENT_KEY):
        if await engine.budgets_apply(event):
            return problem(
                403, "budgets apply to this event: a model call under them needs the API token "
                     "(AsyncClient(url, event_key, api_token=<STEPLINE_API_TOKEN>))",
            )
        return JSON({"id": None, "holds": [], "user_id": event_mod.user_id_of(event), "expires_at": None})
    spend = budgets.Spend(
        estimate=lambda: (worst, describe), actual=lambda _: budgets.NOTHING, billed=lambda _: budgets.NOTHING
    )
    ticket = await engine.reserve_direct_call(event, spend, float(ttl_s))
    return JSON({
        "id": ticket.run_id,
        "holds": [{"budget": budget, "key": key, "period_start": start} for budget, key, start in ticket.rows],
        "user_id": event_mod.user_id_of(event),
        "expires_at": ticket.expires_at,
    })


def _holds(raw: Any) -> list[tuple[str, str, int]]:
    if not isinstance(raw, list) or len(raw) > MAX_HOLDS:
        raise errors.RequestError(f"settle.holds: send the reservation's holds as it gave them (a list of {MAX_HOLDS} at most)")
    out = []
    for i, hold in enumerate(raw):
        if not isinstance(hold, dict) or sorted(hold) != ["budget", "key", "period_start"]:
            raise errors.RequestError(f'settle.holds[{i}]: expected {{"budget", "key", "period_start"}}, got {hold!r:.120}')
        start = hold["period_start"]
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < 2**53:
            raise errors.RequestError(f"settle.holds[{i}].period_start: expected epoch milliseconds, got {start!r}")
        out.append((str(_text(hold["budget"], f"settle.holds[{i}].budget", optional=False)),
                    str(_text(hold["key"], f"settle.holds[{i}].key", optional=False)), start))
    return out


def _usage(raw: Any) -> dict[str, Any] | None:
    """A completed call's record for ``llm_usage``: provider, model, tokens, cost, latency."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise errors.RequestError("settle.usage: expected the call's {provider, model, usage, cost_usd, latency_ms} or null")
    check_fields(raw, USAGE_FIELDS, "settle.usage")
    tokens = raw.get("usage") or {}
    if not isinstance(tokens, dict):
        raise errors.RequestError("settle.usage.usage: expected {prompt_tokens, completion_tokens, ...}")
    check_fields(tokens, TOKEN_FIELDS, "settle.usage.usage")
    latency = raw.get("latency_ms")
    if latency is not None and (isinstance(latency, bool) or not isinstance(latency, (int, float)) or not 0 <= latency < 2**53):
        raise errors.RequestError(f"settle.usage.latency_ms: expected milliseconds >= 0 or null, got {latency!r}")
    return {
        "provider": _text(raw.get("provider"), "settle.usage.provider"),
        "model": _text(raw.get("model"), "settle.usage.model", optional=False),
        "usage": {name: _count(tokens, name, "settle.usage.usage") for name in TOKEN_FIELDS if name in tokens},
        "cost_usd": _usd(raw, "cost_usd", "settle.usage"),
        "latency_ms": None if latency is None else int(latency),
    }


@common.route(common.api_token)
async def settle_direct_call(request: Request) -> Response:
    """Body ``{"holds": [...], "usd", "tokens", "user_id", "usage"}``: the reservation's holds
    (as reserving gave them) are replaced by what the call cost (``usd``, ``tokens``; a call
    that failed: what it was billed, 0 when nothing), and a completed call's ``usage`` is
    filed in ``llm_usage`` with ``user_id`` (function ``direct``)."""
    call_id = request.path_params["call_id"]
    if not _CALL_ID.fullmatch(call_id):
        raise errors.RequestError(f"{call_id!r:.80} is not a reservation id: settle the id that reserving gave ('direct:...')")
    engine = common.engine(request)
    body = await read_object(request, max_bytes=engine.settings.max_api_body_bytes, call="settle", fields=SETTLE_FIELDS)
    rows = _holds(body.get("holds", []))
    actual = Charge(_usd(body, "usd", "settle"), _count(body, "tokens", "settle"))
    user_id = _text(body.get("user_id"), "settle.user_id", max_bytes=engine.settings.max_user_id_bytes)
    shown = None if user_id is None else shown_text.problem(user_id)
    if shown is not None:  # listed by user in the usage report, as sent
        raise errors.RequestError(f"settle.user_id {user_id!r:.80} {shown}; send the user's id, like 'user_123'")
    await engine.settle_direct_call(call_id, rows, actual, user_id, _usage(body.get("usage")))
    return JSON({"id": call_id, "settled": len(rows)})


def routes() -> list[Route]:
    return [
        Route("/api/v1/budget-reservations", reserve_direct_call, methods=["POST"]),
        Route("/api/v1/budget-reservations/{call_id}/settle", settle_direct_call, methods=["POST"]),
        Route("/api/v1/budgets", list_budgets, methods=["GET"]),
        Route("/api/v1/budgets/{budget}/{key:path}", get_budget_key, methods=["GET"]),
        Route("/api/v1/budgets/{budget}/{key:path}", put_budget_key, methods=["PUT"]),
    ]
