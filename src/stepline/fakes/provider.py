"""``FakeProvider``: a fake model provider on loopback, for tests and for ``stepline dev``.

A real HTTP server on 127.0.0.1 (its own thread and event loop, so sync and async
code can both call it) that speaks the OpenAI chat-completions and Anthropic
Messages formats, streaming and not. What it does with each request is chosen, in
order, by the ``x-fake-scenario`` header, by the behaviours queued with
``script(...)``, by ``on_model(...)`` rules, else by the default ``Reply``::

    with FakeProvider() as fake:
        fake.script(rate_limited(retry_after_ms=50), server_error(503), Reply(text="hi"))
        llm = fake.llm()                      # an LLM with providers "fake" and "fake-anthropic"
        stepline.llm.set_default(llm)         # what ctx.step.ai uses

The behaviours are in ``behaviours``, the wire formats in ``wire``. ``requests``
records what was sent; ``disconnects`` counts clients that went away mid-answer (as a
cancelled run does).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

import orjson

from stepline.fakes import loopback, wire
from stepline.fakes.behaviours import (
    SCENARIOS,
    Behaviour,
    Fail,
    Reply,
    Reset,
    StreamError,
    Truncate,
)
from stepline.fakes.loopback import ClientGone, LoopbackServer, Request
from stepline.llm import tokens
from stepline.llm.client import LLM
from stepline.llm.pricing import Price
from stepline.llm.providers import Provider


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
        self.answering = 0  # requests being answered now
        self.most_at_once = 0  # the most ever answered at once (what a rate limit sees)

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
            self.most_at_once = 0

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
        wire_format = "anthropic" if path.endswith("/messages") else "openai"
        try:
            body = request.json() or {}
        except orjson.JSONDecodeError:
            await self.send_json(writer, 400, {"error": {"message": "the body is not JSON", "type": "invalid_request_error"}})
            return
        model = str(body.get("model", ""))
        name, behaviour = self._choose(request, model)
        with self._lock:
            self.requests.append(Recorded(request.path, request.headers, body, name))
            self.answering += 1
            self.most_at_once = max(self.most_at_once, self.answering)
        try:
            await self._answer(wire_format, body, behaviour, reader, writer)
        except (ClientGone, ConnectionError):
            with self._lock:
                self.disconnects += 1
        finally:
            with self._lock:
                self.answering -= 1

    async def _answer(self, wire_format: str, body: dict[str, Any], behaviour: Behaviour, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = bool(body.get("stream"))
        if isinstance(behaviour, Fail):
            await self.pause(reader, behaviour.delay)
            await self._fail(wire_format, behaviour, writer)
            return
        reply = behaviour if isinstance(behaviour, Reply) else Reply()
        await self.pause(reader, self.latency if reply.delay is None else reply.delay)
        answer = self._content(body, reply)
        if not stream:
            data = wire.openai_body(body, answer) if wire_format == "openai" else wire.anthropic_body(body, answer)
            raw = orjson.dumps(data)
            if isinstance(behaviour, Truncate):
                raw = raw[: len(raw) // 2]
            await self.send(writer, 200, raw)
            return
        events = wire.openai_events(body, answer) if wire_format == "openai" else wire.anthropic_events(body, answer)
        events[:0] = [": OPENROUTER PROCESSING\n\n"] * answer["comments"]
        chunked = not (isinstance(behaviour, Reset) and not behaviour.chunked)
        head = {"content-type": "text/event-stream", "cache-control": "no-cache", "connection": "close"}
        if chunked:
            head["transfer-encoding"] = "chunked"
        writer.write(loopback.status_line(200) + loopback.header_bytes(head))
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
            loopback.reset_connection(writer)
            return
        if isinstance(behaviour, StreamError):
            error = {"type": "error", "error": {"type": behaviour.error_type, "message": behaviour.message}}
            if wire_format == "openai":
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

    async def _fail(self, wire_format: str, fail: Fail, writer: asyncio.StreamWriter) -> None:
        if fail.raw_body is not None:
            await self.send(writer, fail.status, fail.raw_body, fail.headers, content_type="text/html")
            return
        data = wire.error_body(wire_format, fail.status, fail.message, fail.code, f"req_fake{next(self._ids)}")
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


__all__ = ["FakeProvider", "Recorded"]
