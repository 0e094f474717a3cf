"""Maintenance of the database itself: sizes, file space, backups.

``*_txn`` functions run in the caller's transaction like every other operation (the
incremental vacuum goes through the writer, a few pages per transaction). Backups and
full vacuums cannot run inside a transaction: they take a connection of their own,
opened here from the store's URL, and are exposed as ``Store`` methods like the rest.
"""

from __future__ import annotations

import contextlib
import os

from stepline import errors
from stepline.store import db, migrate
from stepline.store.records import FileSpace, TableSize, VacuumResult

# Stepline's tables, and the column that says how old a row is (None: no such column).
TABLES: dict[str, str | None] = {
    "runs": "created_at",
    "steps": "started_at",
    "step_attempts": "started_at",
    "run_messages": "created_at",
    "events": "received_at",
    "event_ids_seen": None,
    "idempotency_keys": None,
    "queue": None,
    "waits": None,
    "llm_usage": "created_at",
    "usage_daily": "day_start",
    "flow_state": None,
    "debounces": "first_at",
    "batches": None,
    "singletons": None,
    "functions": "updated_at",
    "triggers": None,
    "cron_schedules": None,
    "dashboard_sessions": "created_at",
    "function_pauses": "paused_at",
    "cancellations": "created_at",
    "maintenance": None,
    "run_counts": None,
    "run_count_changes": None,
}


# --- sizes -----------------------------------------------------------------------


def table_sizes_txn(conn: db.Conn, *, exact: bool) -> list[TableSize]:
    """Rows and bytes per table. ``exact``: counted rows, and on SQLite bytes from the
    page map (reads the whole file); otherwise what is cheap: PostgreSQL's statistics
    (rows as of the last ANALYZE, sizes from the catalog), SQLite's counted rows only."""
    present = _present_tables(conn)
    if conn.dialect == "postgres":
        sizes = {
            r["name"]: r
            for r in conn.all(
                "SELECT c.relname AS name, GREATEST(c.reltuples, 0)::bigint AS rows, "
                "pg_total_relation_size(c.oid) AS bytes FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
            )
        }
    elif exact and _has_dbstat(conn):
        sizes = {
            r["name"]: r
            for r in conn.all(
                "SELECT m.tbl_name AS name, SUM(s.pgsize) AS bytes FROM dbstat s "
                "JOIN sqlite_master m ON m.name = s.name GROUP BY m.tbl_name"
            )
        }
    else:
        sizes = {}
    out: list[TableSize] = []
    for table in _ordered(present):
        known = sizes.get(table) or {}
        rows = int(conn.scalar(f"SELECT COUNT(*) AS n FROM {table}") or 0) if exact or conn.dialect != "postgres" else int(known.get("rows") or 0)
        out.append({"table": table, "rows": rows, "bytes": None if known.get("bytes") is None else int(known["bytes"])})
    return out


def _ordered(present: set[str]) -> list[str]:
    """The tables present: Stepline's known ones first, then any other (not the migrations' own)."""
    known = [t for t in TABLES if t in present]
    rest = sorted(t for t in present - set(TABLES) if not t.startswith(("_yoyo", "yoyo", "stepline_migrations", "sqlite_")))
    return known + rest


def oldest_rows_txn(conn: db.Conn) -> dict[str, int | None]:
    """The time of the oldest row of each table that records one (epoch ms)."""
    present = _present_tables(conn)
    return {
        table: conn.scalar(f"SELECT MIN({column}) AS t FROM {table}")
        for table, column in TABLES.items()
        if column is not None and table in present
    }


def file_space_txn(conn: db.Conn) -> FileSpace:
    """SQLite: the page size, pages in the file, free pages and the auto_vacuum mode."""
    if conn.dialect != "sqlite":
        return {}
    return {
        "page_size": int(conn.scalar("PRAGMA page_size") or 0),
        "page_count": int(conn.scalar("PRAGMA page_count") or 0),
        "freelist_count": int(conn.scalar("PRAGMA freelist_count") or 0),
        "auto_vacuum": {0: "none", 1: "full", 2: "incremental"}.get(int(conn.scalar("PRAGMA auto_vacuum") or 0), "?"),
    }


def _present_tables(conn: db.Conn) -> set[str]:
    if conn.dialect == "postgres":
        rows = conn.all("SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema()")
    else:
        rows = conn.all("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {str(r["name"]) for r in rows}


def _has_dbstat(conn: db.Conn) -> bool:
    try:
        conn.all("SELECT 1 FROM dbstat LIMIT 1")
    except Exception:  # noqa: BLE001 - SQLite built without the dbstat table
        return False
    return True


# --- giving space back (SQLite) ----------------------------------------------------


def incremental_vacuum_txn(conn: db.Conn, *, pages: int, keep: int) -> int:
    """Hand up to ``pages`` free pages back to the file system, keeping ``keep`` for new
    rows; returns the free pages left. SQLite in ``auto_vacuum = INCREMENTAL`` only."""
    if conn.dialect != "sqlite" or int(conn.scalar("PRAGMA auto_vacuum") or 0) != 2:
        return 0
    free = int(conn.scalar("PRAGMA freelist_count") or 0)
    for _ in range(max(0, min(pages, free - keep))):
        conn.execute("PRAGMA incremental_vacuum(1)")  # each statement moves one page (Python steps it once)
    return int(conn.scalar("PRAGMA freelist_count") or 0)


# --- a connection of its own: backup, full vacuum --------------------------------


def backup_sqlite(path: str, target: str) -> int:
    """A consistent, compacted copy of the database at ``target`` while others keep writing;
    returns its size. ``VACUUM INTO`` reads one snapshot; the file is renamed into place
    only once complete, so ``target`` never holds half a copy."""
    from stepline.store import sqlite

    if os.path.exists(target):
        raise errors.ConfigError(f"{target} already exists; give a new path for the backup (it is never overwritten)")
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise errors.ConfigError(f"the directory {directory} does not exist; create it or give another path")
    partial = f"{target}.partial"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial)
    raw = sqlite.connect(path)
    try:
        raw.execute("VACUUM INTO ?", (partial,))
    finally:
        raw.close()
    os.replace(partial, target)
    return os.path.getsize(target)


def vacuum_sqlite(path: str) -> VacuumResult:
    """Give free pages back to the file system. A database made before incremental vacuum
    (auto_vacuum none) is rebuilt once by a full VACUUM, which holds the write lock for its
    whole length (other processes wait); afterwards free pages go back a few at a time."""
    from stepline.store import sqlite

    raw = sqlite.connect(path)
    try:
        before = os.path.getsize(path)
        mode = int(next(iter(raw.execute("PRAGMA auto_vacuum").fetchone().values())))
        if mode != 2:
            raw.execute("PRAGMA auto_vacuum = INCREMENTAL")
            raw.execute("VACUUM")
            how = "rebuilt (auto_vacuum is now incremental)"
        else:
            raw.executescript("PRAGMA incremental_vacuum;")  # stepped to the end: every free page
            how = "free pages handed back"
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return {"how": how, "bytes_before": before, "bytes_after": os.path.getsize(path)}
    finally:
        raw.close()


def vacuum_postgres(url: str, tables: list[str]) -> VacuumResult:
    """``VACUUM (ANALYZE)`` of the tables retention prunes: dead rows become free space inside
    them for new rows (PostgreSQL gives it back to the OS only with VACUUM FULL, which
    locks each table while it rewrites it)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as raw:
        for table in tables:
            raw.execute(f"VACUUM (ANALYZE) {table}")
    return {"how": f"VACUUM (ANALYZE) of {len(tables)} tables", "database": migrate.redact(url)}
