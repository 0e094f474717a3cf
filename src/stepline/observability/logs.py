"""Log lines that say which run they belong to, and the JSON format.

The executor sets the run (id, function, attempt) for the whole of a run's execution
and the step (key, attempt) while a step's body runs, in context variables: every line
logged from there, by Stepline or by the function's own code (async, or sync in a
thread), carries them. ``ContextFilter`` copies them onto each record; ``JsonFormatter``
writes one JSON object per line. ``configure`` sets both up for the CLI
(``STEPLINE_LOG_FORMAT``); an app that embeds Stepline can add them to its own handlers.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
from typing import Any

from stepline import errors, shown_text
from stepline.observability import tracing

FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# (run id, function id, the run's attempt) while a run executes; (step key, attempt) in a step.
_run: contextvars.ContextVar[tuple[str, str, int] | None] = contextvars.ContextVar("stepline_run", default=None)
_step: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar("stepline_step", default=None)


def enter_run(run_id: str, function_id: str, attempt: int) -> contextvars.Token[tuple[str, str, int] | None]:
    return _run.set((run_id, function_id, attempt))


def leave_run(token: contextvars.Token[tuple[str, str, int] | None]) -> None:
    _run.reset(token)


def enter_step(key: str, attempt: int) -> contextvars.Token[tuple[str, int] | None]:
    return _step.set((key, attempt))


def leave_step(token: contextvars.Token[tuple[str, int] | None]) -> None:
    _step.reset(token)


def fields() -> dict[str, Any]:
    """The run's fields where this is called (empty outside a run)."""
    out: dict[str, Any] = {}
    run = _run.get()
    if run is not None:
        out["run_id"], out["function_id"], out["attempt"] = run
        step = _step.get()
        if step is not None:
            out["step"], out["attempt"] = step
    return out


class ContextFilter(logging.Filter):
    """Copies the run's fields (and the current span's trace and span ids) onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        found = fields()
        span = tracing.current_carrier()
        if span is not None:
            _, trace_id, span_id, _ = span["traceparent"].split("-")
            found["trace_id"], found["span_id"] = trace_id, span_id
        record.stepline = found
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the run's fields, and the
    traceback (``exc_info``) as one string."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(getattr(record, "stepline", None) or fields())
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return shown_text.escape_json(json.dumps(out, ensure_ascii=False, default=str))


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT``, one line a record: control and bidi characters of the message (an error
    quoting an event's data, a name from before the checks at ingest) are written as escapes,
    so a message cannot forge a line nor drive the terminal; a traceback keeps its lines."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return shown_text.escape(super().formatMessage(record))


def configure(level: str, fmt: str) -> None:
    """The process's logging for the CLI: ``fmt`` is ``text`` (one readable line) or
    ``json`` (one object per line); both carry the run's fields to the records."""
    if fmt not in FORMATS:
        raise errors.ConfigError(f"STEPLINE_LOG_FORMAT={fmt!r}: expected one of {', '.join(FORMATS)}")
    if level.strip().upper() not in LEVELS:
        raise errors.ConfigError(f"STEPLINE_LOG_LEVEL={level!r}: expected one of {', '.join(LEVELS)}")
    logging.basicConfig(level=level.strip().upper(), format=TEXT_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
