"""The functions Inngest's expression environment adds to standard CEL.

Inngest's CEL (``pkg/expressions/exprenv``) knows ``lowercase``, ``uppercase``,
``b64decode``, ``json_parse``, ``date``, ``now``, ``now_plus`` and ``now_minus``; an
SDK app's ``if`` (trigger, waitForEvent, cancelOn) or key expression may use them, so
they mean the same here rather than failing on every event (no match, an empty key).
Each behaves as Inngest's does on odd input: no error, an empty or null value.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
import json
from collections.abc import Callable
from typing import Any

from stepline import durations, errors

# Unix times below this are not read as dates (Inngest: "we don't parse times before 2000").
_MIN_UNIX_S = 946_684_800


def lowercase(value: Any) -> str:
    return value.lower() if isinstance(value, str) else ""


def uppercase(value: Any) -> str:
    return value.upper() if isinstance(value, str) else ""


def b64decode(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    try:
        return base64.b64decode(value, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return ""


def json_parse(value: Any) -> dict[str, Any]:
    """An object from JSON text; anything else (bad JSON, a list) is an empty object, as on Inngest."""
    try:
        parsed = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def date(value: Any) -> dt.datetime | None:
    """A timestamp from RFC 3339 (or a date, or an HTTP date) text, or from a Unix time in
    seconds, milliseconds or nanoseconds; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = int(value)
        if number < _MIN_UNIX_S:
            return None
        seconds = number if number < 9_999_999_999 else number / 1e3 if number < 9_999_999_999_999 else number / 1e9
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _shifted(text: Any, sign: int) -> dt.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        seconds = durations.parse(text, field="now_plus/now_minus")
    except errors.ConfigError:
        return None
    return now() + dt.timedelta(seconds=sign * seconds)


def now_plus(text: Any) -> dt.datetime | None:
    return _shifted(text, 1)


def now_minus(text: Any) -> dt.datetime | None:
    return _shifted(text, -1)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "lowercase": lowercase,
    "uppercase": uppercase,
    "b64decode": b64decode,
    "json_parse": json_parse,
    "date": date,
    "now": now,
    "now_plus": now_plus,
    "now_minus": now_minus,
}
NAMES = frozenset(FUNCTIONS)
