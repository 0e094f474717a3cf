"""What every route shares: options, auth checks, error mapping, query parsing."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hmac
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from stepline import durations, errors
from stepline import event as event_mod
from stepline.engine import Engine
from stepline.observability import carrier, tracing
from stepline.server import auth_limits, responses, tokens
from stepline.server.auth_limits import AuthLimiter
from stepline.server.responses import problem
from stepline.settings import Settings

Handler = Callable[[Request], Awaitable[Response]]
log = logging.getLogger("stepline.server")

SESSION_COOKIE = "stepline_session"
SESSION_SCOPE_KEY = "stepline.session"  # set by sessions.SessionLookup: does the request carry a live session?
# The secrets behind the back-off for wrong values (auth_limits), each with its own counts.
EVENT_KEY = "event key"
API_TOKEN = "API token"
SIGNING_KEY = "SDK signing key"
_NO_TOKEN = "missing or wrong API token: send 'Authorization: Bearer <STEPLINE_API_TOKEN>'"
# Sent by the dashboard's own scripts; a cross-site form cannot set it (CSRF guard for cookie auth).
DASHBOARD_HEADER = "x-stepline-dashboard"
_DEV_KEY = secrets.token_urlsafe(32)  # signs run tokens in dev mode when no key is set


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """``dev``: no keys needed. Production needs an event key and an API token."""

    dev: bool = True
    event_key: str = ""
    api_token: str = ""
    # HMAC key for run tokens and dashboard sessions; empty: the engine's
    # STEPLINE_SIGNING_KEY, else the API token.
    signing_key: str = ""
    max_body_bytes: int = 1024 * 1024 * 8  # raised to fit one event when STEPLINE_MAX_EVENT_BYTES is larger
    # Seconds between store reads of a streamed run when nothing in-process woke it.
    stream_poll: float = 0.25


Check = Callable[[Request], Response | None]  # a route's access rule: None lets the request in


def route(check: Check) -> Callable[[Handler], Handler]:
    """A route handler with its access rule declared once (``api_token``, ``event_key``,
    ``run_access``, ``open_access`` or a route's own) and Stepline's errors mapped to
    4xx/503 answers that say what is wrong. Any other exception is a fault: 500, logged."""

    def decorate(handler: Handler) -> Handler:
        async def wrapped(request: Request) -> Response:
            if _nul_in_url(request):
                return problem(400, "NUL characters are not allowed in the URL")
            try:
                denied = check(request)
                return denied if denied is not None else await handler(request)
            except errors.SteplineError as exc:
                return responses.from_error(exc)
            except ClientDisconnect:
                raise  # the client left or the HTTP guard ended the body: there is no one to answer
            except Exception:
                log.exception("unhandled error in %s %s", request.method, request.url.path)
                return problem(500, "internal error; the server log has the details")

        wrapped.__name__ = handler.__name__
        wrapped.__doc__ = handler.__doc__
        return wrapped

    return decorate


def _nul_in_url(request: Request) -> bool:
    """Whether a query or path parameter holds NUL. A decoded query value can only hold one
    if the raw query has ``%00`` or a NUL byte, so most requests never parse their query here."""
    if any(isinstance(value, str) and "\x00" in value for value in request.path_params.values()):
        return True
    raw = request.scope.get("query_string") or b""
    if b"%00" not in raw and b"\x00" not in raw:
        return False
    return any("\x00" in value for value in request.query_params.values())


def open_access(request: Request) -> Response | None:
    """No credentials needed (health, the login page)."""
    return None


def engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


def options(request: Request) -> ServerOptions:
    return request.app.state.options  # type: ignore[no-any-return]


def ingest_body_limit(opts: ServerOptions, settings: Settings) -> int:
    """The largest body of event ingest: the server's limit, or more when events may be larger."""
    return max(opts.max_body_bytes, settings.max_event_bytes + 64 * 1024)


def body_limit(request: Request) -> int:
    """The largest request body a route reads (the HTTP guard stops other routes' bodies sooner)."""
    return ingest_body_limit(options(request), engine(request).settings)


# An ingest body larger than this is parsed and validated on a thread: the event loop keeps
# serving other requests (the GIL is handed over every few milliseconds) instead of stopping
# for the whole of a multi-megabyte body's values.
OFF_LOOP_BYTES = 64 * 1024


async def events_of_body(
    request: Request, *, max_bytes: int, convert: Callable[[Any], Any] | None = None,
) -> list[event_mod.Event]:
    """The validated events of an ingest request's body (``convert``: each item first, as the
    SDKs' shape needs), or the error that names what is wrong with them."""
    body = await responses.read_body(request, max_bytes=max_bytes)
    the_engine = engine(request)
    limit = the_engine.settings.max_events_per_request
    trace = carrier.from_headers(request.headers)

    def prepare() -> list[event_mod.Event]:
        items = _event_items(responses.parse_json(body), limit)
        if convert is not None:
            items = [convert(item) for item in items]
        # An event without a trace of its own carries the request's (traceparent / tracestate).
        return the_engine.validate_events(tracing.stamp(items, trace))

    return await asyncio.to_thread(prepare) if len(body) > OFF_LOOP_BYTES else prepare()


def _event_items(payload: Any, limit: int) -> list[Any]:
    """The events of an ingest body (one, or a list), at most ``STEPLINE_MAX_EVENTS_PER_REQUEST``:
    a body of many tiny events would hold the loop while each is validated."""
    items = payload if isinstance(payload, list) else [payload]
    if len(items) > limit:
        raise errors.LimitError(
            f"the request carries {len(items)} events, over the limit of {limit} a request "
            "(STEPLINE_MAX_EVENTS_PER_REQUEST); send them in several requests"
        )
    event_mod.refuse_reserved_names(items)
    return event_mod.without_server_data(items)


def signing_key(request: Request) -> str:
    opts = options(request)
    key = opts.signing_key or engine(request).settings.signing_key or opts.api_token
    return key or _DEV_KEY


def auth_limiter(request: Request) -> AuthLimiter:
    return request.app.state.auth_limiter  # type: ignore[no-any-return]


def check_secret(request: Request, secret: str, supplied: str, expected: str, denial: str) -> Response | None:
    """``supplied`` against ``expected`` in constant time, behind the back-off for wrong
    values (429 with Retry-After); None when it is right. A blank ``expected`` matches nothing."""
    right = bool(expected.strip()) and hmac.compare_digest(supplied.encode(), expected.encode())
    return checked_secret(request, secret, right=right, strong=auth_limits.is_strong(expected), denial=denial)


def checked_secret(request: Request, secret: str, *, right: bool, strong: bool, denial: str) -> Response | None:
    """An attempt at ``secret`` already compared (``right``), behind its back-off: 429 with
    Retry-After while the client waits (a ``strong`` secret that is right comes in anyway,
    see auth_limits), 401 with ``denial`` when wrong, None when let in."""
    limiter = auth_limiter(request)
    client = client_address(request)
    wait = limiter.wait(secret, client)
    if wait is not None and not (right and strong):  # see auth_limits
        seconds = max(1, math.ceil(wait.seconds))
        refused = problem(429, f"{wait.why}; try again in {seconds} s")
        refused.headers["retry-after"] = str(seconds)
        return refused
    if right:
        limiter.succeeded(secret, client, clear_back_off=wait is None)
        return None
    limiter.failed(secret, client)
    return problem(401, denial)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def event_key(request: Request) -> Response | None:
    """The event key in the path (``/e/{event_key}``)."""
    opts = options(request)
    if opts.dev:
        return None
    key = str(request.path_params.get("event_key", ""))
    return check_secret(request, EVENT_KEY, key, opts.event_key, "wrong event key: POST to /e/{STEPLINE_EVENT_KEY}")


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else ""


def has_session(request: Request) -> bool:
    """A live dashboard session cookie (looked up before routing by ``sessions.SessionLookup``)."""
    return request.scope.get(SESSION_SCOPE_KEY) is True


def api_token(request: Request) -> Response | None:
    """The API token as a bearer header, or the dashboard's session cookie."""
    opts = options(request)
    if opts.dev:
        return None
    token = bearer(request)
    if token:
        if _is_run_token(request, token):  # no guess at the API token: not counted against it
            return problem(403, "a run token reads only its run (GET /api/v1/runs/{run_id} and its /stream); "
                                "this call needs the API token: 'Authorization: Bearer <STEPLINE_API_TOKEN>'")
        return check_secret(request, API_TOKEN, token, opts.api_token, _NO_TOKEN)
    if has_session(request):
        if request.method in ("GET", "HEAD") or request.headers.get(DASHBOARD_HEADER) == "1":
            return None
        return problem(403, f"dashboard sessions must send the {DASHBOARD_HEADER!r} header on changes")
    return problem(401, _NO_TOKEN)


def _is_run_token(request: Request, token: str) -> bool:
    """A run token signed with this server's key (for any run, expired or not)."""
    parts = token.split(".")
    return len(parts) == 4 and parts[0] == tokens.PREFIX and tokens.verify_run_token(
        token, parts[1], signing_key(request), now=0
    )


BY_RUN_TOKEN = "stepline.by_run_token"  # request.scope: the request came with a run token


def run_access(request: Request) -> Response | None:
    """API token, session, or a run token for the run in the path (``?token=`` or bearer);
    a run token reads only the run it names (``by_run_token`` says which was used)."""
    supplied = request.query_params.get("token") or bearer(request)
    run_id = str(request.path_params.get("run_id", ""))
    if options(request).dev:
        request.scope[BY_RUN_TOKEN] = bool(supplied)  # dev mode is open; a page sending a token still gets CORS
        return None
    if supplied.startswith(tokens.PREFIX + "."):
        if tokens.verify_run_token(supplied, run_id, signing_key(request)):
            request.scope[BY_RUN_TOKEN] = True
            return None
        return problem(401, "the run token is wrong, expired, or for another run: mint a new one")
    return api_token(request)


def by_run_token(request: Request) -> bool:
    return bool(request.scope.get(BY_RUN_TOKEN))


def run_token_expiry(request: Request) -> float | None:
    """When the run token a request was let in by expires (epoch seconds); None when it came
    in otherwise (API token, session, dev mode), which does not expire mid-stream."""
    if options(request).dev or not by_run_token(request):
        return None
    return tokens.token_expiry(request.query_params.get("token") or bearer(request))


def parse_time(value: str | None, name: str) -> int | None:
    """ISO 8601 time or epoch milliseconds → epoch milliseconds."""
    if value is None or value == "":
        return None
    try:
        if is_digits(value):
            ms = int(value)
            if ms > 253402300799999:
                raise ValueError("too large")
            return ms
        parsed = dt.datetime.fromisoformat(value)
    except (ValueError, OverflowError) as exc:
        raise errors.RequestError(f"{name}: expected an ISO 8601 time or epoch milliseconds, got {value!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)


def is_digits(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes '²' and the like, which ``int`` refuses."""
    return text.isascii() and text.isdigit()


def parse_limit(value: str | None, default: int = 50, maximum: int = 500) -> int:
    text = default if value is None else value
    if isinstance(text, int):
        return text
    if not is_digits(text) or not 1 <= int(text) <= maximum:
        raise errors.RequestError(f"limit: expected a whole number 1..{maximum}, got {value!r}")
    return int(text)


def parse_window(value: str | None, default: str, name: str = "window", maximum_days: int = 366) -> float:
    """A duration like '1h' or '7d', in seconds, at most ``maximum_days``."""
    try:
        seconds = durations.parse(value or default, field=name)
    except errors.ConfigError as exc:
        raise errors.RequestError(str(exc)) from exc
    if not 0 < seconds <= maximum_days * 86400:
        raise errors.RequestError(f"{name}: expected a duration from 1ms to {maximum_days}d, got {value!r}")
    return seconds
