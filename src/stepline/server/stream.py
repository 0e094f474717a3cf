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
- ``expired``: the run token the stream was opened with expired, or the dashboard session
  it was opened with ended (logout, or its 12 hours); the stream closes (a token is checked
  at every moment it reads, a session every second, not only at connect): mint a new token,
  or log in again, and reconnect, from ``Last-Event-ID``.

Every event's ``id`` is the sequence number of the last message delivered, so a
client that reconnects with ``Last-Event-ID`` (browsers do it on their own) gets
the current status and only the messages it has not seen. ``?after=N`` does the same
for clients that cannot set the header.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from stepline import errors
from stepline.server import common, sessions
from stepline.server.responses import problem
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
    if not common.is_digits(raw) or len(raw) > 15:
        raise errors.ConfigError(f"Last-Event-ID / after: expected a message sequence number, got {raw!r}")
    return int(raw)


class StreamSlots:
    """The run streams this process holds open, per run and in all. A stream holds its
    connection for as long as its run (or its token) lasts: unbounded, one run token opened
    as many as the server keeps connections (STEPLINE_MAX_CONNECTIONS), and every other
    request was answered 503 until the token expired. Streams now take at most
    ``STEPLINE_MAX_STREAMS_PER_RUN`` a run, and half the connections in all (the cap in
    force: ``serving.connection_cap``)."""

    def __init__(self, per_run: int, total: int) -> None:
        self.per_run = max(1, per_run)
        self.total = max(1, total)
        self.held: dict[str, int] = {}  # run id -> its open streams
        self.count = 0

    def take(self, run_id: str) -> Response | None:
        """A slot for one more stream of ``run_id``, or the refusal to answer instead."""
        if self.held.get(run_id, 0) >= self.per_run:
            refused = problem(429, f"{self.per_run} streams of run {run_id} are open, the limit "
                                   "(STEPLINE_MAX_STREAMS_PER_RUN); close one before opening another")
        elif self.count >= self.total:
            refused = problem(503, f"{self.count} run streams are open, the most this server holds (half the "
                                   "connections it keeps: STEPLINE_MAX_CONNECTIONS, fewer under a low open-file "
                                   "limit); reconnect shortly")
        else:
            self.held[run_id] = self.held.get(run_id, 0) + 1
            self.count += 1
            return None
        refused.headers["retry-after"] = "1" if refused.status_code == 503 else "10"
        return refused

    def give(self, run_id: str) -> None:
        self.count -= 1
        left = self.held.pop(run_id) - 1
        if left:
            self.held[run_id] = left


class _HeldStream(EventSourceResponse):
    """A stream that gives its slot back when it ends, however it ends."""

    def __init__(self, *args: Any, release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


# Seconds between checks that the dashboard session a stream was opened with goes on: a
# stream checked it only when it connected, and went on after a logout (which is to make
# every copy of the cookie worthless) for as long as its run lasted.
SESSION_CHECK_S = 1.0


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


async def run_events(request: Request, run_id: str) -> Response:
    engine = common.engine(request)
    after = _resume_point(request)
    first = await engine.store.run_live(run_id, after)
    if first is None:
        raise errors.NotFoundError(f"no run with id {run_id!r}")
    poll = common.options(request).stream_poll
    expires = common.run_token_expiry(request)
    session = sessions.stream_session(request)
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()

    def on_publish(published_run: str) -> None:
        if published_run == run_id:
            loop.call_soon_threadsafe(wake.set)

    async def events() -> AsyncIterator[dict[str, Any]]:
        engine.add_publish_listener(on_publish)
        seq, last_status = after, None
        live: RunLive | None = first
        session_checked = time.monotonic()
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
                if live["more_messages"]:  # the next page at once, as the client takes these
                    live = None
                    continue
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
                if session is not None and time.monotonic() - session_checked >= SESSION_CHECK_S:
                    session_checked = time.monotonic()
                    if not await engine.store.session_is_valid(session):
                        yield {"event": "expired", "id": str(seq), "data": _dumps({
                            "error": "the dashboard session ended (logged out, or past its 12 hours): log in again",
                        })}
                        return
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), left)
        finally:
            engine.remove_publish_listener(on_publish)

    slots: StreamSlots = request.app.state.stream_slots
    refused = slots.take(run_id)
    if refused is not None:
        return refused
    return _HeldStream(events(), ping=15, headers={"cache-control": "no-store", "x-accel-buffering": "no"},
                       release=lambda: slots.give(run_id))
