"""Functions as operators see them: pausing and resuming, a function's page (counts,
durations, cost, recent runs), replaying its failed runs in bulk, and the reads that tie
runs together (links, per-step usage, when a queued run starts, search).

Each ``*_txn`` function runs inside the caller's transaction on a ``db.Conn``.
"""

from __future__ import annotations

from typing import Any

from stepline import errors, jsonutil
from stepline import event as event_mod
from stepline.store import db, ops_metrics, ops_read, ops_runs
from stepline.store.records import (
    TERMINAL_SQL,
    UNFINISHED,
    BulkReplay,
    ChildRun,
    EndedRun,
    FunctionDetail,
    FunctionPause,
    FunctionRef,
    PauseResult,
    Replayed,
    ReplayRun,
    ResumeResult,
    RunBrief,
    RunLinks,
    RunSchedule,
    RunStatus,
    RunView,
    SearchResult,
    StepUsage,
    WaitReason,
)

PAUSE_MODES = ("queue", "skip")
PAUSED_ON = "pause:"  # queue.parked_on of a run set aside because its function is paused
HOUR_MS = 3600 * 1000
RECENT_RUNS = 20


# --- pausing ---------------------------------------------------------------------


def _require_function(conn: db.Conn, function_id: str) -> None:
    if conn.one("SELECT id FROM functions WHERE id = ?", (function_id,)) is None:
        raise errors.NotFoundError(f"no function with id {function_id!r}; `stepline functions list` shows them")


def _pause_dict(row: db.Row) -> FunctionPause:
    return {"mode": row["mode"], "reason": row["reason"], "paused_at": ops_read.iso(row["paused_at"])}


def pause_txn(conn: db.Conn, function_id: str, mode: str, reason: str | None, now: int) -> PauseResult:
    """Pause a function: ``queue`` holds its runs until it resumes, ``skip`` also starts
    none for new events and cron ticks. Pausing again changes the mode, keeping the time."""
    if mode not in PAUSE_MODES:
        raise errors.RequestError(f"mode: expected one of {list(PAUSE_MODES)}, got {mode!r}")
    _require_function(conn, function_id)
    conn.execute(
        "INSERT INTO function_pauses (function_id, mode, reason, paused_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (function_id) DO UPDATE SET mode = excluded.mode, reason = excluded.reason",
        (function_id, mode, reason, now),
    )
    row = conn.one("SELECT * FROM function_pauses WHERE function_id = ?", (function_id,))
    assert row is not None
    return {"function_id": function_id, "paused": _pause_dict(row)}


def resume_txn(conn: db.Conn, function_id: str, now: int) -> ResumeResult:
    """Resume a paused function: the runs its pause set aside go back in line at the due
    time they had, so they start in the order they would have."""
    _require_function(conn, function_id)
    was = conn.rowcount("DELETE FROM function_pauses WHERE function_id = ?", (function_id,))
    key = PAUSED_ON + function_id
    held = [r["run_id"] for r in conn.all("SELECT run_id FROM queue WHERE parked_on = ?", (key,))]
    if held:
        conn.execute(
            "UPDATE runs SET wait_reason = ?, updated_at = ? WHERE id IN "
            "(SELECT run_id FROM queue WHERE parked_on = ?) AND status = ?",
            (WaitReason.QUEUED, now, key, RunStatus.QUEUED),
        )
        conn.execute(
            "UPDATE queue SET due_at = CASE WHEN parked_score + priority_ms < ? THEN parked_score + priority_ms ELSE ? END, "
            "parked_on = NULL, parked_score = NULL WHERE parked_on = ?",
            (now, now, key),
        )
        conn.wake()
    return {"function_id": function_id, "was_paused": bool(was), "resumed_runs": len(held)}


def pauses_txn(conn: db.Conn) -> dict[str, FunctionPause]:
    """Every paused function: id -> {mode, reason, paused_at}."""
    return {r["function_id"]: _pause_dict(r) for r in conn.all("SELECT * FROM function_pauses")}


def pause_mode_txn(conn: db.Conn, function_id: str) -> str | None:
    row = conn.one("SELECT mode FROM function_pauses WHERE function_id = ?", (function_id,))
    return None if row is None else str(row["mode"])


def hold_paused_txn(conn: db.Conn, rows: list[dict[str, Any]], now: int) -> None:
    """Set aside runs a claim found due whose function is paused (``rows``: run_id,
    function_id): out of the ready index, keeping their place in line, until resumed."""
    conn.executemany(
        "UPDATE queue SET parked_on = ?, parked_score = due_at - priority_ms, due_at = ? WHERE run_id = ?",
        [(PAUSED_ON + r["function_id"], ops_runs.NEVER, r["run_id"]) for r in rows],
    )
    conn.executemany(
        f"UPDATE {conn.or_fail()}runs SET status = ?, wait_reason = ?, updated_at = ? WHERE id = ?",
        [(RunStatus.QUEUED, WaitReason.FUNCTION_PAUSED, now, r["run_id"]) for r in rows],
    )


# --- a function's page -----------------------------------------------------------


def function_detail_txn(conn: db.Conn, function_id: str, now: int, since_ms: int) -> FunctionDetail:
    """Config, triggers, pause, run counts (live, and by outcome since ``since_ms``),
    p50/p95 duration, tokens and cost since ``since_ms``, and the newest runs."""
    row = conn.one("SELECT * FROM functions WHERE id = ?", (function_id,))
    if row is None:
        raise errors.NotFoundError(f"no function with id {function_id!r}; `stepline functions list` shows them")
    config = jsonutil.loads(row["config"])
    live = {status: 0 for status in UNFINISHED}
    for r in conn.all("SELECT status, COUNT(*) AS n FROM runs WHERE function_id = ? AND status IN "
                      f"({', '.join('?' for _ in UNFINISHED)}) GROUP BY status", (function_id, *UNFINISHED)):
        live[r["status"]] = int(r["n"])
    stats = next((s for s in ops_metrics.function_stats_txn(conn, since_ms) if s["function_id"] == function_id), None)
    pause = conn.one("SELECT * FROM function_pauses WHERE function_id = ?", (function_id,))
    usage_rows, params = ops_metrics._usage_rows(since_ms, function_id)
    usage = conn.one(f"SELECT {ops_metrics._USAGE_TOTALS} FROM ({usage_rows}) u", params)
    recent = conn.all("SELECT * FROM runs WHERE function_id = ? ORDER BY id DESC LIMIT ?", (function_id, RECENT_RUNS))
    return {
        "id": function_id,
        "app_id": row["app_id"],
        "triggers": config.get("triggers", []) if isinstance(config, dict) else [],
        "config": config,
        "updated_at": ops_read.iso(row["updated_at"]),
        "paused": None if pause is None else _pause_dict(pause),
        "since": ops_read.iso(since_ms),
        "counts": {
            "queued": live[RunStatus.QUEUED],
            "running": live[RunStatus.RUNNING],
            "sleeping": live[RunStatus.SLEEPING],
            "waiting": live[RunStatus.WAITING],
            "completed": stats["completed"] if stats else 0,
            "failed": stats["failed"] if stats else 0,
            "cancelled": stats["cancelled"] if stats else 0,
        },
        "success_rate": stats["success_rate"] if stats else None,
        "p50_ms": stats["p50_ms"] if stats else None,
        "p95_ms": stats["p95_ms"] if stats else None,
        "usage": ops_metrics._usage(usage or {}),
        "recent_runs": [ops_read.run_dict(r) for r in recent],
    }


def failed_runs_txn(
    conn: db.Conn, function_id: str, since_ms: int | None, until_ms: int | None, limit: int
) -> list[str]:
    """Ids of the function's runs that failed (ended) in [since, until), oldest first."""
    where = ["function_id = ?", "status = ?", "ended_at IS NOT NULL"]
    params: list[Any] = [function_id, RunStatus.FAILED]
    if since_ms is not None:
        where.append("ended_at >= ?")
        params.append(since_ms)
    if until_ms is not None:
        where.append("ended_at < ?")
        params.append(until_ms)
    rows = conn.all(f"SELECT id FROM runs WHERE {' AND '.join(where)} ORDER BY ended_at, id LIMIT ?", (*params, limit))
    return [r["id"] for r in rows]


def bulk_replay_txn(
    conn: db.Conn, function_id: str, since_ms: int | None, until_ms: int | None, limit: int, now: int
) -> BulkReplay:
    """Replay (from the start) each run of the function that failed in [since, until) and
    was not replayed before, so asking twice starts each replay once."""
    _require_function(conn, function_id)
    failed = failed_runs_txn(conn, function_id, since_ms, until_ms, limit)
    replayed: set[str] = set()
    if failed:
        marks, params = db.in_list(failed)
        replayed = {r["replay_of"] for r in conn.all(f"SELECT replay_of FROM runs WHERE replay_of IN ({marks})", params)}
    started: list[Replayed] = []
    for run_id in failed:
        if run_id not in replayed:
            started.append({"replay_of": run_id, "id": ops_runs.replay_run_txn(conn, run_id, now)})
    return {"matched": len(failed), "replayed": len(started), "already_replayed": len(failed) - len(started), "runs": started}


# --- what ties a run to others -----------------------------------------------------


def _brief(row: db.Row) -> RunBrief:
    return {"id": row["id"], "function_id": row["function_id"], "status": row["status"], "created_at": ops_read.iso(row["created_at"])}


def run_links_txn(conn: db.Conn, run_id: str) -> RunLinks:
    """The runs and events around one run: the event that cancelled it, its parent and
    the runs it invoked, its replays and reruns, its ``on_failure`` run (or, for a
    failure handler's run, the run whose failure it handles)."""
    run = conn.one("SELECT * FROM runs WHERE id = ?", (run_id,))
    if run is None:
        raise errors.NotFoundError(f"no run with id {run_id!r}")
    children: list[ChildRun] = [
        {**_brief(r), "step": r["parent_step_key"]}
        for r in conn.all("SELECT * FROM runs WHERE parent_run_id = ? ORDER BY id", (run_id,))
    ]
    replays: list[ReplayRun] = []
    for r in conn.all("SELECT * FROM runs WHERE replay_of = ? ORDER BY id", (run_id,)):
        reused = conn.one("SELECT 1 AS x FROM steps WHERE run_id = ? AND meta LIKE ? LIMIT 1", (r["id"], '%"reused_from"%'))
        replays.append({**_brief(r), "kind": "rerun" if reused else "replay"})
    parent = conn.one("SELECT * FROM runs WHERE id = ?", (run["parent_run_id"],)) if run["parent_run_id"] else None
    return {
        "cancelled_by_event": run["cancelled_by"],
        "parent": None if parent is None else _brief(parent),
        "children": children,
        "replays": replays,
        "failure_handler_runs": _failure_handler_runs(conn, run) if run["status"] == RunStatus.FAILED else [],
        "handles_failure_of": _failed_run_handled(conn, run),
    }


def _failure_handler_runs(conn: db.Conn, run: db.Row) -> list[RunBrief]:
    """Runs started by the ``function.failed`` event that this run's end sent (written in
    the transaction that ended it, so received at its end time)."""
    events = [
        e["id"]
        for e in conn.all("SELECT id, body FROM events WHERE name = ? AND received_at = ?", (event_mod.FUNCTION_FAILED, run["ended_at"]))
        if ((jsonutil.loads(e["body"]) or {}).get("data") or {}).get("run_id") == run["id"]
    ]
    if not events:
        return []
    marks, params = db.in_list(events)
    return [_brief(r) for r in conn.all(f"SELECT * FROM runs WHERE event_id IN ({marks}) ORDER BY id", params)]


def _failed_run_handled(conn: db.Conn, run: db.Row) -> RunBrief | None:
    event = conn.one("SELECT name, body FROM events WHERE id = ?", (run["event_id"],))
    if event is None or event["name"] != event_mod.FUNCTION_FAILED:
        return None
    failed_id = ((jsonutil.loads(event["body"]) or {}).get("data") or {}).get("run_id")
    failed = conn.one("SELECT * FROM runs WHERE id = ?", (failed_id,)) if isinstance(failed_id, str) else None
    return None if failed is None else _brief(failed)


def step_usage_txn(conn: db.Conn, run_id: str) -> dict[str, StepUsage]:
    """Each model-call step's provider, model, calls, tokens, cost and latency, by step key
    (the tokens that failed attempts were billed, filed as ``key@attempt``, count on the step)."""
    sums: dict[str, dict[str, Any]] = {}
    for r in conn.all("SELECT * FROM llm_usage WHERE run_id = ? ORDER BY created_at", (run_id,)):
        key = str(r["step_key"]).split("@", 1)[0]
        entry = sums.setdefault(key, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "reasoning_tokens": 0,
                                      "cached_tokens": 0, "cost_usd": 0.0})
        entry["calls"] += 1
        for column in ("prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens", "cost_usd"):
            entry[column] += r[column] or 0
        entry.update(provider=r["provider"], model=r["model"], latency_ms=r["latency_ms"])  # the last call's
    return {
        key: {"provider": e["provider"], "model": e["model"], **ops_metrics._usage(e), "latency_ms": e["latency_ms"]}
        for key, e in sums.items()
    }


def run_schedule_txn(conn: db.Conn, run_id: str) -> RunSchedule:
    """When an unfinished run is due next (a throttled, scheduled, sleeping or retrying
    run's start), and whether a worker holds it or it is set aside (a paused function,
    a concurrency limit)."""
    row = conn.one("SELECT due_at, lease_owner, parked_on FROM queue WHERE run_id = ?", (run_id,))
    if row is None:
        return {"due_at": None, "held_by_worker": False, "set_aside_on": None}
    parked = row["parked_on"]
    due = None if parked is not None or row["lease_owner"] is not None or row["due_at"] >= ops_runs.NEVER else row["due_at"]
    return {"due_at": ops_read.iso(due), "held_by_worker": row["lease_owner"] is not None, "set_aside_on": parked}


def runs_cancelled_by_txn(conn: db.Conn, event_id: str) -> list[RunView]:
    return [ops_read.run_dict(r) for r in conn.all("SELECT * FROM runs WHERE cancelled_by = ? ORDER BY id", (event_id,))]


def runs_ended_since_txn(conn: db.Conn, after: tuple[int, str], limit: int) -> list[EndedRun]:
    """Runs that ended after ``after`` (ended_at, id), in the order they ended."""
    rows = conn.all(
        # A range of runs_by_status_end per status; the cursor's own millisecond is filtered after.
        f"SELECT * FROM runs WHERE status IN {TERMINAL_SQL} AND ended_at >= ? AND NOT (ended_at = ? AND id <= ?) "
        "ORDER BY ended_at, id LIMIT ?",
        (after[0], after[0], after[1], limit),
    )
    return [{**ops_read.run_dict(r), "ended_ms": r["ended_at"]} for r in rows]


# --- search ------------------------------------------------------------------------


def search_txn(conn: db.Conn, query: str, limit: int) -> SearchResult:
    """What ``query`` names: a run or event by id (whole, or the end shown in lists), a
    function by part of its id, a user by id, events by name."""
    text = query.strip()
    upper = text.upper()
    runs = conn.all("SELECT * FROM runs WHERE id = ?", (upper,))
    events = conn.all("SELECT * FROM events WHERE id = ?", (upper,))
    if not runs and not events and 4 <= len(upper) < 26 and upper.isalnum():
        # The short form lists show: the id's last characters (a scan, newest first, bounded).
        runs = conn.all("SELECT * FROM runs WHERE id LIKE ? ORDER BY id DESC LIMIT ?", ("%" + upper, limit))
        events = conn.all("SELECT * FROM events WHERE id LIKE ? ORDER BY id DESC LIMIT ?", ("%" + upper, limit))
    if not events:
        seen = conn.one("SELECT event_id FROM event_ids_seen WHERE external_id = ?", (text,))  # the sender's own id
        if seen is not None:
            events = conn.all("SELECT * FROM events WHERE id = ?", (seen["event_id"],))
    named = conn.all("SELECT * FROM events WHERE name = ? ORDER BY received_at DESC LIMIT ?", (text, limit))
    needle = text.lower()
    functions: list[FunctionRef] = [
        {"id": r["id"], "app_id": r["app_id"]}
        for r in conn.all("SELECT id, app_id FROM functions ORDER BY id")
        if needle and needle in r["id"].lower()
    ]
    user_runs = int(conn.scalar("SELECT COUNT(*) AS n FROM runs WHERE user_id = ?", (text,)) or 0)
    return {
        "query": text,
        "runs": [ops_read.run_dict(r) for r in runs],
        "events": [ops_read.event_dict(r) for r in [*events, *(e for e in named if e["id"] not in {x["id"] for x in events})]][:limit],
        "functions": functions[:limit],
        "users": [{"user_id": text, "runs": user_runs}] if user_runs else [],
    }
