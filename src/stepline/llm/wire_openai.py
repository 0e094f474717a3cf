"""The OpenAI-compatible chat-completions format (OpenAI, OpenRouter, vLLM, Ollama, llama.cpp)."""

from __future__ import annotations

from typing import Any

from stepline.llm.providers import Provider
from stepline.llm.types import Usage


def request(provider: Provider, model: str, messages: list[dict[str, Any]], stream: bool, params: dict[str, Any]) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(url, headers, body) for one call."""
    body: dict[str, Any] = {"model": model, "messages": messages, **params}
    # Callers may write either spelling; send the one this server understands.
    for name in ("max_tokens", "max_completion_tokens"):
        if name in body and name != provider.max_tokens_field:
            body.setdefault(provider.max_tokens_field, body.pop(name))
    if stream:
        body["stream"] = True
        if provider.include_usage:
            options = dict(body.get("stream_options") or {})
            options.setdefault("include_usage", True)
            body["stream_options"] = options
    headers = {"content-type": "application/json", **provider.headers}
    if provider.api_key:
        headers["authorization"] = f"Bearer {provider.api_key}"
    return f"{provider.base_url}/chat/completions", headers, body


def usage(raw: dict[str, Any] | None) -> tuple[Usage, float | None]:
    """Normalised usage and the provider-reported cost (OpenRouter's ``usage.cost``)."""
    raw = raw or {}
    prompt_details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    cost = raw.get("cost")
    return (
        Usage(
            prompt_tokens=int(raw.get("prompt_tokens") or 0),
            completion_tokens=int(raw.get("completion_tokens") or 0),
            reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
            cached_tokens=int(prompt_details.get("cached_tokens") or 0),
            cache_write_tokens=int(prompt_details.get("cache_write_tokens") or 0),
        ),
        None if cost is None else float(cost),
    )


def error_in(data: dict[str, Any]) -> dict[str, Any] | None:
    """An error object sent under HTTP 200 (OpenRouter body, a stream event, old vLLM)."""
    if data.get("error"):
        return data
    if data.get("object") == "error":
        return {"error": data}
    return None


class Accumulator:
    """Builds the final completion from a non-stream body or from stream chunks."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage_raw: dict[str, Any] | None = None
        self.id: str | None = None
        self.model: str | None = None

    def body(self, data: dict[str, Any]) -> None:
        self.id, self.model = data.get("id"), data.get("model")
        self.usage_raw = data.get("usage")
        choices = data.get("choices") or []
        if choices:
            choice = choices[0]
            message = choice.get("message") or {}
            self.text.append(message.get("content") or "")
            reasoning = message.get("reasoning_content") or message.get("reasoning")
            if reasoning:
                self.reasoning.append(reasoning)
            for index, call in enumerate(message.get("tool_calls") or []):
                self.tool_calls[index] = call
            self.finish_reason = choice.get("finish_reason")

    def chunk(self, data: dict[str, Any]) -> str:
        """Take one stream chunk; returns the new visible text."""
        self.id = self.id or data.get("id")
        self.model = self.model or data.get("model")
        if data.get("usage"):
            self.usage_raw = data["usage"]
        new = ""
        for choice in data.get("choices") or []:
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                new += content
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                self.reasoning.append(reasoning)
            for call in delta.get("tool_calls") or []:
                slot = self.tool_calls.setdefault(
                    int(call.get("index", 0)), {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                )
                slot["id"] = call.get("id") or slot["id"]
                function = call.get("function") or {}
                slot["function"]["name"] += function.get("name") or ""
                slot["function"]["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        self.text.append(new)
        return new
