"""The one HTTP call every system makes in W2: a POST over a new loopback connection.

A plain asyncio HTTP/1.1 exchange, shared by Stepline's and the peers' benchmarks so
the client costs every system the same. (httpx 0.28's connection pool scans all its
connections for every request; with thousands in flight that scan, not the engine,
dominates, so it is not used here. See docs/performance.md.)
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit


async def post_json(url: str, payload: Any) -> Any:
    parts = urlsplit(url)
    body = json.dumps(payload).encode()
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(
            f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        data = await reader.readexactly(length)
    finally:
        writer.close()
    if status != 200:
        raise RuntimeError(f"the fake model answered {status}")
    return json.loads(data)
