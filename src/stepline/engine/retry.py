"""Retry policy: exponential backoff with jitter, or exactly what RetryAfterError asks."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from stepline import errors


def backoff_seconds(attempt: int, *, base: float, maximum: float, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (1-based): base·2^(attempt-1), jittered to 50-100%."""
    jitter = (rng or _RANDOM).random()
    raw = min(maximum, base * (2 ** max(0, attempt - 1)))
    return float(raw * (0.5 + jitter * 0.5))


_RANDOM = random.Random()


def delay_for(exc: BaseException, attempt: int, *, base: float, maximum: float, now: float | None = None) -> float:
    """``now``: the epoch seconds a ``RetryAfterError``'s datetime is counted from (the store's clock)."""
    if isinstance(exc, errors.RetryAfterError):
        return exc.delay_seconds(None if now is None else dt.datetime.fromtimestamp(now, dt.timezone.utc))
    return backoff_seconds(attempt, base=base, maximum=maximum)


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
