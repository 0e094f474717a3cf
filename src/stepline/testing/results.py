"""What a test reads back: a run, its steps and their errors, as typed records."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from stepline import errors
from stepline.store.records import RunStatus, StepStatus


@dataclasses.dataclass(frozen=True)
class ErrorInfo:
    """An error as the run recorded it: the exception's class name and message."""

    name: str
    message: str
    stack: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ErrorInfo | None:
        if not data:
            return None
        return cls(str(data.get("name") or "Error"), str(data.get("message") or ""), data.get("stack"))


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """One step of a run. ``id`` is its key: the step id, ``id:n`` for its n-th repeat."""

    id: str
    name: str
    kind: str  # run | ai.infer | sleep | wait | invoke | send_event
    status: StepStatus
    output: Any
    error: ErrorInfo | None
    attempts: int
    attempt_errors: tuple[ErrorInfo, ...]  # each failed attempt's error, oldest first
    wake_at: dt.datetime | None  # a sleep's end, or a wait's / invoke's timeout
    meta: Any  # ai.infer: provider, model, usage, cost, latency

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepRecord:
        return cls(
            id=data["id"],
            name=data["name"],
            kind=data["kind"],
            status=StepStatus(data["status"]),
            output=data["output"],
            error=ErrorInfo.from_dict(data["error"]),
            attempts=int(data["attempts"] or 0),
            attempt_errors=tuple(e for e in (ErrorInfo.from_dict(a["error"]) for a in data["attempt_history"]) if e is not None),
            wake_at=_moment(data["wake_at"]),
            meta=data["meta"],
        )


@dataclasses.dataclass(frozen=True)
class RunResult:
    """A run as the store holds it: status, output or error, and its steps by key, in order."""

    id: str
    function_id: str
    status: RunStatus
    output: Any
    error: ErrorInfo | None
    steps: dict[str, StepRecord]
    attempt: int  # the function's failed attempts so far (0: none)
    wait_reason: str | None  # why a run that has not ended is not executing
    progress: float | None
    progress_message: str | None
    event: dict[str, Any] | None
    parent_run_id: str | None
    function_errors: tuple[ErrorInfo, ...] = ()  # the error of each failed attempt of the function itself

    @property
    def ended(self) -> bool:
        return self.status.terminal

    def step(self, step_id: str) -> StepRecord:
        """The step with this key; the error lists the keys the run has."""
        try:
            return self.steps[step_id]
        except KeyError:
            raise errors.NotFoundError(f"run {self.id} has no step {step_id!r}; its steps are {list(self.steps)}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunResult:
        return cls(
            id=data["id"],
            function_id=data["function_id"],
            status=RunStatus(data["status"]),
            output=data["output"],
            error=ErrorInfo.from_dict(data["error"]),
            steps={s["id"]: StepRecord.from_dict(s) for s in data["steps"]},
            attempt=int(data["attempt"] or 0),
            wait_reason=data["wait_reason"],
            progress=data["progress"],
            progress_message=data["progress_message"],
            event=data.get("event"),
            parent_run_id=data["parent_run_id"],
            function_errors=tuple(
                e for a in data.get("function_attempts") or () if (e := ErrorInfo.from_dict(a.get("error"))) is not None
            ),
        )


@dataclasses.dataclass(frozen=True)
class SentEvent:
    """An event a test sent, and the runs it started (none: it only resolved waits, or matched nothing)."""

    id: str
    run_ids: tuple[str, ...]

    @property
    def run_id(self) -> str:
        """The one run the event started; an error when it started none or several."""
        if len(self.run_ids) != 1:
            raise errors.NotFoundError(
                f"event {self.id} started {len(self.run_ids)} runs {list(self.run_ids)}, not one; "
                "pass one of its run_ids instead"
            )
        return self.run_ids[0]


def _moment(text: str | None) -> dt.datetime | None:
    return None if text is None else dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
