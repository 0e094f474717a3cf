"""Schema migrations: numbered SQL files in ``migrations/``, applied by yoyo.

``stepline migrate`` applies them; every entry point calls ``check`` and refuses a
database whose schema is behind, naming the command that fixes it.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import pathlib
import re
from collections.abc import Iterator
from typing import Any

from yoyo import exceptions, get_backend, read_migrations

from stepline import errors

MIGRATIONS_DIR = pathlib.Path(__file__).with_name("migrations")
_TABLE = "stepline_migrations"
logging.getLogger("yoyo").setLevel(logging.WARNING)
log = logging.getLogger("stepline.migrate")
LOCK_WAIT = 60.0  # seconds a migration waits for another process's (SQLite)


def yoyo_uri(url: str) -> str:
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url
    return "sqlite:///" + os.path.abspath(path)


def _backend_and_migrations(url: str):  # type: ignore[no-untyped-def]
    if not url.startswith(("postgresql://", "postgres://")):
        from stepline.store import sqlite

        sqlite.prepare_new_file(yoyo_uri(url)[len("sqlite:///"):])  # before any table exists
    try:
        backend = get_backend(yoyo_uri(url), migration_table=_TABLE)
    except Exception as exc:  # noqa: BLE001 - any driver error means the same to the user
        raise errors.StoreError(f"cannot open the database {redact(url)}: {exc}{_advice(url, exc)}") from exc
    return backend, read_migrations(str(MIGRATIONS_DIR))


def apply(url: str) -> list[str]:
    """Apply pending migrations; returns the ids applied."""
    backend, migrations = _backend_and_migrations(url)
    try:
        with _migrating(backend, url):
            todo = backend.to_apply(migrations)
            backend.ensure_internal_schema_updated()
            for migration in todo:
                # A migration and the record that it was applied commit together: yoyo commits
                # them apart, so a process killed between the two left a migration applied but
                # not recorded, and every later run failed on "table ... already exists".
                with backend.transaction():
                    migration.process_steps(backend, "apply")
                    backend.log_migration(migration, "apply")
                    backend.mark_one(migration, log=False)
            return [m.id for m in todo]
    except backend.DatabaseError as exc:
        raise errors.StoreError(f"cannot apply migrations to {redact(url)}: {exc}") from exc
    finally:
        backend.connection.close()


@contextlib.contextmanager
def _migrating(backend: Any, url: str) -> Iterator[None]:
    """One process migrates at a time, and a killed one leaves no lock behind. yoyo's own
    lock is a row, which a process killed while migrating leaves in place, refusing every
    later migration until someone deletes it by hand. PostgreSQL: a session advisory lock
    instead, which dies with its connection (a second ``migrate`` waits for the first).
    SQLite (one machine): yoyo's row, after deleting rows of processes no longer alive."""
    if url.startswith(("postgresql://", "postgres://")):
        cursor = backend.connection.cursor()
        # A statement_timeout set on the database for people's queries would cancel the wait
        # for another migrate and an index build on a large table, leaving the upgrade half way.
        cursor.execute("SET statement_timeout = 0")
        cursor.execute(f"SELECT pg_advisory_lock(hashtextextended('{_TABLE}', 0))")
        backend.connection.commit()
        yield  # the lock goes with the connection, which apply closes
        return
    with backend.transaction():
        rows = backend.execute("SELECT pid FROM yoyo_lock").fetchall()
        for (pid,) in rows:
            if not _alive(int(pid)):
                log.warning("removing the migration lock of process %s, which is no longer running", pid)
                backend.execute("DELETE FROM yoyo_lock WHERE pid = :pid", {"pid": pid})
    try:
        with backend.lock(timeout=LOCK_WAIT):
            yield
    except exceptions.LockTimeout as exc:
        raise errors.StoreError(
            f"another process is applying migrations to {redact(url)} ({exc}); wait for it to finish and run "
            "`stepline migrate` again"
        ) from exc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def _advice(url: str, exc: BaseException) -> str:
    """What to do about a SQLite file that cannot be opened or written (". ..."), if known."""
    if url.startswith(("postgresql://", "postgres://")):
        return ""
    from stepline.store import sqlite

    advice = sqlite.advice(yoyo_uri(url)[len("sqlite:///"):], exc)
    return f". {advice}" if advice else ""


def pending(url: str) -> list[str]:
    backend, migrations = _backend_and_migrations(url)
    try:
        return [m.id for m in backend.to_apply(migrations)]
    except backend.DatabaseError as exc:  # a full disk, a file that is not a database, ...
        raise errors.StoreError(f"cannot read which migrations {redact(url)} has: {exc}{_advice(url, exc)}") from exc
    finally:
        backend.connection.close()


def describe_pending(url: str) -> list[tuple[str, str]]:
    """What ``apply`` would do, changing nothing: each pending migration's id and the
    opening comment of its file (what it changes, and whether older processes mind)."""
    if not url.startswith(("postgresql://", "postgres://")) and not os.path.exists(yoyo_uri(url)[len("sqlite:///"):]):
        todo = list(read_migrations(str(MIGRATIONS_DIR)))  # a new file: every one (opening it would create it)
    else:
        backend, migrations = _backend_and_migrations(url)
        try:
            todo = list(backend.to_apply(migrations))
        finally:
            backend.connection.close()
    return [(m.id, _summary(pathlib.Path(m.path))) for m in todo]


def _summary(path: pathlib.Path) -> str:
    """A migration file's opening comment: the leading ``--`` lines of SQL, the docstring
    of Python (a migration written in Python where the dialects' statements differ)."""
    text = path.read_text()
    if path.suffix == ".py":
        return " ".join((ast.get_docstring(ast.parse(text)) or "").split())
    lines = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        text = line[2:].strip()
        if text.startswith("depends:"):
            break
        lines.append(text)
    return " ".join(lines)


def check(url: str, *, auto_apply: bool) -> None:
    """Apply migrations when ``auto_apply`` (dev), else fail if any are pending."""
    if auto_apply:
        apply(url)
        return
    todo = pending(url)
    if todo:
        raise errors.StoreError(
            f"the database {redact(url)} is missing migrations {todo}; run "
            f"`stepline migrate --db {redact(url)}` first"
        )


def index_statement(name: str) -> str:
    """The statement in the migrations that builds index ``name`` (to build it again)."""
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        found = re.search(rf"CREATE INDEX (?:IF NOT EXISTS )?{re.escape(name)} ON [^;]*;", path.read_text())
        if found:
            statement = found.group(0)
            return statement if "IF NOT EXISTS" in statement else statement.replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1)
    raise LookupError(f"no migration builds the index {name}")


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url
