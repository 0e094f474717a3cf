"""Runs per function and status: ended runs as the triggers of migration 0026 count them,
unfinished ones counted when read (by the status index: as many as are unfinished).

On SQLite the triggers add to ``run_counts`` itself. On PostgreSQL each change appends a
row to ``run_count_changes`` (concurrent writers would otherwise wait on one count row);
a read sums both, so it is exact at any moment, and ``fold_txn`` moves the changes into
the counts now and then so that reads stay short.
"""

from __future__ import annotations

from stepline.store import db
from stepline.store.records import UNFINISHED, StatusCount

FOLD_LOCK = ("run_counts",)
_UNFINISHED = ", ".join(f"'{status}'" for status in UNFINISHED)
STATUS_COUNTS = (
    "SELECT function_id, status, SUM(n) AS n FROM ("
    "SELECT function_id, status, n FROM run_counts "
    "UNION ALL SELECT function_id, status, delta AS n FROM run_count_changes "
    f"UNION ALL SELECT function_id, status, COUNT(*) AS n FROM runs WHERE status IN ({_UNFINISHED}) "
    "GROUP BY function_id, status) c "
    "GROUP BY function_id, status HAVING SUM(n) > 0"
)


def status_counts_txn(conn: db.Conn) -> list[StatusCount]:
    """Runs stored per function and status, all time (Prometheus gauges and totals)."""
    return [
        {"function_id": r["function_id"], "status": r["status"], "count": int(r["n"])}
        for r in conn.all(STATUS_COUNTS + " ORDER BY function_id, status")
    ]


def fold_txn(conn: db.Conn) -> int:
    """PostgreSQL: the changes committed so far, added to the counts and removed (one
    transaction, so a read sees them in one place or the other); how many were folded.
    Folds take turns (a lock), and add in key order: the counts' rows are locked in one
    order by every folder."""
    if conn.dialect != "postgres":
        return 0  # SQLite's triggers add to the counts themselves
    conn.lock(*FOLD_LOCK)
    row = conn.one(
        "WITH moved AS (DELETE FROM run_count_changes RETURNING function_id, status, delta), "
        "added AS (INSERT INTO run_counts (function_id, status, n) "
        "SELECT function_id, status, SUM(delta) FROM moved GROUP BY function_id, status ORDER BY function_id, status "
        "ON CONFLICT (function_id, status) DO UPDATE SET n = run_counts.n + excluded.n RETURNING 1) "
        "SELECT (SELECT COUNT(*) FROM moved) AS n"
    )
    conn.execute("DELETE FROM run_counts WHERE n = 0")
    return int(row["n"]) if row else 0
