"""Schema migrations: numbered SQL files in ``migrations/``, applied by yoyo.

``stepline migrate`` applies them; every entry point calls ``check`` and refuses a
database whose schema is behind, naming the command that fixes it.
"""

from __future__ import annotations

import logging
import os
import pathlib

from yoyo import get_backend, read_migrations

from stepline import errors

MIGRATIONS_DIR = pathlib.Path(__file__).with_name("migrations")
_TABLE = "stepline_migrations"
logging.getLogger("yoyo").setLevel(logging.WARNING)


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
        raise errors.StoreError(f"cannot open the database {redact(url)}: {exc}") from exc
    return backend, read_migrations(str(MIGRATIONS_DIR))


def apply(url: str) -> list[str]:
    """Apply pending migrations; returns the ids applied."""
    backend, migrations = _backend_and_migrations(url)
    try:
        with backend.lock():
            todo = backend.to_apply(migrations)
            backend.apply_migrations(todo)
            return [m.id for m in todo]
    finally:
        backend.connection.close()


def pending(url: str) -> list[str]:
    backend, migrations = _backend_and_migrations(url)
    try:
        return [m.id for m in backend.to_apply(migrations)]
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
    return [(m.id, _summary(pathlib.Path(m.path).read_text())) for m in todo]


def _summary(sql: str) -> str:
    lines = []
    for line in sql.splitlines():
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


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url
