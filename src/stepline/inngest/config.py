"""An SDK's function config (from ``/fn/register``) as a Stepline ``FunctionConfig``.

Flow control maps onto Stepline's own value objects, so the engine enforces it
the same way for SDK functions as for native ones. Each SDK writes some options its
own way (TS passes them as the user wrote them: ``concurrency: 5``, an object, or a
list; PY always sends a list), so every accepted shape is read here, and anything
Stepline cannot honour is refused at sync with a message that names the field,
rather than dropped. Each stored config carries an ``inngest`` section with what the
driver needs to call the app.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from stepline import errors, shown_text
from stepline import event as event_mod
from stepline import function as fn
from stepline.inngest import durations, events

log = logging.getLogger("stepline.inngest")
T = TypeVar("T")

DEFAULT_RETRIES = 4  # Inngest's default: 4 retries, 5 attempts
MAX_RETRIES = 20
MAX_RATE_LIMIT_PERIOD = 24 * 3600.0  # Inngest refuses a longer rateLimit.period
MIN_DEBOUNCE, MAX_DEBOUNCE = 1.0, 7 * 24 * 3600.0  # Inngest refuses a debounce.period outside these

# What each option may hold; any other key is refused, naming the option.
_FIELDS: dict[str, frozenset[str]] = {
    "concurrency": frozenset({"limit", "key", "scope"}),
    "throttle": frozenset({"limit", "period", "key", "burst"}),
    "rateLimit": frozenset({"limit", "period", "key"}),
    "debounce": frozenset({"period", "key", "timeout"}),
    "batchEvents": frozenset({"maxSize", "timeout", "key", "if"}),
    "singleton": frozenset({"key", "mode"}),
    "priority": frozenset({"run"}),
    "timeouts": frozenset({"start", "finish"}),
    "cancel": frozenset({"event", "if", "timeout"}),
    "triggers": frozenset({"event", "expression", "cron", "jitter"}),
}
_TOP_LEVEL = frozenset(
    {"id", "name", "triggers", "steps", "idempotency", "cancel", "concurrency", "throttle", "rateLimit",
     "debounce", "batchEvents", "singleton", "priority", "timeouts"}
)


class _Reader:
    """Reads one registered function's options; every error names the function and field."""

    def __init__(self, slug: str) -> None:
        self.slug = slug

    def error(self, field: str, problem: str) -> errors.ConfigError:
        return errors.ConfigError(f"function {self.slug!r}: {field}: {problem}")

    def mapping(self, value: Any, field: str, kind: str) -> Mapping[str, Any] | None:
        """An option's object (None when unset), with no key Stepline does not know."""
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise self.error(field, f"expected an object, got {value!r}")
        unknown = sorted(set(value) - _FIELDS[kind])
        if unknown:
            raise self.error(
                field, f"Stepline does not support {', '.join(repr(k) for k in unknown)} here "
                f"(it reads {sorted(_FIELDS[kind])}); remove it, or the function would not behave as written"
            )
        return value

    def whole(self, value: Any, field: str, *, minimum: int = 1) -> int:
        """A whole number (a JSON number like 5.0 counts) of at least ``minimum``."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
            raise self.error(field, f"expected a whole number, got {value!r}")
        if value < minimum:
            raise self.error(field, f"expected a whole number >= {minimum}, got {value!r}")
        if value > fn.MAX_WHOLE:  # past it the stored config could not be written (a 500)
            raise self.error(field, f"expected a whole number up to {fn.MAX_WHOLE}, got {value!r}")
        return int(value)

    def text(self, value: Any, field: str) -> str | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self.error(field, f"expected a string, got {value!r}")
        return value

    def duration(self, value: Any, field: str) -> float | None:
        if value is None or value == "":
            return None
        return durations.parse_duration(value, field=f"function {self.slug!r}: {field}")

    def required_duration(self, value: Any, field: str) -> float:
        seconds = self.duration(value, field)
        if seconds is None:
            raise self.error(field, "is required (a duration like '30s')")
        return seconds

    def value(self, field: str, build: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``build(*args, **kwargs)``, a Stepline value object; its ConfigError is given the SDK's field name."""
        try:
            return build(*args, **kwargs)
        except errors.ConfigError as exc:
            raise self.error(field, str(exc)) from exc

    # --- each option -----------------------------------------------------------------

    def concurrency(self, raw: Any) -> list[fn.Concurrency]:
        """``5``, ``{"limit", "key", "scope"}``, a list of up to two such, or ``{"step": [...]}``."""
        field = "concurrency"
        if raw is None:
            return []
        if isinstance(raw, Mapping) and ("fn" in raw or "step" in raw) and "limit" not in raw:
            extra = sorted(set(raw) - {"fn", "step"})
            if extra:
                raise self.error(field, f"unknown key(s) {extra} beside 'fn'/'step'")
            if raw.get("fn"):
                raise self.error(
                    "concurrency.fn", "limits on runs in progress (sleeping and waiting ones included) are not "
                    "supported: Stepline's concurrency counts runs executing steps; use a plain limit "
                    "(concurrency: {limit, key})"
                )
            field, raw = "concurrency.step", raw.get("step") or []
        if isinstance(raw, Mapping) or (isinstance(raw, (int, float)) and not isinstance(raw, bool)):
            items, listed = [raw], False
        elif isinstance(raw, list):
            items, listed = raw, True
        else:
            raise self.error(field, f"expected a number, an object {{limit, key, scope}} or a list of them, got {raw!r}")
        if len(items) > 2:
            raise self.error(field, f"at most two limits, got {len(items)}")
        out = []
        for i, item in enumerate(items):
            where = f"{field}[{i}]" if listed else field
            if not isinstance(item, Mapping):
                item = {"limit": item}
            rule = self.mapping(item, where, "concurrency") or {}
            limit = self.whole(rule.get("limit"), f"{where}.limit", minimum=0)
            if limit == 0:
                continue  # Inngest reads 0 as "no limit"
            scope = rule.get("scope")
            scope = "fn" if scope is None else str(scope).lower() if isinstance(scope, str) else scope
            if scope not in ("fn", "env", "account"):
                raise self.error(f"{where}.scope", f"expected 'fn', 'env' or 'account', got {rule.get('scope')!r}")
            key = self.text(rule.get("key"), f"{where}.key")
            if scope != "fn" and not key:
                raise self.error(f"{where}.key", f"scope {scope!r} needs a key shared by the functions it limits together")
            out.append(self.value(where, fn.Concurrency, limit, key=key, scope=scope))
        return out

    def throttle(self, raw: Any) -> fn.Throttle | None:
        rule = self.mapping(raw, "throttle", "throttle")
        if rule is None:
            return None
        limit = max(1, self.whole(rule.get("limit"), "throttle.limit", minimum=0))  # Inngest reads 0 as 1
        period = self.required_duration(rule.get("period"), "throttle.period")
        burst = 0 if rule.get("burst") is None else self.whole(rule.get("burst"), "throttle.burst", minimum=0)
        key = self.text(rule.get("key"), "throttle.key")
        # As in Inngest, limit + burst runs start at once (PY always sends burst 1, TS none).
        return self.value("throttle", fn.Throttle, limit=limit, period=period, burst=burst or None, key=key)

    def rate_limit(self, raw: Any) -> fn.RateLimit | None:
        rule = self.mapping(raw, "rateLimit", "rateLimit")
        if rule is None:
            return None
        limit = self.whole(rule.get("limit"), "rateLimit.limit")
        period = self.required_duration(rule.get("period"), "rateLimit.period")
        if period > MAX_RATE_LIMIT_PERIOD:
            raise self.error("rateLimit.period", f"at most 24h, as in Inngest; got {rule.get('period')!r}")
        key = self.text(rule.get("key"), "rateLimit.key")
        return self.value("rateLimit", fn.RateLimit, limit=limit, period=period, key=key)

    def debounce(self, raw: Any) -> fn.Debounce | None:
        rule = self.mapping(raw, "debounce", "debounce")
        if rule is None:
            return None
        period = self.required_duration(rule.get("period"), "debounce.period")
        if not MIN_DEBOUNCE <= period <= MAX_DEBOUNCE:
            raise self.error("debounce.period", f"between 1s and 7d, as in Inngest; got {rule.get('period')!r}")
        timeout = self.duration(rule.get("timeout"), "debounce.timeout")
        key = self.text(rule.get("key"), "debounce.key")
        return self.value("debounce", fn.Debounce, period=period, key=key, timeout=timeout)

    def batch(self, raw: Any) -> fn.Batch | None:
        rule = self.mapping(raw, "batchEvents", "batchEvents")
        if rule is None:
            return None
        size = self.whole(rule.get("maxSize"), "batchEvents.maxSize", minimum=2)  # as in Inngest
        raw_timeout = rule.get("timeout")
        if isinstance(raw_timeout, str) and re.search(r"\d[dw]", raw_timeout):
            # Inngest reads this one as a Go duration, which has no days or weeks: its sync fails.
            raise self.error("batchEvents.timeout", f"{raw_timeout!r} counts days or weeks, which Inngest refuses here; "
                             "write it in hours, minutes or seconds, like '60s' or '24h' (the Python SDK writes "
                             "whole days and weeks as '1d', '1w': give it less than a day)")
        timeout = self.required_duration(raw_timeout, "batchEvents.timeout")
        key = self.text(rule.get("key"), "batchEvents.key")
        condition = self.text(rule.get("if"), "batchEvents.if")
        return self.value("batchEvents", fn.Batch, max_size=size, timeout=timeout, key=key, if_=condition)

    def singleton(self, raw: Any) -> fn.Singleton | None:
        rule = self.mapping(raw, "singleton", "singleton")
        if rule is None:
            return None
        mode = rule.get("mode") or "skip"
        if mode not in ("skip", "cancel"):
            raise self.error("singleton.mode", f"expected 'skip' or 'cancel', got {mode!r}")
        key = self.text(rule.get("key"), "singleton.key")
        return self.value("singleton", fn.Singleton, key=key, mode=mode)

    def priority(self, raw: Any) -> fn.Priority | None:
        rule = self.mapping(raw, "priority", "priority")
        run = None if rule is None else self.text(rule.get("run"), "priority.run")
        return None if run is None else self.value("priority.run", fn.Priority, run=run)

    def timeouts(self, raw: Any) -> fn.Timeouts | None:
        rule = self.mapping(raw, "timeouts", "timeouts")
        if rule is None:
            return None
        start = self.duration(rule.get("start"), "timeouts.start")
        finish = self.duration(rule.get("finish"), "timeouts.finish")
        return self.value("timeouts", fn.Timeouts, start=start, finish=finish)

    def cancel(self, raw: Any) -> list[fn.CancelOn]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise self.error("cancel", f"expected a list of {{event, if, timeout}}, got {raw!r}")
        out = []
        for i, item in enumerate(raw):
            rule = self.mapping(item, f"cancel[{i}]", "cancel") or {}
            name = self.text(rule.get("event"), f"cancel[{i}].event")
            if name is None:
                raise self.error(f"cancel[{i}].event", "is required (the event that cancels the run)")
            event_name = _bounded(events.trigger_name(name), f"function {self.slug!r}: cancel[{i}].event")
            condition = self.text(rule.get("if"), f"cancel[{i}].if")
            timeout = rule.get("timeout")
            # An RFC 3339 time (what the TS SDK sends for a Date) is when the rule stops
            # listening, for every run, as on Inngest; a duration counts from each run's start.
            moment = durations.parse_time(timeout) if isinstance(timeout, str) else None
            limit: float | dt.datetime | None = moment or (
                None if not timeout else durations.parse_duration(timeout, field=f"{self.slug}: cancel[{i}].timeout")
            )
            out.append(self.value(f"cancel[{i}]", fn.CancelOn, event_name, if_=condition, timeout=limit))
        return out

    def triggers(self, raw: Any) -> list[fn.Trigger]:
        if not isinstance(raw, list) or not raw:
            raise self.error("triggers", "expected a list with at least one trigger")
        out: list[fn.Trigger] = []
        for i, item in enumerate(raw):
            trig = self.mapping(item, f"triggers[{i}]", "triggers") or {}
            if trig.get("event"):
                name = _bounded(str(trig["event"]), f"function {self.slug!r}: triggers[{i}].event")
                expression = self.text(trig.get("expression"), f"triggers[{i}].expression")
                out.append(self.value(f"triggers[{i}]", fn.TriggerEvent, events.trigger_name(name), if_=expression))
            elif trig.get("cron"):
                if trig.get("jitter"):
                    raise self.error(
                        f"triggers[{i}].jitter", "cron jitter is not supported by Stepline; remove it "
                        "(the run starts at the tick)"
                    )
                spec, timezone = events.split_cron(str(trig["cron"]))
                if not spec.startswith("@") and len(spec.split()) != 5:
                    # Inngest refuses all but five fields. Stepline's cron reads a sixth as seconds,
                    # placed last: '0 */5 * * * *' (every 5 minutes, to whoever writes seconds
                    # first) would fire every second.
                    raise self.error(
                        f"triggers[{i}].cron", f"{spec!r} has {len(spec.split())} fields; Inngest takes five "
                        "(minute hour day month weekday), like '*/5 * * * *': no seconds"
                    )
                out.append(self.value(f"triggers[{i}].cron", fn.TriggerCron, spec, timezone=timezone))
            else:
                raise self.error(f"triggers[{i}]", f"give 'event' or 'cron', got {dict(trig)!r}")
        return out


def _bounded(text: str, field: str) -> str:
    """Names stored in indexed columns (function ids, trigger names) have the event names'
    bound, and are shown as sent: no control or bidi characters."""
    limit = event_mod.current_limits().max_name_bytes
    size = len(text.encode(errors="surrogatepass"))
    if size > limit:
        raise errors.ConfigError(
            f"{field} is {size:,} bytes, over the limit of {limit:,} bytes (STEPLINE_MAX_NAME_BYTES); use a shorter one"
        )
    shown = shown_text.problem(text)
    if shown is not None:
        raise errors.ConfigError(f"{field} {shown}; remove it (names and ids are plain text)")
    return text


def _retries(step: Mapping[str, Any], reader: _Reader) -> int:
    """Retries as Inngest counts them (default 4), clamped to 0..20 as it does."""
    attempts = _object(step.get("retries"), reader.slug, "steps.step.retries").get("attempts")
    if attempts is None:
        return DEFAULT_RETRIES
    if isinstance(attempts, (int, float)) and not isinstance(attempts, bool) and attempts < 0:
        return 0
    return min(MAX_RETRIES, reader.whole(attempts, "steps.step.retries.attempts", minimum=0))


def _object(value: Any, slug: str, field: str) -> Mapping[str, Any]:
    """A part of a registration that must be an object ({} when unset), else a ConfigError
    naming it: a value of another type reached a ``.get`` and failed the sync with a 500."""
    if not value:
        return {}
    if not isinstance(value, Mapping):
        raise errors.ConfigError(f"function {slug!r}: {field}: expected an object, got {repr(value)[:80]}")
    return value


def _step(raw: Mapping[str, Any], slug: str) -> Mapping[str, Any]:
    """The function's one step (``steps.step``, else the first), as the SDKs declare it."""
    steps = _object(raw.get("steps"), slug, "steps")
    step = steps.get("step") or (next(iter(steps.values())) if steps else None)
    return _object(step, slug, "steps.step")


def step_url(raw: Mapping[str, Any], slug: str) -> str:
    url = _object(_step(raw, slug).get("runtime"), slug, "steps.step.runtime").get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise errors.ConfigError(f"function {slug!r}: steps.step.runtime.url must be an http(s) URL, got {url!r}")
    return url


def build(raw: Mapping[str, Any], *, app: str, notes: list[str]) -> fn.FunctionConfig:
    """The Stepline config of one SDK function; ConfigError says which field is wrong."""
    _bounded(app, "the app name")
    if not isinstance(raw, Mapping):
        raise errors.ConfigError(f"each function of app {app!r} must be a JSON object, got {repr(raw)[:80]}")
    slug = raw.get("id")
    if not isinstance(slug, str) or not slug:
        raise errors.ConfigError(f"a function of app {app!r} has no id")
    _bounded(slug, f"the function id {slug[:60]!r}{'...' if len(slug) > 60 else ''}")
    read = _Reader(slug)
    unknown = sorted(k for k, v in raw.items() if k not in _TOP_LEVEL and v is not None)
    if unknown:
        raise read.error(
            ", ".join(unknown), "not supported by Stepline; remove it, or the function would not behave as written"
        )
    step = _step(raw, slug)
    step_url(raw, slug)  # validated here, read again when stored
    triggers = read.triggers(raw.get("triggers"))
    failure_for = None
    if slug.endswith("-failure") and any(
        isinstance(t, fn.TriggerEvent) and t.event == events.trigger_name("inngest/function.failed") for t in triggers
    ):
        failure_for = slug[: -len("-failure")]
    idempotency = read.text(raw.get("idempotency"), "idempotency")
    rate = read.rate_limit(raw.get("rateLimit"))
    if idempotency and rate:
        notes.append(f"{slug}: idempotency overrides rateLimit, as in Inngest; the rate limit is not applied")
        rate = None
    cancel, debounce, priority = read.cancel(raw.get("cancel")), read.debounce(raw.get("debounce")), read.priority(raw.get("priority"))
    batch, singleton = read.batch(raw.get("batchEvents")), read.singleton(raw.get("singleton"))
    clashing = [name for name, value in (("cancel", cancel), ("debounce", debounce), ("singleton", singleton),
                                         ("priority.run", priority)) if value]
    if batch and clashing:
        raise read.error("batchEvents", f"cannot be combined with {' or '.join(clashing)}, as in Inngest (a batched run holds many events)")
    if len(cancel) > fn.MAX_CANCEL_RULES:
        raise read.error("cancel", f"at most {fn.MAX_CANCEL_RULES} rules, as in Inngest; got {len(cancel)}")
    return fn.build_config(
        app_id=app,
        id=slug,
        name=str(raw.get("name") or slug),
        trigger=triggers,
        retries=_retries(step, read),
        cancel_on=cancel or None,
        idempotency=idempotency,
        timeouts=read.timeouts(raw.get("timeouts")),
        concurrency=read.concurrency(raw.get("concurrency")) or None,
        throttle=read.throttle(raw.get("throttle")),
        rate_limit=rate,
        debounce=debounce,
        priority=priority,
        batch_events=batch,
        singleton=singleton,
        failure_handler_for=failure_for,
    )


def to_stored(raw: Mapping[str, Any], *, app: str, meta: fn.AppRegistration, notes: list[str]) -> fn.StoredConfig:
    """The config as the store keeps it, with the ``inngest`` section the driver reads."""
    config = build(raw, app=app, notes=notes)
    stored = config.to_dict()
    section: fn.InngestMeta = {
        "app": app,
        "slug": config.id,
        "url": step_url(raw, config.id),
        "retries": config.retries,
        "failure_for": config.failure_handler_for,
        "raw": dict(raw),
    }
    stored["inngest"] = {**meta, **section}  # the registration's keys first
    return stored
