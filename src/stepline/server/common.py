"""What every route shares: options, auth checks, error mapping."""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from stepline import errors
from stepline.engine import Engine
from stepline.server import responses
from stepline.server.responses import problem

Handler = Callable[[Request], Awaitable[Response]]


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """``dev``: no keys needed. Production needs an event key and an API token."""

    dev: bool = True
    event_key: str = ""
    api_token: str = ""
    max_body_bytes: int = 1024 * 1024 * 8


def guard(handler: Handler) -> Handler:
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except errors.SteplineError as exc:
            return responses.from_error(exc)
        except (ValueError, KeyError) as exc:
            return problem(400, f"bad request: {exc}")

    wrapped.__name__ = handler.__name__
    return wrapped


def engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


def options(request: Request) -> ServerOptions:
    return request.app.state.options  # type: ignore[no-any-return]


def check_event_key(request: Request, key: str) -> Response | None:
    opts = options(request)
    if opts.dev:
        return None
    if not opts.event_key or not hmac.compare_digest(key.encode(), opts.event_key.encode()):
        return problem(401, "wrong event key: POST to /e/{STEPLINE_EVENT_KEY}")
    return None


def check_api_token(request: Request) -> Response | None:
    opts = options(request)
    if opts.dev:
        return None
    header = request.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else ""
    if not opts.api_token or not hmac.compare_digest(token.encode(), opts.api_token.encode()):
        return problem(401, "missing or wrong API token: send 'Authorization: Bearer <STEPLINE_API_TOKEN>'")
    return None
