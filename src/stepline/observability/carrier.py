"""The W3C trace context an event carries: ``{"traceparent": ..., "tracestate": ...}``.

Only these two travel, never ``baggage`` (unbounded, and it may hold user data). A
``traceparent`` is version 00 (55 characters); a ``tracestate`` is cut to whole list
members within ``MAX_TRACESTATE_BYTES``, as the W3C specification lets a vendor do.
An event's own ``trace`` field is checked strictly (its sender put it there on purpose);
a request's headers are taken only when well formed, and otherwise ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from stepline import errors

MAX_TRACESTATE_BYTES = 512
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_FIELDS = frozenset({"traceparent", "tracestate"})

Carrier = dict[str, str]


def valid_traceparent(value: Any) -> bool:
    if not isinstance(value, str) or len(value) != 55:
        return False
    found = _TRACEPARENT.fullmatch(value)
    return found is not None and found.group(1) != "0" * 32 and found.group(2) != "0" * 16


def cap_tracestate(value: str) -> str | None:
    """``value`` cut to the leading list members that fit in ``MAX_TRACESTATE_BYTES``."""
    kept: list[str] = []
    size = 0
    for member in (m.strip() for m in value.split(",")):
        if not member or not (member.isascii() and member.isprintable()):
            continue  # empty, or not the printable ASCII a list member is made of
        extra = len(member.encode()) + (1 if kept else 0)
        if size + extra > MAX_TRACESTATE_BYTES:
            break
        kept.append(member)
        size += extra
    return ",".join(kept) or None


def make(traceparent: str, tracestate: str | None) -> Carrier:
    out = {"traceparent": traceparent}
    state = cap_tracestate(tracestate) if tracestate else None
    if state:
        out["tracestate"] = state
    return out


def from_headers(headers: Mapping[str, str]) -> Carrier | None:
    """The trace context of a request (``traceparent`` / ``tracestate`` headers), or None
    when it has none or a malformed one."""
    traceparent = headers.get("traceparent")
    if not valid_traceparent(traceparent):
        return None
    return make(str(traceparent), headers.get("tracestate"))


def check(raw: Any, where: str) -> Carrier | None:
    """An event's ``trace`` field as stored, or an ``EventError`` that says what to fix."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise errors.EventError(
            f"{where}: 'trace' must be an object like {{\"traceparent\": \"00-<32 hex>-<16 hex>-01\"}}, got {type(raw).__name__}"
        )
    unknown = set(raw) - _FIELDS
    if unknown:
        raise errors.EventError(
            f"{where}: 'trace' has unknown field(s) {sorted(map(str, unknown))}; it carries only traceparent and "
            "tracestate (W3C trace context; baggage is not stored)"
        )
    traceparent = raw.get("traceparent")
    if not valid_traceparent(traceparent):
        raise errors.EventError(
            f"{where}: 'trace.traceparent' must be a W3C traceparent of version 00, 55 characters like "
            f"'00-<32 lowercase hex>-<16 lowercase hex>-01' with non-zero ids, got {str(traceparent)[:80]!r}"
        )
    tracestate = raw.get("tracestate")
    if tracestate is not None and not isinstance(tracestate, str):
        raise errors.EventError(f"{where}: 'trace.tracestate' must be a string when given (W3C tracestate)")
    return make(str(traceparent), tracestate)
