"""Provider-neutral records: normalised token usage and one completion."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class Usage:
    """Tokens of one call, in OpenAI's convention whatever the provider.

    ``prompt_tokens`` includes cached and cache-write tokens; ``completion_tokens``
    includes ``reasoning_tokens`` (reasoning is billed as output, never on top).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "total_tokens": self.total_tokens,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Usage:
        data = data or {}
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: int(v or 0) for k, v in data.items() if k in fields})

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Completion:
    """The final result of one model call (streamed or not)."""

    text: str
    model: str
    provider: str
    finish_reason: str | None
    usage: Usage
    cost_usd: float
    cost_source: str  # "provider" | "override" | "self-hosted" | "genai-prices" | "unknown"
    latency_ms: int
    reasoning: str | None = None
    tool_calls: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form saved as an ``ai.infer`` step's result."""
        out: dict[str, Any] = {
            "text": self.text,
            "model": self.model,
            "provider": self.provider,
            "finish_reason": self.finish_reason,
            "usage": self.usage.to_dict(),
            "cost_usd": self.cost_usd,
            "cost_source": self.cost_source,
            "latency_ms": self.latency_ms,
        }
        if self.reasoning:
            out["reasoning"] = self.reasoning
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.id:
            out["id"] = self.id
        return out
