"""Token estimates for routing and context checks (never for billing).

Plain ``chars / 4`` undercounts Chinese and Japanese by more than half; counting
ASCII at 4 chars/token and everything else at 1.5 stays within ~20% on English,
code, JSON, CJK and Cyrillic (shared/reference/llm-providers.md §5).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

PER_MESSAGE = 4  # role and framing tokens each chat message adds


def estimate_text(text: str) -> int:
    ascii_chars = sum(1 for ch in text if ord(ch) < 128)
    return math.ceil(ascii_chars / 4 + (len(text) - ascii_chars) / 1.5)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: count the text ones
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def estimate_messages(messages: Iterable[dict[str, Any]] | str) -> int:
    """Estimated prompt tokens of chat ``messages`` (or of a plain string)."""
    if isinstance(messages, str):
        return estimate_text(messages)
    return sum(estimate_text(_content_text(m.get("content"))) + PER_MESSAGE for m in messages)


def reserve(messages: Iterable[dict[str, Any]] | str) -> int:
    """A safe upper estimate (+25%) for budget reservations and context checks."""
    return math.ceil(estimate_messages(messages) * 1.25)
