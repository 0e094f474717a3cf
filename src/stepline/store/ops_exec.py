"""Domain operations of execution: claim, checkpoint, suspend, finish, leases.

A worker holds a run through a lease on its queue row: an owner, an expiry, and an
epoch that every lease of the run increments. Every write here names the lease it
holds (``records.Lease``) and is checked against the row, locked, in its own
transaction: a worker whose lease was taken over (it stalled past expiry and another
worker, or itself, claimed the run again) commits nothing more. Expiries are set and
compared on the database's clock (``Conn.clock_ms``) when the statement runs, so a
write that waited for a lock cannot create a lease that has already run out.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any, cast

from stepline import errors, jsonutil
from stepline import event as event_mod
from stepline.store import (
    db,
    flow,
    ops_admission,
    ops_budget,
    ops_functions,
    ops_ingest,
    ops_runs,
    ops_start,
)
from stepline.store.records import (
    FINISH_TIMEOUT,
    TERMINAL,
    ClaimedRun,
    CronSchedule,
    JournalEntry,
    Lease,
    Renewal,
    RunStatus,
    StepResult,
    StepStatus,
    Suspension,
    WaitReason,
)

log = logging.getLogger("stepline.store")

_SUSPENDED = (StepStatus.SLEEPING, StepStatus.WAITING, StepStatus.INVOKING)


def _lost(lease: Lease) -> errors.LeaseLost:
    return errors.LeaseLost(f"worker {lease.owner} no longer holds run {lease.run_id} (lease epoch {lease.epoch})")


def holds(row: dict[str, Any] | None, lease: Lease) -> bool:
    """Whether a queue row (``lease_owner``, ``lease_epoch``) is still held by ``lease``."""
    return (
        row is not None
        and row["lease_owner"] == lease.owner
        and (lease.epoch is None or row["lease_epoch"] == lease.epoch)
    )


def check_held(conn: db.Conn, lease: Lease) -> None:
    """Raise ``LeaseLost`` unless the run's queue row (locked) still holds ``lease``: the
    fence of a write made on behalf of a run that is still executing."""
    _hold(conn, lease)


def _hold(conn: db.Conn, lease: Lease, *, lock_runs: bool = False) -> dict[str, Any]:
    """The run's queue row (locked) if ``lease`` still holds it, else ``LeaseLost``; with
    ``lock_runs`` (the caller writes the ``runs`` row), that row locked too, or a
    ``StoreError`` at once when another session holds it (see ``_held_many``)."""
    runs_lock = conn.row_lock_skip("r") if lock_runs else ""
    row = conn.one(
        "SELECT q.lease_owner, q.lease_epoch, r.cancel_requested, r.status, r.started_at, r.finish_timeout_ms "
        "FROM queue q JOIN runs r ON r.id = q.run_id "
        f"WHERE q.run_id = ? {conn.row_lock('q')} {runs_lock}",  # a concurrent claim of an expired lease waits
        (lease.run_id,),
    )
    if row is None and runs_lock:
        queued = conn.one("SELECT lease_owner, lease_epoch FROM queue WHERE run_id = ?", (lease.run_id,))
        if holds(queued, lease):
            raise _runs_row_locked(lease)
    if not holds(row, lease):
        raise _lost(lease)
    return row  # type: ignore[return-value]


def _in(values: list[str]) -> str:
    return ", ".join("?" for _ in values)


# --- claim -----------------------------------------------------------------------


def claim_txn(
    conn: db.Conn,
    worker_id: str,
    function_ids: list[str],
    limit: int,
    now: int,
    lease_ms: int,
    reclaim_expired: bool = True,
    exclude: frozenset[str] = frozenset(),
    max_lease_losses: int | None = None,
) -> tuple[list[ClaimedRun], int | None]:
    """Lease up to ``limit`` due runs (and, with ``reclaim_expired``, runs whose lease
    expired) of these functions; never a run in ``exclude`` (those the worker is still
    executing or winding down: it must not hold two copies of one run). A run whose lease
    ran out ``max_lease_losses`` times in a row without saving anything is failed instead
    (``_fail_crash_loops_txn``).

    Returns the runs with their journals, and when the next unleased run falls due.
    """
    if not function_ids or limit <= 0:
        return [], None
    leased_at = time.monotonic()
    fns = _in(function_ids)
    lock = conn.skip_locked()
    ready = _ready_in_claim_order(conn, function_ids, now, limit)
    marks, params = db.in_list(ready) if ready else ("", ())
    # Each row also says when the next run after these falls due, saving a query.
    next_due, next_due_params = _next_due(conn, function_ids, after=now)
    candidates = [] if not ready else conn.all(
        f"SELECT run_id, function_id, ck1, cl1, ck2, cl2, start_by, ({next_due}) AS next_due, "
        "(SELECT mode FROM function_pauses p WHERE p.function_id = queue.function_id) AS paused "
        # By key: the ids are these functions' (no index of the queue should lead elsewhere).
        f"FROM queue WHERE run_id IN ({marks}) AND lease_owner IS NULL AND +due_at <= ? ORDER BY +(due_at - priority_ms) "
        f"LIMIT ? {lock}",
        (*next_due_params, *params, now, limit),
    )
    candidates = [r for r in candidates if r["run_id"] not in exclude]
    held = [r for r in candidates if r["paused"] is not None]  # their function is paused: set aside
    if held:
        ops_functions.hold_paused_txn(conn, held, now)
        candidates = [r for r in candidates if r["paused"] is None]
    expired: list[str] = []
    if reclaim_expired and len(candidates) < limit:
        # A crashed or stalled worker's runs: they already hold their concurrency slots, so no check.
        expired = [
            r["run_id"]
            for r in conn.all(
                f"SELECT run_id FROM queue WHERE lease_owner IS NOT NULL AND lease_expires_at <= {conn.clock_ms} "
                f"AND function_id IN ({fns}) ORDER BY lease_expires_at LIMIT ? {lock}",
                (*function_ids, limit - len(candidates) + len(exclude)),
            )
            if r["run_id"] not in exclude
        ][: limit - len(candidates)]
    if lock and (candidates or expired):
        free = _runs_not_locked(conn, [r["run_id"] for r in candidates] + expired)
        candidates = [r for r in candidates if r["run_id"] in free]
        expired = [run_id for run_id in expired if run_id in free]
    if expired and max_lease_losses:
        expired = _fail_crash_loops_txn(conn, expired, now, max_lease_losses)
    admitted, parked = _admit_by_concurrency(conn, candidates, now)
    claimed = _lease_and_load_txn(conn, admitted + expired, worker_id, now, lease_ms, leased_at)
    if parked or held:
        return claimed, now  # more ready rows may sit behind the parked ones: look again at once
    if candidates:
        return claimed, candidates[0]["next_due"]
    sql, params = _next_due(conn, function_ids)
    return claimed, conn.scalar(sql, params)


def _fail_crash_loops_txn(conn: db.Conn, run_ids: list[str], now: int, most: int) -> list[str]:
    """Of runs whose lease ran out, those to lease again; the others are failed here.

    A lease runs out when its worker crashed, stalled or could not save what the run did;
    the run's next worker repeats the step in flight. When that step is what kills workers
    (it exhausts memory, the process exits), or what the run did can never be saved, every
    worker that claims the run goes the same way, and with it the other runs it held. So
    each loss is counted with the run's progress mark (its steps and their attempts): the
    count starts again whenever the mark moved, and at ``most`` losses in a row with no
    progress the run fails, saying why, instead of being leased again."""
    marks, params = db.in_list(run_ids)
    queued = {r["run_id"]: r for r in conn.all(f"SELECT run_id, lease_losses, lost_at_mark FROM queue WHERE run_id IN ({marks})", params)}
    progress = {
        r["run_id"]: int(r["mark"])
        for r in conn.all(
            f"SELECT run_id, COUNT(*) + COALESCE(SUM(attempts), 0) AS mark FROM steps WHERE run_id IN ({marks}) GROUP BY run_id",
            params,
        )
    }
    again: list[str] = []
    counted: list[tuple[int, int, str]] = []
    failing: list[tuple[str, str, str | None, str | None, int]] = []
    for run_id in run_ids:
        row = queued.get(run_id)
        if row is None:
            continue
        mark = progress.get(run_id, 0)
        same = row["lost_at_mark"] is not None and int(row["lost_at_mark"]) == mark
        losses = int(row["lease_losses"]) + 1 if same else 1
        if losses >= most:
            failing.append((run_id, RunStatus.FAILED, None, jsonutil.dumps(_crash_loop_error(run_id, losses)), now))
        else:
            counted.append((losses, mark, run_id))
            again.append(run_id)
    if counted:
        conn.executemany("UPDATE queue SET lease_losses = ?, lost_at_mark = ? WHERE run_id = ?", counted)
    if failing:
        for run_id, *_ in failing:
            log.error("run %s failed: its lease ran out %d times in a row without progress", run_id, most)
        ops_runs.end_runs_txn(conn, failing)
    return again


def _crash_loop_error(run_id: str, losses: int) -> dict[str, str]:
    return {
        "name": "WorkerLost",
        "message": (
            f"run {run_id} lost its worker {losses} times in a row without saving a step: each worker that took it "
            "crashed, stalled or could not save what it did (a step that exhausts memory or kills the process, or a "
            "result the database refuses); failed so that it stops taking workers down. Fix the step and replay the "
            "run; STEPLINE_MAX_LEASE_LOSSES sets how many losses in a row fail a run"
        ),
    }


def _runs_not_locked(conn: db.Conn, run_ids: list[str]) -> set[str]:
    """Those of the runs whose ``runs`` row no other transaction has locked, now locked by
    this one (PostgreSQL). A claim passes over the others until its next look: it waited
    for them, so one run's row locked by an operator's open transaction failed every claim
    of the worker after the lock timeout, and no run of any function started meanwhile."""
    marks, params = db.in_list(run_ids)
    return {r["id"] for r in conn.all(f"SELECT id FROM runs WHERE id IN ({marks}) FOR NO KEY UPDATE SKIP LOCKED", params)}


CLAIM_ORDER = "queue_claim_by_function"  # unleased runs by (function_id, due_at - priority_ms): migration 0025
MAX_BRANCHES = 100  # functions read by one statement (SQLite bounds the selects of a compound at 500)


def _ready_in_claim_order(conn: db.Conn, function_ids: list[str], now: int, limit: int) -> list[str]:
    """The first ``limit`` ready runs of these functions in claim order (due time less
    priority), read so that what a claim costs is what it takes: not the runs asleep, of
    its own functions or others', nor the ready runs of functions it does not serve (a
    backlog waiting for its own workers), nor more of its own ready runs than it needs.

    First each function's ready runs by due time (``queue_ready_by_function``), a share of
    the batch each: a function with no more ready than its share has them all read,
    whatever sleeps beside them. While the runs found fall short of the batch and some
    function had more, those are read again with a larger share. The batch's last run in
    claim order among those found (``bound``) then bounds the rest: a run sorting after it
    cannot be in the batch. Each function that had more ready than its share is read by its
    own claim order (``queue_claim_by_function``) up to that bound, passing at most its own
    runs asleep whose priority sorts them first. The batch is the first ``limit`` of all
    found. One claim order over every function (0003) made a claim read through another
    app's ready runs sorting before its own; a read of ``limit`` runs of each function would
    read fifty batches for a worker serving fifty functions with a backlog each.

    Both reads skip rows that concurrent claims hold (PostgreSQL), as the claim does, so
    workers claiming at once from one backlog take different batches, not the same one. The
    read by due time is written as a row comparison (``(function_id, due_at) <= (id, now)
    AND function_id >= id``) in its index's order: a range and an order no other index
    gives, so no planner's statistics, stale or fresh, lead elsewhere (see ``_next_due``)."""
    lock = conn.skip_locked()
    by_due = (
        f"SELECT run_id, function_id, o FROM (SELECT run_id, function_id, due_at - priority_ms AS o FROM queue "
        f"{conn.indexed_by(ops_runs.READY_BY_FUNCTION)} WHERE lease_owner IS NULL AND (function_id, due_at) <= (?, ?) "
        f"AND function_id >= ? ORDER BY function_id, due_at LIMIT ? {lock}) AS f"
    )
    found: dict[str, int] = {}  # run_id: its place in claim order
    first: dict[str, int] = {}  # function: the first place in claim order found of its runs
    share = -(-limit // len(function_ids))
    more = function_ids  # functions that may have ready runs not found yet
    while more:
        rows = _each_function(conn, by_due, more, lambda fn_id: (fn_id, now, fn_id, share + 1))  # noqa: B023 - called here
        for r in rows:
            found[r["run_id"]] = int(r["o"])
            first[r["function_id"]] = min(int(r["o"]), first.get(r["function_id"], int(r["o"])))
        counts = collections.Counter(r["function_id"] for r in rows)
        more = [fn_id for fn_id in more if counts[fn_id] > share]
        if len(found) >= limit or share >= limit:
            break
        share = min(limit, share * 4)
    # The function with more whose runs sort first, then the others: the bound tightens with
    # the first one's runs, so the others read fewer (often none).
    more = sorted(more, key=lambda fn_id: first[fn_id])
    by_claim_order = (
        f"SELECT run_id, o FROM (SELECT run_id, due_at - priority_ms AS o FROM queue {conn.indexed_by(CLAIM_ORDER)} "
        "WHERE lease_owner IS NULL AND function_id = ? AND (due_at - priority_ms) <= ? AND due_at <= ? "
        f"ORDER BY due_at - priority_ms LIMIT ? {lock}) AS f"
    )
    for group in (more[:1], more[1:]):
        if group:
            bound = sorted(found.values())[limit - 1]
            rows = _each_function(conn, by_claim_order, group, lambda fn_id: (fn_id, bound, now, limit))  # noqa: B023 - called here
            found.update((r["run_id"], int(r["o"])) for r in rows)
    return [run_id for run_id, _ in sorted(found.items(), key=lambda item: item[1])[:limit]]


def _each_function(conn: db.Conn, branch: str, function_ids: list[str], params: Callable[[str], tuple[Any, ...]]) -> list[dict[str, Any]]:
    """``branch`` for each function, as one statement per ``MAX_BRANCHES`` functions."""
    rows: list[dict[str, Any]] = []
    for start in range(0, len(function_ids), MAX_BRANCHES):
        served = function_ids[start : start + MAX_BRANCHES]
        rows.extend(conn.all(" UNION ALL ".join(branch for _ in served), tuple(p for fn_id in served for p in params(fn_id))))
    return rows


def _next_due(conn: db.Conn, function_ids: list[str], *, after: int = -(2**63)) -> tuple[str, tuple[Any, ...]]:
    """A query (and its parameters) for when the next unleased run of these functions falls
    due after ``after``: one probe per function of its runs by due time, so neither the
    runs asleep of functions another worker serves nor this one's own many are read, as a
    MIN over the due-time index filtered by function read them.

    "This function, due after ``after``" is written as the row comparison
    ``(function_id, due_at) > (id, after)`` bounded by ``function_id <= id``: a range of the
    by-function index that no other index can read, so no planner's estimate leads away
    from it. PostgreSQL, given ``function_id = id AND due_at > after``, read the due-time
    index whenever its statistics expected few rows past ``after`` (stale ones, counted
    before a burst of runs went to sleep), filtering out every row of other functions."""
    values = ", ".join("(?)" for _ in function_ids)
    return (
        f"WITH served (id) AS (VALUES {values}) SELECT MIN((SELECT due_at FROM queue {conn.indexed_by(ops_runs.READY_BY_FUNCTION)} "
        "WHERE lease_owner IS NULL AND (function_id, due_at) > (served.id, ?) AND function_id <= served.id "
        "ORDER BY function_id, due_at LIMIT 1)) AS due FROM served",
        (*function_ids, after),
    )


def _admit_by_concurrency(conn: db.Conn, candidates: list[dict[str, Any]], now: int) -> tuple[list[str], int]:
    """Split candidates into those with free concurrency slots and those parked until one frees."""
    keys = sorted({r[c] for r in candidates for c in ("ck1", "ck2") if r[c] is not None})
    conn.lock_many([("concurrency", key) for key in keys])  # sorted: concurrent claimers cannot deadlock
    in_use = flow.slots_in_use_many(conn, keys)
    admitted: list[str] = []
    parked = 0
    for row in candidates:
        if row["start_by"] is not None and row["start_by"] < now:
            admitted.append(row["run_id"])  # past its start deadline: cancelled when loaded, taking no slot
            continue
        limits = [(row["ck1"], row["cl1"]), (row["ck2"], row["cl2"])]
        full = next((key for key, cap in limits if key is not None and in_use[key] >= cap), None)
        if full is not None:
            flow.park(conn, row["run_id"], full, now)
            parked += 1
            continue
        for key, _ in limits:
            if key is not None:
                in_use[key] += 1
        admitted.append(row["run_id"])
    return admitted, parked


_CLAIM_COLUMNS = (
    "r.id, r.function_id, r.status, r.wait_reason, r.attempt, r.started_at, r.start_deadline_at, r.finish_timeout_ms, "
    "r.cancel_requested, r.error, r.batch_event_ids, r.cleanup, r.replay_of, e.body, q.lease_epoch, q.throttle_key"
)


def _lease_and_load_txn(
    conn: db.Conn, run_ids: list[str], worker_id: str, now: int, lease_ms: int, leased_at: float
) -> list[ClaimedRun]:
    """Lease the runs (each its next epoch) and load each with its event and journal, in a
    few statements for the batch."""
    if not run_ids:
        return []
    marks, padded = db.in_list(run_ids)
    conn.execute(
        f"UPDATE queue SET lease_owner = ?, lease_epoch = lease_epoch + 1, lease_expires_at = {conn.clock_ms} + ?, "
        f"parked_on = NULL, step_slots = 0 WHERE run_id IN ({marks})",  # a lease taken over: its steps' slots end with it
        (worker_id, lease_ms, *padded),
    )
    runs = {
        r["id"]: r
        for r in conn.all(
            f"SELECT {_CLAIM_COLUMNS} FROM runs r JOIN events e ON e.id = r.event_id JOIN queue q ON q.run_id = r.id "
            f"WHERE r.id IN ({marks})",
            padded,
        )
    }
    journals: dict[str, list[dict[str, Any]]] = {}
    # A run that never started has no steps, unless it reruns another run (its steps were copied in).
    resumed = [r["id"] for r in runs.values() if r["started_at"] is not None or r["replay_of"] is not None]
    if resumed:
        marks, params = db.in_list(resumed)
        for row in conn.all(
            f"SELECT run_id, key, kind, status, {ops_runs.STEP_OUTPUT}, error, attempts, wake_at FROM steps WHERE run_id IN ({marks}) "
            "ORDER BY run_id, seq, started_at",  # each journal in the order its steps were recorded
            params,
        ):
            journals.setdefault(row.pop("run_id"), []).append(row)
    claimed: list[ClaimedRun] = []
    starts: list[tuple[int, int, str]] = []
    first_starts: list[tuple[str]] = []
    deadlines_met: list[tuple[str]] = []
    for run_id in run_ids:
        item = _prepare_claimed_txn(conn, run_id, runs.get(run_id), journals.get(run_id, []), now, leased_at)
        if item is None:
            continue
        claimed.append(item)
        starts.append((item.started_at, now, run_id))
        if runs[run_id]["started_at"] is None and runs[run_id]["cleanup"] & ops_runs.CLEANUP_WINDOW:
            first_starts.append((run_id,))
        if runs[run_id]["started_at"] is None and runs[run_id]["start_deadline_at"] is not None:
            deadlines_met.append((run_id,))
    if starts:
        conn.executemany(
            f"UPDATE {conn.or_fail()}runs SET status = 'running', wait_reason = NULL, started_at = ?, updated_at = ? WHERE id = ?", starts
        )
    if deadlines_met:  # started in time: from now on it queues like any run (see _admit_by_concurrency)
        conn.executemany("UPDATE queue SET start_by = NULL WHERE run_id = ?", deadlines_met)
    if first_starts:
        ops_admission.claimed_many_txn(conn, first_starts)
    return claimed


def _prepare_claimed_txn(
    conn: db.Conn, run_id: str, run: dict[str, Any] | None, steps: list[dict[str, Any]], now: int, leased_at: float
) -> ClaimedRun | None:
    """A leased run ready to execute, or None when it ended instead (cancelled, timed out, gone)."""
    if run is None or run["status"] in TERMINAL:
        conn.execute("DELETE FROM queue WHERE run_id = ?", (run_id,))
        return None
    if run["cancel_requested"]:
        ops_runs.end_run_txn(conn, run_id, RunStatus.CANCELLED, None, run["error"], now)
        return None
    if run["started_at"] is None and run["start_deadline_at"] is not None and now > run["start_deadline_at"]:
        error = {"name": "StartTimeout", "message": "the run did not start within timeouts.start"}
        ops_runs.end_run_txn(conn, run_id, RunStatus.CANCELLED, None, jsonutil.dumps(error), now)
        return None
    deadline = finish_deadline(run)
    if deadline is not None and now >= deadline:  # woken at its deadline (see suspend_txn): its sleep or wait stays open
        ops_runs.end_run_txn(conn, run_id, RunStatus.CANCELLED, None, jsonutil.dumps(FINISH_TIMEOUT), now)
        return None
    if run["started_at"] is None and ops_start.held_back_txn(conn, run, now):
        return None
    journal: dict[str, JournalEntry] = {}
    for row in steps:
        entry = JournalEntry(**row)
        if entry.status in _SUSPENDED and entry.wake_at is not None and entry.wake_at <= now:
            entry = _resolve_timer_txn(conn, run_id, entry, now)
        journal[entry.key] = entry
    started_at = run["started_at"] or now
    body = jsonutil.loads(run["body"])
    events = [body]
    if run["batch_event_ids"]:
        batch_ids = jsonutil.loads(run["batch_event_ids"])
        rows = {r["id"]: r["body"] for r in conn.all(f"SELECT id, body FROM events WHERE id IN ({_in(batch_ids)})", tuple(batch_ids))}
        events = [jsonutil.loads(rows[i]) for i in batch_ids if i in rows]
    return ClaimedRun(
        run_id=run_id,
        function_id=run["function_id"],
        attempt=run["attempt"],
        event=body,
        events=events,
        journal=journal,
        started_at=started_at,
        finish_deadline=finish_deadline({**run, "started_at": started_at}),
        epoch=run["lease_epoch"],
        leased_at=leased_at,
    )


def finish_deadline(run: dict[str, Any]) -> int | None:
    """When ``timeouts.finish`` ends a run (``started_at``, ``finish_timeout_ms``): None
    without one, or before the run started."""
    if run["started_at"] is None or run["finish_timeout_ms"] is None:
        return None
    return int(run["started_at"]) + int(run["finish_timeout_ms"])


def _by_finish_deadline(held: dict[str, Any], due: int) -> tuple[int, int | None]:
    """When a run released until ``due`` (a sleep, a wait's timeout, a backoff) comes back:
    at its finish deadline if that is sooner, to be cancelled then (``_prepare_claimed_txn``).
    Also its queue row's ``start_by``: past it a claim admits the run to be cancelled, even
    behind a full concurrency key (``_admit_by_concurrency``, ``flow.park``)."""
    deadline = finish_deadline(held)
    return (due, None) if deadline is None else (min(due, deadline), deadline - 1)


def _resolve_timer_txn(conn: db.Conn, run_id: str, entry: JournalEntry, now: int) -> JournalEntry:
    """A sleep that is over, or a wait / invoke that timed out."""
    if entry.status == StepStatus.INVOKING:
        error = jsonutil.dumps({"name": "InvokeTimeout", "message": "the invoked run did not finish within the timeout"})
        conn.execute(
            "UPDATE steps SET status = 'failed', error = ?, ended_at = ? WHERE run_id = ? AND key = ?",
            (error, now, run_id, entry.key),
        )
        return JournalEntry(entry.key, entry.kind, StepStatus.FAILED, None, error, entry.attempts, entry.wake_at)
    output = "null"
    # Deferred: a claim that wakes many sleepers writes them in one batch (nothing in the
    # claim reads these rows back).
    conn.defer(
        "UPDATE steps SET status = 'completed', output = ?, ended_at = ? WHERE run_id = ? AND key = ?",
        (output, now, run_id, entry.key),
    )
    if entry.kind != "sleep":  # a wait's row goes with its timeout; a sleep never had one
        conn.execute("DELETE FROM waits WHERE run_id = ? AND step_key = ?", (run_id, entry.key))
    return JournalEntry(entry.key, entry.kind, StepStatus.COMPLETED, output, None, entry.attempts, entry.wake_at)


# --- while running ---------------------------------------------------------------


_UPSERT_STEP = (
    "INSERT INTO steps (run_id, key, name, kind, status, seq, output, error, attempts, started_at, ended_at, "
    "wake_at, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (run_id, key) DO UPDATE SET kind = excluded.kind, status = excluded.status, output = excluded.output, "
    "error = excluded.error, attempts = excluded.attempts, ended_at = excluded.ended_at, "
    "wake_at = excluded.wake_at, meta = excluded.meta WHERE steps.status <> 'completed'"  # a committed step is written once
)


def _step_row(run_id: str, step: StepResult, seq: int, status: str, wake_at: int | None = None) -> tuple[Any, ...]:
    return (
        run_id,
        step.key,
        step.name,
        step.kind,
        status,
        seq,
        step.output,
        step.error,
        step.attempt,
        step.started_at,
        step.ended_at,
        wake_at,
        step.meta,
    )


def _upsert_step(conn: db.Conn, run_id: str, step: StepResult, seq: int, status: str, wake_at: int | None = None) -> None:
    conn.execute(_UPSERT_STEP, _step_row(run_id, step, seq, status, wake_at))


def _checkpoint_extras(conn: db.Conn, run_id: str, step: StepResult) -> None:
    if step.kind == "ai.infer" and step.status == StepStatus.COMPLETED and step.meta:
        _record_llm_usage(conn, run_id, step)
    if step.status == StepStatus.FAILED or step.attempt > 1:
        conn.execute(
            "INSERT INTO step_attempts (run_id, step_key, attempt, error, started_at, ended_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (run_id, step_key, attempt) DO NOTHING",
            (run_id, step.key, step.attempt, step.error, step.started_at, step.ended_at),
        )
        _record_billed_usage(conn, run_id, step.key, step.attempt, step.error, step.ended_at)


def _held_many(conn: db.Conn, run_ids: list[str], *, lock_runs: bool = False) -> dict[str, dict[str, Any]]:
    """Lease owner, epoch and cancel flag of each run (absent: the run has no queue row).

    With ``lock_runs`` (the caller writes the ``runs`` rows), those rows are locked too,
    passing over any that another session holds (an operator's ``SELECT ... FOR UPDATE``):
    such a run comes back marked ``runs_locked``. Waited for, one run's row held the
    writer's whole batch for the lock timeout, then failed every run ending in it."""
    marks, padded = db.in_list(list(dict.fromkeys(run_ids)))
    runs_lock = conn.row_lock_skip("r") if lock_runs else ""
    held = {
        r["run_id"]: r
        for r in conn.all(
            "SELECT q.run_id, q.lease_owner, q.lease_epoch, r.cancel_requested FROM queue q JOIN runs r ON r.id = q.run_id "
            f"WHERE q.run_id IN ({marks}) {conn.row_lock('q')} {runs_lock}",  # as in _hold
            padded,
        )
    }
    missing = [run_id for run_id in dict.fromkeys(run_ids) if run_id not in held]
    if runs_lock and missing:
        marks, padded = db.in_list(missing)
        for r in conn.all(f"SELECT run_id, lease_owner, lease_epoch FROM queue WHERE run_id IN ({marks})", padded):
            held[r["run_id"]] = {**r, "runs_locked": True}
    return held


def _runs_row_locked(lease: Lease) -> errors.StoreError:
    return errors.StoreError(
        f"the row of run {lease.run_id} is locked by another session (an open transaction that selected it "
        "FOR UPDATE?); the run stops here and is taken up again once that transaction ends"
    )


CheckpointItem = tuple[Lease, StepResult, int, "int | None"]


def checkpoint_many_txn(conn: db.Conn, items: list[CheckpointItem]) -> list[bool | errors.LeaseLost]:
    """Save finished steps (completed, or failed for good) of many runs at once: one lease
    check, one multi-row write.

    ``items`` are ``(lease, step, seq, lease_ms)``; each gets whether cancel was requested,
    or a ``LeaseLost`` for itself alone. With ``lease_ms``, a step saved also extends its
    run's lease that long from the database's clock now, as a heartbeat does: the heartbeat
    passes over the rows this transaction holds, and on a slow link the writer holds them
    most of the time (see ``heartbeat_txn``).
    """
    held = _held_many(conn, [item[0].run_id for item in items])
    out: list[bool | errors.LeaseLost] = []
    rows: list[tuple[Any, ...]] = []
    saved: list[tuple[str, StepResult]] = []
    renew: dict[int, list[str]] = {}
    for lease, step, seq, lease_ms in items:
        row = held.get(lease.run_id)
        if not holds(row, lease):
            _record_unsaved_usage(conn, lease, step)
            out.append(_lost(lease))
            continue
        rows.append(_step_row(lease.run_id, step, seq, step.status))
        saved.append((lease.run_id, step))
        if lease_ms is not None:
            renew.setdefault(lease_ms, []).append(lease.run_id)
        out.append(bool(row["cancel_requested"]))  # type: ignore[index]
    if rows:
        conn.executemany(_UPSERT_STEP, rows)
    for run_id, step in saved:
        _checkpoint_extras(conn, run_id, step)
    for lease_ms, run_ids in renew.items():
        marks, params = db.in_list(run_ids)
        expires = f"{conn.clock_ms} + ?"
        conn.execute(  # never shortened: a lease is only ever extended
            f"UPDATE queue SET lease_expires_at = CASE WHEN lease_expires_at > {expires} THEN lease_expires_at "
            f"ELSE {expires} END WHERE run_id IN ({marks})",
            (lease_ms, lease_ms, *params),
        )
    return out


def _record_unsaved_usage(conn: db.Conn, lease: Lease, step: StepResult) -> None:
    """A model call finished by a worker that had lost the run: the step is not saved (the
    run's new holder calls the model again), but the provider billed this call too, so the
    usage views count it, as budgets do, under ``key@lease<epoch>``."""
    if step.kind == "ai.infer" and step.status == StepStatus.COMPLETED and step.meta:
        _record_llm_usage(conn, lease.run_id, dataclasses.replace(step, key=f"{step.key}@lease{lease.epoch}"))


def _record_billed_usage(conn: db.Conn, run_id: str, key: str, attempt: int, error: str | None, at: int) -> None:
    """A failed model call's billed tokens (``billed`` in its error: output had begun) in
    ``llm_usage`` as step ``key@attempt``, so cost views count what the provider charged."""
    if not error or '"billed"' not in error:
        return
    billed = (jsonutil.loads(error) or {}).get("billed")
    if not isinstance(billed, dict):
        return
    usage = billed.get("usage") or {}
    conn.execute(
        "INSERT INTO llm_usage (run_id, step_key, function_id, user_id, provider, model, prompt_tokens, "
        "completion_tokens, reasoning_tokens, cached_tokens, cost_usd, latency_ms, created_at) "
        "SELECT id, ?, function_id, user_id, ?, ?, ?, ?, ?, ?, ?, NULL, ? FROM runs WHERE id = ? "
        "ON CONFLICT (run_id, step_key) DO NOTHING",
        (
            f"{key}@{attempt}", billed.get("provider"), billed.get("model") or "unknown",
            int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
            int(usage.get("reasoning_tokens") or 0), int(usage.get("cached_tokens") or 0),
            float(billed.get("cost_usd") or 0.0), at, run_id,
        ),
    )


def _record_llm_usage(conn: db.Conn, run_id: str, step: StepResult) -> None:
    """Usage of one model call, from the step's meta:
    ``{"provider", "model", "usage": {prompt_tokens, completion_tokens, reasoning_tokens,
    cached_tokens}, "cost_usd", "latency_ms"}``."""
    meta = jsonutil.loads(step.meta) or {}
    usage = meta.get("usage") or {}
    conn.execute(
        "INSERT INTO llm_usage (run_id, step_key, function_id, user_id, provider, model, prompt_tokens, "
        "completion_tokens, reasoning_tokens, cached_tokens, cost_usd, latency_ms, created_at) "
        "SELECT id, ?, function_id, user_id, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM runs WHERE id = ? "
        "ON CONFLICT (run_id, step_key) DO NOTHING",
        (
            step.key,
            meta.get("provider"),
            meta.get("model") or "unknown",
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
            int(usage.get("reasoning_tokens") or 0),
            int(usage.get("cached_tokens") or 0),
            float(meta.get("cost_usd") or 0.0),
            meta.get("latency_ms"),
            step.ended_at,
            run_id,
        ),
    )


def send_events_step_txn(
    conn: db.Conn, lease: Lease, step: StepResult, seq: int, events: list[event_mod.Event], now: int
) -> list[str]:
    """Send events and record the step in one transaction, so a replay never sends twice."""
    _hold(conn, lease)
    sent = ops_ingest.ingest_txn(conn, events, now)
    output = jsonutil.dumps(sent)
    _upsert_step(
        conn,
        lease.run_id,
        StepResult(step.key, step.name, step.kind, StepStatus.COMPLETED, output, None, step.attempt, step.started_at, now),
        seq,
        StepStatus.COMPLETED,
    )
    return sent


def set_progress_txn(conn: db.Conn, lease: Lease, percent: float, message: str | None, now: int) -> None:
    _hold(conn, lease, lock_runs=True)
    conn.execute(
        "UPDATE runs SET progress = ?, progress_message = ?, updated_at = ? WHERE id = ?",
        (percent, message, now, lease.run_id),
    )


def publish_txn(conn: db.Conn, lease: Lease, topic: str, data: str, now: int) -> int:
    _hold(conn, lease)  # a worker that lost the run must not stream for it
    seq = (conn.scalar("SELECT MAX(seq) AS seq FROM run_messages WHERE run_id = ?", (lease.run_id,)) or 0) + 1
    conn.execute(
        "INSERT INTO run_messages (run_id, seq, topic, data, created_at) VALUES (?, ?, ?, ?, ?)",
        (lease.run_id, seq, topic, data, now),
    )
    return int(seq)


# --- leaving the worker ----------------------------------------------------------


def suspend_txn(conn: db.Conn, lease: Lease, suspensions: list[Suspension], seq: int, now: int) -> None:
    """Record sleeps, waits, invokes and step retries, and release the run until the earliest
    is due, or its finish deadline if sooner."""
    held = _hold(conn, lease, lock_runs=True)
    run_id = lease.run_id
    due: int | None = None
    kinds = set()
    for item in suspensions:
        kinds.add(item.kind)
        if item.kind == "budget":
            item = ops_budget.pause_txn(conn, run_id, item, now)  # due now if the budget has room again
        if item.due_at is not None:
            due = item.due_at if due is None else min(due, item.due_at)
        step = StepResult(item.key, item.name, item.kind, "", None, item.error, item.attempt, item.started_at or now, now)
        if item.kind == "retry":
            _upsert_step(conn, run_id, StepResult(item.key, item.name, item.step_kind, "", None, item.error, item.attempt, item.started_at or now, now), seq, StepStatus.RETRYING)
            conn.execute(
                "INSERT INTO step_attempts (run_id, step_key, attempt, error, started_at, ended_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (run_id, step_key, attempt) DO NOTHING",
                (run_id, item.key, item.attempt, item.error, item.started_at or now, now),
            )
            _record_billed_usage(conn, run_id, item.key, item.attempt, item.error, now)
        elif item.kind == "sleep":
            _insert_pending_step(conn, run_id, step, seq, StepStatus.SLEEPING, item.due_at)
        elif item.kind == "wait":
            if _insert_pending_step(conn, run_id, step, seq, StepStatus.WAITING, item.due_at):
                ops_runs.insert_wait_txn(
                    conn, f"{run_id}:{item.key}", run_id, item.key, item.event_name or "", item.expression, item.due_at, None
                )
                conn.execute("UPDATE runs SET cleanup = cleanup | ? WHERE id = ?", (ops_runs.CLEANUP_WAITS, run_id))
        elif item.kind == "invoke":
            if _insert_pending_step(conn, run_id, step, seq, StepStatus.INVOKING, item.due_at):
                _start_invoked_run_txn(conn, run_id, item, now)
        if item.kind != "budget":  # a budget pause writes no step: the step has not begun
            seq += 1
    due, cancel_by = _by_finish_deadline(held, ops_runs.NEVER if due is None else due)
    if _resolved_while_held(conn, run_id, suspensions):
        due = now  # nothing woke it then: the run was still held (it suspended beside another wait or invoke)
    if "retry" in kinds:
        status, reason = RunStatus.QUEUED, WaitReason.RETRY_BACKOFF
    elif "budget" in kinds:
        status, reason = RunStatus.WAITING, WaitReason.BUDGET_EXCEEDED
    elif "wait" in kinds:
        status, reason = RunStatus.WAITING, WaitReason.WAITING_FOR_EVENT
    elif "invoke" in kinds:
        status, reason = RunStatus.WAITING, WaitReason.INVOKING
    else:
        status, reason = RunStatus.SLEEPING, WaitReason.SCHEDULED
    conn.execute(
        f"UPDATE {conn.or_fail()}runs SET status = ?, wait_reason = ?, updated_at = ? WHERE id = ? AND status = 'running'",
        (status, reason, now, run_id),
    )
    flow.release_slots(conn, run_id, now)
    conn.execute(
        "UPDATE queue SET lease_owner = NULL, lease_expires_at = NULL, due_at = ?, start_by = ? WHERE run_id = ?",
        (due, cancel_by, run_id),
    )
    if due < ops_runs.NEVER:
        conn.wake()  # due now, or a timer every worker must plan for


def _resolved_while_held(conn: db.Conn, run_id: str, suspensions: list[Suspension]) -> bool:
    """Whether a wait or invoke the run suspends on again was resolved since its claim (an
    event, or the invoked run's end, came while a worker held the run)."""
    keys = [item.key for item in suspensions if item.kind in ("wait", "invoke")]
    if not keys:
        return False
    marks, params = db.in_list(keys)
    return conn.one(
        f"SELECT 1 AS done FROM steps WHERE run_id = ? AND key IN ({marks}) AND status IN ('completed', 'failed') LIMIT 1",
        (run_id, *params),
    ) is not None


_INSERT_PENDING_STEP = (
    "INSERT INTO steps (run_id, key, name, kind, status, seq, output, error, attempts, started_at, ended_at, "
    "wake_at, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, key) DO NOTHING"
)


def _insert_pending_step(conn: db.Conn, run_id: str, step: StepResult, seq: int, status: str, wake_at: int | None) -> bool:
    """Record a sleep / wait / invoke the first time it is reached; False if already recorded
    (one statement: the insert that finds the row says so)."""
    pending = StepResult(step.key, step.name, step.kind, status, None, None, 1, step.started_at, None)  # type: ignore[arg-type]
    return conn.rowcount(_INSERT_PENDING_STEP, _step_row(run_id, pending, seq, status, wake_at)) > 0


def _start_invoked_run_txn(conn: db.Conn, parent_run_id: str, item: Suspension, now: int) -> None:
    """Send the invoked function its event. Its run meets the function's flow control as an
    event's would; an event that starts none (rate limit, idempotency, singleton, a pause in
    skip mode) fails the invoke at once, naming the rule, instead of leaving it to wait for
    its timeout."""
    cfg = ops_runs.function_config_txn(conn, item.invoke_function_id or "")
    if cfg is None:
        error = jsonutil.dumps(
            {"name": "FunctionNotFound", "message": f"invoke: no function {item.invoke_function_id!r} is registered"}
        )
        ops_runs.fail_invoke_txn(conn, parent_run_id, item.key, error, now)
        return
    event_id, body = ops_runs.insert_internal_event_txn(
        conn, event_mod.FUNCTION_INVOKED, dict(item.invoke_data or {}), now
    )
    skipped = ops_admission.admit_invoke_txn(conn, cfg, event_id, body, now, parent=(parent_run_id, item.key))
    if skipped is not None:
        ops_runs.fail_invoke_txn(conn, parent_run_id, item.key, ops_admission.skipped_invoke_error(cfg, skipped, body), now)


def retry_run_txn(conn: db.Conn, lease: Lease, attempt: int, due_at: int, error: str, now: int) -> None:
    """The function body (outside any step) failed: try the whole run again later (or at its
    finish deadline, to be cancelled, if that is sooner)."""
    due_at, cancel_by = _by_finish_deadline(_hold(conn, lease, lock_runs=True), due_at)
    run_id = lease.run_id
    conn.execute(
        "INSERT INTO step_attempts (run_id, step_key, attempt, error, started_at, ended_at) VALUES (?, '', ?, ?, ?, ?) "
        "ON CONFLICT (run_id, step_key, attempt) DO NOTHING",
        (run_id, attempt, error, now, now),
    )
    conn.execute(
        f"UPDATE {conn.or_fail()}runs SET attempt = ?, status = 'queued', wait_reason = 'retry_backoff', updated_at = ? WHERE id = ?",
        (attempt, now, run_id),
    )
    flow.release_slots(conn, run_id, now)
    conn.execute(
        "UPDATE queue SET lease_owner = NULL, lease_expires_at = NULL, due_at = ?, start_by = ? WHERE run_id = ?",
        (due_at, cancel_by, run_id),
    )
    conn.wake()  # due now, or a timer every worker must plan for


FinishItem = tuple[Lease, str, str | None, str | None, int, tuple[tuple[StepResult, int], ...]]


def finish_many_txn(conn: db.Conn, items: list[FinishItem]) -> list[None | errors.StoreError]:
    """End runs the worker holds, many at once: one lease check and one ending for all of
    them; a final failure sends ``stepline/function.failed``.

    ``items`` are ``(lease, status, output, error, now, steps)``: ``steps`` are the run's
    last step outcomes with their sequence numbers, not yet saved (the function returned
    right after them), written here before the run ends. A run whose lease was lost gets
    a ``LeaseLost`` of its own, found before anything is written.
    """
    held = _held_many(conn, [item[0].run_id for item in items], lock_runs=True)
    out: list[None | errors.StoreError] = []
    ending: list[tuple[str, str, str | None, str | None, int]] = []
    step_rows: list[tuple[Any, ...]] = []
    saved: list[tuple[str, StepResult]] = []
    for lease, status, output, error, now, steps in items:
        row = held.get(lease.run_id)
        if not holds(row, lease) or (row or {}).get("runs_locked"):
            for step, _ in steps:
                _record_unsaved_usage(conn, lease, step)
            out.append(_runs_row_locked(lease) if holds(row, lease) else _lost(lease))
            continue
        for step, seq in steps:
            step_rows.append(_step_row(lease.run_id, step, seq, step.status))
            saved.append((lease.run_id, step))
        ending.append((lease.run_id, status, output, error, now))
        out.append(None)
    if step_rows:
        conn.executemany(_UPSERT_STEP, step_rows)
    for run_id, step in saved:
        _checkpoint_extras(conn, run_id, step)
    if ending:
        _end_held_runs_txn(conn, ending)
    return out


def _end_held_runs_txn(conn: db.Conn, items: list[tuple[str, str, str | None, str | None, int]]) -> None:
    ops_runs.end_runs_txn(conn, items)  # it also sends function.finished, .failed and .cancelled


def heartbeat_txn(conn: db.Conn, worker_id: str, leases: list[Lease], lease_ms: int) -> Renewal:
    """Extend this worker's leases on the runs it is executing, from the database's clock now.

    Returns the leases extended (a run missing from them was leased again, or ended) and
    those of the worker's runs that were asked to cancel. Only ``leases``: a lease the
    worker does not know it has (its claim or hand-off committed, but the answer was lost
    with the connection) runs out and the run is claimed again, rather than being kept
    alive by a worker that will never run it.

    Rows of this owner with another epoch are its own later leases (a worker never holds
    two of one run): extending them is harmless, and they are not reported held. Rows
    another transaction has locked are passed over, not waited for: on PostgreSQL the
    renewal has a connection of its own, and this process's writer locks the rows of the
    runs whose steps it is saving until its commit, which may be seconds away.
    """
    since = time.monotonic()
    epochs = {lease.run_id: lease.epoch for lease in leases}
    if conn.dialect == "postgres":
        renewed, others, cancelled = _renew_in_one_statement(conn, worker_id, list(epochs), lease_ms)
    else:
        renewed, others, cancelled = _renew_step_by_step(conn, worker_id, list(epochs), lease_ms)
    held = {r["run_id"]: r["lease_epoch"] for r in renewed if epochs[r["run_id"]] in (None, r["lease_epoch"])}
    busy = frozenset(  # locked, and as last committed still this lease's
        r["run_id"] for r in others
        if r["run_id"] not in held and holds(r, Lease(r["run_id"], worker_id, epochs[r["run_id"]]))
    )
    return Renewal(held, cancelled, since, busy)


def _renew_sql(conn: db.Conn, marks: str) -> str:
    return (
        f"UPDATE queue SET lease_expires_at = {conn.clock_ms} + ? WHERE run_id IN "
        f"(SELECT run_id FROM queue WHERE lease_owner = ? AND run_id IN ({marks}) {conn.skip_locked()}) "
        "RETURNING run_id, lease_epoch"
    )


_CANCEL_ASKED = "SELECT q.run_id FROM queue q JOIN runs r ON r.id = q.run_id WHERE q.lease_owner = ? AND r.cancel_requested = 1"


def _renew_step_by_step(
    conn: db.Conn, worker_id: str, run_ids: list[str], lease_ms: int
) -> tuple[list[db.Row], list[db.Row], list[str]]:
    """The renewal, the rows it passed over and the runs asked to cancel, a statement each."""
    renewed: list[db.Row] = []
    others: list[db.Row] = []
    if run_ids:
        marks, params = db.in_list(run_ids)
        renewed = conn.all(_renew_sql(conn, marks), (lease_ms, worker_id, *params))
        done = {r["run_id"] for r in renewed}
        missing = [run_id for run_id in run_ids if run_id not in done]
        if missing:
            marks, params = db.in_list(missing)
            others = conn.all(f"SELECT run_id, lease_owner, lease_epoch FROM queue WHERE run_id IN ({marks})", params)
    return renewed, others, [r["run_id"] for r in conn.all(_CANCEL_ASKED, (worker_id,))]


def _renew_in_one_statement(
    conn: db.Conn, worker_id: str, run_ids: list[str], lease_ms: int
) -> tuple[list[db.Row], list[db.Row], list[str]]:
    """The same in one statement (one round trip where each costs one: a renewal that took
    five on a slow link came after the lease it renewed had run out). The rows read beside
    the UPDATE are as they were before it (its own changes are not visible there), their
    owner and epoch unchanged by it; a row it renewed is left out of them by the caller."""
    if not run_ids:
        return [], [], [r["run_id"] for r in conn.all(_CANCEL_ASKED, (worker_id,))]
    marks, params = db.in_list(run_ids)
    rows = conn.all(
        f"WITH renewed AS ({_renew_sql(conn, marks)}) "
        "SELECT 'renewed' AS kind, run_id, NULL AS lease_owner, lease_epoch FROM renewed "
        f"UNION ALL SELECT 'other', run_id, lease_owner, lease_epoch FROM queue WHERE run_id IN ({marks}) "
        f"UNION ALL SELECT 'cancel', run_id, NULL, NULL FROM ({_CANCEL_ASKED}) AS asked",
        (lease_ms, worker_id, *params, *params, worker_id),
    )
    return (
        [r for r in rows if r["kind"] == "renewed"],
        [r for r in rows if r["kind"] == "other"],
        [r["run_id"] for r in rows if r["kind"] == "cancel"],
    )


def cancel_requested_txn(conn: db.Conn, worker_id: str) -> list[str]:
    """The runs leased to this worker that were asked to cancel (a read, for backends whose
    cancel signal does not reach other processes)."""
    rows = conn.all(
        "SELECT q.run_id FROM queue q JOIN runs r ON r.id = q.run_id WHERE q.lease_owner = ? AND r.cancel_requested = 1",
        (worker_id,),
    )
    return [r["run_id"] for r in rows]


def release_txn(conn: db.Conn, leases: list[Lease], now: int) -> None:
    """Hand runs back to the queue untouched (a worker shutting down, or one whose hold on
    them lapsed): only those the leases still hold. A few statements for any number of runs
    (runs stopped together on a slow link were released one round trip after another)."""
    if not leases:
        return
    held = _held_many(conn, [lease.run_id for lease in leases], lock_runs=True)
    run_ids = list(dict.fromkeys(
        lease.run_id for lease in leases
        # a row another session holds: its lease runs out, and a claim takes it then
        if holds(held.get(lease.run_id), lease) and not (held.get(lease.run_id) or {}).get("runs_locked")
    ))
    if not run_ids:
        return
    flow.release_slots_many(conn, run_ids, now)
    conn.executemany(
        "UPDATE queue SET lease_owner = NULL, lease_expires_at = NULL, due_at = ? WHERE run_id = ?",
        [(now, run_id) for run_id in run_ids],
    )
    conn.executemany(
        f"UPDATE {conn.or_fail()}runs SET status = 'queued', wait_reason = 'queued', updated_at = ? WHERE id = ? AND status = 'running'",
        [(now, run_id) for run_id in run_ids],
    )
    conn.wake()


# --- cron ------------------------------------------------------------------------


def cron_schedules_txn(conn: db.Conn, function_ids: list[str]) -> list[CronSchedule]:
    if not function_ids:
        return []
    return cast(list[CronSchedule], conn.all(
        f"SELECT function_id, position, cron, timezone, next_tick FROM cron_schedules WHERE function_id IN ({_in(function_ids)})",
        tuple(function_ids),
    ))


def fire_cron_txn(conn: db.Conn, function_id: str, position: int, tick: int, next_tick: int, now: int) -> str | None:
    """Start the run for one tick, once across all processes (compare-and-set on next_tick)."""
    if not conn.rowcount(
        "UPDATE cron_schedules SET next_tick = ? WHERE function_id = ? AND position = ? AND next_tick = ?",
        (next_tick, function_id, position, tick),
    ):
        return None
    cfg = ops_runs.function_config_txn(conn, function_id)
    if cfg is None or ops_functions.pause_mode_txn(conn, function_id) == "skip":
        return None  # a function paused in skip mode lets its ticks pass
    row = conn.one("SELECT cron FROM cron_schedules WHERE function_id = ? AND position = ?", (function_id, position))
    event_id, body = ops_runs.insert_internal_event_txn(
        conn, event_mod.SCHEDULED_TIMER, {"cron": row["cron"] if row else "", "tick": tick}, now
    )
    return ops_runs.create_run_txn(conn, cfg, event_id, body, now)


def unpark_sweep_txn(conn: db.Conn, now: int) -> int:
    return flow.unpark_sweep(conn, now)
