"""An SDK's function config (from ``/fn/register``) as a Stepline ``FunctionConfig``.

Flow control maps onto Stepline's own value objects, so the engine enforces it
the same way for SDK functions as for native ones. Each stored config carries an
``inngest`` section with what the driver needs to call the app.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from stepline import errors
from stepline import event as event_mod
from stepline import function as fn
from stepline.inngest import durations, events

log = logging.getLogger("stepline.inngest")

DEFAULT_RETRIES = 4  # Inngest's default: 4 retries, 5 attempts
MAX_RETRIES = 20


def _dur(value: Any, field: str) -> float | None:
    if value is None or value == "":
        return None
    return durations.parse_duration(value, field=field)


def _bounded(text: str, field: str) -> str:
    """Names stored in indexed columns (function ids, trigger names) have the event names' bound."""
    limit = event_mod.current_limits().max_name_bytes
    size = len(text.encode(errors="surrogatepass"))
    if size > limit:
        raise errors.ConfigError(
            f"{field} is {size:,} bytes, over the limit of {limit:,} bytes (STEPLINE_MAX_NAME_BYTES); use a shorter one"
        )
    return text


def _triggers(raw: Any, slug: str, notes: list[str]) -> list[fn.Trigger]:
    if not isinstance(raw, list) or not raw:
        raise errors.ConfigError(f"function {slug!r}: triggers: expected a list with at least one trigger")
    out: list[fn.Trigger] = []
    for i, trig in enumerate(raw):
        if not isinstance(trig, Mapping):
            raise errors.ConfigError(f"function {slug!r}: triggers[{i}]: expected an object, got {trig!r}")
        if trig.get("event"):
            name = _bounded(str(trig["event"]), f"function {slug!r}: triggers[{i}].event")
            out.append(fn.TriggerEvent(events.trigger_name(name), if_=trig.get("expression") or None))
        elif trig.get("cron"):
            spec, timezone = str(trig["cron"]).strip(), "UTC"
            head, _, rest = spec.partition(" ")
            if head.startswith(("TZ=", "CRON_TZ=")):
                timezone, spec = head.split("=", 1)[1], rest.strip()
            if trig.get("jitter"):
                notes.append(f"{slug}: cron jitter is ignored")
            out.append(fn.TriggerCron(spec, timezone=timezone))
        else:
            raise errors.ConfigError(f"function {slug!r}: triggers[{i}]: give 'event' or 'cron', got {dict(trig)!r}")
    return out


def _concurrency(raw: Any, slug: str) -> list[fn.Concurrency]:
    if raw is None or raw == []:
        return []
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = [{"limit": raw}]
    elif isinstance(raw, Mapping):
        raw = list(raw.get("fn") or [])
    out = []
    for item in raw:
        if isinstance(item, int):
            item = {"limit": item}
        limit = int(item.get("limit") or 0)
        if limit <= 0:
            continue  # Inngest reads 0 as "no limit"
        scope = "env" if item.get("scope") in ("env", "account") else "fn"
        out.append(fn.Concurrency(limit, key=item.get("key") or None, scope=scope))
    return out


def _retries(step: Mapping[str, Any]) -> int:
    attempts = (step.get("retries") or {}).get("attempts")
    if attempts is None:
        return DEFAULT_RETRIES
    return max(0, min(MAX_RETRIES, int(attempts)))


def step_url(raw: Mapping[str, Any], slug: str) -> str:
    steps = raw.get("steps") or {}
    step = steps.get("step") or (next(iter(steps.values())) if steps else None)
    url = ((step or {}).get("runtime") or {}).get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise errors.ConfigError(f"function {slug!r}: steps.step.runtime.url must be an http(s) URL, got {url!r}")
    return url


def build(raw: Mapping[str, Any], *, app: str, notes: list[str]) -> fn.FunctionConfig:
    """The Stepline config of one SDK function; ConfigError says which field is wrong."""
    _bounded(app, "the app name")
    slug = raw.get("id")
    if not isinstance(slug, str) or not slug:
        raise errors.ConfigError(f"a function of app {app!r} has no id")
    _bounded(slug, f"the function id {slug[:60]!r}{'...' if len(slug) > 60 else ''}")
    step = (raw.get("steps") or {}).get("step") or {}
    step_url(raw, slug)  # validated here, read again when stored
    triggers = _triggers(raw.get("triggers"), slug, notes)
    failure_for = None
    if slug.endswith("-failure") and any(
        isinstance(t, fn.TriggerEvent) and t.event == events.trigger_name("inngest/function.failed") for t in triggers
    ):
        failure_for = slug[: -len("-failure")]
    throttle = raw.get("throttle")
    rate = raw.get("rateLimit")
    debounce = raw.get("debounce")
    batch = raw.get("batchEvents")
    timeouts = raw.get("timeouts")
    singleton = raw.get("singleton")
    if raw.get("idempotency") and rate:
        notes.append(f"{slug}: idempotency overrides rateLimit, as in Inngest; the rate limit is not applied")
        rate = None
    if batch and batch.get("if"):
        notes.append(f"{slug}: batchEvents.if is not supported yet; every event is batched")
    cancel = []
    for i, rule in enumerate(raw.get("cancel") or []):
        timeout = rule.get("timeout")
        cancel.append(
            fn.CancelOn(
                _bounded(events.trigger_name(str(rule.get("event"))), f"function {slug!r}: cancel[{i}].event"),
                if_=rule.get("if") or None,
                timeout=None if not timeout else durations.seconds_until(timeout, field=f"{slug}: cancel[{i}].timeout"),
            )
        )
    retries = _retries(step)
    return fn.build_config(
        app_id=app,
        id=slug,
        name=str(raw.get("name") or slug),
        trigger=triggers,
        retries=retries,
        cancel_on=cancel or None,
        idempotency=raw.get("idempotency") or None,
        timeouts=None
        if not timeouts
        else fn.Timeouts(start=_dur(timeouts.get("start"), "timeouts.start"), finish=_dur(timeouts.get("finish"), "timeouts.finish")),
        concurrency=_concurrency(raw.get("concurrency"), slug) or None,
        throttle=None
        if not throttle
        else fn.Throttle(
            limit=int(throttle["limit"]),
            period=_dur(throttle.get("period"), "throttle.period") or 0,
            # Inngest's burst counts the first run (1, PY's default, means no bursting).
            burst=int(throttle["burst"]) - 1 if int(throttle.get("burst") or 0) > 1 else None,
            key=throttle.get("key") or None,
        ),
        rate_limit=None
        if not rate
        else fn.RateLimit(limit=int(rate["limit"]), period=_dur(rate.get("period"), "rateLimit.period") or 0, key=rate.get("key") or None),
        debounce=None
        if not debounce
        else fn.Debounce(
            period=_dur(debounce.get("period"), "debounce.period") or 0,
            key=debounce.get("key") or None,
            timeout=_dur(debounce.get("timeout"), "debounce.timeout"),
        ),
        priority=None if not (raw.get("priority") or {}).get("run") else fn.Priority(run=raw["priority"]["run"]),
        batch_events=None
        if not batch
        else fn.Batch(max_size=int(batch["maxSize"]), timeout=_dur(batch.get("timeout"), "batchEvents.timeout") or 0, key=batch.get("key") or None),
        singleton=None
        if not singleton
        else fn.Singleton(key=singleton.get("key") or None, mode=singleton.get("mode") or "skip"),
        failure_handler_for=failure_for,
    )


def to_stored(raw: Mapping[str, Any], *, app: str, meta: Mapping[str, Any], notes: list[str]) -> fn.StoredConfig:
    """The config as the store keeps it, with the ``inngest`` section the driver reads."""
    config = build(raw, app=app, notes=notes)
    stored = config.to_dict()
    stored["inngest"] = {
        **meta,
        "app": app,
        "slug": config.id,
        "url": step_url(raw, config.id),
        "retries": config.retries,
        "failure_for": config.failure_handler_for,
        "raw": dict(raw),
    }
    return stored
