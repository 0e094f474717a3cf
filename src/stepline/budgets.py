"""Cost budgets, the pure part: periods, which budgets a call falls under, and what a
call may cost (``Charge``, ``Spend``).

A function's budgets are declared with ``stepline.Budget`` and stored with its config
(``StoredConfig["budgets"]``). For one run (or one direct model call) each budget
gives a ``Check``: its key value and limits for that event, evaluated here. The
database side (reservations, spend, pauses) is ``store.ops_budget``; the step side
is the executor's ``engine.budgets``; the worst case of a model call is
``llm.budget``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from stepline import errors, expressions

EXCEEDED_EVENT = "stepline/budget.exceeded"  # sent once per budget, key and period
MONTH = "month"
NO_KEY = "*"  # the key value of a budget without a key: one spend for everything
EMPTY_KEY = "(none)"  # a key expression that gives nothing (the field is absent)
# Duration periods are windows of that length counted from a Monday at 00:00 UTC, so
# "1d" is a UTC day and "1w" a week from Monday.
_ORIGIN_MS = 4 * 86_400_000  # 1970-01-05, a Monday


@dataclasses.dataclass(frozen=True, slots=True)
class Charge:
    """What a call costs (or may cost): US dollars and tokens (prompt + completion)."""

    usd: float = 0.0
    tokens: int = 0


NOTHING = Charge()


@dataclasses.dataclass(frozen=True)
class Spend:
    """What one attempt of a step may cost, and how to read what it did cost.

    ``estimate()``: the worst case and that case in words (``"~120 prompt + 500
    max_tokens of openai:gpt-4o-mini"``), read only when a budget applies and kept.
    ``actual(result)``: the cost of a completed attempt. ``billed(error)``: what a
    failed attempt was billed all the same (tokens of a stream cut after output
    began), ``NOTHING`` when it was not.
    """

    estimate: Callable[[], tuple[Charge, str]]
    actual: Callable[[Any], Charge]
    billed: Callable[[BaseException], Charge]

    @functools.cached_property
    def _estimated(self) -> tuple[Charge, str]:
        return self.estimate()

    @property
    def worst(self) -> Charge:
        return self._estimated[0]

    @property
    def describe(self) -> str:
        return self._estimated[1]


@dataclasses.dataclass(frozen=True, slots=True)
class Check:
    """One budget as it applies to one event: its key value and limits."""

    budget_id: str
    key: str
    period: float | str  # seconds, or "month"
    limit_usd: float | None
    limit_tokens: int | None
    on_exceeded: str  # "pause" | "fail"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Check:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


def period_bounds(period: float | str, now_ms: int) -> tuple[int, int]:
    """[start, end) in epoch milliseconds of the period that holds ``now_ms``."""
    if period == MONTH:
        day = dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC)
        first = dt.datetime(day.year, day.month, 1, tzinfo=dt.UTC)
        following = dt.datetime(day.year + (day.month == 12), day.month % 12 + 1, 1, tzinfo=dt.UTC)
        return int(first.timestamp() * 1000), int(following.timestamp() * 1000)
    length = int(float(period) * 1000)
    start = _ORIGIN_MS + (now_ms - _ORIGIN_MS) // length * length
    return start, start + length


def key_value(budget: Mapping[str, Any], event: Mapping[str, Any]) -> str:
    """The budget's key for this event: ``*`` without a key, ``(none)`` when it gives nothing."""
    if budget.get("key") is None:
        return NO_KEY
    return expressions.key(budget["key"], {"event": dict(event)}) or EMPTY_KEY


def limit_usd(budget: Mapping[str, Any], event: Mapping[str, Any]) -> float | None:
    """The declared USD limit for this event (a CEL ``limit_usd`` evaluated over it)."""
    raw = budget.get("limit_usd")
    if not isinstance(raw, str):
        return None if raw is None else float(raw)
    value = expressions.evaluate(raw, {"event": dict(event)})
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise errors.ConfigError(
            f"budget {budget['name']!r}: limit_usd {raw!r} gave {value!r} for this event, not US dollars >= 0; "
            "make the expression give a number for every event (e.g. with a default: has(event.data.plan) ? ... : 5.0)"
        )
    return float(value)


def checks(budgets: Iterable[Mapping[str, Any]], event: Mapping[str, Any]) -> list[Check]:
    """Each budget as it applies to ``event``, in a fixed order (by name, then key)."""
    out = [
        Check(
            budget_id=str(b["name"]),
            key=key_value(b, event),
            period=b["period"],
            limit_usd=limit_usd(b, event),
            limit_tokens=None if b.get("limit_tokens") is None else int(b["limit_tokens"]),
            on_exceeded=str(b.get("on_exceeded") or "pause"),
        )
        for b in budgets
    ]
    return sorted(out, key=lambda c: (c.budget_id, c.key))


def over(spent: Charge, reserved: Charge, need: Charge, limit_usd: float | None, limit_tokens: int | None) -> bool:
    """Whether reserving ``need`` on top of what is spent and reserved passes a limit."""
    if limit_usd is not None and spent.usd + reserved.usd + need.usd > limit_usd + 1e-12:
        return True
    return limit_tokens is not None and spent.tokens + reserved.tokens + need.tokens > limit_tokens


def usd(amount: float) -> str:
    """US dollars for people: ``$0.00006135``, ``$5``."""
    text = f"{amount:.8f}".rstrip("0").rstrip(".")
    return f"${text or '0'}"


def describe_limit(limit_usd: float | None, limit_tokens: int | None) -> str:
    parts = []
    if limit_usd is not None:
        parts.append(usd(limit_usd))
    if limit_tokens is not None:
        parts.append(f"{limit_tokens} tokens")
    return " and ".join(parts) or "no limit"
