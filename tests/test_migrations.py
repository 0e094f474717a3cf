"""Migrations: a fresh schema equals one upgraded release by release, on both backends.

"Upgraded" applies the numbered files one at a time, each in its own session (as a
deployment that followed every release would), with data in the tables between
steps; "fresh" applies them all at once. The catalogs (tables, columns with their
types, nullability and defaults, indexes, constraints) must be identical.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from yoyo import get_backend, read_migrations

from stepline import errors
from stepline.store import migrate
from stepline.store import store as store_mod
from tests.conftest import _pg_admin, pg_url

# Tables yoyo keeps for itself; they are not part of Stepline's schema.
BOOKKEEPING = re.compile(r"^(_yoyo|yoyo|stepline_migrations)")


def _migrations() -> Any:
    return read_migrations(str(migrate.MIGRATIONS_DIR))


def apply_first(url: str, count: int) -> list[str]:
    """Apply the first ``count`` migrations in one session; returns the ids applied."""
    backend = get_backend(migrate.yoyo_uri(url), migration_table=migrate._TABLE)
    try:
        with backend.lock():
            todo = backend.to_apply(_migrations()[:count])
            backend.apply_migrations(todo)
            return [m.id for m in todo]
    finally:
        backend.connection.close()


@pytest.fixture
def postgres_pair() -> Iterator[tuple[str, str]]:
    names = [f"stepline_mig_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    for name in names:
        _pg_admin(f"CREATE DATABASE {name}")
    yield pg_url(names[0]), pg_url(names[1])
    for name in names:
        _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def sqlite_pair(tmp_path) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    return str(tmp_path / "fresh.db"), str(tmp_path / "upgraded.db")


# --- catalogs ----------------------------------------------------------------------


def pg_catalog(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, ordinal_position, data_type, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
        ).fetchall()
        indexes = conn.execute(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname"
        ).fetchall()
        constraints = conn.execute(
            "SELECT t.relname, c.conname, c.contype, pg_get_constraintdef(c.oid) FROM pg_constraint c "
            "JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
            "WHERE n.nspname = 'public' ORDER BY t.relname, c.conname"
        ).fetchall()
    return {
        "columns": [c for c in columns if not BOOKKEEPING.match(c[0])],
        "indexes": [i for i in indexes if not BOOKKEEPING.match(i[0])],
        "constraints": [c for c in constraints if not BOOKKEEPING.match(c[0])],
    }


def _normal_sql(sql: str | None) -> str | None:
    # SQLite keeps each statement's text as written; ALTER TABLE rewrites the table's.
    return None if sql is None else re.sub(r"\s+", " ", sql).replace("( ", "(").replace(" )", ")").strip()


def sqlite_catalog(path: str) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(path)
    try:
        objects = conn.execute("SELECT type, name, tbl_name FROM sqlite_master ORDER BY type, name").fetchall()
        objects = [o for o in objects if not BOOKKEEPING.match(o[2]) and not o[1].startswith("sqlite_")]
        tables = [o[1] for o in objects if o[0] == "table"]
        columns = [
            (table, *col) for table in tables for col in conn.execute(f"PRAGMA table_info({table})").fetchall()
        ]
        indexes = []
        for table in tables:
            for idx in conn.execute(f"PRAGMA index_list({table})").fetchall():
                name, unique, origin, partial = idx[1], idx[2], idx[3], idx[4]
                sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()
                cols = [c[2] for c in conn.execute(f"PRAGMA index_xinfo({name})").fetchall() if c[5]]
                indexes.append((table, name, unique, origin, partial, tuple(cols), _normal_sql(sql[0] if sql else None)))
    finally:
        conn.close()
    return {"objects": objects, "columns": columns, "indexes": sorted(indexes, key=lambda i: (i[0], i[1]))}


# --- rows an older release would have written, planted -------------------------------


def seed(url: str) -> None:
    """A function, an event and a queued run, written with the oldest schema's columns."""
    rows = [
        ("INSERT INTO functions (id, app_id, config, updated_at) VALUES ('f', 'a', '{}', 1)", ()),
        ("INSERT INTO events (id, name, body, ts, received_at) VALUES ('e1', 'x', '{}', 1, 1)", ()),
        (
            (
                "INSERT INTO runs (id, function_id, event_id, status, created_at, updated_at) "
                "VALUES ('r1', 'f', 'e1', 'queued', 1, 1)"
            ),
            (),
        ),
        ("INSERT INTO queue (run_id, function_id, due_at) VALUES ('r1', 'f', 1)", ()),
    ]
    if url.startswith("postgresql://"):
        with psycopg.connect(url) as conn:
            for sql, params in rows:
                conn.execute(sql, params)
    else:
        conn = sqlite3.connect(url)
        with conn:
            for sql, params in rows:
                conn.execute(sql, params)
        conn.close()


def seeded_run_survived(url: str) -> bool:
    sql = "SELECT q.run_id FROM queue q JOIN runs r ON r.id = q.run_id WHERE r.id = 'r1'"
    if url.startswith("postgresql://"):
        with psycopg.connect(url) as conn:
            return conn.execute(sql).fetchone() is not None
    conn = sqlite3.connect(url)
    try:
        return conn.execute(sql).fetchone() is not None
    finally:
        conn.close()


# --- tests -------------------------------------------------------------------------


def test_migration_files_are_numbered_in_order_and_chained() -> None:
    ids = [m.id for m in _migrations()]
    assert ids, "no migrations found"
    numbers = [int(i.split("_", 1)[0]) for i in ids]
    assert numbers == list(range(1, len(ids) + 1)), f"migrations must be numbered 0001, 0002, ... without gaps: {ids}"
    for m in list(_migrations())[1:]:
        assert m.depends, f"{m.id} must declare `-- depends: <an earlier migration>`"


def test_every_migration_says_what_it_changes(tmp_path: Any) -> None:
    """``stepline migrate --dry-run`` prints each pending migration's opening comment: the
    SQL files' leading comment, the Python ones' docstring."""
    described = migrate.describe_pending(str(tmp_path / "new.db"))
    assert [m for m, _ in described] == [m.id for m in _migrations()]
    for migration_id, summary in described:
        assert len(summary) > 20, f"{migration_id} says nothing of what it changes: {summary!r}"
    assert dict(described)["0026_run_counts"].startswith("Ended runs per function and status, kept as runs change")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_fresh_schema_equals_upgraded_schema(backend: str, request: pytest.FixtureRequest) -> None:
    fresh, upgraded = request.getfixturevalue(f"{backend}_pair")
    catalog = pg_catalog if backend == "postgres" else sqlite_catalog
    total = len(_migrations())

    assert len(apply_first(fresh, total)) == total

    for count in range(1, total + 1):
        assert len(apply_first(upgraded, count)) == 1
        if count == 1:
            seed(upgraded)

    assert migrate.pending(fresh) == [] and migrate.pending(upgraded) == []
    fresh_catalog, upgraded_catalog = catalog(fresh), catalog(upgraded)
    assert fresh_catalog["columns"], "the fresh schema has no tables"
    for part in fresh_catalog:
        assert fresh_catalog[part] == upgraded_catalog[part], f"{backend}: {part} differ between fresh and upgraded"
    assert seeded_run_survived(upgraded), "rows written before the upgrade must survive it"


def test_check_refuses_a_database_that_is_behind(postgres_pair: tuple[str, str]) -> None:
    url, _ = postgres_pair
    apply_first(url, 1)
    with pytest.raises(Exception, match="stepline migrate"):
        migrate.check(url, auto_apply=False)
    migrate.check(url, auto_apply=True)
    assert migrate.pending(url) == []


def test_both_backends_have_the_same_tables_columns_and_indexes(
    sqlite_pair: tuple[str, str], postgres_pair: tuple[str, str]
) -> None:
    """The domain queries are written once, so both schemas must name the same things."""
    total = len(_migrations())
    apply_first(sqlite_pair[0], total)
    apply_first(postgres_pair[0], total)
    lite, pg = sqlite_catalog(sqlite_pair[0]), pg_catalog(postgres_pair[0])
    lite_columns = sorted((c[0], c[2]) for c in lite["columns"])
    pg_columns = sorted((c[0], c[1]) for c in pg["columns"])
    assert lite_columns == pg_columns
    lite_indexes = {i[1] for i in lite["indexes"] if i[3] == "c"}  # created by CREATE INDEX
    pg_indexes = {i[1] for i in pg["indexes"] if not i[1].endswith("_pkey")}
    assert lite_indexes == pg_indexes


# --- the migration lock ------------------------------------------------------------------


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_lock_left_by_a_killed_migration_is_taken_over_on_sqlite(sqlite_pair: tuple[str, str]) -> None:
    """yoyo's lock is a row: a `stepline migrate` killed while migrating left it, and every
    later one failed after 10 s asking for `yoyo break-lock`."""
    url, _ = sqlite_pair
    apply_first(url, 3)
    with sqlite3.connect(url) as conn:
        conn.execute("INSERT INTO yoyo_lock (locked, ctime, pid) VALUES (1, '2026-01-01 00:00:00', ?)", (_dead_pid(),))
    assert migrate.apply(url)[0] == "0004_runs_by_end"
    assert migrate.pending(url) == []


def test_a_second_migration_waits_for_the_first_and_a_killed_one_holds_nothing_on_postgres(
    postgres_pair: tuple[str, str]
) -> None:
    import threading

    url, _ = postgres_pair
    apply_first(url, 3)
    with psycopg.connect(url, autocommit=True) as conn:  # what an older release's killed migrate left
        conn.execute("INSERT INTO yoyo_lock (locked, ctime, pid) VALUES (1, now(), %s)", (_dead_pid(),))
    holder = psycopg.connect(url, autocommit=True)  # a migration under way elsewhere
    holder.execute(f"SELECT pg_advisory_lock(hashtextextended('{migrate._TABLE}', 0))")
    applied: list[list[str]] = []
    waiting = threading.Thread(target=lambda: applied.append(migrate.apply(url)))
    waiting.start()
    waiting.join(1.5)
    assert waiting.is_alive() and not applied  # it waits for the other
    holder.close()  # that process is killed: its lock goes with its connection
    waiting.join(60)
    assert applied and applied[0][0] == "0004_runs_by_end"
    assert migrate.pending(url) == []


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_migration_cut_off_before_it_is_recorded_leaves_nothing_half_done(
    backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """yoyo applied a migration and recorded it in two transactions: a `stepline migrate`
    killed between them left tables no record accounted for, and every later run failed on
    "table ... already exists". Here the process "dies" as the fifth is being recorded."""
    from yoyo.backends.base import DatabaseBackend

    url = request.getfixturevalue(f"{backend}_pair")[0]
    real_mark = DatabaseBackend.mark_one
    calls = []

    def dies_at_the_fifth(self: Any, migration: Any, log: bool = True) -> None:
        calls.append(migration.id)
        if len(calls) == 5:
            raise KeyboardInterrupt("killed")  # not a database error: nothing catches it on the way
        real_mark(self, migration, log=log)

    monkeypatch.setattr(DatabaseBackend, "mark_one", dies_at_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        migrate.apply(url)
    monkeypatch.setattr(DatabaseBackend, "mark_one", real_mark)
    assert migrate.pending(url)[0] == "0005_run_cleanup"
    migrate.apply(url)  # goes on from there
    assert migrate.pending(url) == []


def test_a_databases_low_statement_timeout_does_not_cancel_a_migration(postgres_pair: tuple[str, str]) -> None:
    """An operator's statement_timeout for ad-hoc queries cancelled the wait for another
    migrate (and would cancel a long index build): the upgrade stopped half way."""
    url, _ = postgres_pair
    _pg_admin(f"ALTER DATABASE {url.rsplit('/', 1)[1]} SET statement_timeout = '50ms'")
    other = psycopg.connect(url, autocommit=True)  # another migrate, holding the lock for half a second
    other.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (migrate._TABLE,))
    threading.Timer(0.5, other.close).start()
    assert migrate.apply(url) and migrate.pending(url) == []


@pytest.mark.parametrize("index", store_mod.NAMED_INDEXES)
def test_a_sqlite_database_lacking_an_index_its_queries_name_is_refused_with_the_statement_that_builds_it(tmp_path: Any, index: str) -> None:
    """On SQLite the claim and the wait lookups name their index (``INDEXED BY``), and a
    statement naming a missing index fails: a database whose index was dropped by hand (as
    going back to an earlier release asks) failed every claim. It is refused at start, and
    the statement the refusal gives builds the index again."""
    path = str(tmp_path / "named.db")

    def open_and_close() -> None:
        asyncio.run(store_mod.open_store(path).close())

    open_and_close()
    with contextlib.closing(sqlite3.connect(path)) as raw:
        raw.execute(f"DROP INDEX {index}")
    with pytest.raises(errors.StoreError) as refused:
        store_mod.open_store(path)
    message = str(refused.value)
    assert index in message and "docs/deployment.md" in message
    statement = message.split(f"sqlite3 {path} '", 1)[1].rstrip("'")
    with contextlib.closing(sqlite3.connect(path)) as raw:
        raw.execute(statement)
    open_and_close()
