"""What a fake provider does with a request: answer, fail, truncate, reset, or fail mid-stream.

``Reply`` (latency, chunk gaps, text, reasoning, finish reason, reported cost),
``Fail`` (any status, body and headers; see ``rate_limited``, ``insufficient_quota``,
``server_error``, ``overloaded``), ``Truncate`` (half a JSON body, or a stream that
stops before its finish marker), ``Reset`` (TCP reset mid-stream, chunked or
close-delimited) and ``StreamError`` (an error event after a 200). ``SCENARIOS`` are
the ones a client picks by name with the ``x-fake-scenario`` header.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True, kw_only=True)
class Reply:
    """A normal answer. ``text`` defaults to a deterministic echo of the last user message."""

    text: str | None = None
    delay: float | None = None  # seconds before the headers (None: the server's latency)
    chunk_delay: float | None = None  # seconds between stream chunks (None: the server's)
    finish_reason: str = "stop"
    reasoning: str | None = None
    cost: float | None = None  # reported as usage.cost, as OpenRouter does
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int = 0
    tool_calls: tuple[tuple[str, str], ...] = ()  # (name, JSON arguments), streamed in fragments
    keepalive_comments: int = 0  # ": OPENROUTER PROCESSING" lines before the first chunk


@dataclasses.dataclass(frozen=True, kw_only=True)
class Fail:
    """An HTTP error answer; ``body`` defaults to the wire format's realistic error body."""

    status: int
    message: str = "simulated failure"
    code: str | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    raw_body: bytes | None = None  # e.g. an HTML page from a proxy
    delay: float = 0.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Truncate:
    """Non-stream: half a JSON body. Stream: a clean close after ``after`` chunks, no finish marker."""

    after: int = 2


@dataclasses.dataclass(frozen=True, kw_only=True)
class Reset:
    """A TCP reset after ``after`` stream chunks (``chunked=False``: a close-delimited body)."""

    after: int = 2
    chunked: bool = True


@dataclasses.dataclass(frozen=True, kw_only=True)
class StreamError:
    """HTTP 200, ``after`` chunks, then an error event (``overloaded_error`` is retryable)."""

    after: int = 1
    error_type: str = "overloaded_error"
    message: str = "simulated mid-stream failure"


Behaviour = Reply | Fail | Truncate | Reset | StreamError


def rate_limited(*, retry_after: float | str | None = None, retry_after_ms: float | None = None, code: str = "rate_limit_exceeded") -> Fail:
    headers = {}
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    if retry_after_ms is not None:
        headers["retry-after-ms"] = str(retry_after_ms)
    return Fail(status=429, message="Rate limit reached: slow down", code=code, headers=headers)


def insufficient_quota() -> Fail:
    return Fail(status=429, message="You exceeded your current quota, please check your plan and billing details.", code="insufficient_quota")


def server_error(status: int = 503, **headers: str) -> Fail:
    return Fail(status=status, message="The server is overloaded or not ready yet.", code="server_error", headers=headers)


def overloaded() -> Fail:
    return Fail(status=529, message="Overloaded", code="overloaded_error")


SCENARIOS: dict[str, Behaviour] = {
    "ok": Reply(),
    "429": rate_limited(retry_after=1),
    "quota": insufficient_quota(),
    "500": server_error(500),
    "503": server_error(503),
    "529": overloaded(),
    "401": Fail(status=401, message="Incorrect API key provided", code="invalid_api_key"),
    "404": Fail(status=404, message="The model does not exist", code="model_not_found"),
    "truncated": Truncate(),
    "reset": Reset(),
    "stream-error": StreamError(),
}


__all__ = [
    "SCENARIOS",
    "Behaviour",
    "Fail",
    "Reply",
    "Reset",
    "StreamError",
    "Truncate",
    "insufficient_quota",
    "overloaded",
    "rate_limited",
    "server_error",
]
