"""Events: ``{id, name, data, user, ts, v}`` as in Inngest, validated where they enter."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

from stepline import errors, jsonutil

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024

# Names the engine itself sends.
FUNCTION_FAILED = "stepline/function.failed"
FUNCTION_INVOKED = "stepline/function.invoked"
SCHEDULED_TIMER = "stepline/scheduled.timer"


@dataclasses.dataclass(frozen=True)
class Event:
    """An event as a function sees it. ``id`` is the sender's id, else the engine's."""

    name: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    id: str | None = None
    user: dict[str, Any] | None = None
    ts: int | None = None  # milliseconds since the epoch
    v: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "data": self.data}
        for field in ("id", "user", "ts", "v"):
            value = getattr(self, field)
            if value is not None:
                out[field] = value
        return out

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Event:
        return cls(
            name=value["name"],
            data=dict(value.get("data") or {}),
            id=value.get("id"),
            user=value.get("user"),
            ts=value.get("ts"),
            v=value.get("v"),
        )


def validate(raw: Any, *, index: int = 0, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> Event:
    """An Event from user input, or an EventError that says what to fix."""
    where = f"event[{index}]"
    if isinstance(raw, Event):
        raw = raw.to_dict()
    if not isinstance(raw, Mapping):
        raise errors.EventError(f"{where}: expected a JSON object with 'name' and 'data', got {type(raw).__name__}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise errors.EventError(f"{where}: 'name' is required and must be a non-empty string, like 'app/user.created'")
    data = raw.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise errors.EventError(f"{where} ({name}): 'data' must be a JSON object, got {type(data).__name__}")
    user = raw.get("user")
    if user is not None and not isinstance(user, Mapping):
        raise errors.EventError(f"{where} ({name}): 'user' must be a JSON object when given")
    event_id = raw.get("id")
    if event_id is not None and (not isinstance(event_id, str) or not event_id):
        raise errors.EventError(f"{where} ({name}): 'id' must be a non-empty string when given (it de-duplicates for 24 h)")
    ts = raw.get("ts")
    if ts is None:
        ts = int(time.time() * 1000)
    elif isinstance(ts, bool) or not isinstance(ts, (int, float)):
        raise errors.EventError(f"{where} ({name}): 'ts' must be milliseconds since the epoch")
    unknown = set(raw) - {"name", "data", "user", "id", "ts", "v"}
    if unknown:
        raise errors.EventError(
            f"{where} ({name}): unknown field(s) {sorted(unknown)}; an event has name, data, user, id, ts, v"
        )
    event = Event(name=name, data=dict(data), id=event_id, user=dict(user) if user else None, ts=int(ts), v=raw.get("v"))
    size = len(jsonutil.dumps_checked(event.to_dict(), what=f"{where} ({name})"))
    if size > max_bytes:
        raise errors.EventError(
            f"{where} ({name}) is {size} bytes, over the event size limit of {max_bytes} bytes; "
            "send a reference (an id or URL) instead of the payload, or raise STEPLINE_MAX_EVENT_BYTES"
        )
    return event


def user_id_of(body: Mapping[str, Any]) -> str | None:
    """The user an event is for: ``data.user_id`` (or ``userId``), else ``user.id``."""
    data = body.get("data") or {}
    user = body.get("user") or {}
    for value in (data.get("user_id"), data.get("userId"), user.get("id")):
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
    return None
