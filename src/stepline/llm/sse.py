"""A small Server-Sent Events reader: named events, multi-line data, comments skipped."""

from __future__ import annotations

from collections.abc import AsyncIterator


async def events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """Yield ``(event, data)`` per dispatched event; ``event`` is "message" when unnamed.

    Comment lines (``: OPENROUTER PROCESSING``) are keep-alives and are skipped. An
    event still pending when the body ends is dispatched (a missing final blank line).
    """
    name = ""
    data: list[str] = []
    async for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield name or "message", "\n".join(data)
            name, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
    if data:
        yield name or "message", "\n".join(data)
