"""Ended runs per function and status, kept as runs change instead of counted on each read.

``/metrics`` reported the runs stored per function and status by counting every row of
``runs`` (a million runs: 0.6-0.8 s of reading per scrape, growing with history). Triggers
now keep the counts of ended runs (completed, failed, cancelled) as rows are inserted,
deleted or change status, whichever release or tool writes them; unfinished runs are still
counted when read (by the status index: as many as are unfinished). On SQLite, where one
transaction writes at a time, they add to ``run_counts`` directly. On PostgreSQL concurrent
transactions adding to one count row would wait for each other's commit (and two ending
runs of two functions in opposite orders would deadlock), so each change appends a row to
``run_count_changes``, which workers fold into ``run_counts`` now and then; a read sums
both. The counts start from the runs already stored, counted while the triggers' creation
holds off other writes to ``runs``.

Written in Python because the two dialects' triggers share no syntax.
"""

from yoyo import step

__depends__ = {"0025_queue_claim_by_function"}

TABLES = [
    "CREATE TABLE IF NOT EXISTS run_counts ("
    " function_id TEXT NOT NULL, status TEXT NOT NULL, n BIGINT NOT NULL, PRIMARY KEY (function_id, status))",
    "CREATE TABLE IF NOT EXISTS run_count_changes (function_id TEXT NOT NULL, status TEXT NOT NULL, delta INTEGER NOT NULL)",
]

TERMINAL = "('cancelled', 'completed', 'failed')"  # records.TERMINAL_SQL as of this migration


def _added(row: str) -> str:
    """SQLite: one more in the count of ``row`` (NEW or OLD), its row made first when
    missing. Never a conflict (no ``ON CONFLICT`` clause): the statements that fire these
    triggers say ``OR FAIL`` (``Conn.or_fail``), which turns a conflict into a failure."""
    key = f"function_id = {row}.function_id AND status = {row}.status"
    return (
        f"INSERT INTO run_counts (function_id, status, n) SELECT {row}.function_id, {row}.status, 0 "
        f"WHERE NOT EXISTS (SELECT 1 FROM run_counts WHERE {key}); "
        f"UPDATE run_counts SET n = n + 1 WHERE {key}; "
    )


def _taken(row: str) -> str:
    """SQLite: one less in the count of ``row``."""
    return f"UPDATE run_counts SET n = n - 1 WHERE function_id = {row}.function_id AND status = {row}.status; "


# Only ended runs are counted here: unfinished ones are few beside a history, and counting
# them by the status index costs a read, where counting them here would cost every change.
# A run that ends fires one trigger of two statements: one trigger for both directions cost
# twice as much (each statement a trigger runs costs about 2 µs, even one whose WHERE is false).
SQLITE = [
    f"CREATE TRIGGER IF NOT EXISTS runs_counted_insert AFTER INSERT ON runs WHEN NEW.status IN {TERMINAL} "
    f"BEGIN {_added('NEW')}END",
    f"CREATE TRIGGER IF NOT EXISTS runs_counted_delete AFTER DELETE ON runs WHEN OLD.status IN {TERMINAL} "
    f"BEGIN {_taken('OLD')}END",
    "CREATE TRIGGER IF NOT EXISTS runs_counted_end AFTER UPDATE OF status ON runs "
    f"WHEN OLD.status IS NOT NEW.status AND NEW.status IN {TERMINAL} BEGIN {_added('NEW')}END",
    "CREATE TRIGGER IF NOT EXISTS runs_counted_unend AFTER UPDATE OF status ON runs "
    f"WHEN OLD.status IS NOT NEW.status AND OLD.status IN {TERMINAL} BEGIN {_taken('OLD')}END",
]

# A run inserted ended (an import) or ending is counted per row; Stepline inserts none ended,
# so an ingest only tests the trigger's condition (a trigger per statement ran a query for
# every ingest). Deletes come a retention batch to a statement: counted once per statement
# from its transition table. (A trigger on updates with a column list cannot have transition
# tables; one without would run for every update of a run, a step's progress included.)
POSTGRES = [
    "CREATE OR REPLACE FUNCTION stepline_runs_deleted() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "INSERT INTO run_count_changes (function_id, status, delta) "
    f"SELECT function_id, status, -COUNT(*) FROM deleted WHERE status IN {TERMINAL} GROUP BY function_id, status; "
    "RETURN NULL; END $$",
    "CREATE OR REPLACE FUNCTION stepline_run_ended() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "INSERT INTO run_count_changes (function_id, status, delta) VALUES (NEW.function_id, NEW.status, 1); RETURN NULL; END $$",
    "CREATE OR REPLACE FUNCTION stepline_run_unended() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "INSERT INTO run_count_changes (function_id, status, delta) VALUES (OLD.function_id, OLD.status, -1); RETURN NULL; END $$",
    "DROP TRIGGER IF EXISTS runs_counted_insert ON runs",
    "CREATE TRIGGER runs_counted_insert AFTER INSERT ON runs FOR EACH ROW "
    f"WHEN (NEW.status IN {TERMINAL}) EXECUTE FUNCTION stepline_run_ended()",
    "DROP TRIGGER IF EXISTS runs_counted_delete ON runs",
    "CREATE TRIGGER runs_counted_delete AFTER DELETE ON runs REFERENCING OLD TABLE AS deleted "
    "FOR EACH STATEMENT EXECUTE FUNCTION stepline_runs_deleted()",
    "DROP TRIGGER IF EXISTS runs_counted_end ON runs",
    "CREATE TRIGGER runs_counted_end AFTER UPDATE OF status ON runs FOR EACH ROW "
    f"WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN {TERMINAL}) EXECUTE FUNCTION stepline_run_ended()",
    "DROP TRIGGER IF EXISTS runs_counted_unend ON runs",
    "CREATE TRIGGER runs_counted_unend AFTER UPDATE OF status ON runs FOR EACH ROW "
    f"WHEN (OLD.status IS DISTINCT FROM NEW.status AND OLD.status IN {TERMINAL}) EXECUTE FUNCTION stepline_run_unended()",
]

# Runs already stored; the triggers' creation above holds off other writers of ``runs``
# (PostgreSQL: SHARE ROW EXCLUSIVE until this migration commits; SQLite: one writer).
BACKFILL = [
    "DELETE FROM run_counts",
    "DELETE FROM run_count_changes",
    "INSERT INTO run_counts (function_id, status, n) SELECT function_id, status, COUNT(*) FROM runs "
    f"WHERE status IN {TERMINAL} GROUP BY function_id, status",
]


def _is_postgres(conn) -> bool:  # type: ignore[no-untyped-def]
    return not type(conn).__module__.startswith("sqlite3")


def apply(conn) -> None:  # type: ignore[no-untyped-def]
    cursor = conn.cursor()
    for statement in TABLES + (POSTGRES if _is_postgres(conn) else SQLITE) + BACKFILL:
        cursor.execute(statement)


def rollback(conn) -> None:  # type: ignore[no-untyped-def]
    cursor = conn.cursor()
    if _is_postgres(conn):
        statements = [
            "DROP TRIGGER IF EXISTS runs_counted_insert ON runs",
            "DROP TRIGGER IF EXISTS runs_counted_delete ON runs",
            "DROP TRIGGER IF EXISTS runs_counted_end ON runs",
            "DROP TRIGGER IF EXISTS runs_counted_unend ON runs",
            "DROP FUNCTION IF EXISTS stepline_runs_deleted()",
            "DROP FUNCTION IF EXISTS stepline_run_ended()",
            "DROP FUNCTION IF EXISTS stepline_run_unended()",
        ]
    else:
        names = ("runs_counted_insert", "runs_counted_delete", "runs_counted_end", "runs_counted_unend")
        statements = [f"DROP TRIGGER IF EXISTS {name}" for name in names]
    for statement in statements + ["DROP TABLE IF EXISTS run_count_changes", "DROP TABLE IF EXISTS run_counts"]:
        cursor.execute(statement)


steps = [step(apply, rollback)]
