"""The Anthropic Messages format: system on top, max_tokens required, named stream events."""

from __future__ import annotations

from typing import Any

from stepline.llm.providers import Provider
from stepline.llm.types import Usage

DEFAULT_MAX_TOKENS = 4096


def request(provider: Provider, model: str, messages: list[dict[str, Any]], stream: bool, params: dict[str, Any]) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(url, headers, body): OpenAI-style messages are accepted and converted."""
    system = [m["content"] for m in messages if m.get("role") in ("system", "developer")]
    rest = [{"role": m["role"], "content": m.get("content", "")} for m in messages if m.get("role") not in ("system", "developer")]
    body: dict[str, Any] = {"model": model, "messages": rest, **params}
    body.pop("stream_options", None)
    max_tokens = body.pop("max_completion_tokens", None)
    body.setdefault("max_tokens", max_tokens or DEFAULT_MAX_TOKENS)
    if system and "system" not in body:
        body["system"] = "\n\n".join(s if isinstance(s, str) else str(s) for s in system)
    if stream:
        body["stream"] = True
    headers = {"content-type": "application/json", "anthropic-version": provider.anthropic_version, **provider.headers}
    if provider.api_key:
        headers["x-api-key"] = provider.api_key
    return f"{provider.base_url}/v1/messages", headers, body


def usage(raw: dict[str, Any] | None) -> Usage:
    """Anthropic's ``input_tokens`` excludes cache reads and writes; ours includes them."""
    raw = raw or {}
    fresh = int(raw.get("input_tokens") or 0)
    read = int(raw.get("cache_read_input_tokens") or 0)
    write = int(raw.get("cache_creation_input_tokens") or 0)
    details = raw.get("output_tokens_details") or {}
    return Usage(
        prompt_tokens=fresh + read + write,
        completion_tokens=int(raw.get("output_tokens") or 0),
        reasoning_tokens=int(details.get("thinking_tokens") or details.get("reasoning_tokens") or 0),
        cached_tokens=read,
        cache_write_tokens=write,
    )


class Accumulator:
    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage_raw: dict[str, Any] = {}
        self.id: str | None = None
        self.model: str | None = None
        self.done = False

    def body(self, data: dict[str, Any]) -> None:
        self.id, self.model = data.get("id"), data.get("model")
        self.usage_raw = data.get("usage") or {}
        self.finish_reason = data.get("stop_reason")
        for index, block in enumerate(data.get("content") or []):
            kind = block.get("type")
            if kind == "text":
                self.text.append(block.get("text", ""))
            elif kind == "thinking":
                self.reasoning.append(block.get("thinking", ""))
            elif kind == "tool_use":
                self.tool_calls[index] = _tool_call(block, block.get("input") or {})
        self.done = self.finish_reason is not None

    def event(self, name: str, data: dict[str, Any]) -> str:
        """Take one stream event; returns the new visible text."""
        kind = data.get("type", name)
        if kind == "message_start":
            message = data.get("message") or {}
            self.id, self.model = message.get("id"), message.get("model")
            self.usage_raw = dict(message.get("usage") or {})
        elif kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                self.tool_calls[int(data.get("index", 0))] = _tool_call(block, "")
        elif kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                self.text.append(delta.get("text", ""))
                return str(delta.get("text", ""))
            if delta.get("type") == "thinking_delta":
                self.reasoning.append(delta.get("thinking", ""))
            elif delta.get("type") == "input_json_delta":
                call = self.tool_calls.get(int(data.get("index", 0)))
                if call is not None:
                    call["function"]["arguments"] += delta.get("partial_json", "")
        elif kind == "message_delta":
            self.finish_reason = (data.get("delta") or {}).get("stop_reason") or self.finish_reason
            self.usage_raw.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
        elif kind == "message_stop":
            self.done = True
        return ""


def _tool_call(block: dict[str, Any], arguments: Any) -> dict[str, Any]:
    import orjson

    args = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
    return {"id": block.get("id"), "type": "function", "function": {"name": block.get("name", ""), "arguments": args}}
