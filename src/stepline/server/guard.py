"""The outer ASGI guard: what every request passes before Starlette sees it.

It sits outside Starlette's error middleware, so its refusals are never turned into
500s, and it answers them itself:

- 431 when the request head is over ``STEPLINE_MAX_HEADER_BYTES`` (a head that arrives
  whole in one read is parsed before anyone can count it; ``serving`` refuses the rest);
- in ``stepline dev``, 403 for a ``Host`` that is not a local name and for writes from
  pages on other hosts (``hosts``);
- 413 when the body is over its route's limit, declared (``Content-Length``) or counted
  as it streams (chunked), before more of it is read;
- 408 when the body pauses longer than ``STEPLINE_BODY_IDLE_TIMEOUT`` or takes longer
  than ``STEPLINE_BODY_TIMEOUT`` in all;
- 415 for a compressed body (``Content-Encoding`` other than identity), and 501 for a
  transfer coding other than chunked (``Transfer-Encoding: gzip, chunked``), which would
  otherwise be read as text and refused with a puzzling message;
- 503 with ``Retry-After`` when the bodies of all requests in flight would hold more than
  ``STEPLINE_MAX_BODY_BUFFER`` bytes: each body is held whole until its request ends, so
  many clients sending large bodies slowly would otherwise hold memory without bound. A
  body counts what has come of it; its declared length is refused up front only when it
  does not fit in what is free.

Every refusal carries ``Connection: close``, so the server stops reading the request,
when served by ``stepline dev/start`` (``serving``, which lets the client read the answer
before it closes). A server that closes at once while the client still sends its body
(plain uvicorn) makes the client see a reset instead of the answer, so there a 408 or 413
keeps the connection and the server drops the rest of the body. Routes see the end of
the body as a client disconnect, and whatever they send afterwards is dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Callable

import orjson
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stepline import errors
from stepline.server.hosts import LocalHosts
from stepline.settings import Settings

LOGIN_BODY_BYTES = 4096
_INGEST = re.compile(r"/(e/[^/]+|api/v1/events|fn/register|invoke/[^/]+|v1/signals)/?")
_LOGIN = re.compile(r"/log(in|out)/?")
_DISCONNECT: Message = {"type": "http.disconnect"}
# Set in scope["state"] by servers whose close lets the client read a refusal (``serving``).
GRACEFUL_CLOSE = "stepline.graceful_close"


@dataclasses.dataclass(frozen=True)
class HttpLimits:
    """The guard's limits; ``local_hosts`` is set in dev mode only."""

    max_header_bytes: int = 16 * 1024
    body_idle_timeout: float = 10.0
    body_timeout: float = 60.0
    ingest_body_bytes: int = 8 * 1024 * 1024
    api_body_bytes: int = 64 * 1024
    login_body_bytes: int = LOGIN_BODY_BYTES
    body_buffer_bytes: int = 256 * 1024 * 1024
    local_hosts: LocalHosts | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, dev: bool, ingest_body_bytes: int) -> HttpLimits:
        for name, value in (
            ("STEPLINE_MAX_HEADER_BYTES", settings.max_header_bytes),
            ("STEPLINE_BODY_IDLE_TIMEOUT", settings.body_idle_timeout),
            ("STEPLINE_BODY_TIMEOUT", settings.body_timeout),
            ("STEPLINE_MAX_API_BODY_BYTES", settings.max_api_body_bytes),
        ):
            if value <= 0:
                raise errors.ConfigError(f"{name}={value!r}: expected a positive number")
        if settings.max_body_buffer < ingest_body_bytes:
            raise errors.ConfigError(
                f"STEPLINE_MAX_BODY_BUFFER={settings.max_body_buffer}: at least the largest ingest body "
                f"({ingest_body_bytes} bytes), or no such body could ever be received"
            )
        return cls(
            max_header_bytes=settings.max_header_bytes,
            body_idle_timeout=settings.body_idle_timeout,
            body_timeout=settings.body_timeout,
            ingest_body_bytes=ingest_body_bytes,
            api_body_bytes=settings.max_api_body_bytes,
            body_buffer_bytes=settings.max_body_buffer,
            local_hosts=LocalHosts.parse(settings.host, settings.allowed_hosts) if dev else None,
        )

    def body_rule(self, path: str) -> tuple[int, Callable[[int | None], str]]:
        """The body limit of the route at ``path``, and the 413 message (given the declared size)."""

        def size(declared: int | None) -> str:
            return f"is {declared} bytes, over" if declared is not None else "is over"

        if _INGEST.fullmatch(path):
            limit = self.ingest_body_bytes
            return limit, lambda d: (
                f"request body {size(d)} the limit of {limit} bytes; send smaller batches of events "
                "(the limit grows with STEPLINE_MAX_EVENT_BYTES)"
            )
        if _LOGIN.fullmatch(path):
            limit = self.login_body_bytes
            return limit, lambda d: f"the login form {size(d)} the limit of {limit} bytes"
        limit = self.api_body_bytes
        return limit, lambda d: f"request body {size(d)} the limit of {limit} bytes for {path} (STEPLINE_MAX_API_BODY_BYTES)"


def head_bytes(scope: Scope) -> int:
    """The request head's size as sent: request line, and each header with ': ' and CRLF."""
    line = len(scope["method"]) + len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + 12
    return line + sum(len(name) + len(value) + 4 for name, value in scope["headers"])


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _unread_transfer_coding(value: str | None) -> str | None:
    """The header's value when it names a coding besides ``chunked`` (gzip, deflate...):
    the HTTP parser takes the chunks off and reads the rest as it came, so a compressed
    body would be read as text (RFC 9112: 501 for a transfer coding not understood)."""
    if value is None:
        return None
    codings = [c.strip().lower() for c in value.split(",")]
    return value if any(c not in ("chunked", "identity", "") for c in codings) else None


def closes_gracefully(scope: Scope) -> bool:
    return bool((scope.get("state") or {}).get(GRACEFUL_CLOSE))


async def send_problem(send: Send, status: int, message: str, *, close: bool = True, retry_after: int | None = None) -> None:
    """A JSON error answer that (with ``close``) also closes the connection."""
    body = orjson.dumps({"error": message, "status": status})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [*headers, (b"connection", b"close")] if close else headers,
    })
    await send({"type": "http.response.body", "body": body})


class BodyBuffer:
    """The request body bytes this process holds, all requests together, against a budget."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.parsed = 0  # what the large bodies read whole take once parsed (hold_parsed)
        self._parse_waiters: set[asyncio.Future[None]] = set()

    def fits(self, size: int) -> bool:
        return self.held + size <= self.limit

    def take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size

    async def hold_parsed(self, weight: int, wait: float) -> bool:
        """Hold ``weight`` bytes for a body's values once parsed, waiting up to ``wait`` s
        for room; one body alone may hold more than the limit (else a large body of small
        values could never be taken). False: no room in time."""
        deadline = asyncio.get_running_loop().time() + wait
        while self.parsed and self.parsed + weight > self.limit:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            waiter = asyncio.get_running_loop().create_future()
            self._parse_waiters.add(waiter)
            try:
                await asyncio.wait_for(waiter, left)
            except TimeoutError:
                return False
            finally:
                self._parse_waiters.discard(waiter)
        self.parsed += weight
        return True

    def give_parsed(self, weight: int) -> None:
        if weight:
            self.parsed -= weight
            for waiter in self._parse_waiters:  # each looks again
                if not waiter.done():
                    waiter.set_result(None)

    def refusal(self) -> str:
        return (f"the server holds {self.held // (1024 * 1024)} MiB of request bodies being received, its limit "
                f"(STEPLINE_MAX_BODY_BUFFER); nothing of this request was read: send it again shortly")


class HttpGuard:
    def __init__(self, app: ASGIApp, limits: HttpLimits) -> None:
        self.app = app
        self.limits = limits
        self.buffer = BodyBuffer(limits.body_buffer_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        graceful = closes_gracefully(scope)
        declared = _header(scope, b"content-length")
        refusal = self._refuse_head(scope)
        if refusal is not None:
            bodiless = declared in (None, "0") and _header(scope, b"transfer-encoding") is None
            await send_problem(send, *refusal, close=graceful or bodiless)
            return
        encoding = _header(scope, b"content-encoding")
        if encoding is not None and encoding.strip().lower() not in ("", "identity"):
            await send_problem(send, 415, f"request bodies are read as sent, not decoded (Content-Encoding: {encoding[:40]}); "
                                          "send the body uncompressed", close=graceful)
            return
        coding = _unread_transfer_coding(_header(scope, b"transfer-encoding"))
        if coding is not None:
            await send_problem(send, 501, f"transfer codings other than chunked are not decoded (Transfer-Encoding: "
                                          f"{coding[:40]}); send the body uncompressed", close=graceful)
            return
        limit, too_large = self.limits.body_rule(scope["path"])
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await send_problem(send, 413, too_large(int(declared)), close=graceful)
            return
        # A declared body that would not fit in what is free now is refused before it is read;
        # one that fits holds only what has come of it (a declared length held from the head
        # on let 32 heads of 8 MiB that sent nothing hold every byte, and make every other
        # request with a body 503 for as long as they trickled).
        if declared is not None and declared.isdigit() and not self.buffer.fits(int(declared)):
            await send_problem(send, 503, self.buffer.refusal(), close=graceful, retry_after=1)
            return
        body = _GuardedBody(receive, send, limit, too_large, self.limits, graceful, self.buffer)
        scope[GUARDED_BODY] = body  # a route that parses the body holds its values' size too (hold_parsed)
        try:
            await self.app(scope, body.receive, body.send)
        except ClientDisconnect:
            return  # the client left, or the guard ended the request: nobody to answer
        except Exception:
            if not body.refused:
                raise
            # The route failed on the end the guard gave it; the client has its answer.
        finally:
            self.buffer.give(body.held)
            self.buffer.give_parsed(body.parsed)

    def _refuse_head(self, scope: Scope) -> tuple[int, str] | None:
        size = head_bytes(scope)
        if size > self.limits.max_header_bytes:
            return 431, (
                f"the request head is {size} bytes, over the limit of {self.limits.max_header_bytes} "
                "bytes; send fewer or smaller headers (STEPLINE_MAX_HEADER_BYTES)"
            )
        hosts = self.limits.local_hosts
        if hosts is not None:
            why = hosts.host_refusal(_header(scope, b"host")) or hosts.origin_refusal(
                scope["method"], _header(scope, b"origin"), _header(scope, b"sec-fetch-site")
            )
            if why is not None:
                return 403, why
        return None


GUARDED_BODY = "stepline.guarded_body"  # the request's _GuardedBody, in its ASGI scope
PARSED_WAIT = 10.0  # seconds a body read whole waits for room to parse it before a 503


def parsed_weight(raw: bytes | bytearray) -> int:
    """About what ``raw`` takes in memory once parsed as JSON: each object, list and value
    becomes a Python object (a body of 8 MiB of ``{},`` is 2.8 million dicts, ~200 MB),
    counted by the characters that open or separate them."""
    return (len(raw) + 64 * raw.count(b"{") + 56 * raw.count(b"[")
            + 40 * (raw.count(b",") + raw.count(b":")))


class _GuardedBody:
    """``receive`` and ``send`` of one request, with the body's size and time limits."""

    def __init__(self, receive: Receive, send: Send, limit: int, too_large: Callable[[int | None], str],
                 limits: HttpLimits, graceful: bool, buffer: BodyBuffer) -> None:
        self._receive = receive
        self.buffer = buffer
        self.held = 0  # bytes of the buffer this request holds: what came of its body
        self.parsed = 0  # and what its values take once parsed (a large body read whole)
        self.graceful = graceful
        self._send = send
        self.limit = limit
        self.too_large = too_large
        self.idle = limits.body_idle_timeout
        self.total = limits.body_timeout
        self.deadline = asyncio.get_running_loop().time() + limits.body_timeout
        self.received = 0
        self.done = False  # the last chunk came: later receives only wait for a disconnect
        self.refused = False
        self.started = False

    async def receive(self) -> Message:
        if self.refused:
            return _DISCONNECT
        if self.done:
            return await self._receive()
        left = self.deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(max(0.0, min(self.idle, left))):
                message = await self._receive()
        except TimeoutError:
            why = (
                f"paused for more than {self.idle:g} s (STEPLINE_BODY_IDLE_TIMEOUT)" if self.idle < left
                else f"took more than {self.total:g} s in all (STEPLINE_BODY_TIMEOUT)"
            )
            await self._refuse(408, f"the request body {why}; send the body without pauses")
            return _DISCONNECT
        if message["type"] != "http.request":
            self.done = True
            return message
        self.received += len(message.get("body", b""))
        if self.received > self.limit:
            await self._refuse(413, self.too_large(None))
            return _DISCONNECT
        if self.received > self.held:
            if not self.buffer.take(self.received - self.held):
                await self._refuse(503, self.buffer.refusal(), retry_after=1)
                return _DISCONNECT
            self.held = self.received
        if not message.get("more_body", False):
            self.done = True
        return message

    async def hold_parsed(self, weight: int) -> bool:
        """Hold ``weight`` bytes (the body's values once parsed) until the request ends, beside
        the body's bytes; waits while other bodies' values fill the buffer. False: no room."""
        if not await self.buffer.hold_parsed(weight, PARSED_WAIT):
            return False
        self.parsed += weight
        return True

    async def send(self, message: Message) -> None:
        if self.refused:
            return  # the guard has answered; the route's late reply has nowhere to go
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    async def _refuse(self, status: int, message: str, retry_after: int | None = None) -> None:
        self.refused = True
        if not self.started:
            await send_problem(self._send, status, message, close=self.graceful, retry_after=retry_after)
