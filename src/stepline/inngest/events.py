"""Events between Stepline and the SDKs: the names the engine uses for its own
events, and the shapes each side expects."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Mapping
from typing import Any

from stepline import event as event_mod
from stepline.inngest.protocol import normalize_error

# Inngest's names for the events the engine makes itself, and Stepline's.
TO_STEPLINE = {
    "inngest/function.finished": event_mod.FUNCTION_FINISHED,
    "inngest/function.cancelled": event_mod.FUNCTION_CANCELLED,
    "inngest/function.failed": event_mod.FUNCTION_FAILED,
    "inngest/function.invoked": event_mod.FUNCTION_INVOKED,
    "inngest/scheduled.timer": event_mod.SCHEDULED_TIMER,
}
TO_INNGEST = {v: k for k, v in TO_STEPLINE.items()}
# step.waitForSignal waits for this event; POST /v1/signals sends it.
SIGNAL_EVENT = "stepline/signal.received"


def signal_expression(signal: str) -> str:
    """The CEL that a signal's wait matches with (a JSON string is a valid CEL string)."""
    return "async.data.signal == " + json.dumps(signal)
_FIELDS = ("name", "data", "id", "user", "ts", "v")
CRON_EVENT = "inngest/scheduled.timer"


def split_cron(text: str) -> tuple[str, str]:
    """(schedule, timezone) of a cron trigger as the SDKs write it: ``TZ=Europe/Paris 0 3 * * *``."""
    spec, timezone = text.strip(), "UTC"
    head, _, rest = spec.partition(" ")
    if head.startswith(("TZ=", "CRON_TZ=")):
        timezone, spec = head.split("=", 1)[1], rest.strip()
    return spec, timezone


def declared_crons(raw_triggers: Any) -> dict[str, str]:
    """Each cron schedule as stored (its ``TZ=`` split off) -> as the function declared it; a
    schedule declared twice in different zones is left out (a tick cannot tell which)."""
    found: dict[str, set[str]] = {}
    for trigger in raw_triggers if isinstance(raw_triggers, list) else []:
        cron = trigger.get("cron") if isinstance(trigger, Mapping) else None
        if isinstance(cron, str) and cron.strip():
            found.setdefault(split_cron(cron)[0], set()).add(cron.strip())
    return {spec: next(iter(raws)) for spec, raws in found.items() if len(raws) == 1}


def trigger_name(name: str) -> str:
    """The event name a trigger registered by an SDK listens to inside Stepline.

    A wildcard over Inngest's own names (``inngest/function.*``, ``inngest/*``) covers the
    engine's names for them, as on Inngest, where the system events meet triggers like
    any other (matched as written, it would hear nothing: no event is named so here).
    """
    if name in TO_STEPLINE:
        return TO_STEPLINE[name]
    if name == "inngest/*":
        return "stepline/function.*"  # of Inngest's names, only these start functions by trigger
    if name.startswith("inngest/") and name.endswith("*"):
        return "stepline/" + name[len("inngest/"):]
    return name


def to_sdk(body: Mapping[str, Any], crons: Mapping[str, str] | None = None) -> dict[str, Any]:
    """An event as the SDKs need it: string id, int ``ts``, object ``data`` and ``user``;
    a cron tick as Inngest sends it (``crons``: the function's ``declared_crons``)."""
    out: dict[str, Any] = {
        "name": TO_INNGEST.get(str(body.get("name")), str(body.get("name"))),
        "data": dict(body.get("data") or {}),
        "id": str(body.get("id") or ""),
        "ts": int(body.get("ts") or time.time() * 1000),
        "user": dict(body.get("user") or {}),
    }
    if body.get("v") is not None:
        out["v"] = body["v"]
    if out["name"] == CRON_EVENT:
        _cron_data(out["data"], crons or {})
        # Inngest's tick is named by its scheduled time (idempotent across retries and servers).
        out["id"] = str(out["data"].get("scheduledAt") or out["id"])
    error = out["data"].get("error")
    if out["name"] in TO_STEPLINE and isinstance(error, Mapping):  # a system event's error, as onFailure reads it
        out["data"]["error"] = normalize_error(dict(error))
    if out["name"] in TO_STEPLINE:  # the run's own event(s), whole, as Inngest sends them: `user` always an object
        for field in ("event", "events"):
            if field in out["data"]:
                out["data"][field] = _with_user(out["data"][field])
    return out


def _with_user(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {**value, "user": dict(value.get("user") or {})}
    if isinstance(value, list):
        return [_with_user(item) for item in value]
    return value


def _cron_data(data: dict[str, Any], crons: Mapping[str, str]) -> None:
    """Inngest's tick data: ``cron`` as declared (an app with several schedules tells them
    apart by it, ``TZ=`` included) and the tick as ``scheduledAt`` / ``fireAt`` (RFC 3339)."""
    declared = crons.get(str(data.get("cron")))
    if declared:
        data["cron"] = declared
    tick = data.get("tick")
    if isinstance(tick, int) and not isinstance(tick, bool):
        at = dt.datetime.fromtimestamp(tick / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        data.setdefault("scheduledAt", at)
        data.setdefault("fireAt", at)  # Stepline adds no jitter: it fires at the tick


def from_sdk(raw: Any) -> Any:
    """An event sent by an SDK, made acceptable to the engine's validation.

    The SDKs send ``id: ""`` and ``ts: 0`` for "not set", and TS adds ``meta``
    (``data._inngest``, the server's own, is dropped from every sender's events).
    Anything that is not an object is passed through for validation to reject.
    """
    if not isinstance(raw, Mapping):
        return raw
    out = {k: raw[k] for k in _FIELDS if k in raw and raw[k] is not None}
    if out.get("id") == "":
        del out["id"]
    if out.get("ts") in (0, 0.0):
        del out["ts"]
    if out.get("user") == {}:
        del out["user"]
    return out
