"""How Stepline serves HTTP: uvicorn's httptools protocol (llhttp, a parser in C: a
request costs about a quarter of what its pure-Python h11 protocol takes), plus the
connection limits uvicorn lacks.

uvicorn times nothing while a request head arrives (its keep-alive timer restarts on
every byte, so a client sending one byte every few seconds stays forever), buffers a
head of any size (httptools keeps no limit), closes a refused connection while the
client is still sending (the client sees a reset, not the answer), and has no bound on
open connections but the process's open-file limit. ``StepHttpProtocol`` adds:

- a head deadline (``STEPLINE_HEADER_TIMEOUT``), armed when a connection opens and after
  each response, cleared when a whole head has arrived: a partial head gets 408, an
  idle connection is closed;
- 431 for a head that outgrows ``STEPLINE_MAX_HEADER_BYTES`` before it is complete (the
  HTTP guard refuses a complete one);
- a graceful close: after a refusal the server sends its answer, stops writing, and
  reads and drops what the client still sends for up to ``LINGER_MAX`` seconds (less if
  the client pauses ``LINGER_IDLE``), so the client reads the answer;
- a connection cap (``STEPLINE_MAX_CONNECTIONS``, and never past the open-file limit,
  raised to the hard limit at start, less ``FD_RESERVE`` for the database, the engine and
  a burst of accepted connections): a new connection past the cap
  closes the one that has been idle longest (waiting for a head, between requests, or
  closing), else one whose client stopped reading its answers, else one still sending
  a body ``SLOW_UPLOAD`` seconds after its head, so neither idle sockets nor trickled
  bodies can lock out a real request; only when every connection is busy with a request
  does the newcomer get 503;
- a write timeout: a client that leaves its answer unread (the server's buffer full) for
  ``STEPLINE_BODY_TIMEOUT`` seconds is disconnected;
- a JSON 400 naming what the parser found wrong (a duplicate Content-Length, a bad header
  character) where uvicorn answers a plain-text "Invalid HTTP request received.";
- one write per answer: uvicorn writes an answer's head and its body separately, two
  sends and two TCP segments for every small answer; the head now waits (until the body
  comes, or the loop's next turn) and goes out with the body.

Request bodies (size, pauses, deadline) are the HTTP guard's (``guard``), which sees
them per route.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import http
import logging
import resource
import socket
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, ClassVar

import httptools
import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from stepline import errors, shown_text
from stepline.server import guard
from stepline.settings import Settings

LINGER_IDLE = 2.0
LINGER_MAX = 10.0
SLOW_UPLOAD = 2.0  # seconds a body may take before its connection may be closed to make room
FD_RESERVE = 100
MAX_OPEN_FILES = 65536
log = logging.getLogger("stepline.server")


# Requests one connection may have read and waiting their turn behind the one in progress.
MAX_PIPELINED = 32


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0
    max_header_bytes: int = 16 * 1024
    max_connections: int = 1000
    # Seconds a client may leave its answer unread (the server's buffer full) before the
    # connection closes: STEPLINE_BODY_TIMEOUT, the same bound as on a body it sends.
    write_timeout: float = 60.0
    # Connections the kernel queues, and the most the loop accepts at once before any of
    # them reaches the cap (asyncio accepts up to this many per wake-up): kept within the
    # open files the cap leaves free.
    backlog: int = 2048

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        if settings.header_timeout <= 0:
            raise errors.ConfigError(f"STEPLINE_HEADER_TIMEOUT={settings.header_timeout!r}: expected a positive number of seconds")
        if settings.max_header_bytes < 1024:
            raise errors.ConfigError(f"STEPLINE_MAX_HEADER_BYTES={settings.max_header_bytes!r}: expected at least 1024")
        if settings.max_connections < 1:
            raise errors.ConfigError(f"STEPLINE_MAX_CONNECTIONS={settings.max_connections!r}: expected a positive number")
        soft = _raise_open_file_limit()
        if soft - FD_RESERVE < 10:
            raise errors.ConfigError(
                f"the open-file limit is {soft}, too low to serve HTTP; raise it (ulimit -n) to at least {FD_RESERVE + 100}"
            )
        cap = connection_cap(settings)
        backlog = max(16, min(2048, (soft - cap) // 4))
        return cls(settings.header_timeout, settings.max_header_bytes, cap, settings.body_timeout, backlog)


def connection_cap(settings: Settings) -> int:
    """The connections the server keeps open: STEPLINE_MAX_CONNECTIONS, and never past the
    open-file limit (raised to the hard one first) less ``FD_RESERVE``."""
    return max(1, min(settings.max_connections, _raise_open_file_limit() - FD_RESERVE))


def _raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one (at most ``MAX_OPEN_FILES``), as Go
    programs do; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return MAX_OPEN_FILES if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):
        return soft
    return wanted


def raw_response(status: int, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A whole JSON error answer, written before (or instead of) any request."""
    body = orjson.dumps({"error": message, "status": status})
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}", "content-type: application/json",
             f"content-length: {len(body)}", "connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class ConnectionBook:
    """The open connections of one server, and which of them may be closed to make room:
    the idle ones (waiting for a head, between requests, closing) in the order they fell
    idle; then those whose client stopped reading its answer; then those still uploading a
    body ``SLOW_UPLOAD`` seconds after its head (a client trickling bodies to hold slots)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: set[StepHttpProtocol] = set()
        self._idle: OrderedDict[StepHttpProtocol, None] = OrderedDict()
        self._unread: OrderedDict[StepHttpProtocol, None] = OrderedDict()
        self._uploading: OrderedDict[StepHttpProtocol, float] = OrderedDict()  # -> when its head came

    def opened(self, conn: StepHttpProtocol) -> bool:
        """Count a new connection (idle until its head arrives), closing another one past the
        cap (see the class). False when there is no room: every other one is busy."""
        self._open.add(conn)
        room = True
        if len(self._open) > self.cap:
            victim = self._victim(conn.loop.time())
            if victim is None:
                room = False
            else:
                self.closed(victim)
                victim.evict()
        self._idle[conn] = None
        return room

    def _victim(self, now: float) -> StepHttpProtocol | None:
        victim = next(iter(self._idle), None) or next(iter(self._unread), None)
        if victim is not None:
            return victim
        for uploader, since in self._uploading.items():  # oldest first
            return uploader if now - since >= SLOW_UPLOAD else None
        return None

    def busy(self, conn: StepHttpProtocol, uploading_since: float | None = None) -> None:
        self._idle.pop(conn, None)
        if uploading_since is not None and conn in self._open:
            self._uploading[conn] = uploading_since

    def uploaded(self, conn: StepHttpProtocol) -> None:
        self._uploading.pop(conn, None)

    def unread(self, conn: StepHttpProtocol, stalled: bool) -> None:
        """The client stopped (or started again) reading what is written to it."""
        if not stalled:
            self._unread.pop(conn, None)
        elif conn in self._open:
            self._unread[conn] = None

    def idle(self, conn: StepHttpProtocol) -> None:
        if conn in self._open:
            self._idle.pop(conn, None)
            self._uploading.pop(conn, None)
            self._idle[conn] = None

    def closed(self, conn: StepHttpProtocol) -> None:
        self._open.discard(conn)
        self._idle.pop(conn, None)
        self._unread.pop(conn, None)
        self._uploading.pop(conn, None)

    def __len__(self) -> int:
        return len(self._open)


class _GracefulTransport:
    """The connection's transport as uvicorn sees it: ``close`` lets the client read the
    answer first, and a write is held until the next one or the loop's next turn, so that
    an answer's head and body leave in one send (one segment for a small answer, where
    two sends cost a system call each and a second wake-up of the client)."""

    def __init__(self, inner: asyncio.Transport, protocol: StepHttpProtocol) -> None:
        self.inner = inner
        self._protocol = protocol
        self._held: bytes | None = None  # at most one write: the next one takes it along

    def close(self) -> None:
        self._protocol.close_gracefully()

    def write(self, data: bytes) -> None:  # every response: not through __getattr__
        if self._protocol.closing or self.inner.is_closing():
            return  # a late answer after the close began (the client has its own): nowhere to go
        if self._held is None:
            self._held = data
            self._protocol.loop.call_soon(self.flush)  # a head alone (HEAD, a stream's first wait) goes out
            return
        held, self._held = self._held, None
        self.inner.writelines((held, data))  # one writev, no copy of a large body

    def flush(self) -> None:
        """Send what is held; before any close, and at the loop's next turn."""
        held, self._held = self._held, None
        if held is not None and not self._protocol.closing and not self.inner.is_closing():
            self.inner.write(held)

    def writelines(self, chunks: Iterable[bytes]) -> None:  # in order after what is held
        self.flush()
        self.inner.writelines(chunks)

    def write_eof(self) -> None:
        self.flush()
        self.inner.write_eof()

    def is_closing(self) -> bool:
        return self._protocol.closing or self.inner.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _NamingParser:
    """The connection's parser, keeping what it says of a request it refuses (uvicorn drops it)."""

    def __init__(self, inner: Any, protocol: StepHttpProtocol) -> None:
        self._inner = inner
        self._protocol = protocol

    def feed_data(self, data: bytes) -> None:
        try:
            self._inner.feed_data(data)
        except httptools.HttpParserError as exc:
            self._protocol._parse_error = str(exc)[:200]
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class StepHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head deadline, 431, graceful close and the connection cap."""

    limits: ClassVar[ConnectionLimits]
    book: ClassVar[ConnectionBook]
    upgrade_noted: ClassVar[bool] = False  # a request asking to upgrade was logged (once a server)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app_state = {**self.app_state, guard.GRACEFUL_CLOSE: True}  # each request's scope["state"]
        self.closing = False  # a close began: what the client still sends is dropped
        self._lost = False
        self._deadline: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._linger_end = 0.0
        self._in_head = False  # part of a request head has come, not all of it
        self._in_body = False  # a head came whole; its body has not ended
        self._head_bytes = 0  # received while the head in progress came (at most: a chunk may end a message too)
        self._began_now = False  # a head began in the chunk being parsed
        self._ended_now = False  # a request ended in the chunk being parsed
        self._overflow = False  # past MAX_PIPELINED: the rest is not read, the connection closes after its answers
        self._refused = False  # the parser refused what the client sent
        self._owed_400: str | None = None  # a 400 waiting for the answers to the requests before it
        self._unread_since: asyncio.TimerHandle | None = None  # the write timeout, while the client reads nothing
        self._parse_error = ""  # what the parser said of a request it refused
        self.parser = _NamingParser(self.parser, self)  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_GracefulTransport(transport, self))  # type: ignore[arg-type]
        if not self.book.opened(self):
            log.warning("all %d connections are busy with requests (STEPLINE_MAX_CONNECTIONS): refused one", self.book.cap)
            transport.write(raw_response(
                503, f"the server is busy with {self.book.cap} open requests (STEPLINE_MAX_CONNECTIONS); try again shortly",
                {"retry-after": "1"},
            ))
            self.close_gracefully(linger=True)
            return
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = self.closing = True
        self.book.closed(self)
        self._cancel(self._deadline)
        self._cancel(self._linger)
        self._cancel(self._unread_since)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            self._linger_again()  # dropped: the answer is sent, the client is finishing its upload
            return
        if self._owed_400 is not None or self._overflow:
            return  # past what the parser refused, or past the pipeline's cap: nothing more is read
        if not self._in_head and not self._in_body:
            self._in_head = True  # whatever comes between requests begins the next head
            self._head_bytes = 0
        self._began_now = self._ended_now = False
        super().data_received(data)
        if self._in_head and not self.closing and not self._overflow:
            if not self._began_now:
                self._head_bytes += len(data)
            elif self._ended_now:
                # The head began after a request that ended in this same read, where the
                # parser does not say: its bytes count from the next read (a read is at most
                # 256 KiB, so what goes uncounted is bounded).
                self._head_bytes = 1
            else:
                self._head_bytes = len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse_head()

    def send_400_response(self, msg: str) -> None:
        """The parser refused what came after the requests read whole so far. Those requests
        are answered first, then the 400 and the close: a client reading this 400 as the
        answer to an earlier request whose event was stored would send it again, or give it
        up. (A request whose own head or body is refused gets the 400 at once.)"""
        if self._overflow:
            return  # unread requests past the pipeline's cap: the connection closes after its answers
        if len(self.url) > self.limits.max_header_bytes:
            # The parser keeps URL offsets in 16 bits: one of 64 KiB or more is "invalid" to
            # it, but is only over the head limit, and says so.
            self._refuse_head()
            return
        self._refused = True
        if not self._in_body and self._answers_owed():
            self._owed_400 = msg
            return
        self._send_400(msg)

    def _send_400(self, msg: str) -> None:
        """uvicorn's 400 is plain text that names nothing ("Invalid HTTP request received."):
        this one is JSON, as every other refusal, with what the parser found wrong."""
        why = f": {self._parse_error}" if self._parse_error else ""
        self.transport.write(raw_response(
            400, f"the request is not valid HTTP/1.1{why}; fix the client or proxy that sent it"
        ))
        self.close_gracefully()

    def _unsupported_upgrade_warning(self) -> None:
        """uvicorn logged two warnings for every request asking to upgrade (WebSocket, h2c),
        one advising to install a WebSocket library: anyone could fill the log at will. The
        request is answered as plain HTTP (there are no such routes here); said once a server."""
        if not type(self).upgrade_noted:
            type(self).upgrade_noted = True
            log.warning("a request asked to upgrade the connection (Upgrade: %s); answered as plain HTTP/1.1, as every "
                     "such request will be (no WebSocket or h2c routes)", shown_text.escape(self._upgrade_asked()[:40]))

    def _upgrade_asked(self) -> str:
        for name, value in self.headers:
            if name.lower() == b"upgrade":
                return value.decode("latin-1")
        return ""

    def _answers_owed(self) -> bool:
        """Whether a request read whole is still being answered, or waits its turn (pipelined)."""
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def _refuse_head(self) -> None:
        """A head still incomplete past the limit: 431, before buffering any more of it (a
        whole head that arrives at once is the HTTP guard's to refuse)."""
        self._refused = True
        self.transport.write(raw_response(
            431, f"the request head is over the limit of {self.limits.max_header_bytes} bytes; "
                 "send fewer or smaller headers (STEPLINE_MAX_HEADER_BYTES)",
        ))
        self.close_gracefully()

    # --- parser callbacks: where a request stands ---------------------------------------

    def on_message_begin(self) -> None:
        if self._overflow or len(self.pipeline) >= MAX_PIPELINED:
            # A client pipelining more than this gets the answers of those read and a close;
            # the rest are not read (never run: a client sends them again, RFC 9112 9.3.2).
            # Each request waiting its turn holds its parsed head: unbounded, one read of
            # small requests held thousands per connection.
            self._overflow = True
            self._in_head = self._in_body = False
            return
        self._in_head, self._began_now = True, True
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self._overflow:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._overflow:
            super().on_header(name, value)

    def on_body(self, body: bytes) -> None:
        if not self._overflow:
            super().on_body(body)

    def on_headers_complete(self) -> None:
        if self._overflow:
            return
        self._in_head, self._in_body = False, True
        self._cancel(self._deadline)  # the head came in time
        self._deadline = None
        self.book.busy(self, uploading_since=self.loop.time())
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._overflow:
            return
        self._in_body, self._ended_now = False, True
        self.book.uploaded(self)
        super().on_message_complete()

    # --- a client that does not read its answers -----------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        self.book.unread(self, True)
        self._cancel(self._unread_since)
        self._unread_since = self.loop.call_later(self.limits.write_timeout, self._unread_too_long)

    def resume_writing(self) -> None:
        super().resume_writing()
        self.book.unread(self, False)
        self._cancel(self._unread_since)
        self._unread_since = None

    def _unread_too_long(self) -> None:
        """Nothing written for ``write_timeout`` s was read: the client holds the connection,
        not reading (its answer is lost either way)."""
        self._unread_since = None
        self.book.closed(self)
        self.evict()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._owed_400 is not None and not self.closing and not self._answers_owed():
            self._send_400(self._owed_400)  # the earlier requests have their answers
            return
        if self._overflow and not self.closing and not self._answers_owed():
            self.close_gracefully(linger=True)  # the requests read are answered; the client may still be sending
            return
        if not self.closing and (self.cycle is None or self.cycle.response_complete) and self._deadline is None:
            self.book.idle(self)
            self._arm_deadline()

    # --- the head deadline ---------------------------------------------------------

    def _arm_deadline(self) -> None:
        self._deadline = self.loop.call_later(self.limits.header_timeout, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.closing or (self.cycle is not None and not self.cycle.response_complete):
            return
        if self._in_head and self._head_bytes:
            self.transport.write(raw_response(
                408, f"the request head did not arrive within {self.limits.header_timeout:g} s (STEPLINE_HEADER_TIMEOUT)"
            ))
        self.close_gracefully()

    # --- closing ---------------------------------------------------------------------

    def close_gracefully(self, linger: bool | None = None) -> None:
        """Close; first, if the client may still be sending, half-close and drop its data a while."""
        inner = self.transport.inner  # type: ignore[attr-defined]
        if self._lost:
            inner.close()
            return
        if self.closing:
            return
        self.transport.flush()  # type: ignore[attr-defined]  # the answer first
        self.closing = True
        self._cancel(self._deadline)
        self._unset_keepalive_if_required()
        self.book.idle(self)  # a closing connection is the first to make room for a new one
        if linger is None:
            linger = self._in_body or self._refused or (self._in_head and self._head_bytes > 0)
        if not linger or not inner.can_write_eof():
            inner.close()
            return
        inner.resume_reading()
        inner.write_eof()  # after the buffered answer
        self._linger_end = self.loop.time() + LINGER_MAX
        self._linger_again()

    def _linger_again(self) -> None:
        self._cancel(self._linger)
        delay = max(0.0, min(LINGER_IDLE, self._linger_end - self.loop.time()))
        self._linger = self.loop.call_later(delay, self.transport.inner.close)  # type: ignore[attr-defined]

    def evict(self) -> None:
        """Closed at once, to make room for a new connection or from a client that reads nothing."""
        self.closing = True
        self._cancel(self._deadline)
        self._cancel(self._linger)
        self._cancel(self._unread_since)
        inner = self.transport.inner  # type: ignore[attr-defined]
        if inner.get_write_buffer_size():
            inner.abort()  # a close would wait for the client to read what is buffered
        else:
            inner.close()

    @staticmethod
    def _cancel(timer: asyncio.TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()


def protocol_class(limits: ConnectionLimits) -> type[StepHttpProtocol]:
    """The protocol for one server: its limits, and one book of its connections."""
    attrs = {"limits": limits, "book": ConnectionBook(limits.max_connections)}
    return type("StepHttpProtocol", (StepHttpProtocol,), attrs)


def listening_socket(settings: Settings) -> socket.socket:
    """The server's socket, bound before anything is printed or served: a port already in use
    is a one-line error that names it and the fix, not uvicorn's log line after a banner."""
    host, port = settings.host, settings.port
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise errors.ConfigError(f"cannot listen on {host}:{port} ({exc}); check STEPLINE_HOST / --host") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        why = "in use (another stepline process, or another server)" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise errors.ConfigError(
            f"cannot listen on {host}:{port}: the port is {why}; stop that process, or pick another port "
            "with --port (STEPLINE_PORT)"
        ) from exc
    return sock


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    limits = ConnectionLimits.from_settings(settings)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        lifespan="off",
        http=protocol_class(limits),
        ws="none",  # no WebSocket routes: an upgrade request is plain HTTP
        backlog=limits.backlog,
    )
