"""Events: ``{id, name, data, user, ts, v}`` as in Inngest, validated where they enter.

Every way in (``POST /e/{key}`` native or SDK-shaped, ``POST /api/v1/events``,
``app.send``, ``step.send_event``, the HTTP ``Client``) calls ``validate``, so an
event is held to one set of limits on every backend: what the store cannot keep
and give back unchanged is refused with an ``EventError`` naming the limit.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

from stepline import errors, jsonutil, settings, shown_text
from stepline.observability import carrier

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
# The range of an event's ``ts`` in epoch ms, as Inngest takes it: 1980-01-01 to 2100-01-01.
# A ``ts`` in seconds falls before it; a far-future one would hold a singleton key, and
# keep its run from retention, for ever.
MIN_TS = 315532800000
MAX_TS = 4102444800000

# Names the engine itself sends. A run's end sends FUNCTION_FINISHED (every ending), and
# FUNCTION_FAILED or FUNCTION_CANCELLED with it, in Inngest's data shape: function_id,
# run_id, event, events, result (completed) or error (failed), correlation_id (invoked
# runs), _inngest.status.
FUNCTION_FINISHED = "stepline/function.finished"
FUNCTION_CANCELLED = "stepline/function.cancelled"
FUNCTION_FAILED = "stepline/function.failed"
FUNCTION_INVOKED = "stepline/function.invoked"
SCHEDULED_TIMER = "stepline/scheduled.timer"

# Prefixes of the names above (and of Inngest's for them, and of signals): what carries
# them must come from the engine, since functions act on them (failure handlers, job
# tables marked cancelled, waits for a signal). Senders over HTTP are refused them.
RESERVED_PREFIXES = ("stepline/", "inngest/")

_FIELDS = frozenset({"name", "data", "user", "id", "ts", "v", "trace"})


def refuse_reserved_names(items: list[Any]) -> None:
    """An EventError for the first item whose name only the engine may send."""
    for index, raw in enumerate(items):
        name = raw.get("name") if isinstance(raw, Mapping) else None
        # Case-insensitive: a name that differs only in case is the engine's too, to a reader.
        if isinstance(name, str) and name[:9].lower().startswith(RESERVED_PREFIXES):
            prefix = next(p for p in RESERVED_PREFIXES if name[:9].lower().startswith(p))
            raise errors.EventError(
                f"event[{index}] ({_shown(name)}): names starting with {prefix!r} are reserved for the events "
                "the server sends itself (failures, cancellations, signals); name yours under your app, like 'app/order.failed'"
            )


SERVER_DATA = "_inngest"  # data._inngest: what only the server sets (an invoke's correlation, a run's status)


def without_server_data(items: list[Any]) -> list[Any]:
    """The items of a request with ``data._inngest`` dropped, as Inngest's server drops it from
    every event it receives: a sender must not forge an invoke's correlation id or a finished
    run's status, which functions and the SDKs read from it."""
    out: list[Any] = []
    for raw in items:
        data = raw.get("data") if isinstance(raw, Mapping) else None
        if isinstance(data, Mapping) and SERVER_DATA in data:
            raw = {**raw, "data": {k: v for k, v in data.items() if k != SERVER_DATA}}
        out.append(raw)
    return out


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one event may hold; each bound has its ``STEPLINE_*`` variable."""

    max_bytes: int = DEFAULT_MAX_EVENT_BYTES
    max_name_bytes: int = 256
    max_id_bytes: int = 256
    max_user_id_bytes: int = 256
    max_json_depth: int = 64

    @classmethod
    def of(cls, config: settings.Settings) -> Limits:
        return cls(
            max_bytes=config.max_event_bytes,
            max_name_bytes=config.max_name_bytes,
            max_id_bytes=config.max_id_bytes,
            max_user_id_bytes=config.max_user_id_bytes,
            max_json_depth=config.max_json_depth,
        )


@functools.cache
def current_limits() -> Limits:
    """The limits this process enforces, read once from the ``STEPLINE_*`` variables."""
    return Limits.of(settings.from_env())


@dataclasses.dataclass(frozen=True)
class Event:
    """An event as a function sees it. ``id`` is the sender's id, else the engine's."""

    name: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    id: str | None = None
    user: dict[str, Any] | None = None
    ts: int | None = None  # milliseconds since the epoch
    v: str | None = None
    # The sender's W3C trace context ({"traceparent", "tracestate"}), so the runs it starts
    # join the sender's trace (see stepline.observability); set by the senders themselves.
    trace: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "data": self.data}
        for field in ("id", "user", "ts", "v", "trace"):
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
            trace=value.get("trace"),
        )


def validate(raw: Any, *, index: int = 0, max_bytes: int | None = None, limits: Limits | None = None) -> Event:
    """An Event from user input, or an EventError that says what to fix.

    ``limits`` defaults to this process's (``current_limits()``); ``max_bytes`` overrides its size bound.
    """
    bounds = limits or current_limits()
    if max_bytes is not None:
        bounds = dataclasses.replace(bounds, max_bytes=max_bytes)
    where = f"event[{index}]"
    if isinstance(raw, Event):
        raw = raw.to_dict()
    if not isinstance(raw, Mapping):
        raise errors.EventError(f"{where}: expected a JSON object with 'name' and 'data', got {type(raw).__name__}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise errors.EventError(f"{where}: 'name' is required and must be a non-empty string, like 'app/user.created'")
    _check_text(name, "name", where, bounds.max_name_bytes, "STEPLINE_MAX_NAME_BYTES",
                "use a short name like 'app/user.created' and put the details in 'data'")
    _check_shown(name, "name", where, "use a name like 'app/user.created'")
    where = f"{where} ({_shown(name)})"
    unknown = set(raw) - _FIELDS
    if unknown:
        raise errors.EventError(f"{where}: unknown field(s) {sorted(map(str, unknown))}; an event has name, data, user, id, ts, v, trace")
    data = raw.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise errors.EventError(f"{where}: 'data' must be a JSON object, got {type(data).__name__}")
    user = raw.get("user")
    if user is not None and not isinstance(user, Mapping):
        raise errors.EventError(f"{where}: 'user' must be a JSON object when given")
    event_id = raw.get("id")
    if event_id is not None:
        if not isinstance(event_id, str) or not event_id:
            raise errors.EventError(f"{where}: 'id' must be a non-empty string when given (it de-duplicates for 24 h)")
        _check_text(event_id, "id", where, bounds.max_id_bytes, "STEPLINE_MAX_ID_BYTES",
                    "use a short unique id, such as a UUID or a hash of what makes the event unique")
        _check_shown(event_id, "id", where, "use a UUID or a hash of what makes the event unique")
    version = raw.get("v")
    if version is not None and not isinstance(version, str):
        raise errors.EventError(f"{where}: 'v' must be a string when given (the event's schema version, like '2024-01-01.1')")
    ts = _timestamp(raw.get("ts"), where)
    trace = carrier.check(raw.get("trace"), where)
    event = Event(name=name, data=dict(data), id=event_id, user=dict(user) if user else None, ts=ts, v=version, trace=trace)
    # The size first, encoded at C speed: an event over the limit is refused before its
    # values are walked one by one in Python below.
    try:
        size: int | None = len(jsonutil.dumps(event.to_dict()).encode())
        unencodable: TypeError | None = None
    except TypeError as exc:  # a value JSON has no form for; the walk below may name it better
        size, unencodable = None, exc
    if size is not None and size > bounds.max_bytes:
        raise errors.EventError(
            f"{where} is {size} bytes, over the event size limit of {bounds.max_bytes} bytes; "
            "send a reference (an id or URL) instead of the payload, or raise STEPLINE_MAX_EVENT_BYTES"
        )
    for field, value in (("data", data), ("user", user), ("v", version)):
        problem = jsonutil.storable_problem(value, max_depth=bounds.max_json_depth, path=field)
        if problem is not None:
            raise errors.EventError(f"{where}: {problem}")
    _check_user_id(event, where, bounds.max_user_id_bytes)
    if unencodable is not None:  # (only app code can send such a value)
        raise errors.EventError(
            f"{where}: the event is not JSON-serialisable: {unencodable}; send plain data (dict, list, str, number, bool, None)"
        ) from unencodable
    return event


def _shown(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _check_text(value: str, field: str, where: str, max_bytes: int, variable: str, fix: str) -> None:
    """A name or id goes into an indexed column: bounded, and free of what a backend cannot hold."""
    problem = jsonutil.text_problem(value)
    if problem is not None:
        raise errors.EventError(f"{where}: '{field}' {problem}")
    size = len(value.encode())
    if size > max_bytes:
        raise errors.EventError(
            f"{where}: '{field}' is {size:,} bytes, over the limit of {max_bytes:,} bytes ({variable}); {fix}"
        )


def _check_shown(value: str, field: str, where: str, fix: str) -> None:
    """A name or id is shown as sent (logs, dashboard, CLI): no control or bidi characters."""
    problem = shown_text.problem(value)
    if problem is not None:
        raise errors.EventError(f"{where}: '{field}' {_shown(value)} {problem}; {fix}")


def _timestamp(ts: Any, where: str) -> int | None:
    """``ts`` in epoch ms, or None when absent (the store stamps the time of receipt, on its
    clock); outside MIN_TS..MAX_TS is refused. A ``ts`` in the future schedules the runs
    the event starts."""
    if ts is None:
        return None
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or (isinstance(ts, float) and not math.isfinite(ts)):
        raise errors.EventError(f"{where}: 'ts' must be a number of milliseconds since the epoch, got {ts!r}")
    if not MIN_TS <= ts <= MAX_TS:
        raise errors.EventError(
            f"{where}: 'ts' is {ts!r}, outside {MIN_TS}..{MAX_TS} (milliseconds since the epoch, 1980-01-01 to "
            "2100-01-01); send milliseconds, not seconds or microseconds, or leave 'ts' out for the time of receipt"
        )
    return int(ts)


def _check_user_id(event: Event, where: str, max_bytes: int) -> None:
    """The user id goes into indexed columns of events and runs, and is shown in listings:
    bounded like a name, and free of control and bidi characters."""
    found = _user_id_field(event.to_dict())
    if found is None:
        return
    if len(found[1].encode()) > max_bytes:
        raise errors.EventError(
            f"{where}: '{found[0]}' is {len(found[1].encode()):,} bytes, over the user id limit of {max_bytes:,} bytes "
            "(STEPLINE_MAX_USER_ID_BYTES); send the user's id, not a description of the user"
        )
    _check_shown(found[1], found[0], where, "send the user's id as stored in your system, like 'user_123'")


def _user_id_field(body: Mapping[str, Any]) -> tuple[str, str] | None:
    data = body.get("data") or {}
    user = body.get("user") or {}
    for field, value in (("data.user_id", data.get("user_id")), ("data.userId", data.get("userId")), ("user.id", user.get("id"))):
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return field, str(value)
    return None


def user_id_of(body: Mapping[str, Any]) -> str | None:
    """The user an event is for: ``data.user_id`` (or ``userId``), else ``user.id``."""
    found = _user_id_field(body)
    return None if found is None else found[1]
