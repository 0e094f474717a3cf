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

import contextlib
import contextvars
import dataclasses
import difflib
import functools
import hashlib
import logging
import re
import threading
import time
from collections.abc import Iterator
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


# The functions the CEL library itself knows (its standard library: the macros ``has``,
# ``all``, ``exists``, ``exists_one``, ``map`` and ``filter`` are expanded before, and are
# no calls). A namespaced call is reported by its last part (``optional.of``: ``of``).
NATIVE_FUNCTIONS = frozenset({
    "size", "contains", "startsWith", "endsWith", "matches",
    "string", "bytes", "int", "uint", "double", "dyn", "type", "duration", "timestamp",
    "getFullYear", "getMonth", "getDayOfYear", "getDayOfMonth", "getDate", "getDayOfWeek",
    "getHours", "getMinutes", "getSeconds", "getMilliseconds",
    "of", "none", "ofNonZeroValue", "value", "hasValue", "or", "orValue",
})
KNOWN_FUNCTIONS = NATIVE_FUNCTIONS | cel_extras.NAMES
_CALL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # operators are listed too: "_==_", "!_", "@in"


def unknown_functions(source: str) -> list[str]:
    """The functions ``source`` calls that no evaluation knows: each would fail on every
    event it meets (no match, an empty key), so it is refused when declared."""
    called = compile_expression(source).functions()
    return sorted(name for name in called if _CALL_NAME.fullmatch(name) and name not in KNOWN_FUNCTIONS)


def _unknown_function_problem(names: list[str]) -> str:
    """Each name with a close spelling if one is known; the known names when none is."""
    said, guessed = [], False
    for name in names:
        close = difflib.get_close_matches(name, KNOWN_FUNCTIONS, n=1, cutoff=0.75)
        guessed = guessed or bool(close)
        said.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    known = "" if guessed else f"; the functions known are {', '.join(sorted(KNOWN_FUNCTIONS, key=str.lower))}"
    return f"unknown function{'s' if len(names) > 1 else ''} {', '.join(said)}{known}"


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


# --- what an expression reads of its variables ---------------------------------------------


@functools.lru_cache(maxsize=16)
def _reference(variable: str) -> re.Pattern[str]:
    return re.compile(rf"\b{re.escape(variable)}\b((?:\s*\.\s*[A-Za-z_][A-Za-z0-9_]*)*)(\s*\()?")


@functools.lru_cache(maxsize=8192)
def paths_read(source: str | None, variable: str) -> tuple[tuple[str, ...], ...] | None:
    """The paths of ``variable`` that ``source`` reads (``event.data.x`` is ``("data", "x")``;
    a method's name is not a field), or None when it uses the variable otherwise (whole, or
    indexed at the top). Text that only looks like a path (inside a string) adds a path, which
    copies more than needed, never less."""
    paths: list[tuple[str, ...]] = []
    for found in _reference(variable).finditer(source or ""):
        parts = [part.strip() for part in found.group(1).split(".")[1:]]
        if found.group(2):
            parts = parts[:-1]  # event.data.items.size(): "size" is a method
        if not parts:
            return None
        paths.append(tuple(parts))
    return tuple(paths)


def view(source: str | None, variable: str, value: dict[str, Any]) -> dict[str, Any] | None:
    """The part of ``value`` that ``source`` can read as ``variable`` (see ``paths_read``):
    each path's value, or the value where the path stops going through objects, as in the
    whole; None when the expression needs it whole."""
    paths = paths_read(source, variable)
    if paths is None:
        return None
    out: dict[str, Any] = {}
    for parts in paths:
        current: Any = value
        target = out
        for i, part in enumerate(parts):
            if not isinstance(current, dict) or part not in current:
                break
            found = current[part]
            if i == len(parts) - 1 or not isinstance(found, dict):
                target[part] = found
                break
            if target.get(part) is found:
                break  # the whole value is already there
            target = target.setdefault(part, {})
            current = found
    return out


def _narrowed(source: str, variables: dict[str, Any]) -> dict[str, Any]:
    """``variables`` cut to what ``source`` reads of them. The CEL library converts every value
    it is given, read or not, at each evaluation: an event of a megabyte of tiny values cost
    a tenth of a second per expression (its key expressions, and each waiting run's match),
    where what the expressions read of it costs microseconds."""
    narrowed = variables
    for name, value in variables.items():
        if isinstance(value, dict):
            part = view(source, name, value)
            if part is not None:
                if narrowed is variables:
                    narrowed = dict(variables)
                narrowed[name] = part
    return narrowed


# Set while stored SDK functions are rebuilt (``inngest.runtime``): one synced before the
# function-name check came in must still load on upgrade, failing per event as it did then.
_names_unchecked: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("names_unchecked", default=None)


@contextlib.contextmanager
def unknown_functions_allowed() -> Iterator[list[str]]:
    """Within the block, ``check`` lets unknown function names pass; the list it yields
    collects what they would have been refused for."""
    found: list[str] = []
    token = _names_unchecked.set(found)
    try:
        yield found
    finally:
        _names_unchecked.reset(token)


def check(source: str, *, field: str) -> str:
    """Compile ``source`` now, and look up the functions it calls, so a typo (``sizee(x)``,
    ``x.startWith("a")``) fails at declaration; returns it unchanged."""
    if not isinstance(source, str) or not source.strip():
        raise errors.ConfigError(f"{field}: expected a CEL expression string, got {source!r}")
    try:
        unknown = unknown_functions(source)
    except errors.ExpressionError as exc:
        raise errors.ExpressionError(f"{field}: {exc}") from exc
    if unknown:
        problem = f"{field}: invalid CEL expression {source!r}: {_unknown_function_problem(unknown)}"
        allowed = _names_unchecked.get()
        if allowed is None:
            raise errors.ExpressionError(problem)
        allowed.append(problem)
    return source


def evaluate_checked(source: str, variables: dict[str, Any]) -> tuple[Any, Failure | None]:
    """(value, None); (None, None) when the expression reads a field the input lacks;
    (None, Failure) when it fails on this input."""
    try:
        return _execute(source, _narrowed(source, variables)), None
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
    this input; a value over ``MAX_KEY_BYTES`` (or holding NUL) as ``sha256:<hex>``, and so
    one that starts ``sha256:`` itself (else that text would share a long value's key)."""
    if source is None:
        return ""
    value = evaluate(source, variables)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    long = len(text) * 4 > MAX_KEY_BYTES and len(text.encode(errors="surrogatepass")) > MAX_KEY_BYTES
    if long or "\x00" in text or text.startswith("sha256:"):
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


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _describe(exc: BaseException) -> str:
    """One line: the error may quote the event's own values (``matches()`` quotes a bad
    pattern, line breaks and all), which must not forge lines in the log."""
    text = _CONTROL.sub(lambda found: repr(found.group())[1:-1], f"{type(exc).__name__}: {exc}")
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
