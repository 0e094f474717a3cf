"""Dashboard sessions on the server: made at login, looked up per request, ended at logout.

The cookie holds a random id; the database keeps its hash (keyed with the API token and
signing key, so a new token ends every session), so logging out ends the session on
every server process at once, and a copy of the cookie is worth nothing afterwards.
``SessionLookup`` answers "is this request logged in?" before routing, so the routes'
auth checks (``common.api_token``) stay plain functions.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from stepline import errors
from stepline.server import common, responses, tokens


def _key(request: Request) -> str:
    return f"{common.options(request).api_token}\n{common.signing_key(request)}"


def _hash(request: Request) -> str | None:
    cookie = request.cookies.get(common.SESSION_COOKIE, "")
    return tokens.session_hash(cookie, _key(request)) if cookie else None


async def start(request: Request) -> str:
    """A new session; returns the cookie's value."""
    cookie = tokens.new_session_id()
    id_hash = tokens.session_hash(cookie, _key(request))
    assert id_hash is not None  # a new id always has the cookie's shape
    await common.engine(request).store.create_session(id_hash, int(tokens.SESSION_TTL * 1000))
    return cookie


def stream_session(request: Request) -> str | None:
    """The hash of the session a request was let in by (a production request with a live
    session cookie, and neither a bearer nor a run token), for a stream to check while it
    lasts; None when it came in otherwise."""
    if common.options(request).dev or common.by_run_token(request) or common.bearer(request):
        return None
    return _hash(request) if common.has_session(request) else None


async def end(request: Request) -> None:
    id_hash = _hash(request)
    if id_hash is not None:
        await common.engine(request).store.revoke_session(id_hash)


class SessionLookup:
    """Marks each production request that carries a live session cookie (``common.has_session``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request = Request(scope)
            id_hash = None if common.options(request).dev else _hash(request)
            live = False
            if id_hash is not None:
                try:
                    live = await common.engine(request).store.session_is_valid(id_hash)
                except errors.StoreError as exc:
                    await responses.from_error(exc)(scope, receive, send)
                    return
            scope[common.SESSION_SCOPE_KEY] = live
        await self.app(scope, receive, send)
