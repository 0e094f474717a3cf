"""The dashboard at ``/``: a small static front end over the JSON API (no build step),
and the login form that turns the API token into a session cookie."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from stepline.server import common, guard, sessions, tokens
from stepline.server.headers import PAGE_POLICY
from stepline.server.responses import problem

STATIC = Path(__file__).parent / "static"


def _page(name: str) -> FileResponse:
    return FileResponse(
        STATIC / name, media_type="text/html",
        headers={"cache-control": "no-store", "content-security-policy": PAGE_POLICY},
    )


async def index(request: Request) -> Response:
    if not common.options(request).dev and not common.has_session(request):
        return RedirectResponse("/login", status_code=303)
    return _page("index.html")


async def login_page(request: Request) -> Response:
    if common.options(request).dev:
        return RedirectResponse("/", status_code=303)
    return _page("login.html")


async def login(request: Request) -> Response:
    """Form field ``token`` (the API token). A right one starts a server-side session and
    sets its id as an HttpOnly, SameSite=Strict cookie; the token itself is never stored.
    Wrong ones count towards the back-off (429 with Retry-After)."""
    opts = common.options(request)
    if _from_another_site(request):
        # Not counted: a page the operator opens elsewhere could otherwise post wrong tokens
        # from the operator's own address and hold the right one back (or log the browser
        # into a session of the page's choosing).
        return problem(403, "a login posted by a page of another site is refused: sign in from this server's own login page")
    body = await request.body()  # the HTTP guard ends the body at its limit
    if len(body) > guard.LOGIN_BODY_BYTES:
        return problem(413, f"the login form is over the limit of {guard.LOGIN_BODY_BYTES} bytes")
    token = (parse_qs(body.decode("utf-8", "replace")).get("token") or [""])[0].strip()
    if opts.dev:
        return RedirectResponse("/", status_code=303)
    denied = common.check_secret(request, common.API_TOKEN, token, opts.api_token, "wrong API token")
    if denied is not None:
        return denied if denied.status_code == 429 else RedirectResponse("/login?error=1", status_code=303)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        common.SESSION_COOKIE,
        await sessions.start(request),
        max_age=int(tokens.SESSION_TTL),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


def _from_another_site(request: Request) -> bool:
    """Whether the browser says this request comes from a page of another origin
    (``Sec-Fetch-Site``, which browsers set and pages cannot; clients that are not browsers
    send none). Not ``Origin`` against ``Host``: a proxy may rewrite the Host."""
    return request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none")


async def logout(request: Request) -> Response:
    """Ends the session on the server (every copy of the cookie stops working) and in the browser."""
    await sessions.end(request)
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
