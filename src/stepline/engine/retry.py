"""Retry policy: exponential backoff with jitter, exactly what RetryAfterError asks, or a
schedule of minutes for an attempt that could not reach its app at all."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from stepline import durations, errors
from stepline.settings import Settings


def backoff_seconds(attempt: int, *, base: float, maximum: float, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (1-based): base·2^(attempt-1), jittered to 50-100%."""
    jitter = (rng or _RANDOM).random()
    raw = min(maximum, base * (2 ** max(0, attempt - 1)))
    return float(raw * (0.5 + jitter * 0.5))


def unreachable_seconds(attempt: int, schedule: tuple[float, ...], *, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (1-based) of an attempt that found its app
    unreachable: the schedule's entry (its last one past its end) plus up to 30 s of
    jitter, at most the entry itself (so a short schedule stays short)."""
    if not schedule:
        return 0.0
    delay = schedule[min(len(schedule), max(1, attempt)) - 1]
    return float(delay + (rng or _RANDOM).random() * min(30.0, delay))


_RANDOM = random.Random()


def delay_for(exc: BaseException, attempt: int, settings: Settings, *, now: float | None = None) -> float:
    """``now``: the epoch seconds a ``RetryAfterError``'s datetime is counted from (the store's clock)."""
    if isinstance(exc, errors.RetryAfterError):  # a hint: cut to what a sleep may last (durations.MAX_SUSPEND_S)
        delay = exc.delay_seconds(None if now is None else dt.datetime.fromtimestamp(now, dt.timezone.utc))
        return min(delay, durations.MAX_SUSPEND_S) if delay == delay else 0.0  # NaN: at once
    if isinstance(exc, errors.UnreachableError):  # a restart takes minutes: seconds of backoff would use up the retries
        return unreachable_seconds(attempt, settings.unreachable_backoff)
    return backoff_seconds(attempt, base=settings.retry_base, maximum=settings.retry_max)


def is_final(exc: BaseException) -> bool:
    """Errors that are never retried: Stepline's own that say so on their class
    (``retryable``). Any other exception is retried."""
    return isinstance(exc, errors.SteplineError) and not exc.retryable


def error_dict(exc: BaseException) -> dict[str, Any]:
    import traceback

    own = getattr(exc, "error_dict", None)
    if callable(own):  # errors reported by another process (an SDK app) keep their own record
        return own()  # type: ignore[no-any-return]

    out: dict[str, Any] = {
        "name": type(exc).__name__,
        "message": str(exc),
        "stack": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-8000:],
    }
    billed = getattr(exc, "billed", None)
    if isinstance(billed, dict):  # a model call that failed after output began: its tokens were billed
        out["billed"] = billed
    return out
