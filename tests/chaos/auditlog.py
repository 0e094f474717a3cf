"""The audit log: one JSON line per step execution at its start and one at its end.

Many processes append to one file. Each line goes out in a single ``write()`` on a
descriptor opened with ``O_APPEND``, so lines from different processes never interleave.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from pathlib import Path

AUDIT_LOG_VAR = "STEPLINE_CHAOS_AUDIT_LOG"


def _path() -> str:
    path = os.environ.get(AUDIT_LOG_VAR)
    if not path:
        raise RuntimeError(f"set {AUDIT_LOG_VAR} to the file where step executions are recorded")
    return path


def append(record: dict[str, object], path: str | None = None) -> None:
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = os.open(path or _path(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def begin(run_id: str, step: str) -> tuple[str, float]:
    """Record the start of one execution of ``step``; returns its fresh execution id."""
    execution, started = uuid.uuid4().hex, time.time()
    append({"ev": "start", "pid": os.getpid(), "run": run_id, "step": step, "exec": execution, "t": started})
    return execution, started


def end(run_id: str, step: str, execution: str, started: float, *, stopped: bool = False) -> str:
    """Record the end of an execution: it returned, or (``stopped``) it was cancelled mid-way."""
    record = {"ev": "end", "pid": os.getpid(), "run": run_id, "step": step, "exec": execution, "start": started, "t": time.time()}
    append(record | {"stopped": True} if stopped else record)
    return execution


@dataclasses.dataclass
class Execution:
    """One execution of one step, as the log tells it (``end`` is None: no end line)."""

    exec_id: str
    run_id: str
    step: str
    pid: int
    start: float
    end: float | None
    stopped: bool = False  # cancelled mid-way (its end is when the cancellation reached it)


def read(path: str | Path) -> tuple[list[Execution], list[str]]:
    """Executions in the log, and the lines that could not be read (each one a problem)."""
    found: dict[str, Execution] = {}
    bad: list[str] = []
    text = Path(path).read_text() if Path(path).exists() else ""
    for line in text.splitlines():
        try:
            record = json.loads(line)
            execution = found.setdefault(
                record["exec"], Execution(record["exec"], record["run"], record["step"], int(record["pid"]), float("nan"), None)
            )
            if record["ev"] == "start":
                execution.start = float(record["t"])
            else:
                execution.start = float(record["start"])
                execution.end = float(record["t"])
                execution.stopped = bool(record.get("stopped"))
        except (ValueError, KeyError, TypeError):
            bad.append(line)
    return list(found.values()), bad
