"""CEL expressions over events, compiled once and cached.

Evaluation follows Inngest: a field missing from the event is "no match" for a
boolean expression and an empty key for a key expression, never an error.
"""

from __future__ import annotations

import functools
from typing import Any

from stepline import errors


@functools.lru_cache(maxsize=4096)
def compile_expression(source: str) -> Any:
    # Imported on first use: the CEL package's own import also loads its command-line
    # front end (prompt_toolkit), a tenth of a second an app without expressions need not pay.
    import cel

    try:
        return cel.compile(source)
    except (ValueError, RuntimeError) as exc:
        raise errors.ExpressionError(f"invalid CEL expression {source!r}: {exc}") from exc


def check(source: str, *, field: str) -> str:
    """Compile ``source`` now so a typo fails at declaration; returns it unchanged."""
    if not isinstance(source, str) or not source.strip():
        raise errors.ConfigError(f"{field}: expected a CEL expression string, got {source!r}")
    try:
        compile_expression(source)
    except errors.ExpressionError as exc:
        raise errors.ExpressionError(f"{field}: {exc}") from exc
    return source


def evaluate(source: str, variables: dict[str, Any]) -> Any:
    """The expression's value, or None when it reads a field the input lacks."""
    program = compile_expression(source)
    try:
        return program.execute(variables)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError):
        return None


def matches(source: str | None, variables: dict[str, Any]) -> bool:
    """True only when the expression evaluates to boolean true; no expression matches all."""
    if source is None:
        return True
    return evaluate(source, variables) is True


def key(source: str | None, variables: dict[str, Any]) -> str:
    """A key expression's value as text ('' when absent)."""
    if source is None:
        return ""
    value = evaluate(source, variables)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def match_to_expression(match: str) -> str:
    """Inngest's ``match="data.x"`` shorthand: the field is equal on both events."""
    path = match.strip()
    if path.startswith("event."):
        path = path[len("event."):]
    return f"event.{path} == async.{path}"
