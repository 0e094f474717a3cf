"""Read-only queries for the API, the CLI and the dashboard."""

from __future__ import annotations

import datetime as dt
from typing import Any

from stepline import errors, jsonutil
from stepline.store import db, ops_budget, ops_runs
from stepline.store.records import (
    EventFields,
    EventView,
    FunctionRow,
    RunMessage,
    RunView,
    StepView,
    WaitReason,
)


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def run_dict(row: dict[str, Any]) -> RunView:
    return {
        "id": row["id"],
        "function_id": row["function_id"],
        "status": row["status"],
        "wait_reason": row["wait_reason"],
        "attempt": row["attempt"],
        "user_id": row["user_id"],
        "progress": row["progress"],
        "progress_message": row["progress_message"],
        "output": jsonutil.loads(row["output"]),
        "error": jsonutil.loads(row["error"]),
        "event_id": row["event_id"],
        "parent_run_id": row["parent_run_id"],
        "replay_of": row["replay_of"],
        "created_at": iso(row["created_at"]),
        "started_at": iso(row["started_at"]),
        "ended_at": iso(row["ended_at"]),
        "updated_at": iso(row["updated_at"]),
        "duration_ms": None
        if row["started_at"] is None or row["ended_at"] is None
        else row["ended_at"] - row["started_at"],
    }


def _step_dict(row: dict[str, Any], attempts: list[dict[str, Any]]) -> StepView:
    return {
        "id": row["key"],
        "name": row["name"],
        "kind": row["kind"],
        "status": row["status"],
        "attempts": row["attempts"],
        "output": jsonutil.loads(row["output"]),
        "error": jsonutil.loads(row["error"]),
        "started_at": iso(row["started_at"]),
        "ended_at": iso(row["ended_at"]),
        "wake_at": iso(row["wake_at"]),
        "duration_ms": None
        if row["started_at"] is None or row["ended_at"] is None
        else row["ended_at"] - row["started_at"],
        "meta": jsonutil.loads(row["meta"]),
        "attempt_history": [
            {
                "attempt": a["attempt"],
                "error": jsonutil.loads(a["error"]),
                "started_at": iso(a["started_at"]),
                "ended_at": iso(a["ended_at"]),
            }
            for a in attempts
        ],
    }


def get_run_txn(conn: db.Conn, run_id: str) -> RunView:
    row = conn.one("SELECT * FROM runs WHERE id = ?", (run_id,))
    if row is None:
        raise errors.NotFoundError(f"no run with id {run_id!r}")
    run = run_dict(row)
    event = conn.one("SELECT body FROM events WHERE id = ?", (row["event_id"],))
    run["event"] = jsonutil.loads(event["body"]) if event else None
    attempts: dict[str, list[dict[str, Any]]] = {}
    for a in conn.all("SELECT * FROM step_attempts WHERE run_id = ? ORDER BY attempt", (run_id,)):
        attempts.setdefault(a["step_key"], []).append(a)
    run["steps"] = [
        _step_dict(s, attempts.get(s["key"], []))
        for s in conn.all(
            "SELECT key, name, kind, status, attempts, error, started_at, ended_at, wake_at, meta, "
            f"{ops_runs.STEP_OUTPUT} FROM steps WHERE run_id = ? ORDER BY seq, started_at",
            (run_id,),
        )
    ]
    run["function_attempts"] = [
        {"attempt": a["attempt"], "error": jsonutil.loads(a["error"]), "at": iso(a["ended_at"])}
        for a in attempts.get("", [])
    ]
    if row["wait_reason"] == WaitReason.BUDGET_EXCEEDED:
        run["budget"] = ops_budget.pause_of_txn(conn, run_id)  # the budget, key, spend and limit it waits on
    return run


def page_filters(
    equal: dict[str, Any], time_column: str, since_ms: int | None, until_ms: int | None, before_id: str | None
) -> tuple[str, list[Any]]:
    """The WHERE clause of a newest-first page: equal columns, a time range, the id cursor."""
    where = [f"{column} = ?" for column, value in equal.items() if value is not None]
    params: list[Any] = [value for value in equal.values() if value is not None]
    for condition, value in ((f"{time_column} >= ?", since_ms), (f"{time_column} < ?", until_ms), ("id < ?", before_id)):
        if value is not None:
            where.append(condition)
            params.append(value)
    return (f"WHERE {' AND '.join(where)}" if where else ""), params


def list_runs_txn(
    conn: db.Conn,
    *,
    function_id: str | None = None,
    status: str | None = None,
    user_id: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    before_id: str | None = None,
    limit: int = 50,
) -> list[RunView]:
    """Newest first; ``before_id`` is the cursor (the last id of the previous page). An
    output longer than ``LISTED_OUTPUT_CHARS`` is left out (``output`` null,
    ``output_elided`` true), as event bodies are: a function may return what a sender made
    large, and a page of such runs would cost the server hundreds of megabytes; the run's
    own read has it whole."""
    clause, params = page_filters(
        {"function_id": function_id, "status": status, "user_id": user_id}, "created_at", since_ms, until_ms, before_id
    )
    rows = conn.all(
        f"SELECT {_LISTED_RUN_COLUMNS}, CASE WHEN length(output) > ? THEN 'null' ELSE output END AS output, "
        f"length(output) > ? AS output_elided FROM runs {clause} ORDER BY id DESC LIMIT ?",
        (LISTED_OUTPUT_CHARS, LISTED_OUTPUT_CHARS, *params, limit),
    )
    listed: list[RunView] = []
    for row in rows:
        run = run_dict(row)
        if row["output_elided"]:
            run["output_elided"] = True
        listed.append(run)
    return listed


LISTED_OUTPUT_CHARS = 64 * 1024  # the longest run output a listing carries (see list_runs_txn)
_LISTED_RUN_COLUMNS = (
    "id, function_id, status, wait_reason, attempt, user_id, progress, progress_message, error, event_id, "
    "parent_run_id, replay_of, created_at, started_at, ended_at, updated_at"
)


def event_dict(row: dict[str, Any]) -> EventFields:
    outcome = jsonutil.loads(row["outcome"]) or {}
    resumed = outcome.pop(ops_runs.RESUMED, [])
    return {
        "id": row["id"],
        "name": row["name"],
        "body": jsonutil.loads(row["body"]),
        "user_id": row["user_id"],
        "received_at": iso(row["received_at"]),
        "skipped": outcome,
        "resumed_runs": resumed,
    }


def get_event_txn(conn: db.Conn, event_id: str) -> EventView:
    row = conn.one("SELECT * FROM events WHERE id = ?", (event_id,))
    if row is None:
        raise errors.NotFoundError(f"no event with id {event_id!r}")
    runs = [run_dict(r) for r in conn.all("SELECT * FROM runs WHERE event_id = ? ORDER BY id", (event_id,))]
    base = event_dict(row)
    return {
        "id": base["id"], "name": base["name"], "body": base["body"], "user_id": base["user_id"],
        "received_at": base["received_at"], "skipped": base["skipped"], "resumed_runs": base["resumed_runs"], "runs": runs,
    }


def list_functions_txn(conn: db.Conn) -> list[FunctionRow]:
    return [
        {"id": r["id"], "app_id": r["app_id"], "config": jsonutil.loads(r["config"]), "updated_at": iso(r["updated_at"])}
        for r in conn.all("SELECT * FROM functions ORDER BY id")
    ]


def run_messages_txn(conn: db.Conn, run_id: str, after_seq: int = 0) -> list[RunMessage]:
    return _messages(conn.all("SELECT * FROM run_messages WHERE run_id = ? AND seq > ? ORDER BY seq", (run_id, after_seq)))


# A page of a run's messages holds at most this much text (one message at least, whatever its
# size) and this many messages: a stream opened on a run with a long history reads it page by
# page, as its client takes it, never all of it at once.
MESSAGE_PAGE_CHARS = 1024 * 1024
MESSAGE_PAGE_ROWS = 500


def run_messages_page_txn(conn: db.Conn, run_id: str, after_seq: int) -> tuple[list[RunMessage], bool]:
    """The messages after ``after_seq``, a page of them, and whether more follow. Their sizes
    are read first, so only the page's texts are loaded."""
    sizes = conn.all(
        "SELECT seq, length(data) AS size FROM run_messages WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        (run_id, after_seq, MESSAGE_PAGE_ROWS + 1),
    )
    if not sizes:
        return [], False
    taken, last = 0, int(sizes[0]["seq"])
    for row in sizes[:MESSAGE_PAGE_ROWS]:
        if taken and taken + int(row["size"]) > MESSAGE_PAGE_CHARS:
            break
        taken += int(row["size"])
        last = int(row["seq"])
    rows = conn.all(
        "SELECT * FROM run_messages WHERE run_id = ? AND seq > ? AND seq <= ? ORDER BY seq", (run_id, after_seq, last)
    )
    return _messages(rows), int(sizes[-1]["seq"]) > last


def _messages(rows: list[dict[str, Any]]) -> list[RunMessage]:
    return [{"seq": r["seq"], "topic": r["topic"], "data": jsonutil.loads(r["data"]), "at": iso(r["created_at"])} for r in rows]


QUEUE_POSITION_BOUND = 10_000  # a position past this is shown as this: counting further costs a long scan


def run_queue_txn(conn: db.Conn, run_id: str) -> dict[str, Any] | None:
    """A run's row in the queue (a run has at most one: its next start, resumption or retry),
    with its ``position``: the unleased rows due before it, counted up to QUEUE_POSITION_BOUND.
    None when the run is not queued (running now, waiting for an event, or ended)."""
    row = conn.one("SELECT run_id, due_at, lease_owner FROM queue WHERE run_id = ?", (run_id,))
    if row is None:
        return None
    ahead = conn.scalar(
        "SELECT COUNT(*) FROM (SELECT 1 FROM queue WHERE due_at < ? AND lease_owner IS NULL LIMIT ?) ahead",
        (row["due_at"], QUEUE_POSITION_BOUND),
    )
    return {"run_id": row["run_id"], "due_at": row["due_at"], "leased": row["lease_owner"] is not None, "position": int(ahead or 0)}
