"""Headers every answer carries, so that a browser never frames Stepline's pages under
another site (clickjacking: a hidden frame of the dashboard under a decoy button makes
the operator's click cancel or replay a run) nor reads an answer as another type, and
keeps no answer but the static files in its cache (a run's output read with a run token
would otherwise stay on the disk of a shared computer)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    # Dev mode has no login, so any site could frame it; production's SameSite cookie
    # still goes along in frames from pages on sibling subdomains (the same site).
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
)


# The dashboard's pages run only their own scripts from /static: were a value from an
# event ever put in the page as HTML, its inline handlers and scripts would not run.
# Styles set from scripts go through CSSOM (el.style), which the policy allows.
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


NO_STORE = (b"cache-control", b"no-store")
CACHED_PATHS = "/static/"  # the dashboard's scripts and styles: the same for everyone


class SecurityHeaders:
    """Adds ``SECURITY_HEADERS`` to every HTTP answer, refusals of the outer guard included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        stored = scope["path"].startswith(CACHED_PATHS)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                if not stored and NO_STORE[0] not in present:
                    extra.append(NO_STORE)
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
