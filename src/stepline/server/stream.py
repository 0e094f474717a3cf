"""``GET /api/v1/runs/{id}/stream``: a run's status, progress and published messages
as Server-Sent Events, until the run ends.

The store is the source: the stream reads the run and its ``run_messages`` rows, so
it works whichever process executes the run. A publish in this process wakes the
stream at once; otherwise it looks again every ``ServerOptions.stream_poll`` seconds.

Events (``data`` is JSON):

- ``status``: status, wait reason, attempt, progress, progress message; sent on
  connect and whenever one of them changes.
- ``message``: one ``ctx.publish`` message ``{seq, topic, data, at}``.
- ``end``: the final status with output or error; the stream then closes.
- ``expired``: the run token the stream was opened with expired; the stream closes
  (a token is checked at every moment it reads, not only at connect): mint a new one and
  reconnect with it, from ``Last-Event-ID``.

Every event's ``id`` is the sequence number of the last message delivered, so a
client that reconnects with ``Last-Event-ID`` (browsers do it on their own) gets
the current status and only the messages it has not seen. ``?after=N`` does the same
for clients that cannot set the header.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request

from stepline import errors
from stepline.server import common
from stepline.store.records import TERMINAL, RunLive


def _status(live: RunLive) -> dict[str, Any]:
    """What a ``status`` event says of the run."""
    return {
        "id": live["id"], "function_id": live["function_id"], "status": live["status"],
        "wait_reason": live["wait_reason"], "attempt": live["attempt"], "progress": live["progress"],
        "progress_message": live["progress_message"], "started_at": live["started_at"], "ended_at": live["ended_at"],
    }


def _resume_point(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 15:
        raise errors.ConfigError(f"Last-Event-ID / after: expected a message sequence number, got {raw!r}")
    return int(raw)


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


async def run_events(request: Request, run_id: str) -> EventSourceResponse:
    engine = common.engine(request)
    after = _resume_point(request)
    first = await engine.store.run_live(run_id, after)
    if first is None:
        raise errors.NotFoundError(f"no run with id {run_id!r}")
    poll = common.options(request).stream_poll
    expires = common.run_token_expiry(request)
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()

    def on_publish(published_run: str) -> None:
        if published_run == run_id:
            loop.call_soon_threadsafe(wake.set)

    async def events() -> AsyncIterator[dict[str, Any]]:
        engine.add_publish_listener(on_publish)
        seq, last_status = after, None
        live: RunLive | None = first
        try:
            while True:
                if live is None:
                    live = await engine.store.run_live(run_id, seq)
                    if live is None:  # deleted under us
                        yield {"event": "end", "id": str(seq), "data": _dumps({"status": "unknown"})}
                        return
                for message in live["messages"]:
                    seq = message["seq"]
                    yield {"event": "message", "id": str(seq), "data": _dumps(message)}
                status = _status(live)
                if status != last_status:
                    last_status = status
                    yield {"event": "status", "id": str(seq), "data": _dumps(status)}
                if live["status"] in TERMINAL:
                    final = {**status, "output": live["output"], "error": live["error"]}
                    yield {"event": "end", "id": str(seq), "data": _dumps(final)}
                    return
                live = None
                wake.clear()
                left = poll if expires is None else min(poll, expires - time.time())
                if left <= 0:
                    yield {"event": "expired", "id": str(seq), "data": _dumps({
                        "error": "the run token expired: mint a new one and reconnect with it (Last-Event-ID resumes)",
                    })}
                    return
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), left)
        finally:
            engine.remove_publish_listener(on_publish)

    return EventSourceResponse(events(), ping=15, headers={"cache-control": "no-store", "x-accel-buffering": "no"})
