"""Chaos runs: real API servers and workers on each backend under a steady event load,
while workers and servers are SIGKILLed, the database writer stalls past the lease and
(on PostgreSQL) connections are terminated or cut mid-write. The auditor then checks the
promises: a committed step never runs again, and one run executes on one worker at a time.

``STEPLINE_CHAOS_SECONDS`` sets how long the faults go on (``make chaos`` runs longer).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos import scenario
from tests.chaos.auditor import FAULT_FIGURES
from tests.chaos.scenario import POSTGRES_FAULTS, SQLITE_FAULTS, Outcome, Plan

BACKENDS = ["sqlite", "postgres"]


def _failure(outcome: Outcome) -> str:
    return f"\n{outcome.text(limit=5)}\n(full report: report.txt; processes' logs: logs/)"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", BACKENDS)
def test_without_faults_every_step_runs_exactly_once(backend: str, tmp_path: Path) -> None:
    """The control: real processes and the real load, no faults; the audit is spotless."""
    outcome = scenario.run(Plan(backend, 15, faults=()), tmp_path)
    print(outcome.text())
    figures = outcome.report.figures
    assert not outcome.report.violations, _failure(outcome)
    assert figures["events"] > 10 and figures["runs"] == 2 * figures["events"]
    assert figures["executions"] == 5 * figures["runs"] and figures["extra_executions"] == 0


@pytest.mark.timeout(scenario.timeout_for_run())
@pytest.mark.parametrize("backend", BACKENDS)
def test_under_faults_a_committed_step_never_runs_again_and_a_run_never_runs_twice_at_once(backend: str, tmp_path: Path) -> None:
    faults = SQLITE_FAULTS if backend == "sqlite" else POSTGRES_FAULTS
    outcome = scenario.run(Plan(backend, scenario.chaos_seconds(), faults, fencing=True), tmp_path)
    print(outcome.text())
    figures = outcome.report.figures
    assert figures["events"] > 10 and not outcome.unacknowledged, _failure(outcome)
    assert all(figures[FAULT_FIGURES[kind]] > 0 for kind in faults), f"a fault kind never hit: {figures}"
    assert not outcome.report.violations, _failure(outcome)


# The stall scenario made sharp: the async function's s2 lasts 4-8 s, longer than a stall,
# so a copy of it is still running on the stalled worker when the lock lifts and the run
# can be leased again. Only the fence (epoch checked at commit, the worker stopping runs
# whose lease it cannot renew) keeps a second copy from running beside it.
# Whether a lease is taken over at all when the lock lifts depends on which process's
# write gets the lock first (a renewal or a claim), so the scenario repeats the stall
# often (about a dozen times) across three workers.
STALL_PLAN = {"backend": "sqlite", "seconds": 60, "faults": ("stall",), "hold": (4.0, 8.0), "gap": (0.3, 1.5), "workers": 3}


@pytest.mark.timeout(300)
def test_without_fencing_a_writer_stalled_past_the_lease_runs_steps_twice_and_the_auditor_finds_it(tmp_path: Path) -> None:
    """The planted duplicate: with ``STEPLINE_FENCING=0`` the lease is checked by owner only.
    While another process holds SQLite's write lock longer than the lease, every lease
    expires; when the lock lifts, a worker claims runs still in flight (its own or
    another's) and a second copy executes. The auditor must see it."""
    outcome = scenario.run(Plan(**STALL_PLAN, fencing=False), tmp_path)
    print(outcome.text())
    assert outcome.report.figures["stalls"] > 0
    assert outcome.report.duplicates, f"the auditor found no duplicate without the fence:{_failure(outcome)}"


@pytest.mark.timeout(300)
def test_with_fencing_the_same_stalls_leave_one_copy_of_each_run(tmp_path: Path) -> None:
    outcome = scenario.run(Plan(**STALL_PLAN, fencing=True), tmp_path)
    print(outcome.text())
    assert outcome.report.figures["stalls"] > 0 and outcome.report.figures["extra_executions"] > 0, outcome.text()
    assert not outcome.report.violations, _failure(outcome)
