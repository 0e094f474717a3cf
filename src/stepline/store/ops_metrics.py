"""Metrics queries: queue depth, run outcomes and durations, LLM tokens and cost.

Written once for both backends: integer division of epoch milliseconds buckets days
the same way on SQLite and PostgreSQL, and percentiles are computed here rather
than with a dialect's percentile function.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from stepline.store import db
from stepline.store.records import (
    TERMINAL_SQL,
    DayUsage,
    FunctionStats,
    MetricsOverview,
    ModelUsage,
    QueueDepth,
    Usage,
    UserUsage,
)

DAY_MS = 86_400_000
# Durations read for percentiles per call; beyond this the newest runs are used.
MAX_DURATION_ROWS = 200_000


def percentile(sorted_values: list[int], fraction: float) -> int | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, int(-(-fraction * len(sorted_values) // 1)))  # ceil without floats drifting
    return sorted_values[min(rank, len(sorted_values)) - 1]


def ping_txn(conn: db.Conn) -> None:
    """One row at most of the queue: the database answers and has the schema."""
    conn.one("SELECT run_id FROM queue LIMIT 1")


def queue_depth_txn(conn: db.Conn, now: int) -> list[QueueDepth]:
    """Per function: runs ready to execute now, scheduled for later (sleeps, retries,
    waits with a timeout), and leased by a worker."""
    out: dict[str, QueueDepth] = {}
    for r in conn.all(
        "SELECT function_id, "
        "SUM(CASE WHEN lease_owner IS NULL AND due_at <= ? THEN 1 ELSE 0 END) AS ready, "
        "SUM(CASE WHEN lease_owner IS NULL AND due_at > ? THEN 1 ELSE 0 END) AS scheduled, "
        "SUM(CASE WHEN lease_owner IS NOT NULL THEN 1 ELSE 0 END) AS leased "
        "FROM queue GROUP BY function_id",
        (now, now),
    ):
        out[r["function_id"]] = {
            "function_id": r["function_id"],
            "ready": int(r["ready"] or 0),
            "scheduled": int(r["scheduled"] or 0),
            "leased": int(r["leased"] or 0),
        }
    return [out[k] for k in sorted(out)]


def function_stats_txn(conn: db.Conn, since_ms: int) -> list[FunctionStats]:
    """Per function, runs that ended since ``since_ms``: counts by outcome, success rate
    (completed / (completed + failed); cancelled runs are left out), p50/p95 duration
    of finished runs (started to ended)."""
    stats: dict[str, dict[str, int]] = {}
    for r in conn.all(
        "SELECT function_id, status, COUNT(*) AS n FROM runs "
        f"WHERE status IN {TERMINAL_SQL} AND ended_at >= ? GROUP BY function_id, status",
        (since_ms,),
    ):
        entry = stats.setdefault(r["function_id"], {"completed": 0, "failed": 0, "cancelled": 0})
        entry[r["status"]] = int(r["n"])
    durations: dict[str, list[int]] = {}
    for r in conn.all(
        "SELECT function_id, ended_at - started_at AS d FROM runs "
        "WHERE status IN ('completed', 'failed') AND ended_at >= ? AND started_at IS NOT NULL "
        "ORDER BY ended_at DESC LIMIT ?",
        (since_ms, MAX_DURATION_ROWS),
    ):
        durations.setdefault(r["function_id"], []).append(int(r["d"]))
    running = {
        r["function_id"]: int(r["n"])
        for r in conn.all("SELECT function_id, COUNT(*) AS n FROM runs WHERE status = 'running' GROUP BY function_id")
    }
    out: list[FunctionStats] = []
    for fn_id in sorted(set(stats) | set(running)):
        entry = stats.get(fn_id, {"completed": 0, "failed": 0, "cancelled": 0})
        decided = entry["completed"] + entry["failed"]
        values = sorted(durations.get(fn_id, []))
        out.append(
            {
                "function_id": fn_id,
                "running": running.get(fn_id, 0),
                "completed": entry["completed"],
                "failed": entry["failed"],
                "cancelled": entry["cancelled"],
                "success_rate": None if decided == 0 else round(entry["completed"] / decided, 4),
                "p50_ms": percentile(values, 0.50),
                "p95_ms": percentile(values, 0.95),
            }
        )
    return out


def _day(bucket: int) -> str:
    return dt.datetime.fromtimestamp(bucket * DAY_MS / 1000, dt.UTC).date().isoformat()


_USAGE_SUMS = (
    "COUNT(*) AS calls, SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens, "
    "SUM(reasoning_tokens) AS reasoning_tokens, SUM(cached_tokens) AS cached_tokens, SUM(cost_usd) AS cost_usd"
)


# The same sums over ``_usage_rows``, where a row may stand for many calls of one day.
_USAGE_TOTALS = (
    "SUM(calls) AS calls, SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens, "
    "SUM(reasoning_tokens) AS reasoning_tokens, SUM(cached_tokens) AS cached_tokens, SUM(cost_usd) AS cost_usd"
)
_USAGE_COLUMNS = "prompt_tokens, completion_tokens, reasoning_tokens, cached_tokens, cost_usd"


def _usage_rows(since_ms: int | None, function_id: str | None = None) -> tuple[str, list[Any]]:
    """Model calls still stored one by one, and the daily sums of those whose runs retention
    deleted (``usage_daily``), as rows of one shape: ``at`` is the call's time or its day's
    start. A day of sums counts when ``since_ms`` falls on or before its end."""
    calls: list[str] = []
    sums: list[str] = []
    call_params: list[Any] = []
    sum_params: list[Any] = []
    if since_ms is not None:
        calls.append("created_at >= ?")
        call_params.append(since_ms)
        sums.append("day_start >= ?")
        sum_params.append(since_ms - since_ms % DAY_MS)
    if function_id is not None:
        calls.append("function_id = ?")
        sums.append("function_id = ?")
        call_params.append(function_id)
        sum_params.append(function_id)
    calls_where = f" WHERE {' AND '.join(calls)}" if calls else ""
    sums_where = f" WHERE {' AND '.join(sums)}" if sums else ""
    sql = (
        f"SELECT created_at AS at, function_id, user_id, provider, model, 1 AS calls, {_USAGE_COLUMNS} "
        f"FROM llm_usage{calls_where} UNION ALL "
        "SELECT day_start AS at, function_id, NULLIF(user_id, '') AS user_id, NULLIF(provider, '') AS provider, "
        f"model, calls, {_USAGE_COLUMNS} FROM usage_daily{sums_where}"
    )
    return sql, call_params + sum_params


def _usage(row: Mapping[str, Any]) -> Usage:
    prompt, completion = int(row.get("prompt_tokens") or 0), int(row.get("completion_tokens") or 0)
    return {
        "calls": int(row.get("calls") or 0),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "reasoning_tokens": int(row.get("reasoning_tokens") or 0),
        "cached_tokens": int(row.get("cached_tokens") or 0),
        "total_tokens": prompt + completion,
        "cost_usd": round(float(row.get("cost_usd") or 0.0), 6),
    }


def usage_by_day_txn(conn: db.Conn, since_ms: int, function_id: str | None = None) -> list[DayUsage]:
    """Tokens and cost of model calls per UTC day since ``since_ms``, oldest first."""
    rows, params = _usage_rows(since_ms, function_id)
    return [
        {"day": _day(int(r["bucket"])), **_usage(r)}
        for r in conn.all(
            f"SELECT at / {DAY_MS} AS bucket, {_USAGE_TOTALS} FROM ({rows}) u GROUP BY at / {DAY_MS} ORDER BY bucket",
            params,
        )
    ]


def usage_by_user_txn(conn: db.Conn, since_ms: int, limit: int = 100) -> list[UserUsage]:
    """Tokens and cost per user since ``since_ms``, the most expensive first."""
    rows, params = _usage_rows(since_ms)
    return [
        {"user_id": r["user_id"], **_usage(r)}
        for r in conn.all(
            f"SELECT user_id, {_USAGE_TOTALS} FROM ({rows}) u "
            "GROUP BY user_id ORDER BY SUM(cost_usd) DESC, user_id LIMIT ?",
            (*params, limit),
        )
    ]


def run_usage_txn(conn: db.Conn, run_id: str) -> Usage:
    """Tokens and cost of one run's model calls (zeros when it made none)."""
    row = conn.one(f"SELECT {_USAGE_SUMS} FROM llm_usage WHERE run_id = ?", (run_id,))
    return _usage(row or {})


def usage_by_model_txn(conn: db.Conn, since_ms: int | None = None) -> list[ModelUsage]:
    """Tokens and cost per provider and model (all time when ``since_ms`` is None)."""
    rows, params = _usage_rows(since_ms)
    return [
        {"provider": r["provider"], "model": r["model"], **_usage(r)}
        for r in conn.all(
            f"SELECT provider, model, {_USAGE_TOTALS} FROM ({rows}) u GROUP BY provider, model "
            "ORDER BY provider, model",
            params,
        )
    ]


def overview_txn(conn: db.Conn, *, now: int, since_ms: int, usage_since_ms: int) -> MetricsOverview:
    """Everything the metrics page shows, in one read: run stats since ``since_ms``,
    usage since ``usage_since_ms`` (usually a number of whole days)."""
    depth = queue_depth_txn(conn, now)
    functions = function_stats_txn(conn, since_ms)
    return {
        "queue": depth,
        "queue_total": {
            "ready": sum(d["ready"] for d in depth),
            "scheduled": sum(d["scheduled"] for d in depth),
            "leased": sum(d["leased"] for d in depth),
        },
        "running": int(conn.scalar("SELECT COUNT(*) AS n FROM runs WHERE status = 'running'") or 0),
        "functions": functions,
        "usage_by_day": usage_by_day_txn(conn, usage_since_ms),
        "usage_by_user": usage_by_user_txn(conn, usage_since_ms),
        "usage_by_model": usage_by_model_txn(conn, usage_since_ms),
    }
