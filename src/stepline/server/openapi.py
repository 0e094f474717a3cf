"""The OpenAPI 3.0 document served at ``/api/v1/openapi.json``.

Written by hand beside the routes (Starlette has no schema inference); a test runs
schemathesis against it, so a route that drifts from it fails the suite.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stepline.event import MAX_TS, MIN_TS
from stepline.server.responses import JSON
from stepline.store.records import RunStatus

STATUSES = [str(s) for s in RunStatus]
# Times as the server reads them (common.parse_time): epoch ms, or an ISO 8601 date that
# exists (no 2026-02-31, 29 February in leap years only, years 0001-9999), with an optional
# time and offset; empty is taken as absent, as for every filter.
_YEAR = r"([0-9]{3}[1-9]|[0-9]{2}[1-9][0-9]|[0-9][1-9][0-9]{2}|[1-9][0-9]{3})"
_MONTH_DAY = r"((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)|02-(0[1-9]|1[0-9]|2[0-8]))"
_LEAP_DAY = r"([0-9]{2}(0[48]|[2468][048]|[13579][26])|(0[48]|[2468][048]|[13579][26])00)-02-29"
_CLOCK = r"T([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?"
_TIME_PATTERN = rf"^(|[0-9]{{1,13}}|({_YEAR}-{_MONTH_DAY}|{_LEAP_DAY})({_CLOCK})?)$"
MAX_TIME_MS = 253402300799999  # 9999-12-31T23:59:59.999Z, the last time parse_time takes


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


STR = {"type": "string"}
NSTR = _nullable(STR)
NINT = {"type": "integer", "nullable": True}
NNUM = {"type": "number", "nullable": True}
ANY: dict[str, Any] = {}
TIME = _nullable({"type": "string", "format": "date-time"})
ERROR_OBJ = _nullable({"type": "object", "additionalProperties": True})


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required if required is not None else list(props)}


_RUN_FIELDS = {
    "id": STR, "function_id": STR, "status": {"type": "string", "enum": STATUSES}, "wait_reason": NSTR,
    "attempt": {"type": "integer"}, "user_id": NSTR, "progress": NNUM, "progress_message": NSTR,
    "output": ANY, "error": ERROR_OBJ, "event_id": STR, "parent_run_id": NSTR, "replay_of": NSTR,
    "created_at": TIME, "started_at": TIME, "ended_at": TIME, "updated_at": TIME, "duration_ms": NINT,
}
RUN = _obj(
    {**_RUN_FIELDS, "output_elided": {"type": "boolean", "description": "in listings only, when true: the output, over 64 KiB, is left out (output is null): GET the run"}},
    required=list(_RUN_FIELDS),
)
ATTEMPT = _obj({"attempt": {"type": "integer"}, "error": ERROR_OBJ, "started_at": TIME, "ended_at": TIME})
STEP = _obj(
    {
        "id": STR, "name": STR, "kind": STR, "status": STR, "attempts": {"type": "integer"}, "output": ANY,
        "error": ERROR_OBJ, "started_at": TIME, "ended_at": TIME, "wake_at": TIME, "duration_ms": NINT,
        "meta": ANY, "attempt_history": {"type": "array", "items": ref("Attempt")},
    }
)
USAGE = {
    "calls": {"type": "integer"}, "prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
    "reasoning_tokens": {"type": "integer"}, "cached_tokens": {"type": "integer"},
    "total_tokens": {"type": "integer"}, "cost_usd": {"type": "number"},
}
PAUSE = _obj({"mode": {"type": "string", "enum": ["queue", "skip"]}, "reason": NSTR, "paused_at": TIME})
RUN_BRIEF = {"type": "object", "required": ["id", "function_id", "status"], "properties": {
    "id": STR, "function_id": STR, "status": {"type": "string", "enum": STATUSES}, "created_at": TIME,
    "kind": {"type": "string", "enum": ["replay", "rerun"]}, "step": NSTR}}
RUN_DETAIL = {
    "allOf": [
        ref("Run"),
        _obj(
            {
                "event": _nullable({"type": "object"}),
                "steps": {"type": "array", "items": ref("Step")},
                "function_attempts": {"type": "array", "items": {"type": "object"}},
                "usage": _obj(USAGE),
                "step_usage": {"type": "object", "additionalProperties": {"type": "object"},
                               "description": "each model call's provider, model, tokens, cost and latency, by step key"},
                "schedule": _obj({"due_at": TIME, "held_by_worker": {"type": "boolean"}, "set_aside_on": NSTR}),
                "links": _obj({
                    "cancelled_by_event": NSTR, "parent": _nullable(RUN_BRIEF),
                    "children": {"type": "array", "items": ref("RunBrief")},
                    "replays": {"type": "array", "items": ref("RunBrief")},
                    "failure_handler_runs": {"type": "array", "items": ref("RunBrief")},
                    "handles_failure_of": _nullable(RUN_BRIEF),
                }),
            },
            ["event", "steps", "function_attempts", "usage"],
        ),
    ]
}
EVENT = _obj(
    {
        "id": STR, "name": STR, "body": ANY, "user_id": NSTR, "received_at": TIME,
        "skipped": {"type": "object", "additionalProperties": True},
        "resumed_runs": {"type": "array", "items": STR, "description": "runs with a step waiting for this event, which it resumed"},
    }
)
EVENT_SUMMARY = {"allOf": [ref("Event"), _obj({
    "body_elided": {"type": "boolean", "description": "the body, over 64 KiB, is left out of listings (body is null): GET the event"},
    "run_ids": {"type": "array", "items": STR},
    "runs": {"type": "array", "items": _obj({"id": STR, "function_id": STR, "status": {"type": "string", "enum": STATUSES}})},
})]}
EVENT_DETAIL = {
    "allOf": [
        ref("Event"),
        _obj(
            {
                "runs": {"type": "array", "items": ref("Run")},
                "skipped_functions": {
                    "type": "array",
                    "items": _obj({"function_id": STR, "reason": STR, "detail": _nullable({"type": "object"})}),
                },
                "why_no_runs": NSTR,
                "cancelled_runs": {"type": "array", "items": ref("Run")},
            }
        ),
    ]
}
COUNTS = _obj({k: {"type": "integer"} for k in (
    "queued", "running", "sleeping", "waiting", "failed_last_hour", "completed_last_hour", "cancelled_last_hour")})
FUNCTION = _obj(
    {
        "id": STR, "app_id": STR, "triggers": {"type": "array", "items": {"type": "object"}},
        "config": {"type": "object"}, "updated_at": TIME, "counts": COUNTS, "paused": _nullable(PAUSE),
    }
)
FUNCTION_SUMMARY = _obj({
    "id": STR, "app_id": STR, "triggers": {"type": "array", "items": {"type": "object"}}, "config": {"type": "object"},
    "updated_at": TIME, "paused": _nullable(PAUSE), "since": TIME,
    "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
    "success_rate": NNUM, "p50_ms": NINT, "p95_ms": NINT, "usage": _obj(USAGE),
    "recent_runs": {"type": "array", "items": ref("Run")}, "window_seconds": {"type": "number"},
})
INT = {"type": "integer"}
METRICS = _obj(
    {
        "queue": {"type": "array", "items": _obj({"function_id": STR, "ready": INT, "scheduled": INT, "leased": INT})},
        "queue_total": _obj({"ready": INT, "scheduled": INT, "leased": INT}),
        "running": INT,
        "functions": {
            "type": "array",
            "items": _obj(
                {
                    "function_id": STR, "running": INT, "completed": INT, "failed": INT, "cancelled": INT,
                    "success_rate": NNUM, "p50_ms": NINT, "p95_ms": NINT,
                }
            ),
        },
        "usage_by_day": {"type": "array", "items": _obj({"day": {"type": "string", "format": "date"}, **USAGE})},
        "usage_by_user": {"type": "array", "items": _obj({"user_id": NSTR, **USAGE})},
        "usage_by_model": {"type": "array", "items": _obj({"provider": NSTR, "model": STR, **USAGE})},
        "window_seconds": {"type": "number"},
        "days": INT,
    }
)
PROBLEM = _obj({"error": STR, "status": INT})
EVENT_IN = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "example": "llm/generate.requested",
                 "description": "names starting stepline/ or inngest/ are the server's own and refused"},
        # Every field but the name may be null, taken as absent (as the SDKs may send it).
        "data": {"type": "object", "nullable": True},
        "user": {"type": "object", "nullable": True},
        "id": {"type": "string", "minLength": 1, "nullable": True},
        "ts": {"type": "integer", "minimum": MIN_TS, "maximum": MAX_TS, "nullable": True},
        "v": {"type": "string", "nullable": True},
        "trace": {  # the sender's W3C trace context (docs/deployment.md, "Tracing and logs")
            "type": "object",
            "nullable": True,
            "required": ["traceparent"],
            "properties": {
                "traceparent": {"type": "string", "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"},
                "tracestate": {"type": "string"},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

NUM = {"type": "number"}
BUDGET_KEY = _obj(
    {
        "budget": STR, "key": STR, "scope": NSTR, "period": {"oneOf": [NUM, STR]}, "period_start": INT,
        "period_end": INT, "spent_usd": NUM, "spent_tokens": INT, "reserved_usd": NUM, "reserved_tokens": INT,
        "calls": INT, "limit_usd": NNUM, "limit_tokens": NINT,
        "override": _nullable(_obj({"limit_usd": NNUM, "limit_tokens": NINT})), "on_exceeded": STR,
        "exceeded": {"type": "boolean"}, "paused_runs": INT,
    }
)
BUDGET_LIMITS_IN = {
    "type": "object",
    "properties": {
        "limit_usd": {"type": "number", "minimum": 0, "nullable": True},
        "limit_tokens": {"type": "integer", "minimum": 1, "nullable": True},
    },
    "minProperties": 1,
    "additionalProperties": False,
}

HOLD = {
    "type": "object", "required": ["budget", "key", "period_start"], "additionalProperties": False,
    "properties": {"budget": {"type": "string", "minLength": 1}, "key": {"type": "string", "minLength": 1},
                   "period_start": {"type": "integer", "minimum": 0, "maximum": 2**53 - 1}},
}
USD_IN = {"type": "number", "minimum": 0, "maximum": 1e9}
TOKENS_IN = {"type": "integer", "minimum": 0, "maximum": 2**62 - 1}
RESERVATION_IN = {
    "type": "object",
    "required": ["event"],
    "properties": {
        "event": ref("EventIn"), "usd": USD_IN, "tokens": TOKENS_IN,
        "describe": {"type": "string", "maxLength": 1000, "description": "the worst case in words, for the refusal's message"},
        "ttl_s": {"type": "number", "minimum": 1, "maximum": 86400,
                  "description": "how long the reservation holds if it is never settled (default 900)"},
    },
    "additionalProperties": False,
}
RESERVATION = _obj({"id": NSTR, "holds": {"type": "array", "items": HOLD}, "user_id": NSTR, "expires_at": _nullable(INT)})
SETTLE_IN = {
    "type": "object",
    "properties": {
        "holds": {"type": "array", "maxItems": 64, "items": HOLD}, "usd": USD_IN, "tokens": TOKENS_IN, "user_id": NSTR,
        "usage": _nullable({
            "type": "object", "required": ["model"], "additionalProperties": False,
            "properties": {
                "provider": NSTR, "model": {"type": "string", "minLength": 1}, "cost_usd": USD_IN,
                "latency_ms": {"type": "integer", "minimum": 0, "nullable": True},
                "usage": {"type": "object", "additionalProperties": False, "properties": {name: TOKENS_IN for name in (
                    "prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens", "cache_write_tokens",
                    "total_tokens")}},
            },
        }),
    },
    "additionalProperties": False,
}
BUDGET_REFUSAL = _obj({
    "error": STR, "status": INT,
    "budget_exceeded": _obj({"budget": STR, "key": STR, "spent_usd": NUM, "spent_tokens": INT, "limit_usd": NNUM,
                             "limit_tokens": NINT, "on_exceeded": {"type": "string", "enum": ["pause", "fail"]}}),
})

SCHEMAS = {
    "Run": RUN, "RunDetail": RUN_DETAIL, "Step": STEP, "Attempt": ATTEMPT, "Event": EVENT,
    "EventSummary": EVENT_SUMMARY, "EventDetail": EVENT_DETAIL, "Function": FUNCTION, "Metrics": METRICS,
    "Problem": PROBLEM, "EventIn": EVENT_IN, "BudgetKey": BUDGET_KEY,
    "Pause": PAUSE, "RunBrief": RUN_BRIEF, "FunctionSummary": FUNCTION_SUMMARY,
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _problems(*codes: int) -> dict[str, Any]:
    words = {400: "bad input", 401: "missing or wrong credentials", 403: "not allowed", 404: "not found",
             409: "not allowed in the run's state", 413: "body over the size limit", 503: "database unavailable",
             429: "too many wrong credentials: try again after Retry-After seconds"}
    codes = (*codes, 429) if 401 in codes else codes  # wrong keys and tokens back off
    return {str(c): {"description": words[c], "content": _json(ref("Problem"))} for c in codes}


def _q(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}


# Server-Sent Events (text, not JSON): each has an id (the last message's sequence number),
# an event name and JSON data. See stepline/server/stream.py.
SSE = {
    "type": "string",
    "description": "Server-Sent Events, each 'id: <seq>', 'event: <name>', 'data: <JSON>': status {id, function_id, "
                   "status, wait_reason, attempt, progress, progress_message, started_at, ended_at} on connect and on change; message "
                   "{seq, topic, data, at} per ctx.publish; end {status, output or error}, then the stream closes; "
                   "expired (the run token or session ended: reconnect with Last-Event-ID); ': ping' comments every 15 s",
    "example": 'id: 0\nevent: status\ndata: {"id": "01JRUN", "function_id": "summarize", "status": "running", '
               '"wait_reason": null, "attempt": 0, "progress": 50.0, "progress_message": "halfway", '
               '"started_at": "2026-01-31T12:00:00.000Z", "ended_at": null}\n\n',
}
TIME_Q = {"type": "string", "pattern": _TIME_PATTERN, "example": "2026-01-31T00:00Z",
          "description": "ISO 8601 time (UTC unless it has an offset) or epoch milliseconds; empty: as if absent"}
# In a body: the same, epoch ms as a number, or null (absent).
TIME_IN = {"nullable": True, "oneOf": [TIME_Q, {"type": "integer", "minimum": 0, "maximum": MAX_TIME_MS}]}
LIMIT_Q = {"type": "integer", "minimum": 1, "maximum": 500}
API: list[dict[str, list[str]]] = [{"bearer": []}, {"session": []}]
RUN_READ: list[dict[str, list[str]]] = [{"bearer": []}, {"session": []}, {"runToken": []}]


def _op(summary: str, responses: dict[str, Any], *, params: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None, security: list[Any] | None = None, tag: str = "runs") -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses, "security": API if security is None else security}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = body
    return op


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"200": {"description": description, "content": _json(schema)}}


def _page(item: str) -> dict[str, Any]:
    return _obj({"data": {"type": "array", "items": ref(item)}, "next_cursor": NSTR})


EVENTS_BODY = {
    "required": True,
    "content": _json({"oneOf": [ref("EventIn"), {"type": "array", "items": ref("EventIn")}]}),
}
SENT = _obj({"ids": {"type": "array", "items": STR}, "status": INT})


def document() -> dict[str, Any]:
    run_id = _path("run_id")
    paths: dict[str, Any] = {
        "/e/{event_key}": {"post": _op(
            "Send one event or a list (the event key is in the path)", {**_ok(SENT), **_problems(400, 401, 413)},
            params=[_path("event_key")], body=EVENTS_BODY, security=[], tag="events")},
        "/api/v1/events": {
            "post": _op("Send one event or a list", {**_ok(SENT), **_problems(400, 401, 413)}, body=EVENTS_BODY, tag="events"),
            "get": _op("Events, newest first", {**_ok(_page("EventSummary")), **_problems(400, 401)}, tag="events", params=[
                _q("name", STR, "event name"), _q("since", TIME_Q, "received at or after (ISO 8601 or epoch ms)"),
                _q("until", TIME_Q, "received before"), _q("cursor", STR, "next_cursor of the previous page"),
                _q("limit", LIMIT_Q, "page size (default 50)")]),
        },
        "/api/v1/events/{event_id}": {"get": _op(
            "One event, the runs it started, and why functions skipped it",
            {**_ok(ref("EventDetail")), **_problems(400, 401, 404)}, params=[_path("event_id")], tag="events")},
        "/api/v1/runs": {"get": _op("Runs, newest first", {**_ok(_page("Run")), **_problems(400, 401)}, params=[
            _q("function_id", STR, "function id"), _q("status", {"type": "string", "enum": STATUSES}, "run status"),
            _q("user_id", STR, "user id taken from the event (data.user_id, data.userId or user.id)"),
            _q("since", TIME_Q, "created at or after (ISO 8601 or epoch ms)"), _q("until", TIME_Q, "created before"),
            _q("cursor", STR, "next_cursor of the previous page"), _q("limit", LIMIT_Q, "page size (default 50)")])},
        "/api/v1/runs/bulk-cancel": {"post": _op(
            "Cancel the unfinished runs of one function created in a time range",
            {**_ok(_obj({"cancelled": INT, "runs": {"type": "array", "items": _obj({"id": STR, "status": STR})}})),
             **_problems(400, 401, 403, 413)},
            body={"required": True, "content": _json({
                "type": "object", "required": ["function_id"], "additionalProperties": False,
                "properties": {"function_id": {"type": "string", "minLength": 1},
                               "since": TIME_IN,
                               "until": TIME_IN,
                               "reason": {"type": "string", "maxLength": 1000},
                               "limit": {"type": "integer", "minimum": 1, "maximum": 10000}}})})},
        "/api/v1/runs/{run_id}": {"get": _op(
            "One run with its steps, attempts, output or error, and wait reason",
            {**_ok(ref("RunDetail")), **_problems(400, 401, 404)}, params=[run_id, _q("token", STR, "a run token")],
            security=RUN_READ)},
        "/api/v1/runs/{run_id}/stream": {"get": _op(
            "Server-Sent Events: status, message and end, until the run ends (resume with Last-Event-ID)",
            {"200": {"description": "an event stream", "content": {"text/event-stream": {"schema": SSE}}},
             **_problems(400, 401, 404, 503)},
            params=[run_id, _q("token", STR, "a run token"),
                    _q("after", {"type": "string", "pattern": r"^([0-9]{1,15})?$"},
                       "resume after this message sequence number (empty: from the start, as Last-Event-ID absent)")],
            security=RUN_READ)},
        "/api/v1/runs/{run_id}/cancel": {"post": _op(
            "Cancel a run (a running one stops at its next step boundary)",
            {**_ok(_obj({"id": STR, "status": STR})), **_problems(400, 401, 403, 404)}, params=[run_id])},
        "/api/v1/runs/{run_id}/replay": {"post": _op(
            "A new run of the same function with the same event, from the start",
            {**_ok(_obj({"id": STR, "replay_of": STR})), **_problems(400, 401, 403, 404)}, params=[run_id])},
        "/api/v1/runs/{run_id}/rerun-from-failed-step": {"post": _op(
            "A new run that reuses the completed steps of a failed or cancelled run",
            {**_ok(_obj({"id": STR, "rerun_of": STR, "reused_steps": {"type": "array", "items": STR}})),
             **_problems(400, 401, 403, 404, 409)}, params=[run_id])},
        "/api/v1/runs/{run_id}/token": {"post": _op(
            "Mint a short-lived token that reads only this run (for a browser)",
            {**_ok(_obj({"run_id": STR, "token": STR, "expires_at": TIME})), **_problems(400, 401, 403, 404, 413)},
            params=[run_id],
            body={"required": False, "content": _json({"type": "object", "additionalProperties": False, "properties": {
                "ttl_seconds": {"type": "number", "minimum": 1, "maximum": 86400}}})})},
        "/api/v1/functions": {"get": _op(
            "Registered functions with config and live counts", {**_ok(_page_plain("Function")), **_problems(401)},
            tag="functions")},
        "/api/v1/functions/{function_id}": {"get": _op(
            "One function", {**_ok(ref("Function")), **_problems(400, 401, 404)}, params=[_path("function_id")],
            tag="functions")},
        "/api/v1/functions/{function_id}/summary": {"get": _op(
            "A function's page: config, pause, live counts, outcomes, p50/p95 and cost over a window, newest runs",
            {**_ok(ref("FunctionSummary")), **_problems(400, 401, 404)}, tag="functions",
            params=[_path("function_id"), _q("window", {"type": "string", "enum": ["1h", "6h", "24h", "7d", "30d", ""]},
                                             "window of outcomes, durations and cost (any duration up to 366d works; default, and when empty, 24h)")])},
        "/api/v1/functions/{function_id}/pause": {"post": _op(
            "Pause a function on every process: queue (its runs wait) or skip (its events start no runs)",
            {**_ok(_obj({"function_id": STR, "paused": ref("Pause")})), **_problems(400, 401, 403, 404, 413)},
            params=[_path("function_id")], tag="functions",
            body={"required": False, "content": _json({"type": "object", "additionalProperties": False, "properties": {
                "mode": {"type": "string", "enum": ["queue", "skip"]}, "reason": {"type": "string", "maxLength": 1000}}})})},
        "/api/v1/functions/{function_id}/resume": {"post": _op(
            "Resume a paused function; the runs its pause held start in the order they came",
            {**_ok(_obj({"function_id": STR, "was_paused": {"type": "boolean"}, "resumed_runs": INT})),
             **_problems(400, 401, 403, 404)}, params=[_path("function_id")], tag="functions")},
        "/api/v1/functions/{function_id}/invoke": {"post": _op(
            "Start a run of this function now with the given data, whatever its triggers; its flow control "
            "and a pause apply (409 with event_id and skipped when they start no run)",
            {**_ok(_obj({"event_id": STR, "run_id": NSTR})), **_problems(400, 401, 403, 404, 409, 413)},
            params=[_path("function_id")], tag="functions",
            body={"required": False, "content": _json({
                "type": "object", "additionalProperties": False, "properties": {"data": {"type": "object"}}})})},
        "/api/v1/functions/{function_id}/replay-failed": {"post": _op(
            "Replay each run of this function that failed in a time range and was not replayed before",
            {**_ok(_obj({"matched": INT, "replayed": INT, "already_replayed": INT,
                         "runs": {"type": "array", "items": _obj({"id": STR, "replay_of": STR})}})),
             **_problems(400, 401, 403, 404, 413)},
            params=[_path("function_id")], tag="functions",
            body={"required": False, "content": _json({"type": "object", "additionalProperties": False, "properties": {
                "since": TIME_IN,
                "until": TIME_IN,
                "limit": {"type": "integer", "minimum": 1, "maximum": 10000}}})})},
        "/api/v1/search": {"get": _op(
            "Find a run or event by id (whole or its last characters), a sender's event id, a function, a user or an event name",
            {**_ok(_obj({"query": STR, "runs": {"type": "array", "items": ref("Run")},
                         "events": {"type": "array", "items": ref("Event")},
                         "functions": {"type": "array", "items": _obj({"id": STR, "app_id": STR})},
                         "users": {"type": "array", "items": _obj({"user_id": STR, "runs": INT})}})),
             **_problems(400, 401)}, tag="runs",
            params=[{"name": "q", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1, "maxLength": 256},
                     "description": "what to look for"}, _q("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "at most per kind (default 20)")])},
        "/api/v1/metrics": {"get": _op(
            "Queue depth, running, success rate, p50/p95 durations, tokens and cost",
            {**_ok(ref("Metrics")), **_problems(400, 401)}, tag="metrics", params=[
                _q("window", {"type": "string", "enum": ["5m", "15m", "1h", "6h", "24h", "7d", "30d", ""]},
                   "run stats window (any duration up to 366d, like 90m, works; default, and when empty, 1h)"),
                _q("days", {"type": "integer", "minimum": 1, "maximum": 366}, "days of token and cost history")])},
        "/api/v1/budgets": {"get": _op(
            "Cost budgets: each key's spend, calls in flight (reserved) and limit in its current period",
            {**_ok(_obj({"budgets": {"type": "array", "items": {"type": "object"}},
                         "data": {"type": "array", "items": ref("BudgetKey")}})), **_problems(400, 401, 404)},
            tag="budgets", params=[_q("budget", STR, "one budget's keys"),
                                   _q("limit", {"type": "integer", "minimum": 1, "maximum": 5000}, "keys at most (default 500)")])},
        "/api/v1/budgets/{budget}/{key}": {
            "get": _op("One budget key in its current period", {**_ok(ref("BudgetKey")), **_problems(400, 401, 404)},
                       params=[_path("budget"), _path("key")], tag="budgets"),
            "put": _op(
                "Override one key's limits (null removes one; both null: the declared limits); its paused runs resume",
                {**_ok({"allOf": [ref("BudgetKey"), _obj({"resumed_runs": {"type": "array", "items": STR}})]}),
                 **_problems(400, 401, 403, 404, 413)},
                params=[_path("budget"), _path("key")], tag="budgets",
                body={"required": True, "content": _json(BUDGET_LIMITS_IN)}),
        },
        "/api/v1/budget-reservations": {"post": _op(
            "Reserve a model call made outside any run (a Router's quick call) under the budgets a run of its event "
            "would meet; settle it after the call. With the event key alone (X-Stepline-Event-Key): id null when no "
            "budget applies to the event (make the call, nothing to settle), 403 when one does",
            {**_ok(RESERVATION),
             "402": {"description": "a budget has no room for the call", "content": _json(BUDGET_REFUSAL)},
             **_problems(400, 401, 403, 413)},
            tag="budgets", body={"required": True, "content": _json(RESERVATION_IN)},
            security=[*API, {"eventKeyHeader": []}])},
        "/api/v1/budget-reservations/{call_id}/settle": {"post": _op(
            "Replace a reservation's holds by what the call cost, and file a completed call in the usage",
            {**_ok(_obj({"id": STR, "settled": INT})), **_problems(400, 401, 403, 404, 413)},
            params=[_path("call_id")], tag="budgets", body={"required": True, "content": _json(SETTLE_IN)})},
        "/metrics": {"get": _op(
            "Prometheus text exposition", {"200": {"description": "metrics", "content": {"text/plain": {"schema": STR}}},
                                           **_problems(401)}, tag="metrics")},
        "/health": {"get": _op(
            "Liveness and database reachability",
            {**_ok(_obj({"status": STR, "mode": {"type": "string", "enum": ["dev", "production"]}, "database": STR,
                         "worker": _nullable({"type": "object"})})),
             "503": {"description": "database unavailable", "content": _json({"type": "object"})}},
            security=[], tag="metrics")},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Stepline API",
            "version": "1",
            "description": "Events in, runs out: job status, live streams, operator actions and metrics. "
            "Dev mode needs no credentials; production takes 'Authorization: Bearer <STEPLINE_API_TOKEN>', "
            "the dashboard's session cookie, or (for one run's status) a run token.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "STEPLINE_API_TOKEN"},
                "session": {"type": "apiKey", "in": "cookie", "name": "stepline_session"},
                "runToken": {"type": "apiKey", "in": "query", "name": "token"},
                "eventKeyHeader": {"type": "apiKey", "in": "header", "name": "X-Stepline-Event-Key",
                                   "description": "STEPLINE_EVENT_KEY: reservations for events that no budget applies to"},
            },
        },
    }


def _page_plain(item: str) -> dict[str, Any]:
    return _obj({"data": {"type": "array", "items": ref(item)}})


async def openapi_json(request: Request) -> Response:
    return JSON(document())


def routes() -> list[Route]:
    return [Route("/api/v1/openapi.json", openapi_json, methods=["GET"])]
