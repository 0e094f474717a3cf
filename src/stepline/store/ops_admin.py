"""Operator actions over runs: rerun from the failed step, and bulk cancel.

Each ``*_txn`` function runs inside the caller's transaction on a ``db.Conn``.
"""

from __future__ import annotations

from typing import Any

from stepline import errors, jsonutil
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
) -> list[dict[str, str]]:
    """Cancel up to ``limit`` unfinished runs of one function created in [since, until).

    Returns each run's id and its status afterwards (``cancelled``, or ``cancelling``
    when a worker holds it and will stop it at its next step boundary).
    """
    where = ["function_id = ?", f"status IN ({', '.join('?' for _ in UNFINISHED)})"]
    params: list[Any] = [function_id, *UNFINISHED]
    if since_ms is not None:
        where.append("created_at >= ?")
        params.append(since_ms)
    if until_ms is not None:
        where.append("created_at < ?")
        params.append(until_ms)
    rows = conn.all(f"SELECT id FROM runs WHERE {' AND '.join(where)} ORDER BY id LIMIT ?", (*params, limit))
    statuses = ops_runs.cancel_runs_txn(conn, [r["id"] for r in rows], now, reason)
    return [{"id": r["id"], "status": statuses[r["id"]]} for r in rows]
