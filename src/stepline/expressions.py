"""CEL expressions over events, compiled once and cached.

Evaluation follows Inngest: its own functions (``lowercase``, ``date``, ``now_minus``, ...:
``cel_extras``) are known, and a field missing from the event is "no match" for a
boolean expression and an empty key for a key expression, never an error.

An expression that fails on one event's data (division by zero, overflow, a type
it cannot compare) is likewise no match, or an empty key, for that event alone:
it is logged (once a minute per expression) and returned as a ``Failure`` so the
caller can say on the event why it started no run. It is never an error for the
sender, nor for later events.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import threading
import time
from typing import Any

from stepline import cel_extras, errors

log = logging.getLogger("stepline.expressions")

REPORT_EVERY_S = 60.0  # one log line per failing expression per minute, with a count of the rest
# Longer key values are stored as their SHA-256 (they go into indexed columns of limited width).
MAX_KEY_BYTES = 256


@dataclasses.dataclass(frozen=True)
class Failure:
    """An expression that raised on one input."""

    expression: str
    error: str  # "ZeroDivisionError: division by zero in CEL expression"

    def reason(self, kind: str, **detail: Any) -> dict[str, Any]:
        """An event's skip reason (``ops_admission.note_skip_txn``) for this failure."""
        return {"reason": kind, "expression": self.expression, "error": self.error, **detail}


@functools.lru_cache(maxsize=4096)
def compile_expression(source: str) -> Any:
    # Imported on first use: the CEL package's own import also loads its command-line
    # front end (prompt_toolkit), a tenth of a second an app without expressions need not pay.
    import cel

    try:
        return cel.compile(source)
    except (ValueError, RuntimeError) as exc:
        raise errors.ExpressionError(f"invalid CEL expression {source!r}: {exc}") from exc


@functools.lru_cache(maxsize=4096)
def _extras_used(source: str) -> bool:
    """Whether ``source`` calls one of Inngest's own functions (``cel_extras``)."""
    return not cel_extras.NAMES.isdisjoint(compile_expression(source).functions())


def _context(source: str, variables: dict[str, Any]) -> Any:
    """What the program runs with: the variables, and Inngest's functions when it calls any
    (a plain dict otherwise, the faster path)."""
    if not _extras_used(source):
        return variables
    import cel

    return cel.Context(variables=variables, functions=cel_extras.FUNCTIONS)


def check(source: str, *, field: str) -> str:
    """Compile ``source`` now so a typo fails at declaration; returns it unchanged."""
    if not isinstance(source, str) or not source.strip():
        raise errors.ConfigError(f"{field}: expected a CEL expression string, got {source!r}")
    try:
        compile_expression(source)
    except errors.ExpressionError as exc:
        raise errors.ExpressionError(f"{field}: {exc}") from exc
    return source


def evaluate_checked(source: str, variables: dict[str, Any]) -> tuple[Any, Failure | None]:
    """(value, None); (None, None) when the expression reads a field the input lacks;
    (None, Failure) when it fails on this input."""
    try:
        return _execute(source, variables), None
    except (KeyError, IndexError):  # a field the input lacks: Inngest's "no match"
        return None, None
    except Exception as exc:  # noqa: BLE001 - one event's data must never fail ingest for anyone
        failure = Failure(source, _describe(exc))
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":  # the CEL library's Rust panic; anything else goes on
            raise
        failure = Failure(source, _describe(exc))
    _report(failure)
    return None, failure


def _execute(source: str, variables: dict[str, Any]) -> Any:
    """Run the program; on a type error, once more with every whole number as a double.

    Inngest decodes an event's JSON numbers as doubles, so ``event.data.total * 1.1`` works
    there whether the sender wrote ``100`` or ``100.5``; here ``100`` is an int, which CEL
    does not mix with a double. Whole numbers stay ints first, so what works on ints
    (``event.data.n / 2``) still does.
    """
    program = compile_expression(source)
    try:
        return program.execute(_context(source, variables))
    except TypeError:
        widened = _doubles(variables)
        if widened is None:
            raise
        return program.execute(_context(source, widened))


def _doubles(value: Any) -> Any:
    """``value`` with its ints (not bools) as floats, through dicts and lists; None if it has none."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        items = {k: _doubles(v) for k, v in value.items()}
        if all(new is None for new in items.values()):
            return None
        return {k: value[k] if new is None else new for k, new in items.items()}
    if isinstance(value, list):
        converted = [_doubles(v) for v in value]
        if all(new is None for new in converted):
            return None
        return [old if new is None else new for old, new in zip(value, converted, strict=True)]
    return None


def evaluate(source: str, variables: dict[str, Any]) -> Any:
    """The expression's value, or None when it reads a field the input lacks or fails on it."""
    return evaluate_checked(source, variables)[0]


def match_checked(source: str | None, variables: dict[str, Any]) -> tuple[bool, Failure | None]:
    """Whether the expression is boolean true (no expression matches all), and its failure if any."""
    if source is None:
        return True, None
    value, failure = evaluate_checked(source, variables)
    return value is True, failure


def matches(source: str | None, variables: dict[str, Any]) -> bool:
    """True only when the expression evaluates to boolean true; no expression matches all."""
    return match_checked(source, variables)[0]


def key(source: str | None, variables: dict[str, Any]) -> str:
    """A key expression's value as text: '' when absent or when the expression fails on
    this input; a value over ``MAX_KEY_BYTES`` (or holding NUL) as ``sha256:<hex>``."""
    if source is None:
        return ""
    value = evaluate(source, variables)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    long = len(text) * 4 > MAX_KEY_BYTES and len(text.encode(errors="surrogatepass")) > MAX_KEY_BYTES
    if long or "\x00" in text:
        return "sha256:" + hashlib.sha256(text.encode(errors="surrogatepass")).hexdigest()
    return text


def match_to_expression(match: str) -> str:
    """Inngest's ``match="data.x"`` shorthand: the field is equal on both events."""
    path = match.strip()
    if path.startswith("event."):
        path = path[len("event."):]
    return f"event.{path} == async.{path}"


# --- reporting failures, at most once a minute per expression ----------------------------

_reported: dict[str, tuple[float, int]] = {}  # expression -> (when last logged, failures since)
_reported_lock = threading.Lock()


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:300] + "..."


def _report(failure: Failure) -> None:
    now = time.monotonic()
    with _reported_lock:
        last, unlogged = _reported.get(failure.expression, (None, 0))
        if last is not None and now - last < REPORT_EVERY_S:
            _reported[failure.expression] = (last, unlogged + 1)
            return
        if len(_reported) >= 4096:  # as many as the compile cache holds
            _reported.clear()
        _reported[failure.expression] = (now, 0)
    log.warning(
        "CEL expression %r failed on an event (%s); for that event it is no match, or an empty key%s",
        failure.expression, failure.error,
        f" ({unlogged} more failure(s) of it since the last report)" if unlogged else "",
    )
