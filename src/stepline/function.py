"""Function declarations: triggers and config objects, validated when declared.

Every config object is frozen and keyword-only, and ``to_dict`` gives the
JSON form the store keeps, so a process without the function's code (an API
server) can still match triggers and apply flow control.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import inspect
import re
import zoneinfo
from collections.abc import Callable, Sequence
from typing import Any, Literal, Required, TypedDict

from croniter import croniter

from stepline import durations, errors, expressions, shown_text

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")
MAX_CANCEL_RULES = 5  # as on Inngest


# The largest limit, size or count a config takes: the largest whole number a JSON number
# carries exactly. A larger one could not be stored (64 bits at most) and failed the sync.
MAX_WHOLE = 2**53 - 1


def _positive_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_WHOLE:
        raise errors.ConfigError(f"{field}: expected a whole number 1..{MAX_WHOLE}, got {value!r}")
    return value


def _optional_expr(value: str | None, field: str) -> str | None:
    return None if value is None else expressions.check(value, field=field)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TriggerEvent:
    """Start a run for each event named ``event`` (``if_`` filters with CEL).

    ``app/*`` or ``app/user.*`` match every event whose name starts with that prefix.
    """

    event: str
    if_: str | None = None

    def __init__(self, event: str, *, if_: str | None = None) -> None:
        if not isinstance(event, str) or not event.strip():
            raise errors.ConfigError(f"TriggerEvent.event: expected an event name, got {event!r}")
        if "*" in event and (event.count("*") > 1 or not event.endswith(("/*", ".*"))):
            raise errors.ConfigError(
                f"TriggerEvent.event: {event!r}: a wildcard stands alone at the end, after '/' or '.', "
                "like 'app/*' or 'app/user.*'"
            )
        object.__setattr__(self, "event", event)
        object.__setattr__(self, "if_", _optional_expr(if_, "TriggerEvent.if_"))

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.event, "expression": self.if_}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TriggerCron:
    """Start a run on a cron schedule (one run per tick across all processes).

    After downtime, missed ticks collapse into a single catch-up run.
    """

    cron: str
    timezone: str = "UTC"

    def __init__(self, cron: str, *, timezone: str = "UTC") -> None:
        if not isinstance(cron, str) or not croniter.is_valid(cron):
            raise errors.ConfigError(
                f"TriggerCron.cron: {cron!r} is not a cron expression; write five fields "
                "like '*/5 * * * *' (minute hour day month weekday)"
            )
        try:
            zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise errors.ConfigError(
                f"TriggerCron.timezone: unknown time zone {timezone!r}; use an IANA name "
                "like 'UTC' or 'Europe/Paris'"
            ) from exc
        object.__setattr__(self, "cron", cron)
        object.__setattr__(self, "timezone", timezone)

    def to_dict(self) -> dict[str, Any]:
        return {"cron": self.cron, "timezone": self.timezone}


Trigger = TriggerEvent | TriggerCron


@dataclasses.dataclass(frozen=True, kw_only=True)
class CancelOn:
    """Cancel a run when ``event`` arrives and matches (``match`` field or CEL ``if_``).
    ``timeout``: how long after the run starts the rule listens, or a datetime until which
    it listens for every run (``until_ms``), as Inngest reads a time there."""

    event: str
    match: str | None = None
    if_: str | None = None
    timeout: float | None = None
    until_ms: int | None = None

    def __init__(
        self,
        event: str,
        *,
        match: str | None = None,
        if_: str | None = None,
        timeout: durations.Duration | dt.datetime | None = None,
    ) -> None:
        if not isinstance(event, str) or not event.strip():
            raise errors.ConfigError(f"CancelOn.event: expected an event name, got {event!r}")
        if match is not None and if_ is not None:
            raise errors.ConfigError("CancelOn: give either match= or if_=, not both")
        object.__setattr__(self, "event", event)
        object.__setattr__(self, "match", match)
        object.__setattr__(self, "if_", _optional_expr(if_, "CancelOn.if_"))
        if isinstance(timeout, dt.datetime):
            moment = timeout if timeout.tzinfo is not None else timeout.replace(tzinfo=dt.UTC)
            object.__setattr__(self, "until_ms", int(moment.timestamp() * 1000))
        else:
            object.__setattr__(
                self, "timeout", None if timeout is None else durations.parse(timeout, field="CancelOn.timeout")
            )
        if match is not None:
            expressions.check(expressions.match_to_expression(match), field="CancelOn.match")

    @property
    def expression(self) -> str | None:
        if self.match is not None:
            return expressions.match_to_expression(self.match)
        return self.if_

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.event, "expression": self.expression, "timeout": self.timeout}
        if self.until_ms is not None:
            out["until_ms"] = self.until_ms
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class Timeouts:
    """``start``: cancel a run not started within this long; ``finish``: not finished."""

    start: float | None = None
    finish: float | None = None

    def __init__(
        self, *, start: durations.Duration | None = None, finish: durations.Duration | None = None
    ) -> None:
        object.__setattr__(
            self, "start", None if start is None else durations.parse(start, field="Timeouts.start")
        )
        object.__setattr__(
            self, "finish", None if finish is None else durations.parse(finish, field="Timeouts.finish")
        )

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "finish": self.finish}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Concurrency:
    """At most ``limit`` runs executing steps at once, per ``key`` value if given.

    ``scope="env"`` shares the cap with every function using the same key; so does
    ``scope="account"``, apart from the ``env`` caps (Inngest's two scopes: a key value
    limited in one is not limited by the other).
    """

    limit: int
    key: str | None = None
    scope: Literal["fn", "env", "account"] = "fn"

    def __init__(self, limit: int, *, key: str | None = None, scope: str = "fn") -> None:
        object.__setattr__(self, "limit", _positive_int(limit, "Concurrency.limit"))
        object.__setattr__(self, "key", _optional_expr(key, "Concurrency.key"))
        if scope not in ("fn", "env", "account"):
            raise errors.ConfigError(f"Concurrency.scope: expected 'fn', 'env' or 'account', got {scope!r}")
        if scope != "fn" and key is None:
            raise errors.ConfigError(f"Concurrency: scope={scope!r} needs a key shared by the functions")
        object.__setattr__(self, "scope", scope)

    def to_dict(self) -> dict[str, Any]:
        return {"limit": self.limit, "key": self.key, "scope": self.scope}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Throttle:
    """At most ``limit`` run starts per ``period`` (plus ``burst``), per key; excess waits."""

    limit: int
    period: float
    burst: int | None = None
    key: str | None = None

    def __init__(
        self, *, limit: int, period: durations.Duration, burst: int | None = None, key: str | None = None
    ) -> None:
        object.__setattr__(self, "limit", _positive_int(limit, "Throttle.limit"))
        seconds = durations.parse(period, field="Throttle.period")
        if seconds <= 0:
            raise errors.ConfigError("Throttle.period: must be longer than zero")
        object.__setattr__(self, "period", seconds)
        object.__setattr__(self, "burst", None if burst is None else _positive_int(burst, "Throttle.burst"))
        object.__setattr__(self, "key", _optional_expr(key, "Throttle.key"))

    def to_dict(self) -> dict[str, Any]:
        return {"limit": self.limit, "period": self.period, "burst": self.burst, "key": self.key}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RateLimit:
    """At most ``limit`` runs started per ``period`` per key; excess events start none."""

    limit: int
    period: float
    key: str | None = None

    def __init__(self, *, limit: int, period: durations.Duration, key: str | None = None) -> None:
        object.__setattr__(self, "limit", _positive_int(limit, "RateLimit.limit"))
        seconds = durations.parse(period, field="RateLimit.period")
        if seconds <= 0:
            raise errors.ConfigError("RateLimit.period: must be longer than zero")
        object.__setattr__(self, "period", seconds)
        object.__setattr__(self, "key", _optional_expr(key, "RateLimit.key"))

    def to_dict(self) -> dict[str, Any]:
        return {"limit": self.limit, "period": self.period, "key": self.key}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Debounce:
    """Start one run ``period`` after the last matching event, with that event."""

    period: float
    key: str | None = None
    timeout: float | None = None

    def __init__(
        self,
        *,
        period: durations.Duration,
        key: str | None = None,
        timeout: durations.Duration | None = None,
    ) -> None:
        seconds = durations.parse(period, field="Debounce.period")
        if seconds <= 0:
            raise errors.ConfigError("Debounce.period: must be longer than zero")
        object.__setattr__(self, "period", seconds)
        object.__setattr__(self, "key", _optional_expr(key, "Debounce.key"))
        object.__setattr__(
            self, "timeout", None if timeout is None else durations.parse(timeout, field="Debounce.timeout")
        )

    def to_dict(self) -> dict[str, Any]:
        return {"period": self.period, "key": self.key, "timeout": self.timeout}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Priority:
    """``run``: CEL giving seconds (clamped to -43200..43200) to move a run ahead (+) or behind (-)."""

    run: str

    def __init__(self, *, run: str) -> None:
        object.__setattr__(self, "run", expressions.check(run, field="Priority.run"))

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Batch:
    """Deliver up to ``max_size`` events (or what arrived within ``timeout``) to one run.

    ``if_``: CEL over ``event``; an event for which it is false (or fails) is not
    batched: it starts a run of its own at once.
    """

    max_size: int
    timeout: float
    key: str | None = None
    if_: str | None = None

    def __init__(
        self, *, max_size: int, timeout: durations.Duration, key: str | None = None, if_: str | None = None
    ) -> None:
        object.__setattr__(self, "max_size", _positive_int(max_size, "Batch.max_size"))
        seconds = durations.parse(timeout, field="Batch.timeout")
        if seconds <= 0:
            raise errors.ConfigError("Batch.timeout: must be longer than zero")
        object.__setattr__(self, "timeout", seconds)
        object.__setattr__(self, "key", _optional_expr(key, "Batch.key"))
        object.__setattr__(self, "if_", _optional_expr(if_, "Batch.if_"))

    def to_dict(self) -> dict[str, Any]:
        return {"max_size": self.max_size, "timeout": self.timeout, "key": self.key, "if": self.if_}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Singleton:
    """At most one run per key: a new one is skipped, or cancels the running one."""

    key: str | None = None
    mode: Literal["skip", "cancel"] = "skip"

    def __init__(self, *, key: str | None = None, mode: str = "skip") -> None:
        object.__setattr__(self, "key", _optional_expr(key, "Singleton.key"))
        if mode not in ("skip", "cancel"):
            raise errors.ConfigError(f"Singleton.mode: expected 'skip' or 'cancel', got {mode!r}")
        object.__setattr__(self, "mode", mode)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "mode": self.mode}


# A budget's name goes in URLs (/api/v1/budgets/{name}/{key}): no '/'.
_BUDGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_FIELD_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
MONTH = "month"  # Budget.period: calendar months (UTC)


def _period_label(period: float | str) -> str:
    if isinstance(period, str):
        return period
    for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
        if period % seconds == 0:
            return f"{int(period // seconds)}{unit}"
    return f"{period:g}s"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Budget:
    """Cap what ``ai.infer`` steps spend per ``period`` (per ``key`` value if given).

    ``limit_usd`` (a number, or CEL over ``event`` giving one) and/or ``limit_tokens``
    (prompt + completion). Each call reserves its worst case before it starts and
    settles to its actual cost after. ``on_exceeded="pause"``: the run waits (no slot
    held) until the period ends or the limit is raised; ``"fail"``: the step fails
    with ``BudgetExceeded``. ``scope="app"`` shares one spend among the app's functions
    that declare a budget of the same ``name`` (budgets given to ``App(budgets=...)``
    are app-scoped unless they say otherwise, and apply to every function).
    ``period``: a duration (windows of that length, days starting at 00:00 UTC) or
    ``"month"`` (calendar months, UTC). ``name`` defaults to
    ``<function or app id>:<period>[:<key field>]``.
    """

    limit_usd: float | str | None = None
    limit_tokens: int | None = None
    period: float | str
    key: str | None = None
    scope: Literal["fn", "app"] | None = None
    on_exceeded: Literal["pause", "fail"] = "pause"
    name: str | None = None

    def __init__(
        self,
        *,
        limit_usd: float | str | None = None,
        limit_tokens: int | None = None,
        period: durations.Duration,
        key: str | None = None,
        scope: str | None = None,
        on_exceeded: str = "pause",
        name: str | None = None,
    ) -> None:
        if limit_usd is None and limit_tokens is None:
            raise errors.ConfigError("Budget: give limit_usd, limit_tokens, or both")
        if isinstance(limit_usd, str):
            expressions.check(limit_usd, field="Budget.limit_usd")
        elif limit_usd is not None and (
            isinstance(limit_usd, bool) or not isinstance(limit_usd, (int, float)) or not 0 <= limit_usd < float("inf")
        ):
            raise errors.ConfigError(
                f"Budget.limit_usd: expected US dollars >= 0 or a CEL expression giving them, got {limit_usd!r}"
            )
        if limit_tokens is not None:
            _positive_int(limit_tokens, "Budget.limit_tokens")
        if period == MONTH:
            seconds: float | str = MONTH
        else:
            seconds = durations.parse(period, field="Budget.period")
            if seconds < 1:
                raise errors.ConfigError(f"Budget.period: expected at least one second, or 'month', got {period!r}")
        if scope not in (None, "fn", "app"):
            raise errors.ConfigError(f"Budget.scope: expected 'fn' or 'app', got {scope!r}")
        if on_exceeded not in ("pause", "fail"):
            raise errors.ConfigError(f"Budget.on_exceeded: expected 'pause' or 'fail', got {on_exceeded!r}")
        if name is not None and (not isinstance(name, str) or not _BUDGET_NAME.fullmatch(name)):
            raise errors.ConfigError(
                f"Budget.name: {name!r}: use 1-128 letters, digits, '-', '_', '.' or ':' (it appears in URLs)"
            )
        object.__setattr__(self, "limit_usd", float(limit_usd) if isinstance(limit_usd, (int, float)) else limit_usd)
        object.__setattr__(self, "limit_tokens", limit_tokens)
        object.__setattr__(self, "period", seconds)
        object.__setattr__(self, "key", _optional_expr(key, "Budget.key"))
        object.__setattr__(self, "scope", scope)
        object.__setattr__(self, "on_exceeded", on_exceeded)
        object.__setattr__(self, "name", name)

    def resolved(self, *, function_id: str, app_id: str, default_scope: Literal["fn", "app"]) -> Budget:
        """This budget with its scope and name filled in for one function."""
        scope = self.scope or default_scope
        if self.name is not None:
            name = self.name
        else:
            owner = (app_id if scope == "app" else function_id).replace("/", ".")
            name = f"{owner}:{_period_label(self.period)}"
            if self.key is not None:
                field = self.key.strip()
                name += ":" + (field.rsplit(".", 1)[-1] if _FIELD_PATH.fullmatch(field) else "key-" + _short_hash(field))
            name = name[:128]
        return dataclasses.replace(self, scope=scope, name=name)

    def to_dict(self) -> StoredBudget:
        """The budget as stored, once ``resolved`` has named it."""
        assert self.name is not None, "Budget.to_dict: resolve the budget first (Budget.resolved names it)"
        return {
            "name": self.name,
            "limit_usd": self.limit_usd,
            "limit_tokens": self.limit_tokens,
            "period": self.period,
            "key": self.key,
            "scope": self.scope,
            "on_exceeded": self.on_exceeded,
        }


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


Handler = Callable[..., Any]


class StoredBudget(TypedDict):
    """A ``Budget`` as its function's stored config keeps it (``Budget.to_dict()``)."""

    name: str
    limit_usd: float | str | None  # US dollars, or CEL over ``event``
    limit_tokens: int | None
    period: float | str  # seconds, or "month"
    key: str | None
    scope: str | None  # fn | app
    on_exceeded: str  # pause | fail


class StoredConfig(TypedDict, total=False):
    """A function's config as the store keeps it and reads it back (JSON in ``functions``):
    ``FunctionConfig.to_dict()``, or an SDK app's function (with its ``inngest`` section)."""

    id: Required[str]
    app_id: Required[str]
    name: str
    triggers: list[dict[str, Any]]  # {"event", "expression"} or {"cron", "timezone"}
    retries: int
    cancel_on: list[dict[str, Any]]
    idempotency: str | None
    timeouts: dict[str, Any] | None
    concurrency: list[dict[str, Any]]
    throttle: dict[str, Any] | None
    rate_limit: dict[str, Any] | None
    debounce: dict[str, Any] | None
    priority: dict[str, Any] | None
    batch_events: dict[str, Any] | None
    singleton: dict[str, Any] | None
    budgets: list[StoredBudget]  # names and scopes resolved
    failure_handler_for: str | None
    retention: float | None  # seconds a finished run is kept; None: STEPLINE_RETENTION
    inngest: InngestMeta  # SDK apps only: the app, its URL, the registration it came from


class AppRegistration(TypedDict, total=False):
    """What an SDK app's registration says of the app, kept with each of its functions."""

    app_url: str
    sdk: Any
    framework: Any
    checksum: str  # of the registration, to tell an unchanged one


class InngestMeta(AppRegistration, total=False):
    """The ``inngest`` section of an SDK app's stored function: what the driver calls."""

    app: Required[str]
    slug: Required[str]
    url: Required[str]  # the serve URL the driver calls for this function
    retries: Required[int]
    failure_for: Required[str | None]
    raw: Required[dict[str, Any]]  # the function as the SDK registered it
    archived: bool  # dropped by its app's latest registration: no triggers, no schedules


@dataclasses.dataclass(frozen=True, kw_only=True)
class FunctionConfig:
    """Everything about a function except its code; stored as JSON by the engine."""

    id: str
    app_id: str
    name: str
    triggers: tuple[Trigger, ...]
    retries: int = 4
    cancel_on: tuple[CancelOn, ...] = ()
    idempotency: str | None = None
    timeouts: Timeouts | None = None
    concurrency: tuple[Concurrency, ...] = ()
    throttle: Throttle | None = None
    rate_limit: RateLimit | None = None
    debounce: Debounce | None = None
    priority: Priority | None = None
    batch_events: Batch | None = None
    singleton: Singleton | None = None
    budgets: tuple[Budget, ...] = ()  # the function's and its app's, resolved
    failure_handler_for: str | None = None  # set on the hidden function that runs on_failure
    retention: float | None = None  # seconds its finished runs are kept (None: STEPLINE_RETENTION)

    def to_dict(self) -> StoredConfig:
        def opt(value: Any) -> Any:
            return None if value is None else value.to_dict()

        return {
            "id": self.id,
            "app_id": self.app_id,
            "name": self.name,
            "triggers": [t.to_dict() for t in self.triggers],
            "retries": self.retries,
            "cancel_on": [c.to_dict() for c in self.cancel_on],
            "idempotency": self.idempotency,
            "timeouts": opt(self.timeouts),
            "concurrency": [c.to_dict() for c in self.concurrency],
            "throttle": opt(self.throttle),
            "rate_limit": opt(self.rate_limit),
            "debounce": opt(self.debounce),
            "priority": opt(self.priority),
            "batch_events": opt(self.batch_events),
            "singleton": opt(self.singleton),
            "budgets": [b.to_dict() for b in self.budgets],
            "failure_handler_for": self.failure_handler_for,
            "retention": self.retention,
        }


@dataclasses.dataclass(frozen=True)
class Function:
    """A declared function: its config and its handler (``async def`` or ``def``)."""

    config: FunctionConfig
    handler: Handler
    # A native ``on_failure`` handler: it runs once per failed run, never retried as a whole.
    # An SDK app's ``<id>-failure`` function is retried as its registration says (TS: once).
    runs_once: bool = False

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.handler(*args, **kwargs)


def _resolve_budgets(
    function_id: str, app_id: str, own: Budget | Sequence[Budget] | None, app_budgets: Sequence[Budget]
) -> tuple[Budget, ...]:
    """The function's budgets (scope "fn" unless told) then its app's (scope "app" unless told),
    named; two budgets of one function must not share a name."""
    declared = () if own is None else one_or_many(own, Budget, f"{function_id}: budgets")
    resolved = [b.resolved(function_id=function_id, app_id=app_id, default_scope="fn") for b in declared]
    resolved += [b.resolved(function_id=function_id, app_id=app_id, default_scope="app") for b in app_budgets]
    seen: set[str] = set()
    for budget in resolved:
        if budget.name in seen:
            raise errors.ConfigError(
                f"{function_id}: two budgets are named {budget.name!r}; give one of them another name= "
                "(or another period or key)"
            )
        seen.add(budget.name or "")
    return tuple(resolved)


def one_or_many(value: Any, kind: type | tuple[type, ...], field: str) -> tuple[Any, ...]:
    items = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else (value,)
    for item in items:
        if not isinstance(item, kind):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise errors.ConfigError(f"{field}: expected {names}, got {item!r}")
    return items


def _retention(function_id: str, value: durations.Duration | None) -> float | None:
    if value is None:
        return None
    seconds = durations.parse(value, field=f"{function_id}: retention")
    if seconds <= 0:
        raise errors.ConfigError(
            f"{function_id}: retention: must be longer than zero, got {value!r}; leave it out to keep "
            "finished runs for STEPLINE_RETENTION"
        )
    return seconds


def build_config(
    *,
    app_id: str,
    id: str,
    name: str | None,
    trigger: Trigger | Sequence[Trigger],
    retries: int,
    cancel_on: CancelOn | Sequence[CancelOn] | None,
    idempotency: str | None,
    timeouts: Timeouts | None,
    concurrency: Concurrency | Sequence[Concurrency] | None,
    throttle: Throttle | None,
    rate_limit: RateLimit | None,
    debounce: Debounce | None,
    priority: Priority | None,
    batch_events: Batch | None,
    singleton: Singleton | None,
    retention: durations.Duration | None = None,
    failure_handler_for: str | None = None,
    budgets: Budget | Sequence[Budget] | None = None,
    app_budgets: Sequence[Budget] = (),
) -> FunctionConfig:
    """Validate every field of a declaration; errors name the field and the fix."""
    if not isinstance(id, str) or not _ID.fullmatch(id):
        raise errors.ConfigError(
            f"function id {id!r}: use 1-128 letters, digits, '-', '_', '.', ':' or '/'"
        )
    for field, text in (("app id", app_id), ("name", name)):
        problem = shown_text.problem(text) if isinstance(text, str) else None
        if problem is not None and text is not None:
            raise errors.ConfigError(f"{id}: {field} {text[:60]!r} {problem}; use plain text, like {id!r}")
    triggers = one_or_many(trigger, (TriggerEvent, TriggerCron), f"{id}: trigger")
    if not triggers:
        raise errors.ConfigError(f"{id}: trigger: give at least one TriggerEvent or TriggerCron")
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 20:
        raise errors.ConfigError(f"{id}: retries: expected a whole number 0..20, got {retries!r}")
    concurrency_items = () if concurrency is None else one_or_many(concurrency, Concurrency, f"{id}: concurrency")
    if len(concurrency_items) > 2:
        raise errors.ConfigError(f"{id}: concurrency: at most two limits, got {len(concurrency_items)}")
    checks: list[tuple[str, Any, type]] = [
        ("timeouts", timeouts, Timeouts),
        ("throttle", throttle, Throttle),
        ("rate_limit", rate_limit, RateLimit),
        ("debounce", debounce, Debounce),
        ("priority", priority, Priority),
        ("batch_events", batch_events, Batch),
        ("singleton", singleton, Singleton),
    ]
    for field, value, kind in checks:
        if value is not None and not isinstance(value, kind):
            raise errors.ConfigError(f"{id}: {field}: expected stepline.{kind.__name__}, got {value!r}")
    if batch_events is not None and any(isinstance(t, TriggerCron) for t in triggers):
        raise errors.ConfigError(f"{id}: batch_events works with event triggers only")
    cancels = () if cancel_on is None else one_or_many(cancel_on, CancelOn, f"{id}: cancel_on")
    if batch_events is not None:
        # As on Inngest: each of these acts on one event of a run that holds many (a
        # debounce would keep only the last event of what the batch gathered).
        clashing = [name for name, value in (("debounce", debounce), ("cancel_on", cancels), ("singleton", singleton),
                                             ("priority", priority)) if value]
        if clashing:
            raise errors.ConfigError(
                f"{id}: batch_events cannot be combined with {' or '.join(clashing)} (a batched run holds many "
                "events, these act on one); drop one of them, as Inngest requires"
            )
    if len(cancels) > MAX_CANCEL_RULES:
        raise errors.ConfigError(f"{id}: cancel_on: at most {MAX_CANCEL_RULES} rules, as on Inngest; got {len(cancels)}")
    budget_items = _resolve_budgets(id, app_id, budgets, app_budgets)
    return FunctionConfig(
        id=id,
        app_id=app_id,
        name=name or id,
        triggers=triggers,
        retries=retries,
        cancel_on=cancels,
        idempotency=_optional_expr(idempotency, f"{id}: idempotency"),
        timeouts=timeouts,
        concurrency=concurrency_items,
        throttle=throttle,
        rate_limit=rate_limit,
        debounce=debounce,
        priority=priority,
        batch_events=batch_events,
        singleton=singleton,
        budgets=budget_items,
        failure_handler_for=failure_handler_for,
        retention=_retention(id, retention),
    )
