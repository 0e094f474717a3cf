"""Operator actions over runs: rerun from the failed step, bulk cancel, and the
cancellations of Inngest's REST API (a bulk cancel kept on record).

Each ``*_txn`` function runs inside the caller's transaction on a ``db.Conn``.
"""

from __future__ import annotations

from typing import Any

from stepline import errors, expressions, jsonutil
from stepline.store import db, ops_runs
from stepline.store.records import UNFINISHED, Rerun, RunStatus


def rerun_from_failed_step_txn(conn: db.Conn, run_id: str, now: int) -> Rerun:
    """A new run of the same function and event that starts with the old run's
    completed steps already in its journal, so only the failed step and what follows
    it execute again. Failed, retrying and suspended steps are left out."""
    row = conn.one(
        "SELECT r.status, r.function_id, r.event_id, e.body, f.config FROM runs r "
        f"JOIN events e ON e.id = r.event_id LEFT JOIN functions f ON f.id = r.function_id WHERE r.id = ? {conn.row_lock('r')}",
        (run_id,),  # locked, as in ops_runs.replay_run_txn: a sweep must not take the event from under it
    )
    if row is None:
        raise errors.NotFoundError(f"no run with id {run_id!r}")
    if row["status"] not in (RunStatus.FAILED, RunStatus.CANCELLED):
        raise errors.ConflictError(
            f"run {run_id} is {row['status']}; only failed or cancelled runs can be rerun from the "
            "failed step (use replay to start any run again from the beginning)"
        )
    if row["config"] is None:
        raise errors.NotFoundError(
            f"run {run_id} belongs to function {row['function_id']!r}, which is no longer registered"
        )
    new_id = ops_runs.create_run_txn(
        conn, jsonutil.loads(row["config"]), row["event_id"], jsonutil.loads(row["body"]), now,
        replay_of=run_id, check_idempotency=False,
    )
    assert new_id is not None  # idempotency is not checked for reruns
    steps = conn.all(
        "SELECT key, name, kind, seq, output, output_event, attempts, started_at, ended_at, wake_at, meta "
        "FROM steps WHERE run_id = ? AND status = 'completed' ORDER BY seq",
        (run_id,),
    )
    # replay_of tells the first claim to load this journal (it skips the read for runs never started).
    for seq, step in enumerate(steps, start=1):  # renumbered: the executor continues from len(journal)
        meta = jsonutil.loads(step["meta"]) if step["meta"] else {}
        if not isinstance(meta, dict):
            meta = {"meta": meta}
        meta["reused_from"] = run_id
        conn.execute(
            "INSERT INTO steps (run_id, key, name, kind, status, seq, output, output_event, error, attempts, "
            "started_at, ended_at, wake_at, meta) VALUES (?, ?, ?, ?, 'completed', ?, ?, ?, NULL, ?, ?, ?, ?, ?)",
            (
                new_id, step["key"], step["name"], step["kind"], seq, step["output"], step["output_event"],
                step["attempts"], step["started_at"], step["ended_at"], step["wake_at"], jsonutil.dumps(meta),
            ),
        )
    return {"id": new_id, "rerun_of": run_id, "reused_steps": [s["key"] for s in steps]}


def bulk_cancel_txn(
    conn: db.Conn,
    *,
    function_id: str,
    since_ms: int | None,
    until_ms: int | None,
    now: int,
    reason: str,
    limit: int,
    expression: str | None = None,
) -> list[dict[str, str]]:
    """Cancel up to ``limit`` unfinished runs of one function created in [since, until),
    with ``expression`` only those whose event it matches (CEL over ``event``).

    Returns each run's id and its status afterwards (``cancelled``, or ``cancelling``
    when a worker holds it and will stop it at its next step boundary).
    """
    where = ["r.function_id = ?", f"r.status IN ({', '.join('?' for _ in UNFINISHED)})"]
    params: list[Any] = [function_id, *UNFINISHED]
    if since_ms is not None:
        where.append("r.created_at >= ?")
        params.append(since_ms)
    if until_ms is not None:
        where.append("r.created_at < ?")
        params.append(until_ms)
    if expression is None:
        rows = conn.all(f"SELECT r.id FROM runs r WHERE {' AND '.join(where)} ORDER BY r.id LIMIT ?", (*params, limit))
    else:  # the window in SQL, the expression over each run's event here, up to the limit
        rows = [
            r for r in conn.all(
                f"SELECT r.id, e.body FROM runs r JOIN events e ON e.id = r.event_id WHERE {' AND '.join(where)} ORDER BY r.id",
                tuple(params),
            )
            if expressions.matches(expression, {"event": jsonutil.loads(r["body"])})
        ][:limit]
    statuses = ops_runs.cancel_runs_txn(conn, [r["id"] for r in rows], now, reason)
    return [{"id": r["id"], "status": statuses[r["id"]]} for r in rows]


def create_cancellation_txn(
    conn: db.Conn,
    *,
    cancellation_id: str,
    app_id: str,
    function_id: str,
    started_after: int | None,
    started_before: int,
    expression: str | None,
    now: int,
    limit: int,
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Cancel at once the unfinished runs that a cancellation of Inngest's REST API covers,
    and keep it on record. ``function_id`` is the function's id as its SDK declares it (the
    store's id is ``<app>-<id>``) or the store's id. Returns the record and the runs."""
    found = conn.one(
        "SELECT id FROM functions WHERE app_id = ? AND id IN (?, ?) ORDER BY id = ? DESC",
        (app_id, function_id, f"{app_id}-{function_id}", f"{app_id}-{function_id}"),
    )
    if found is None:
        raise errors.NotFoundError(
            f"no function {function_id!r} in app {app_id!r}; app_id is the app's id and function_id the function's "
            "id as the SDK declares them (GET /api/v1/functions lists them)"
        )
    results = bulk_cancel_txn(
        conn, function_id=str(found["id"]), since_ms=started_after, until_ms=started_before, now=now,
        reason=f"cancelled by cancellation {cancellation_id} (REST API)", limit=limit, expression=expression,
    )
    conn.execute(
        "INSERT INTO cancellations (id, app_id, function_id, started_after, started_before, expression, cancelled, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (cancellation_id, app_id, found["id"], started_after, started_before, expression, len(results), now),
    )
    record = conn.one("SELECT * FROM cancellations WHERE id = ?", (cancellation_id,))
    assert record is not None
    return dict(record), results


MAX_LISTED_CANCELLATIONS = 1000


def list_cancellations_txn(conn: db.Conn, limit: int = MAX_LISTED_CANCELLATIONS) -> list[dict[str, Any]]:
    """The newest ``limit`` cancellations, oldest first: the list has no pages (as on Inngest),
    and a caller who made a million of them must not have them all read into one answer."""
    rows = conn.all("SELECT * FROM cancellations ORDER BY id DESC LIMIT ?", (limit,))
    return [dict(r) for r in reversed(rows)]


def delete_cancellation_txn(conn: db.Conn, cancellation_id: str) -> None:
    """Forget a cancellation. It acted when it was made: the runs it cancelled stay cancelled."""
    if conn.rowcount("DELETE FROM cancellations WHERE id = ?", (cancellation_id,)) == 0:
        raise errors.NotFoundError(f"no cancellation with id {cancellation_id!r} (GET /v1/cancellations lists them)")
