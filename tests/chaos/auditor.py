"""The auditor: checks Stepline's exactly-once promises from outside, after a chaos run.

It reads only what an outsider can see: the audit log the steps wrote, the faults the
runner injected, the events the load generator saw acknowledged, and the database's
final runs, events and committed steps. Checks:

A. every acknowledged event has its runs (one per function);
B. no run is stuck: every run is completed, with all its steps committed and the output
   its committed steps imply;
C. every committed step's execution id is in the audit log, with its end line;
D. a committed step never ran again: no execution of step k begins after the committed
   execution of a later step began (steps are sequential, so k had committed), and no
   execution begins after its run ended;
E. no two executions of one run overlapped in time (its steps are strictly sequential);
   an execution with no end line ends when its process was killed or exited;
F. every extra (uncommitted) execution was in flight at a fault: its interval (plus the
   lease, for a checkpoint still in flight) holds a kill of its own process, or it
   overlaps a stall or cut window widened by the lease;
G. the runs per function and status that ``/metrics`` reports (kept by triggers as runs
   change, whichever process wrote and however it was stopped) are the runs stored.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from tests.chaos.auditlog import Execution

CHECKS = {
    "A": "acknowledged event without its runs",
    "B": "run not completed with the expected output",
    "C": "committed step missing from the audit log",
    "D": "committed step ran again",
    "E": "two executions of one run at once",
    "F": "extra execution with no fault to explain it",
}
DUPLICATE_CHECKS = ("D", "E")
FAULT_FIGURES = {"kill": "kills", "exit": "exits", "stall": "stalls", "terminate": "terminations", "cut": "cuts"}
PROCESS_FAULTS = ("kill", "exit")
OBSERVED_FILE = "observed.json"


@dataclasses.dataclass(frozen=True)
class Fault:
    """One fault: ``kill`` (ours) and ``exit`` (a process that died by itself) hit ``pid``
    at ``start`` (= ``end``); the others (``stall``, ``terminate``, ``cut``) hit every
    process in [start, end]."""

    kind: str
    target: str
    start: float
    end: float
    pid: int | None = None


@dataclasses.dataclass(frozen=True)
class RunRow:
    run_id: str
    function_id: str
    event_id: str
    status: str
    output: Any
    ended_at: float | None  # seconds since the epoch


@dataclasses.dataclass
class Observed:
    """Everything the auditor reads."""

    acknowledged: list[str]  # event ids from the responses of POST /e/{key}
    event_numbers: dict[str, int]  # event id -> its data.n, from the database
    runs: list[RunRow]
    committed: dict[tuple[str, str], Any]  # (run id, step key) -> the committed output
    executions: list[Execution]
    unreadable_lines: list[str]
    faults: list[Fault]
    process_ends: dict[int, float]  # pid -> when it was killed or seen to exit
    lease: float
    functions: tuple[str, ...]
    steps: tuple[str, ...]
    status_counts: list[tuple[str, str, int]] | None = None  # (function, status, runs) as the store reports them


@dataclasses.dataclass(frozen=True)
class Violation:
    check: str
    run_id: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.check}] run {self.run_id}: {self.detail}"


@dataclasses.dataclass
class Report:
    figures: dict[str, int]
    violations: list[Violation]

    def of(self, check: str) -> list[Violation]:
        return [v for v in self.violations if v.check == check]

    @property
    def duplicates(self) -> list[Violation]:
        return [v for v in self.violations if v.check in DUPLICATE_CHECKS]

    def text(self, limit: int = 20) -> str:
        lines = ["chaos audit: " + "  ".join(f"{name}={value}" for name, value in self.figures.items())]
        for check, meaning in CHECKS.items():
            found = self.of(check)
            lines.append(f"  {check} {meaning}: {len(found)}")
            lines += [f"      {v}" for v in found[:limit]]
            if len(found) > limit:
                lines.append(f"      ... and {len(found) - limit} more")
        return "\n".join(lines)


def _fmt(t: float) -> str:
    return "open" if math.isinf(t) else f"{t:.3f}"


class _Audit:
    def __init__(self, seen: Observed) -> None:
        self.seen = seen
        self.violations: list[Violation] = []
        self.by_run: dict[str, list[Execution]] = collections.defaultdict(list)
        self.by_id: dict[str, Execution] = {}
        for execution in seen.executions:
            self.by_run[execution.run_id].append(execution)
            self.by_id[execution.exec_id] = execution
        self.runs = {run.run_id: run for run in seen.runs}

    def flag(self, check: str, run_id: str, detail: str) -> None:
        self.violations.append(Violation(check, run_id, detail))

    def end_of(self, execution: Execution) -> float:
        """An execution with no end line ended when its process did (open if never seen to)."""
        if execution.end is not None:
            return execution.end
        return self.seen.process_ends.get(execution.pid, math.inf)

    def describe(self, execution: Execution) -> str:
        ending = " (no end line)" if execution.end is None else " (cancelled)" if execution.stopped else ""
        return (
            f"{execution.step} exec {execution.exec_id[:8]} pid {execution.pid} "
            f"[{_fmt(execution.start)} .. {_fmt(self.end_of(execution))}]{ending}"
        )

    def committed_exec(self, run_id: str, step: str) -> str | None:
        output = self.seen.committed.get((run_id, step))
        return output if isinstance(output, str) else None

    # --- A -------------------------------------------------------------------------

    def events_have_runs(self) -> None:
        runs_of: dict[str, list[RunRow]] = collections.defaultdict(list)
        for run in self.seen.runs:
            runs_of[run.event_id].append(run)
        for event_id in sorted(set(self.seen.acknowledged)):
            functions = collections.Counter(run.function_id for run in runs_of[event_id])
            for function_id in self.seen.functions:
                if functions[function_id] != 1:
                    self.flag("A", "-", f"event {event_id} has {functions[function_id]} run(s) of {function_id}, expected 1")

    # --- B -------------------------------------------------------------------------

    def runs_completed(self) -> None:
        for run in self.seen.runs:
            if run.status != "completed":
                self.flag("B", run.run_id, f"{run.function_id} is {run.status} (event {run.event_id})")
                continue
            executions = [self.committed_exec(run.run_id, step) for step in self.seen.steps]
            missing = [step for step, ran in zip(self.seen.steps, executions) if ran is None]
            if missing:
                self.flag("B", run.run_id, f"completed without committed step(s) {', '.join(missing)}")
                continue
            expected = {"n": self.seen.event_numbers.get(run.event_id), "executions": executions}
            if run.output != expected:
                self.flag("B", run.run_id, f"output {run.output!r} is not the committed steps' {expected!r}")

    # --- C -------------------------------------------------------------------------

    def committed_in_log(self) -> None:
        for (run_id, step), output in sorted(self.seen.committed.items()):
            if run_id not in self.runs or step not in self.seen.steps:
                continue
            execution = self.by_id.get(output) if isinstance(output, str) else None
            if execution is None:
                self.flag("C", run_id, f"committed {step} output {output!r} is no execution in the audit log")
            elif (execution.run_id, execution.step) != (run_id, step):
                self.flag("C", run_id, f"committed {step} names {self.describe(execution)} of run {execution.run_id}")
            elif execution.end is None or execution.stopped:
                self.flag("C", run_id, f"committed {step} never returned: {self.describe(execution)}")

    # --- D, E, F ---------------------------------------------------------------------

    def per_run(self) -> None:
        order = {step: i for i, step in enumerate(self.seen.steps)}
        for run_id, executions in sorted(self.by_run.items()):
            run = self.runs.get(run_id)
            if run is None:
                self.flag("D", run_id, f"executions of a run the database does not have: {self.describe(executions[0])}")
                continue
            committed = [self.by_id.get(self.committed_exec(run_id, step) or "") for step in self.seen.steps]
            self.never_again(run, executions, committed, order)
            self.no_overlap(run_id, executions)
            self.extras_explained(run_id, executions, committed, order)

    def never_again(self, run: RunRow, executions: list[Execution], committed: list[Execution | None], order: dict[str, int]) -> None:
        for execution in executions:
            later = [c for c in committed[order.get(execution.step, len(committed)) + 1:] if c is not None]
            if later:
                first = min(later, key=lambda c: c.start)
                if execution.start > first.start:
                    self.flag(
                        "D", run.run_id,
                        f"{self.describe(execution)} began after the committed {self.describe(first)} "
                        f"began ({execution.start - first.start:.3f} s later), so {execution.step} had committed",
                    )
                    continue
            if run.ended_at is not None and execution.start > run.ended_at + 0.001:
                self.flag(
                    "D", run.run_id,
                    f"{self.describe(execution)} began {execution.start - run.ended_at:.3f} s after the run ended at {run.ended_at:.3f}",
                )

    def no_overlap(self, run_id: str, executions: list[Execution]) -> None:
        ordered = sorted(executions, key=lambda e: e.start)
        holder: Execution | None = None  # the execution that reaches furthest so far
        for execution in ordered:
            if holder is not None and execution.start < self.end_of(holder):
                overlap = min(self.end_of(holder), self.end_of(execution)) - execution.start
                self.flag(
                    "E", run_id,
                    f"{self.describe(holder)} and {self.describe(execution)} overlap by {overlap:.3f} s",
                )
            if holder is None or self.end_of(execution) > self.end_of(holder):
                holder = execution

    def extras_explained(self, run_id: str, executions: list[Execution], committed: list[Execution | None], order: dict[str, int]) -> None:
        committed_ids = {c.exec_id for c in committed if c is not None}
        lease = self.seen.lease
        for execution in executions:
            if execution.exec_id in committed_ids:
                continue
            start, end = execution.start, self.end_of(execution)
            explained = any(
                (fault.pid == execution.pid and start <= fault.start <= end + lease)
                if fault.kind in PROCESS_FAULTS
                else (fault.start - lease <= end and start <= fault.end + lease)
                for fault in self.seen.faults
            )
            if not explained:
                self.flag("F", run_id, f"extra {self.describe(execution)} overlaps no fault")

    # --- G -------------------------------------------------------------------------

    def counts_exact(self) -> None:
        if self.seen.status_counts is None:
            return
        stored = collections.Counter((run.function_id, run.status) for run in self.seen.runs)
        reported = {(function_id, status): n for function_id, status, n in self.seen.status_counts}
        for key in sorted(set(stored) | set(reported)):
            if stored.get(key, 0) != reported.get(key, 0):
                self.flag("G", "-", f"{key[0]} {key[1]}: {reported.get(key, 0)} reported, {stored.get(key, 0)} stored")

    # --- the whole audit ---------------------------------------------------------------

    def run(self) -> Report:
        for line in self.seen.unreadable_lines[:20]:
            self.flag("C", "-", f"unreadable audit line {line[:200]!r}")
        self.events_have_runs()
        self.runs_completed()
        self.committed_in_log()
        self.per_run()
        self.counts_exact()
        committed_ids = {out for out in self.seen.committed.values() if isinstance(out, str)}
        kinds = collections.Counter(fault.kind for fault in self.seen.faults)
        figures = {
            "events": len(set(self.seen.acknowledged)),
            "runs": len(self.seen.runs),
            **{figure: kinds[kind] for kind, figure in FAULT_FIGURES.items()},
            "executions": len(self.seen.executions),
            "extra_executions": sum(1 for e in self.seen.executions if e.exec_id not in committed_ids),
            "duplicates": sum(1 for v in self.violations if v.check in DUPLICATE_CHECKS),
            "violations": len(self.violations),
        }
        return Report(figures, self.violations)


def audit(seen: Observed) -> Report:
    return _Audit(seen).run()


def save(seen: Observed, path: Path) -> None:
    """Keep what a run observed, to audit it again later (``python -m tests.chaos.auditor DIR``)."""
    path.write_text(json.dumps(dataclasses.asdict(seen) | {"committed": [[*k, v] for k, v in seen.committed.items()]}))


def load(path: Path) -> Observed:
    raw = json.loads(path.read_text())
    return Observed(
        acknowledged=raw["acknowledged"],
        event_numbers=raw["event_numbers"],
        runs=[RunRow(**run) for run in raw["runs"]],
        committed={(run_id, step): output for run_id, step, output in raw["committed"]},
        executions=[Execution(**e) for e in raw["executions"]],
        unreadable_lines=raw["unreadable_lines"],
        faults=[Fault(**f) for f in raw["faults"]],
        process_ends={int(pid): t for pid, t in raw["process_ends"].items()},
        lease=raw["lease"],
        functions=tuple(raw["functions"]),
        steps=tuple(raw["steps"]),
        status_counts=None if raw.get("status_counts") is None else [tuple(c) for c in raw["status_counts"]],
    )


if __name__ == "__main__":
    import sys

    print(audit(load(Path(sys.argv[1]) / OBSERVED_FILE)).text(limit=int(sys.argv[2]) if len(sys.argv) > 2 else 20))
