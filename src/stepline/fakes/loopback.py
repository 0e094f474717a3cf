"""``LoopbackServer``: a bounded HTTP/1.1 server on 127.0.0.1, in its own thread.

The base of the fakes that stand in for outside services in tests and examples (the
fake model provider, the examples' SIMULATED APIs): real sockets, so clients meet
real status codes, streams, truncations and resets. A subclass implements
``respond``; the helpers here write whole answers, pause while watching for the
client hanging up, and abort a connection with a TCP reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import struct
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

import orjson

MAX_BODY = 8 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Request:
    """One request as the server read it (headers lower-cased)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


class ClientGone(Exception):
    """The client closed the connection while we were answering."""


class LoopbackServer:
    """A bounded HTTP/1.1 server on 127.0.0.1; subclasses implement ``respond``.

    One request per connection (``Connection: close``), so faults such as resets
    and truncations are exact. Use as ``with server:`` or ``start()`` / ``stop()``.
    """

    def __init__(self, port: int = 0) -> None:
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LoopbackServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", self._port))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=f"stepline-{type(self).__name__}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Any:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            request = await asyncio.wait_for(self._read_request(reader), 30)
            if request is not None:
                await self.respond(request, reader, writer)
        except (ClientGone, ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> Request | None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        if length > MAX_BODY:
            return None
        body = await reader.readexactly(length) if length else b""
        parts = urllib.parse.urlsplit(target)
        return Request(method, parts.path, dict(urllib.parse.parse_qsl(parts.query)), headers, body)

    async def respond(self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    # --- writing helpers for subclasses --------------------------------------------

    @staticmethod
    async def send(writer: asyncio.StreamWriter, status: int, body: bytes, headers: Mapping[str, str] | None = None, content_type: str = "application/json") -> None:
        """A whole response with a Content-Length."""
        head = {"content-type": content_type, "content-length": str(len(body)), "connection": "close", **(headers or {})}
        writer.write(status_line(status) + header_bytes(head) + body)
        await writer.drain()

    @staticmethod
    async def send_json(writer: asyncio.StreamWriter, status: int, data: Any, headers: Mapping[str, str] | None = None) -> None:
        await LoopbackServer.send(writer, status, orjson.dumps(data), headers)

    @staticmethod
    async def pause(reader: asyncio.StreamReader, seconds: float) -> None:
        """Wait ``seconds``, noticing at once if the client hangs up meanwhile."""
        if seconds <= 0:
            return
        try:
            data = await asyncio.wait_for(reader.read(1), seconds)
        except TimeoutError:
            return
        if not data:
            raise ClientGone()


def status_line(status: int) -> bytes:
    reasons = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
               404: "Not Found", 413: "Payload Too Large", 429: "Too Many Requests", 500: "Internal Server Error",
               502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout", 529: "Overloaded"}
    return f"HTTP/1.1 {status} {reasons.get(status, 'Status')}\r\n".encode()


def header_bytes(headers: Mapping[str, str]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1") + b"\r\n"


def reset_connection(writer: asyncio.StreamWriter) -> None:
    """Abort with a TCP RST (SO_LINGER 0), as a crashed proxy or upstream does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


__all__ = ["MAX_BODY", "ClientGone", "LoopbackServer", "Request", "header_bytes", "reset_connection", "status_line"]
