"""``create_app``: the Starlette application over one ``Engine``."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from stepline.engine import Engine
from stepline.server import (
    api_budgets,
    api_events,
    api_functions,
    api_metrics,
    api_runs,
    common,
    dashboard,
    id_route,
    inngest,
    openapi,
    serving,
    sessions,
    stream,
)
from stepline.server.auth_limits import AuthLimiter
from stepline.server.common import ServerOptions
from stepline.server.guard import HttpGuard, HttpLimits
from stepline.server.headers import SecurityHeaders
from stepline.server.responses import problem
from stepline.server.shared_reads import SharedReads


def core_routes() -> list[Any]:
    return [
        *api_functions.routes(),
        *api_metrics.routes(),
        *api_budgets.routes(),
        *api_events.routes(),
        *api_runs.routes(),
        *openapi.routes(),
        *dashboard.routes(),
    ]


async def _not_found(request: Request, exc: Exception) -> Response:
    path = request.url.path
    bare = path.rstrip("/")
    raw = request.scope.get("raw_path")
    stripped = {**request.scope, "path": bare, "raw_path": raw.rstrip(b"/") if isinstance(raw, bytes) else raw}
    if bare and bare != path and any(r.matches(stripped)[0] != Match.NONE for r in request.app.router.routes):
        # Not a redirect: Starlette's was built from the Host header, so any Host made it an open redirect.
        return problem(404, f"no route {path}; drop the trailing slash: {bare}")
    if path.startswith("/api/v1/functions/") and "/" in path[len("/api/v1/functions/"):].strip("/"):
        return problem(404, f"no route {path}; {id_route.ENCODE_HINT}")
    return problem(404, f"no route {path}; the API is described at /api/v1/openapi.json")


async def _fault(request: Request, exc: Exception) -> Response:
    """A fault outside ``common.route`` (the SDK routes answer in the SDKs' shapes, without it):
    JSON like every other answer, not Starlette's plain text; the server log has the traceback."""
    return problem(500, "internal error; the server log has the details")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    """405 with the methods the path takes, in the message and in ``Allow`` (RFC 9110
    requires it); a path may be served by several routes, one for each method."""
    allowed: set[str] = set()
    for candidate in request.app.router.routes:
        methods = getattr(candidate, "methods", None)
        if methods and candidate.matches(request.scope)[0] != Match.NONE:
            allowed.update(methods)
    names = sorted(allowed)
    refused = problem(405, f"{request.method} is not allowed on {request.url.path}; it takes {', '.join(names)}")
    refused.headers["allow"] = ", ".join(names)
    return refused


class _GuardedStarlette(Starlette):
    """Starlette with the HTTP guard outside its error middleware (else timeouts become 500s),
    and the security headers outside both, so that refusals carry them too."""

    def build_middleware_stack(self) -> Any:
        stack = super().build_middleware_stack()
        if self.state.direct_events:
            stack = api_events.DirectEvents(stack, self)
        return SecurityHeaders(HttpGuard(stack, self.state.http_limits))


def create_app(
    engine: Engine,
    options: ServerOptions | None = None,
    *,
    extra_routes: list[Any] | None = None,
    middleware: list[Middleware] | None = None,
) -> Starlette:
    """The ASGI app. It does not start the engine: the CLI (or a test) does."""
    app = _GuardedStarlette(
        routes=[*core_routes(), *(extra_routes or [])],
        middleware=[Middleware(sessions.SessionLookup), *(middleware or [])],
        exception_handlers={404: _not_found, 405: _method_not_allowed, Exception: _fault},
    )
    app.router.redirect_slashes = False  # see _not_found
    app.state.engine = engine
    app.state.direct_events = not middleware  # a user's middleware must see every request
    app.state.options = options = options or ServerOptions()
    app.state.http_limits = HttpLimits.from_settings(
        engine.settings, dev=options.dev, ingest_body_bytes=common.ingest_body_limit(options, engine.settings)
    )
    # Half the connections the server keeps, which a low open-file limit may hold below the setting.
    app.state.stream_slots = stream.StreamSlots(engine.settings.max_streams_per_run, serving.connection_cap(engine.settings) // 2)
    app.state.shared_reads = SharedReads()  # the dashboard's and /metrics' costly reads, once for all viewers
    app.state.auth_limiter = AuthLimiter(engine.settings.auth_failures, engine.settings.auth_global_failures)
    inngest.mount(app)  # SDK apps: /fn/register, SDK-shaped /e/{key}, /v0/runs/...
    return app
