"""Helpers for testing functions that call models: a fake provider on loopback.

``FakeProvider`` is a real HTTP server on 127.0.0.1 (its own thread and event
loop, so sync and async code can both call it) that speaks the OpenAI
chat-completions and Anthropic Messages formats, streaming and not. What it does
with each request is chosen, in order, by the ``x-fake-scenario`` header, by the
behaviours queued with ``script(...)``, by ``on_model(...)`` rules, else by the
default ``Reply``::

    with FakeProvider() as fake:
        fake.script(rate_limited(retry_after_ms=50), server_error(503), Reply(text="hi"))
        llm = fake.llm()                      # an LLM with providers "fake" and "fake-anthropic"
        stepline.llm.set_default(llm)         # what ctx.step.ai uses

Behaviours: ``Reply`` (latency, chunk gaps, text, reasoning, finish reason,
reported cost), ``Fail`` (any status, body and headers; see ``rate_limited``,
``insufficient_quota``, ``server_error``, ``overloaded``), ``Truncate`` (half a
JSON body, or a stream that stops before its finish marker), ``Reset`` (TCP reset
mid-stream, chunked or close-delimited) and ``StreamError`` (an error event after
a 200). ``requests`` records what was sent; ``disconnects`` counts clients that
went away mid-answer (as a cancelled run does).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import socket
import struct
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Mapping
from typing import Any

import orjson

from stepline.llm import providers as providers_mod
from stepline.llm import tokens
from stepline.llm.client import LLM
from stepline.llm.pricing import Price
from stepline.llm.providers import Provider

MAX_BODY = 8 * 1024 * 1024


# --- a minimal HTTP/1.1 server on loopback, in its own thread --------------------------


@dataclasses.dataclass(frozen=True)
class Request:
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
        writer.write(_status_line(status) + _header_bytes(head) + body)
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


def _status_line(status: int) -> bytes:
    reasons = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
               404: "Not Found", 413: "Payload Too Large", 429: "Too Many Requests", 500: "Internal Server Error",
               502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout", 529: "Overloaded"}
    return f"HTTP/1.1 {status} {reasons.get(status, 'Status')}\r\n".encode()


def _header_bytes(headers: Mapping[str, str]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1") + b"\r\n"


def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort with a TCP RST (SO_LINGER 0), as a crashed proxy or upstream does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# --- behaviours ----------------------------------------------------------------------


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

_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}
_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


@dataclasses.dataclass(frozen=True)
class Recorded:
    """One request the fake received."""

    path: str
    headers: dict[str, str]
    body: Any
    scenario: str


class FakeProvider(LoopbackServer):
    """A fake OpenAI-compatible and Anthropic endpoint on 127.0.0.1 (see the module docs).

    ``latency``: seconds before every answer's headers; ``chunk_delay``: seconds
    between stream chunks; ``cost_per_mtok``: report ``usage.cost`` as OpenRouter
    does, at this USD price per million tokens (None: no cost reported).
    """

    def __init__(self, *, latency: float = 0.0, chunk_delay: float = 0.0, cost_per_mtok: float | None = None, port: int = 0) -> None:
        super().__init__(port)
        self.latency = latency
        self.chunk_delay = chunk_delay
        self.cost_per_mtok = cost_per_mtok
        self._script: deque[Behaviour] = deque()
        self._rules: dict[str, Behaviour] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.requests: list[Recorded] = []
        self.disconnects = 0

    # --- configuration ---------------------------------------------------------------

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    def script(self, *behaviours: Behaviour) -> None:
        """The next requests (any model) get these behaviours, in order."""
        with self._lock:
            self._script.extend(behaviours)

    def on_model(self, model: str, behaviour: Behaviour) -> None:
        """Every request for ``model`` gets ``behaviour`` (after any scripted ones)."""
        with self._lock:
            self._rules[model] = behaviour

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self._rules.clear()
            self.requests.clear()
            self.disconnects = 0

    def provider(self, name: str = "fake", *, wire: str = "openai", **options: Any) -> Provider:
        """A ``Provider`` for this server; self-hosted (cost 0) unless ``pricing_id`` or overrides say otherwise."""
        base = self.anthropic_base_url if wire == "anthropic" else self.openai_base_url
        options.setdefault("self_hosted", True)
        return Provider(name=name, base_url=base, api_key="fake-key", wire=wire, **options)  # type: ignore[arg-type]

    def llm(self, *, prices: Mapping[str, Price] | None = None, read_timeout: float = 30.0) -> LLM:
        """An ``LLM`` whose default provider ``fake`` is this server; ``fake-anthropic:`` uses the Anthropic format."""
        return LLM(
            [self.provider("fake", read_timeout=read_timeout), self.provider("fake-anthropic", wire="anthropic", read_timeout=read_timeout)],
            default="fake",
            prices=prices or {},
        )

    def env(self) -> dict[str, str]:
        """Environment variables that point ``stepline.llm`` at this server."""
        return {"STEPLINE_LLM_BASE_URL": self.openai_base_url, "STEPLINE_LLM_API_KEY": "fake-key", "STEPLINE_LLM_NAME": "fake", "STEPLINE_LLM_PROVIDER": "fake"}

    def _choose(self, request: Request, model: str) -> tuple[str, Behaviour]:
        named = request.headers.get("x-fake-scenario")
        if named:
            if named not in SCENARIOS:
                return "unknown", Fail(status=400, message=f"x-fake-scenario {named!r} is unknown; use one of {sorted(SCENARIOS)}")
            return named, SCENARIOS[named]
        with self._lock:
            if self._script:
                behaviour = self._script.popleft()
                return type(behaviour).__name__.lower(), behaviour
            if model in self._rules:
                return f"model:{model}", self._rules[model]
        return "default", Reply()

    # --- answering -------------------------------------------------------------------

    async def respond(self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        path = request.path.rstrip("/")
        if request.method == "GET" and path.endswith("/models"):
            models = sorted(self._rules) or ["fake-quick", "fake-slow"]
            await self.send_json(writer, 200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "fake"} for m in models]})
            return
        if request.method != "POST" or not path.endswith(("/chat/completions", "/messages")):
            await self.send_json(writer, 404, {"error": {"message": f"no route {request.method} {request.path}", "type": "invalid_request_error", "code": None}})
            return
        wire = "anthropic" if path.endswith("/messages") else "openai"
        try:
            body = request.json() or {}
        except orjson.JSONDecodeError:
            await self.send_json(writer, 400, {"error": {"message": "the body is not JSON", "type": "invalid_request_error"}})
            return
        model = str(body.get("model", ""))
        name, behaviour = self._choose(request, model)
        with self._lock:
            self.requests.append(Recorded(request.path, request.headers, body, name))
        try:
            await self._answer(wire, body, behaviour, reader, writer)
        except (ClientGone, ConnectionError):
            with self._lock:
                self.disconnects += 1

    async def _answer(self, wire: str, body: dict[str, Any], behaviour: Behaviour, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = bool(body.get("stream"))
        if isinstance(behaviour, Fail):
            await self.pause(reader, behaviour.delay)
            await self._fail(wire, behaviour, writer)
            return
        reply = behaviour if isinstance(behaviour, Reply) else Reply()
        await self.pause(reader, self.latency if reply.delay is None else reply.delay)
        answer = self._content(body, reply)
        if not stream:
            data = self._openai_body(body, answer) if wire == "openai" else self._anthropic_body(body, answer)
            raw = orjson.dumps(data)
            if isinstance(behaviour, Truncate):
                raw = raw[: len(raw) // 2]
            await self.send(writer, 200, raw)
            return
        events = self._openai_events(body, answer) if wire == "openai" else self._anthropic_events(body, answer)
        events[:0] = [": OPENROUTER PROCESSING\n\n"] * answer["comments"]
        chunked = not (isinstance(behaviour, Reset) and not behaviour.chunked)
        head = {"content-type": "text/event-stream", "cache-control": "no-cache", "connection": "close"}
        if chunked:
            head["transfer-encoding"] = "chunked"
        writer.write(_status_line(200) + _header_bytes(head))
        await writer.drain()
        gap = self.chunk_delay if reply.chunk_delay is None else reply.chunk_delay
        cut = behaviour.after if isinstance(behaviour, (Truncate, Reset, StreamError)) else None
        for index, event in enumerate(events):
            if cut is not None and index >= cut:
                break
            if index:
                await self.pause(reader, gap)
            await self._write_chunk(writer, event, chunked)
        if isinstance(behaviour, Reset):
            await asyncio.sleep(0.05)  # let the chunks leave before the reset
            _reset(writer)
            return
        if isinstance(behaviour, StreamError):
            error = {"type": "error", "error": {"type": behaviour.error_type, "message": behaviour.message}}
            if wire == "openai":
                await self._write_chunk(writer, f"data: {orjson.dumps(error).decode()}\n\n", chunked)
            else:
                await self._write_chunk(writer, f"event: error\ndata: {orjson.dumps(error).decode()}\n\n", chunked)
        if chunked:
            writer.write(b"0\r\n\r\n")
        await writer.drain()

    @staticmethod
    async def _write_chunk(writer: asyncio.StreamWriter, event: str, chunked: bool) -> None:
        data = event.encode()
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data)
        await writer.drain()

    async def _fail(self, wire: str, fail: Fail, writer: asyncio.StreamWriter) -> None:
        if fail.raw_body is not None:
            await self.send(writer, fail.status, fail.raw_body, fail.headers, content_type="text/html")
            return
        if wire == "anthropic":
            kind = fail.code if fail.code in _ANTHROPIC_TYPES.values() else _ANTHROPIC_TYPES.get(fail.status, "api_error")
            error: dict[str, Any] = {"type": kind, "message": fail.message}
            if fail.code == "insufficient_quota":
                error["details"] = {"error_code": "enforced_spend_limit_reached"}
            data: dict[str, Any] = {"type": "error", "error": error, "request_id": f"req_fake{next(self._ids)}"}
        else:
            kind = "insufficient_quota" if fail.code == "insufficient_quota" else ("rate_limit_error" if fail.status == 429 else "server_error" if fail.status >= 500 else "invalid_request_error")
            data = {"error": {"message": fail.message, "type": kind, "param": None, "code": fail.code}}
        await self.send_json(writer, fail.status, data, fail.headers)

    # --- content ---------------------------------------------------------------------

    def _content(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        messages = body.get("messages") or []
        last = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
        last_text = last if isinstance(last, str) else " ".join(str(p.get("text", "")) for p in last if isinstance(p, dict))
        text = reply.text if reply.text is not None else f"Simulated reply from {body.get('model', 'fake')}: {last_text[:200]}"
        prompt_messages = list(messages)
        if body.get("system"):
            prompt_messages.append({"role": "system", "content": body["system"]})
        prompt = reply.prompt_tokens if reply.prompt_tokens is not None else tokens.estimate_messages(prompt_messages)
        reasoning_tokens = tokens.estimate_text(reply.reasoning) if reply.reasoning else 0
        completion = reply.completion_tokens if reply.completion_tokens is not None else tokens.estimate_text(text) + reasoning_tokens
        cost = reply.cost
        if cost is None and self.cost_per_mtok is not None:
            cost = round((prompt + completion) * self.cost_per_mtok / 1_000_000, 10)
        finish = "tool_calls" if reply.tool_calls and reply.finish_reason == "stop" else reply.finish_reason
        return {"text": text, "reasoning": reply.reasoning, "finish": finish, "prompt": prompt, "completion": completion,
                "reasoning_tokens": reasoning_tokens, "cached": reply.cached_tokens, "cost": cost, "id": next(self._ids),
                "tools": [(f"call_{i}", name, args) for i, (name, args) in enumerate(reply.tool_calls)],
                "comments": reply.keepalive_comments}

    def _openai_usage(self, answer: dict[str, Any]) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": answer["prompt"],
            "completion_tokens": answer["completion"],
            "total_tokens": answer["prompt"] + answer["completion"],
            "prompt_tokens_details": {"cached_tokens": answer["cached"]},
            "completion_tokens_details": {"reasoning_tokens": answer["reasoning_tokens"]},
        }
        if answer["cost"] is not None:
            usage["cost"] = answer["cost"]
        return usage

    def _openai_body(self, body: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": answer["text"]}
        if answer["tools"]:
            message["tool_calls"] = [{"id": i, "type": "function", "function": {"name": n, "arguments": a}} for i, n, a in answer["tools"]]
        if answer["reasoning"]:
            message["reasoning_content"] = answer["reasoning"]
        return {
            "id": f"chatcmpl-fake{answer['id']}", "object": "chat.completion", "created": int(time.time()), "model": body.get("model"),
            "choices": [{"index": 0, "message": message, "finish_reason": answer["finish"], "logprobs": None}],
            "usage": self._openai_usage(answer),
        }

    def _openai_events(self, body: dict[str, Any], answer: dict[str, Any]) -> list[str]:
        base = {"id": f"chatcmpl-fake{answer['id']}", "object": "chat.completion.chunk", "created": int(time.time()), "model": body.get("model")}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            data = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": None}
            return f"data: {orjson.dumps(data).decode()}\n\n"

        events = [chunk({"role": "assistant", "content": ""})]
        if answer["reasoning"]:
            events += [chunk({"reasoning_content": piece}) for piece in _pieces(answer["reasoning"])]
        events += [chunk({"content": piece}) for piece in _pieces(answer["text"])]
        for index, (call_id, name, args) in enumerate(answer["tools"]):
            events.append(chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]}))
            events += [chunk({"tool_calls": [{"index": index, "function": {"arguments": args[i:i + 8]}}]}) for i in range(0, len(args), 8)]
        events.append(chunk({}, answer["finish"]))
        include = bool((body.get("stream_options") or {}).get("include_usage")) or answer["cost"] is not None
        if include:
            events.append(f"data: {orjson.dumps({**base, 'choices': [], 'usage': self._openai_usage(answer)}).decode()}\n\n")
        events.append("data: [DONE]\n\n")
        return events

    def _anthropic_usage(self, answer: dict[str, Any]) -> dict[str, Any]:
        return {"input_tokens": answer["prompt"] - answer["cached"], "output_tokens": answer["completion"],
                "cache_read_input_tokens": answer["cached"], "cache_creation_input_tokens": 0}

    def _anthropic_body(self, body: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if answer["reasoning"]:
            content.append({"type": "thinking", "thinking": answer["reasoning"], "signature": "fake"})
        content.append({"type": "text", "text": answer["text"]})
        content += [{"type": "tool_use", "id": i, "name": n, "input": orjson.loads(a or "{}")} for i, n, a in answer["tools"]]
        return {"id": f"msg_fake{answer['id']}", "type": "message", "role": "assistant", "model": body.get("model"), "content": content,
                "stop_reason": _STOP.get(answer["finish"], answer["finish"]), "stop_sequence": None, "usage": self._anthropic_usage(answer)}

    def _anthropic_events(self, body: dict[str, Any], answer: dict[str, Any]) -> list[str]:
        def event(name: str, data: dict[str, Any]) -> str:
            return f"event: {name}\ndata: {orjson.dumps({'type': name, **data}).decode()}\n\n"

        usage = self._anthropic_usage(answer)
        start: dict[str, Any] = {"id": f"msg_fake{answer['id']}", "type": "message", "role": "assistant", "model": body.get("model"), "content": [],
                 "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}
        events = [event("message_start", {"message": start}), event("ping", {})]
        index = 0
        if answer["reasoning"]:
            events.append(event("content_block_start", {"index": 0, "content_block": {"type": "thinking", "thinking": ""}}))
            events += [event("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": p}}) for p in _pieces(answer["reasoning"])]
            events.append(event("content_block_stop", {"index": 0}))
            index = 1
        events.append(event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}}))
        events += [event("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": p}}) for p in _pieces(answer["text"])]
        events.append(event("content_block_stop", {"index": index}))
        for offset, (call_id, name, args) in enumerate(answer["tools"], start=index + 1):
            events.append(event("content_block_start", {"index": offset, "content_block": {"type": "tool_use", "id": call_id, "name": name, "input": {}}}))
            events += [event("content_block_delta", {"index": offset, "delta": {"type": "input_json_delta", "partial_json": args[i:i + 8]}}) for i in range(0, len(args), 8)]
            events.append(event("content_block_stop", {"index": offset}))
        events.append(event("message_delta", {"delta": {"stop_reason": _STOP.get(answer["finish"], answer["finish"]), "stop_sequence": None},
                                              "usage": {"output_tokens": answer["completion"]}}))
        events.append(event("message_stop", {}))
        return events


def _pieces(text: str) -> list[str]:
    """Split text into word-sized stream deltas that join back exactly."""
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words) if w or i < len(words) - 1] or [""]


_dev_provider: FakeProvider | None = None


def start_dev_provider() -> str | None:
    """For ``stepline dev``: with no provider configured, serve SIMULATED models and say so.

    Starts a ``FakeProvider`` (``fake-quick`` answers in ~0.3 s, ``fake-slow`` in
    ~2 s plus a slow stream; both report a made-up cost) and points
    ``stepline.llm`` at it through the environment. Returns the line to print, or
    None when a real provider is configured.
    """
    global _dev_provider
    configured, _ = providers_mod.from_env()
    if configured or _dev_provider is not None:
        return None
    fake = FakeProvider(latency=0.3, chunk_delay=0.02, cost_per_mtok=1.0)
    fake.on_model("fake-slow", Reply(delay=2.0, chunk_delay=0.05))
    fake.start()
    os.environ.update(fake.env())
    _dev_provider = fake
    return (
        f"stepline dev: no LLM provider is configured, so models are SIMULATED by the fake provider at "
        f"{fake.openai_base_url} (set OPENROUTER_API_KEY, OPENAI_API_KEY, ANTHROPIC_API_KEY or STEPLINE_LLM_BASE_URL for real ones)"
    )


__all__ = [
    "SCENARIOS",
    "Behaviour",
    "ClientGone",
    "Fail",
    "FakeProvider",
    "LoopbackServer",
    "Recorded",
    "Reply",
    "Request",
    "Reset",
    "StreamError",
    "Truncate",
    "insufficient_quota",
    "overloaded",
    "rate_limited",
    "server_error",
    "start_dev_provider",
]
