"""The one HTTP call every system makes in W2: a POST over a new loopback connection.

A plain HTTP/1.1 exchange on an ``asyncio.Protocol``, shared by Stepline's and the
peers' benchmarks so the client costs every system the same, and as little as a
client can: one connection, one write, one parse of the reply, no streams, tasks or
pools. (httpx 0.28's connection pool scans all its connections for every request;
with thousands in flight that scan, not the engine, dominates. See docs/performance.md.)
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit


class _Exchange(asyncio.Protocol):
    """Writes one request when connected; resolves ``reply`` with (status, body) when it is in."""

    def __init__(self, request: bytes, reply: asyncio.Future[tuple[int, bytes]]) -> None:
        self.request = request
        self.reply = reply
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if len(self.buffer) - end - 4 < length:
            return
        assert self.transport is not None
        self.transport.close()
        if not self.reply.done():
            self.reply.set_result((int(head.split(b" ", 2)[1]), self.buffer[end + 4 : end + 4 + length]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc or ConnectionError("the fake model closed the connection before answering"))


async def post_json(url: str, payload: Any) -> Any:
    parts = urlsplit(url)
    body = json.dumps(payload).encode()
    request = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[tuple[int, bytes]] = loop.create_future()
    transport, _ = await loop.create_connection(lambda: _Exchange(request, reply), parts.hostname, parts.port)
    try:
        status, data = await reply
    finally:
        transport.close()
    if status != 200:
        raise RuntimeError(f"the fake model answered {status}")
    return json.loads(data)
