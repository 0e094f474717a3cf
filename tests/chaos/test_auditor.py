"""The auditor on synthetic histories: it passes a clean one, and reports each planted fault
(a committed step run again, two copies at once, an unexplained extra, a stuck run...)."""

from __future__ import annotations

import multiprocessing
import uuid
from pathlib import Path

from tests.chaos import auditlog
from tests.chaos.auditor import Fault, Observed, Report, RunRow, audit

STEPS = ("s1", "s2", "s3", "s4", "s5")
LEASE = 2.0


class History:
    """An audit log written through ``auditlog.append`` and the database state to go with it."""

    def __init__(self, tmp_path: Path) -> None:
        self.log = tmp_path / "audit.jsonl"
        self.committed: dict[tuple[str, str], str] = {}
        self.faults: list[Fault] = []
        self.process_ends: dict[int, float] = {}
        self.runs: dict[str, RunRow] = {}
        self.acknowledged: list[str] = []
        self.status_counts: list[tuple[str, str, int]] | None = None

    def execute(
        self, run_id: str, step: str, pid: int, start: float, end: float | None, *, committed: bool = False, stopped: bool = False
    ) -> str:
        exec_id = uuid.uuid4().hex
        record = {"pid": pid, "run": run_id, "step": step, "exec": exec_id}
        auditlog.append({"ev": "start", **record, "t": start}, str(self.log))
        if end is not None:
            auditlog.append({"ev": "end", **record, "start": start, "t": end, "stopped": stopped}, str(self.log))
        if committed:
            self.committed[(run_id, step)] = exec_id
        return exec_id

    def run(self, run_id: str, pid: int = 100, t0: float = 1000.0) -> float:
        """A clean run: ``chaos-async`` and ``chaos-sync`` for one event, each step once, one
        second each; returns when the runs ended."""
        event_id = f"event-{run_id}"
        self.acknowledged.append(event_id)
        for function_id in ("chaos-async", "chaos-sync"):
            rid = f"{run_id}-{function_id}"
            done = [self.execute(rid, step, pid, t0 + i, t0 + i + 0.9, committed=True) for i, step in enumerate(STEPS)]
            end = t0 + len(STEPS)
            self.runs[rid] = RunRow(rid, function_id, event_id, "completed", {"n": 7, "executions": done}, end)
        return end

    def audit(self) -> Report:
        executions, unreadable = auditlog.read(self.log)
        events = {run.event_id: 7 for run in self.runs.values()}
        return audit(Observed(
            acknowledged=self.acknowledged, event_numbers=events, runs=list(self.runs.values()),
            committed=self.committed, executions=executions, unreadable_lines=unreadable,
            faults=self.faults, process_ends=self.process_ends, lease=LEASE,
            functions=("chaos-async", "chaos-sync"), steps=STEPS, status_counts=self.status_counts,
        ))

    def replace_step(self, run_id: str, step: str, pid: int, start: float, end: float, *, stopped: bool = False) -> None:
        """Commit another execution of ``step`` instead (and fix the run's output to match)."""
        self.execute(run_id, step, pid, start, end, committed=True, stopped=stopped)
        run = self.runs[run_id]
        output = dict(run.output)
        output["executions"] = [self.committed[(run_id, s)] for s in STEPS]
        self.runs[run_id] = RunRow(run.run_id, run.function_id, run.event_id, run.status, output, run.ended_at)


def test_a_clean_history_with_executions_lost_to_a_kill_and_a_stall_has_no_violation(tmp_path: Path) -> None:
    history = History(tmp_path)
    history.run("a")
    # Run b: s3 starts on pid 200, which is killed mid-step; pid 300 runs it again after the lease.
    history.run("b", pid=300, t0=2000.0)
    rid = "b-chaos-async"
    history.execute(rid, "s3", 200, 1999.0, None)
    history.faults.append(Fault("kill", "worker-2", 1999.5, 1999.5, pid=200))
    history.process_ends[200] = 1999.5

    # Run b's sync twin: pid 200 stopped its own s2 (cancelled: its lease could not be
    # renewed during a stall) before pid 300 ran it again.
    history.execute("b-chaos-sync", "s2", 200, 1999.0, 1999.8, stopped=True)
    history.faults.append(Fault("stall", "sqlite BEGIN EXCLUSIVE 3.5 s", 1999.2, 2000.7))

    report = history.audit()

    assert report.violations == [], report.text()
    assert report.figures["executions"] == 4 * len(STEPS) + 2
    assert report.figures["extra_executions"] == 2
    assert report.figures["kills"] == 1 and report.figures["stalls"] == 1
    assert report.figures["runs"] == 4 and report.figures["events"] == 2


def test_a_committed_step_that_runs_again_is_reported_as_a_duplicate(tmp_path: Path) -> None:
    history = History(tmp_path)
    history.run("a")
    rid = "a-chaos-async"
    # A second copy of s2 on the same process begins while the committed s3 runs (s2 had committed).
    history.execute(rid, "s2", 100, 1002.3, 1002.8)
    history.faults.append(Fault("stall", "sqlite BEGIN EXCLUSIVE 3.5 s", 1001.5, 1002.2))  # explains the extra (F)

    report = history.audit()

    (again,) = report.of("D")
    assert again.run_id == rid and "s2" in again.detail and "committed s3" in again.detail and "pid 100" in again.detail
    (overlap,) = report.of("E")
    assert overlap.run_id == rid and "s3" in overlap.detail and "s2" in overlap.detail
    assert report.figures["duplicates"] == 2 and report.duplicates == [again, overlap]
    assert report.of("F") == []
    assert "[D] run a-chaos-async" in report.text()


def test_two_copies_of_one_step_at_once_are_reported(tmp_path: Path) -> None:
    history = History(tmp_path)
    history.run("a")
    rid = "a-chaos-sync"
    history.execute(rid, "s3", 200, 1002.1, 1002.95)  # another process, during the committed s3
    history.faults.append(Fault("cut", "every proxied connection", 1002.0, 1002.0))

    report = history.audit()

    (overlap,) = report.of("E")
    assert "pid 200" in overlap.detail and "pid 100" in overlap.detail and "overlap by 0.800 s" in overlap.detail
    assert report.of("D") == [] and report.of("F") == []


def test_an_execution_without_an_end_line_lasts_until_its_process_was_killed(tmp_path: Path) -> None:
    history = History(tmp_path)
    history.run("a", pid=300)
    rid = "a-chaos-async"
    history.execute(rid, "s2", 200, 1000.95, None)  # killed only after the committed s2 began
    history.faults.append(Fault("kill", "worker-2", 1001.5, 1001.5, pid=200))
    history.process_ends[200] = 1001.5

    report = history.audit()

    (overlap,) = report.of("E")
    assert "(no end line)" in overlap.detail and "1001.500" in overlap.detail


def test_a_step_begun_after_its_run_ended_is_reported(tmp_path: Path) -> None:
    history = History(tmp_path)
    end = history.run("a")
    history.execute("a-chaos-sync", "s5", 200, end + 0.5, end + 1.0)
    history.faults.append(Fault("stall", "LOCK TABLE queue 3.2 s", end - 1, end + 0.2))

    (after,) = history.audit().of("D")
    assert after.run_id == "a-chaos-sync" and "after the run ended" in after.detail


def test_an_extra_execution_with_no_fault_in_flight_is_reported(tmp_path: Path) -> None:
    history = History(tmp_path)
    history.run("a")
    history.execute("a-chaos-async", "s1", 200, 990.0, 990.5)  # before the committed s1: no overlap
    history.faults.append(Fault("kill", "worker-3", 990.2, 990.2, pid=999))  # another process's kill
    history.faults.append(Fault("stall", "sqlite BEGIN EXCLUSIVE 3.0 s", 995.0, 998.0))  # too early

    report = history.audit()

    (unexplained,) = report.of("F")
    assert "extra s1" in unexplained.detail and "pid 200" in unexplained.detail
    assert report.of("D") == [] and report.of("E") == []

    history.faults.append(Fault("kill", "worker-2", 991.0, 991.0, pid=200))  # its own process, checkpoint in flight
    assert history.audit().violations == []


def test_missing_runs_stuck_runs_wrong_outputs_and_unlogged_steps_are_reported(tmp_path: Path) -> None:
    history = History(tmp_path)
    history.run("a")
    history.run("b", t0=2000.0)
    history.acknowledged.append("event-lost")
    stuck = history.runs["b-chaos-sync"]
    history.runs[stuck.run_id] = RunRow(stuck.run_id, stuck.function_id, stuck.event_id, "running", None, None)
    wrong = history.runs["a-chaos-sync"]
    history.runs[wrong.run_id] = RunRow(wrong.run_id, wrong.function_id, wrong.event_id, "completed", {"n": 7, "executions": []}, wrong.ended_at)
    history.committed[("b-chaos-async", "s4")] = "0" * 32  # no such execution in the log

    report = history.audit()

    assert {v.detail for v in report.of("A")} == {
        "event event-lost has 0 run(s) of chaos-async, expected 1",
        "event event-lost has 0 run(s) of chaos-sync, expected 1",
    }
    assert {v.run_id for v in report.of("B")} == {"b-chaos-sync", "a-chaos-sync", "b-chaos-async"}
    assert "is running" in next(v.detail for v in report.of("B") if v.run_id == "b-chaos-sync")
    (unlogged,) = report.of("C")
    assert unlogged.run_id == "b-chaos-async" and "s4" in unlogged.detail


def test_a_committed_step_whose_execution_was_cancelled_is_reported(tmp_path: Path) -> None:
    history = History(tmp_path)
    history.run("a")
    history.replace_step("a-chaos-async", "s5", 100, 1004.0, 1004.9, stopped=True)
    (never_returned,) = history.audit().of("C")
    assert "s5" in never_returned.detail and "never returned" in never_returned.detail and "(cancelled)" in never_returned.detail


def test_a_step_overwritten_by_a_second_copy_running_at_once_is_reported(tmp_path: Path) -> None:
    history = History(tmp_path)
    history.run("a")
    rid = "a-chaos-async"
    first = history.committed[(rid, "s5")]
    history.replace_step(rid, "s5", 200, 1004.5, 1005.0)  # the second copy's result won, with no fault about
    report = history.audit()
    assert [v.check for v in report.violations] == ["E", "F"], report.text()
    assert first[:8] in report.of("F")[0].detail


def _append_many(path: str, pid: int, count: int) -> None:
    for i in range(count):
        auditlog.append({"ev": "start", "pid": pid, "run": f"r{pid}", "step": f"s{i}", "exec": f"{pid}-{i}", "t": float(i)}, path)


def test_run_counts_that_differ_from_the_runs_stored_are_reported(tmp_path: Path) -> None:
    history = History(tmp_path)
    history.run("a")
    history.run("b", t0=1010.0)
    history.status_counts = [("chaos-async", "completed", 2), ("chaos-sync", "completed", 2)]
    assert not history.audit().violations
    history.status_counts = [("chaos-async", "completed", 2), ("chaos-sync", "completed", 1), ("chaos-sync", "failed", 1)]
    found = history.audit().of("G")
    assert [v.detail for v in found] == ["chaos-sync completed: 1 reported, 2 stored", "chaos-sync failed: 1 reported, 0 stored"]


def test_lines_from_many_processes_never_interleave(tmp_path: Path) -> None:
    path = str(tmp_path / "audit.jsonl")
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_append_many, args=(path, pid, 2000)) for pid in range(8)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    executions, unreadable = auditlog.read(path)
    assert unreadable == []
    assert len(executions) == 8 * 2000
