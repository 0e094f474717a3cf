"""Retention: delete finished runs, and what hangs off them, after a configurable age.

A sweeper (``engine/retention.py``) issues these one short transaction at a time, with a
pause between, so the writer is never held for long:

- ``acquire_txn`` / ``finish_txn``: one sweeper at a time across every process, by a
  lease on the ``maintenance`` row with an epoch, as runs have. Every batch checks the
  lease and extends it; a sweeper whose lease was taken over (it stalled past the lease)
  commits nothing more.
- ``prune_runs_txn``: one function's oldest finished runs, in keyset order (ended_at, id)
  over ``runs_finished_by_function``: their steps, attempts, published messages and
  leftover side rows, their LLM usage folded into ``usage_daily``, then the runs, then
  their events (and batch members) that no run points at any more. A run something
  still needs is kept: an invoked run that has not finished, a parent that has not
  finished, a wait, debounce or batch row.
- ``prune_events_txn``: events older than the default retention that no run needs
  (they started nothing, or were debounced away), from a watermark kept across sweeps.
- ``prune_expired_txn``: de-dup ids and idempotency keys past their window, throttle and
  rate-limit state long idle, dashboard sessions that lapsed, daily usage past its own
  retention, the record of REST cancellations past the default retention.

Cut-offs are computed by the caller from the policy read at sweep time (``policies_txn``),
so lowering a retention applies to data already stored.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from stepline import errors, jsonutil
from stepline.store import db
from stepline.store.records import SweepStatus, SweepSummary

TASK = "retention"
DAY_MS = 86_400_000
# Throttle and rate-limit state (flow.gcra_*) idle this long is the same as none at all.
FLOW_STATE_IDLE_MS = 3_600_000
# What each batch deletes, by table, in the totals /metrics reports.
TABLES = (
    "runs", "steps", "step_attempts", "run_messages", "llm_usage", "events", "event_ids_seen",
    "idempotency_keys", "flow_state", "dashboard_sessions", "usage_daily", "cancellations",
)
_BATCHED_INTO = "batched into run "  # ops_admission.note_skip_txn's outcome for a batch member


@dataclasses.dataclass(frozen=True, slots=True)
class SweepLease:
    """A sweeper's right to prune: every batch names it and is checked at commit."""

    owner: str
    epoch: int


@dataclasses.dataclass(frozen=True, slots=True)
class Batch:
    """What one batch did: rows deleted per table, where the next batch starts, whether
    the range is exhausted."""

    deleted: dict[str, int]
    after: tuple[int, str] | None
    done: bool
    kept: int = 0  # runs passed over because something still needs them


# --- the lease -------------------------------------------------------------------


def acquire_txn(
    conn: db.Conn, *, owner: str, lease_ms: int, now: int, min_gap_ms: int, rehearsal: bool = False
) -> SweepLease | None:
    """Take the sweep if nobody holds it and the last one finished ``min_gap_ms`` ago or more.
    A ``rehearsal`` (a dry run) holds it too, but is not recorded as a sweep begun."""
    conn.execute("INSERT INTO maintenance (task) VALUES (?) ON CONFLICT (task) DO NOTHING", (TASK,))
    row = conn.one(
        f"UPDATE maintenance SET owner = ?, epoch = epoch + 1, expires_at = {conn.clock_ms} + ?, "
        "last_started_at = CASE WHEN ? THEN last_started_at ELSE ? END "
        f"WHERE task = ? AND (owner IS NULL OR expires_at <= {conn.clock_ms}) "
        "AND (last_finished_at IS NULL OR last_finished_at <= ?) RETURNING epoch",
        (owner, lease_ms, rehearsal, now, TASK, now - min_gap_ms),
    )
    return None if row is None else SweepLease(owner, int(row["epoch"]))


def _hold(conn: db.Conn, lease: SweepLease, lease_ms: int) -> dict[str, Any]:
    """Check the lease (locking the row until commit) and extend it; returns the sweep state."""
    row = conn.one(
        f"UPDATE maintenance SET expires_at = {conn.clock_ms} + ? WHERE task = ? AND owner = ? AND epoch = ? "
        "RETURNING state",
        (lease_ms, TASK, lease.owner, lease.epoch),
    )
    if row is None:
        raise errors.LeaseLost(
            f"the retention sweep of {lease.owner} (epoch {lease.epoch}) was taken over by another process"
        )
    state: dict[str, Any] = jsonutil.loads(row["state"]) or {}
    return state


def _save(conn: db.Conn, state: dict[str, Any], deleted: dict[str, int]) -> None:
    totals = state.setdefault("deleted", {})
    for table, count in deleted.items():
        if count:
            totals[table] = int(totals.get(table, 0)) + count
    conn.execute("UPDATE maintenance SET state = ? WHERE task = ?", (jsonutil.dumps(state), TASK))


def finish_txn(conn: db.Conn, *, lease: SweepLease, now: int, summary: SweepSummary | None) -> None:
    """Give the sweep up. With a ``summary`` it counts as done: it is recorded, and the next
    background sweep waits its interval from now (a lost lease records nothing)."""
    row = conn.one(
        "SELECT state FROM maintenance WHERE task = ? AND owner = ? AND epoch = ? " + conn.row_lock(),
        (TASK, lease.owner, lease.epoch),
    )
    if row is None:
        return
    if summary is None:
        conn.execute("UPDATE maintenance SET owner = NULL, expires_at = NULL WHERE task = ?", (TASK,))
        return
    state = jsonutil.loads(row["state"]) or {}
    state["last"] = summary
    conn.execute(
        "UPDATE maintenance SET owner = NULL, expires_at = NULL, last_finished_at = ?, state = ? WHERE task = ?",
        (now, jsonutil.dumps(state), TASK),
    )


def status_txn(conn: db.Conn) -> SweepStatus:
    """The sweep's lease holder, when the last one started and finished, and its totals."""
    row = conn.one(
        "SELECT owner, epoch, expires_at, last_started_at, last_finished_at, state FROM maintenance WHERE task = ?",
        (TASK,),
    )
    if row is None:
        return {"owner": None, "expires_at": None, "last_started_at": None, "last_finished_at": None,
                "deleted": {}, "last": None}
    state = jsonutil.loads(row["state"]) or {}
    return {
        "owner": row["owner"],
        "expires_at": row["expires_at"],
        "last_started_at": row["last_started_at"],
        "last_finished_at": row["last_finished_at"],
        "deleted": {t: int(n) for t, n in (state.get("deleted") or {}).items()},
        "last": state.get("last"),
    }


# --- the policy ------------------------------------------------------------------


def policies_txn(conn: db.Conn) -> dict[str, float]:
    """Each registered function's own ``retention`` in seconds (those without one are left out)."""
    out: dict[str, float] = {}
    for row in conn.all("SELECT id, config FROM functions"):
        retention = (jsonutil.loads(row["config"]) or {}).get("retention")
        if isinstance(retention, (int, float)) and not isinstance(retention, bool) and retention > 0:
            out[row["id"]] = float(retention)
    return out


def finished_functions_txn(conn: db.Conn) -> list[str]:
    """The function ids that have finished runs, registered or not: one index probe each."""
    rows = conn.all(
        "WITH RECURSIVE f(id) AS ("
        "SELECT MIN(function_id) FROM runs WHERE ended_at IS NOT NULL "
        "UNION ALL SELECT (SELECT MIN(function_id) FROM runs WHERE ended_at IS NOT NULL AND function_id > f.id) "
        "FROM f WHERE f.id IS NOT NULL) SELECT id FROM f WHERE id IS NOT NULL"
    )
    return [str(r["id"]) for r in rows]


# --- runs ------------------------------------------------------------------------

_FIRST = (-1, "")  # before every (ended_at, id)


def prune_runs_txn(
    conn: db.Conn,
    *,
    lease: SweepLease,
    lease_ms: int,
    function_id: str,
    cutoff: int,
    after: tuple[int, str] | None,
    limit: int,
) -> Batch:
    """Delete up to ``limit`` runs of ``function_id`` that ended before ``cutoff``, oldest
    first from ``after``, with everything that belongs to them alone."""
    state = _hold(conn, lease, lease_ms)
    start = after or _FIRST
    rows = conn.all(
        "SELECT id, ended_at, event_id, batch_event_ids, parent_run_id FROM runs "
        "WHERE function_id = ? AND ended_at IS NOT NULL AND ended_at < ? AND (ended_at, id) > (?, ?) "
        "ORDER BY ended_at, id LIMIT ?",
        (function_id, cutoff, start[0], start[1], limit),
    )
    if not rows:
        return Batch({}, after, True)
    kept = _still_needed(conn, rows)
    pruned = [r for r in rows if r["id"] not in kept]
    deleted = _delete_runs(conn, pruned) if pruned else {}
    _save(conn, state, deleted)
    last = rows[-1]
    return Batch(deleted, (int(last["ended_at"]), str(last["id"])), len(rows) < limit, len(kept))


def _still_needed(conn: db.Conn, rows: list[dict[str, Any]]) -> set[str]:
    """The runs among ``rows`` (all finished) that something unfinished still points at."""
    marks, params = db.in_list([r["id"] for r in rows])
    kept = {
        str(r["parent_run_id"])
        for r in conn.all(
            f"SELECT parent_run_id FROM runs WHERE parent_run_id IN ({marks}) AND ended_at IS NULL", params
        )
    }
    parents = sorted({r["parent_run_id"] for r in rows if r["parent_run_id"]})
    if parents:
        pmarks, pparams = db.in_list(parents)
        waiting = {
            r["id"] for r in conn.all(f"SELECT id FROM runs WHERE id IN ({pmarks}) AND ended_at IS NULL", pparams)
        }
        kept |= {r["id"] for r in rows if r["parent_run_id"] in waiting}
    for table in ("waits", "debounces", "batches"):
        kept |= {str(r["run_id"]) for r in conn.all(f"SELECT DISTINCT run_id FROM {table} WHERE run_id IN ({marks})", params)}
    return kept


def _delete_runs(conn: db.Conn, runs: list[dict[str, Any]]) -> dict[str, int]:
    marks, params = db.in_list([r["id"] for r in runs])
    _fold_usage(conn, marks, params)
    named = [str(r["output_event"]) for r in conn.all(
        f"SELECT DISTINCT output_event FROM steps WHERE run_id IN ({marks}) AND output_event IS NOT NULL", params
    )]
    deleted = {
        table: conn.rowcount(f"DELETE FROM {table} WHERE run_id IN ({marks})", params)
        for table in ("llm_usage", "steps", "step_attempts", "run_messages")
    }
    # None unless an ending (or a crash between a model call's reservation and its settling) left them behind.
    for table in ("singletons", "queue", "budget_reservations", "budget_pauses"):
        conn.execute(f"DELETE FROM {table} WHERE run_id IN ({marks})", params)
    deleted["runs"] = conn.rowcount(f"DELETE FROM runs WHERE id IN ({marks}) AND ended_at IS NOT NULL", params)
    events: set[str] = set(named)  # the large events that resumed their waits
    for run in runs:
        events.add(str(run["event_id"]))
        if run["batch_event_ids"]:
            events.update(str(e) for e in jsonutil.loads(run["batch_event_ids"]) or ())
    deleted["events"] = _delete_unneeded_events(conn, sorted(events))
    return deleted


def _fold_usage(conn: db.Conn, marks: str, params: tuple[Any, ...]) -> None:
    """Add the runs' model calls to the daily sums before their rows go."""
    conn.execute(
        "INSERT INTO usage_daily (day_start, function_id, user_id, provider, model, calls, prompt_tokens, "
        "completion_tokens, reasoning_tokens, cached_tokens, cost_usd) "
        f"SELECT (created_at / {DAY_MS}) * {DAY_MS}, function_id, COALESCE(user_id, ''), COALESCE(provider, ''), model, "
        "COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(reasoning_tokens), SUM(cached_tokens), SUM(cost_usd) "
        f"FROM llm_usage WHERE run_id IN ({marks}) GROUP BY 1, 2, 3, 4, 5 "
        "ON CONFLICT (day_start, function_id, user_id, provider, model) DO UPDATE SET "
        "calls = usage_daily.calls + excluded.calls, prompt_tokens = usage_daily.prompt_tokens + excluded.prompt_tokens, "
        "completion_tokens = usage_daily.completion_tokens + excluded.completion_tokens, "
        "reasoning_tokens = usage_daily.reasoning_tokens + excluded.reasoning_tokens, "
        "cached_tokens = usage_daily.cached_tokens + excluded.cached_tokens, "
        "cost_usd = usage_daily.cost_usd + excluded.cost_usd",
        params,
    )


def _delete_unneeded_events(conn: db.Conn, event_ids: list[str]) -> int:
    """Delete those of ``event_ids`` that no run points at, that no step names as its output
    (a large event that resumed waits), and that are not in a batch of a run still stored
    (a batch's later events are named only in its run's list)."""
    if not event_ids:
        return 0
    marks, params = db.in_list(event_ids)
    rows = conn.all(
        f"SELECT id, outcome FROM events WHERE id IN ({marks}) "
        "AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.event_id = events.id) "
        "AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.output_event = events.id)",
        params,
    )
    batches: dict[str, list[str]] = {}
    free: list[str] = []
    for row in rows:
        runs = _batched_into(row["outcome"])
        if runs:
            for run_id in runs:
                batches.setdefault(run_id, []).append(row["id"])
        else:
            free.append(row["id"])
    if batches:
        bmarks, bparams = db.in_list(sorted(batches))
        alive = {r["id"] for r in conn.all(f"SELECT id FROM runs WHERE id IN ({bmarks})", bparams)}
        held = {e for run_id in alive for e in batches[run_id]}
        free += sorted({e for ids in batches.values() for e in ids} - held)
    if not free:
        return 0
    fmarks, fparams = db.in_list(free)
    return conn.rowcount(f"DELETE FROM events WHERE id IN ({fmarks})", fparams)


def _batched_into(outcome: str | None) -> list[str]:
    if not outcome or _BATCHED_INTO not in outcome:
        return []
    parsed = jsonutil.loads(outcome) or {}
    return [
        reason[len(_BATCHED_INTO):]
        for reason in parsed.values()
        if isinstance(reason, str) and reason.startswith(_BATCHED_INTO)
    ]


# --- events that started nothing -------------------------------------------------


def prune_events_txn(
    conn: db.Conn, *, lease: SweepLease, lease_ms: int, cutoff: int, after: tuple[int, str] | None, limit: int
) -> Batch:
    """Delete up to ``limit`` events received before ``cutoff`` that no run needs, from
    ``after`` (the sweep's first batch: from where the last sweep stopped).

    The watermark is kept across sweeps: an event passed over because a run points at it
    is deleted with that run's last referrer (``prune_runs_txn``), so it is never read
    again here.
    """
    state = _hold(conn, lease, lease_ms)
    mark = after or state.get("events_after") or _FIRST
    rows = conn.all(
        # received_at >= ? lets the index on received_at alone start at the watermark
        "SELECT id, received_at FROM events WHERE received_at < ? AND received_at >= ? AND (received_at, id) > (?, ?) "
        "ORDER BY received_at, id LIMIT ?",
        (cutoff, int(mark[0]), int(mark[0]), str(mark[1]), limit),
    )
    if not rows:
        return Batch({}, (int(mark[0]), str(mark[1])), True)
    deleted = {"events": _delete_unneeded_events(conn, [r["id"] for r in rows])}
    last = (int(rows[-1]["received_at"]), str(rows[-1]["id"]))
    state["events_after"] = list(last)
    _save(conn, state, deleted)
    return Batch(deleted, last, len(rows) < limit)


# --- model calls of no run ------------------------------------------------------


def prune_usage_txn(
    conn: db.Conn, *, lease: SweepLease, lease_ms: int, cutoff: int, after: tuple[int, str] | None, limit: int
) -> Batch:
    """Fold into the daily sums, and delete, up to ``limit`` model calls made before ``cutoff``
    whose run is gone (calls made outside any run); from ``after``, or where the last sweep
    stopped. A call of a stored run goes with its run (``prune_runs_txn``)."""
    state = _hold(conn, lease, lease_ms)
    mark = after or state.get("usage_after") or _FIRST
    rows = conn.all(
        "SELECT run_id, created_at FROM llm_usage WHERE created_at < ? AND created_at >= ? AND (created_at, run_id) > (?, ?) "
        "ORDER BY created_at, run_id LIMIT ?",
        (cutoff, int(mark[0]), int(mark[0]), str(mark[1]), limit),
    )
    if not rows:
        return Batch({}, (int(mark[0]), str(mark[1])), True)
    marks, params = db.in_list(sorted({str(r["run_id"]) for r in rows}))
    stored = {r["id"] for r in conn.all(f"SELECT id FROM runs WHERE id IN ({marks})", params)}
    gone = sorted({str(r["run_id"]) for r in rows} - stored)
    deleted = {"llm_usage": 0}
    if gone:
        gmarks, gparams = db.in_list(gone)
        _fold_usage(conn, gmarks, gparams)
        deleted["llm_usage"] = conn.rowcount(f"DELETE FROM llm_usage WHERE run_id IN ({gmarks})", gparams)
    last = (int(rows[-1]["created_at"]), str(rows[-1]["run_id"]))
    state["usage_after"] = list(last)
    _save(conn, state, deleted)
    return Batch(deleted, last, len(rows) < limit)


# --- rows past their own expiry --------------------------------------------------

_EXPIRED: dict[str, tuple[str, str]] = {
    # table: (the rows to delete, in order, as a subquery selecting their key; its key columns)
    "event_ids_seen": ("SELECT external_id FROM event_ids_seen WHERE expires_at <= ? ORDER BY expires_at LIMIT ?", "external_id"),
    "idempotency_keys": (
        "SELECT function_id, key FROM idempotency_keys WHERE expires_at <= ? ORDER BY expires_at LIMIT ?",
        "(function_id, key)",
    ),
    "dashboard_sessions": ("SELECT id_hash FROM dashboard_sessions WHERE expires_at <= ? ORDER BY expires_at LIMIT ?", "id_hash"),
    "usage_daily": (
        "SELECT day_start, function_id, user_id, provider, model FROM usage_daily WHERE day_start < ? "
        "ORDER BY day_start LIMIT ?",
        "(day_start, function_id, user_id, provider, model)",
    ),
    # A budget's spend per period is cost history: kept as long as the daily usage sums.
    "budget_spend": (
        "SELECT budget_id, key, period_start FROM budget_spend WHERE period_end < ? ORDER BY period_end LIMIT ?",
        "(budget_id, key, period_start)",
    ),
    # A direct call's reservation (no run) that was never settled stops counting at expires_at.
    "budget_reservations": (
        "SELECT run_id, step_key, attempt, budget_id FROM budget_reservations WHERE lease_owner IS NULL "
        "AND expires_at <= ? ORDER BY expires_at LIMIT ?",
        "(run_id, step_key, attempt, budget_id)",
    ),
    # The record of POST /v1/cancellations (each acted when made): history, kept as long as runs.
    "cancellations": ("SELECT id FROM cancellations WHERE created_at < ? ORDER BY created_at LIMIT ?", "id"),
}
EXPIRING = tuple(_EXPIRED)
KEPT_AS_USAGE = ("usage_daily", "budget_spend")  # tables kept for STEPLINE_USAGE_RETENTION
KEPT_AS_RUNS = ("cancellations",)  # tables kept for STEPLINE_RETENTION


def prune_expired_txn(
    conn: db.Conn, *, lease: SweepLease, lease_ms: int, table: str, before: int, limit: int
) -> Batch:
    """Delete up to ``limit`` rows of ``table`` (one of ``EXPIRING``) that expired before ``before``."""
    state = _hold(conn, lease, lease_ms)
    select, key = _EXPIRED[table]
    count = conn.rowcount(f"DELETE FROM {table} WHERE {key} IN ({select})", (before, limit))
    deleted = {table: count}
    _save(conn, state, deleted)
    return Batch(deleted, None, count < limit)


def prune_flow_state_txn(
    conn: db.Conn, *, lease: SweepLease, lease_ms: int, now: int, after: str | None, limit: int
) -> Batch:
    """Delete throttle and rate-limit state idle for an hour (a key whose next slot is long
    past acts exactly as a new one), ``limit`` keys read per batch in key order."""
    state = _hold(conn, lease, lease_ms)
    rows = conn.all("SELECT key FROM flow_state WHERE key > ? ORDER BY key LIMIT ?", (after or "", limit))
    if not rows:
        return Batch({}, None, True)
    marks, params = db.in_list([r["key"] for r in rows])
    count = conn.rowcount(
        f"DELETE FROM flow_state WHERE key IN ({marks}) AND tat < ? AND (key LIKE 't:%' OR key LIKE 'r:%')",
        (*params, now - FLOW_STATE_IDLE_MS),
    )
    deleted = {"flow_state": count}
    _save(conn, state, deleted)
    return Batch(deleted, (0, str(rows[-1]["key"])), len(rows) < limit)
