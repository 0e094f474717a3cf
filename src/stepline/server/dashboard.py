"""The dashboard at ``/``: a small static front end over the JSON API (no build step),
and the login form that turns the API token into a session cookie."""

from __future__ import annotations

import hmac
from pathlib import Path
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from stepline.server import common, tokens
from stepline.server.responses import problem

STATIC = Path(__file__).parent / "static"
MAX_LOGIN_BYTES = 4096


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC / name, media_type="text/html", headers={"cache-control": "no-store"})


async def index(request: Request) -> Response:
    if not common.options(request).dev and not common.has_session(request):
        return RedirectResponse("/login", status_code=303)
    return _page("index.html")


async def login_page(request: Request) -> Response:
    if common.options(request).dev:
        return RedirectResponse("/", status_code=303)
    return _page("login.html")


async def login(request: Request) -> Response:
    """Form field ``token`` (the API token). A right one sets an HttpOnly, SameSite=Strict
    session cookie signed with the server's key; the token itself is never stored."""
    opts = common.options(request)
    body = await request.body()
    if len(body) > MAX_LOGIN_BYTES:
        return problem(413, f"the login form is over {MAX_LOGIN_BYTES} bytes")
    token = (parse_qs(body.decode("utf-8", "replace")).get("token") or [""])[0].strip()
    if opts.dev:
        return RedirectResponse("/", status_code=303)
    if not opts.api_token or not hmac.compare_digest(token.encode(), opts.api_token.encode()):
        return RedirectResponse("/login?error=1", status_code=303)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        common.SESSION_COOKIE,
        tokens.mint_session(common.signing_key(request)),
        max_age=int(tokens.SESSION_TTL),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(common.SESSION_COOKIE, path="/")
    return response


def routes() -> list[Route | Mount]:
    return [
        Route("/", index, methods=["GET"]),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
