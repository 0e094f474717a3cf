"""The apps' own job table (as such apps name it: ``llm_job_results`` / ``inngest_jobs``), on SQLite.

This is application data, not Stepline's: it shows what a web app keeps for its
users (status, progress, result, tokens, cost) and how steps write it. The file is
``$STEPLINE_EXAMPLES_DB`` (default ``.stepline/examples.db``); each call opens its
own connection, so sync steps in threads and web routes can share it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    user_id TEXT,
    status TEXT NOT NULL,            -- pending, processing, paused, completed, failed, cancelled, error
    progress REAL NOT NULL DEFAULT 0,
    input TEXT,
    output TEXT,
    error TEXT,
    cursor INTEGER,                  -- the next page to fetch, for resumable jobs
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    completed_at REAL
);
CREATE TABLE IF NOT EXISTS rows (
    job_id TEXT NOT NULL,
    page INTEGER NOT NULL,
    position INTEGER NOT NULL,
    item TEXT NOT NULL,
    PRIMARY KEY (job_id, page, position)
);
"""
FIELDS = {"kind", "user_id", "status", "progress", "input", "output", "error", "cursor", "prompt_tokens", "completion_tokens", "cost_usd", "completed_at"}
FINAL = ("completed", "failed", "cancelled", "error")


def path() -> str:
    return os.environ.get("STEPLINE_EXAMPLES_DB", "").strip() or ".stepline/examples.db"


@contextlib.contextmanager
def connect() -> Iterator[sqlite3.Connection]:
    target = path()
    if os.path.dirname(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
    conn = sqlite3.connect(target, timeout=30, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
        conn.execute("BEGIN IMMEDIATE")
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()


def _encode(fields: dict[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - FIELDS
    if unknown:
        raise ValueError(f"jobs: unknown field(s) {sorted(unknown)}; known: {sorted(FIELDS)}")
    return {k: json.dumps(v) if k in ("input", "output") else v for k, v in fields.items()}


def upsert(job_id: str, **fields: Any) -> dict[str, Any]:
    """Create the job or update the given fields; returns the job."""
    now = time.time()
    values = _encode(fields)
    if values.get("status") in FINAL:
        values.setdefault("completed_at", now)
    with connect() as conn:
        if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
            row = {"kind": "job", "status": "pending", **values}
            columns = ", ".join(["id", *row, "created_at", "updated_at"])
            marks = ", ".join("?" * (len(row) + 3))
            conn.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", (job_id, *row.values(), now, now))
        elif values:
            assignments = ", ".join(f"{k} = ?" for k in values)
            conn.execute(f"UPDATE jobs SET {assignments}, updated_at = ? WHERE id = ?", (*values.values(), now, job_id))
        return _decode(conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())


def mark_cancelled(ended: dict[str, Any], id_field: str, *, kind: str) -> None:
    """Say on the job row that its run was cancelled (a cancel event, the API, a timeout),
    from a ``stepline/function.cancelled`` event's data: the job id is ``id_field`` of the
    run's event, else the run id (as the functions name their jobs)."""
    original = (ended.get("event") or {}).get("data") or {}
    job_id = original.get(id_field) or ended.get("run_id")
    if job_id:
        upsert(str(job_id), kind=kind, status="cancelled")


def get(job_id: str) -> dict[str, Any] | None:
    with connect() as conn:
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else _decode(row)


def add_rows(job_id: str, page: int, items: list[Any], next_cursor: int) -> int:
    """Store one page's rows and move the job's cursor, in one transaction (idempotent)."""
    with connect() as conn:
        conn.executemany(
            "INSERT OR IGNORE INTO rows (job_id, page, position, item) VALUES (?, ?, ?, ?)",
            [(job_id, page, i, json.dumps(item)) for i, item in enumerate(items)],
        )
        conn.execute("UPDATE jobs SET cursor = ?, updated_at = ? WHERE id = ?", (next_cursor, time.time(), job_id))
        return int(conn.execute("SELECT COUNT(*) FROM rows WHERE job_id = ?", (job_id,)).fetchone()[0])


def row_count(job_id: str) -> int:
    with connect() as conn:
        return int(conn.execute("SELECT COUNT(*) FROM rows WHERE job_id = ?", (job_id,)).fetchone()[0])


def metrics(kind: str, days: int = 30) -> dict[str, Any]:
    """The dashboard queries such apps run: success rate, average duration, cost per day."""
    since = time.time() - days * 86400
    with connect() as conn:
        total, completed, finished = conn.execute(
            "SELECT COUNT(*), SUM(status = 'completed'), SUM(status IN ('completed', 'failed', 'error')) "
            "FROM jobs WHERE kind = ? AND created_at >= ?",
            (kind, since),
        ).fetchone()
        average = conn.execute(
            "SELECT AVG(completed_at - created_at) FROM jobs WHERE kind = ? AND status = 'completed' AND created_at >= ?",
            (kind, since),
        ).fetchone()[0]
        daily = conn.execute(
            "SELECT date(created_at, 'unixepoch') AS day, SUM(cost_usd) AS cost, COUNT(*) AS jobs, "
            "SUM(prompt_tokens + completion_tokens) AS tokens FROM jobs WHERE kind = ? AND created_at >= ? "
            "GROUP BY day ORDER BY day DESC",
            (kind, since),
        ).fetchall()
    return {
        "jobs": total or 0,
        "success_rate": None if not finished else round(100.0 * (completed or 0) / finished, 2),
        "average_duration_s": average,
        "daily": [dict(row) for row in daily],
    }


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    job = dict(row)
    for key in ("input", "output"):
        job[key] = None if job[key] is None else json.loads(job[key])
    for key in ("created_at", "updated_at", "completed_at"):
        if job[key] is not None:
            job[key] = dt.datetime.fromtimestamp(job[key], dt.UTC).isoformat(timespec="milliseconds")
    return job
