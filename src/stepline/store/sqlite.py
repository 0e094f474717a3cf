"""SQLite backend: WAL, one writer thread per process, readers in a small pool.

Processes that share the file coordinate through SQLite's write lock
(``BEGIN IMMEDIATE`` with a busy timeout); they find each other's new work by a
short poll, while work made due in this process wakes its workers at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sqlite3
import threading
from typing import Any

from stepline.store import db


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {d[0]: v for d, v in zip(cursor.description, row)}


class SQLiteConn(db.Conn):
    dialect = "sqlite"

    def __init__(self, raw: sqlite3.Connection) -> None:
        super().__init__()
        self.raw = raw

    def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        return self.raw.execute(sql, params)

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.raw.executemany(sql, rows)

    def all(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[db.Row]:
        return self.raw.execute(sql, params).fetchall()

    def rowcount(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> int:
        return self.raw.execute(sql, params).rowcount


def connect(path: str) -> sqlite3.Connection:
    raw = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    raw.row_factory = _dict_row
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("PRAGMA synchronous=NORMAL")
    raw.execute("PRAGMA busy_timeout=30000")
    raw.execute("PRAGMA foreign_keys=OFF")
    return raw


class SQLiteDatabase(db.Database):
    dialect = "sqlite"
    poll_interval = 0.1

    def __init__(self, path: str) -> None:
        super().__init__()
        if path != ":memory:":
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, exist_ok=True)
        self.path = path
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="stepline-sqlite-read")

    def _open_writer(self) -> sqlite3.Connection:
        return connect(self.path)

    def _close_writer(self, conn: sqlite3.Connection) -> None:
        conn.close()

    def _run_batch(self, conn: sqlite3.Connection, ops: list[db.Op[Any]]) -> tuple[list[tuple[bool, Any]], bool]:
        wrapped = SQLiteConn(conn)
        outcomes: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            if len(ops) == 1:
                outcomes.append((True, ops[0](wrapped)))
            else:
                for op in ops:
                    conn.execute("SAVEPOINT op")
                    try:
                        outcomes.append((True, op(wrapped)))
                        conn.execute("RELEASE op")
                    except Exception as exc:  # noqa: BLE001 - this op alone rolls back
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                        outcomes.append((False, exc))
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if len(ops) == 1:
                return [(False, exc)], False
            raise
        return outcomes, wrapped.woke

    def _reader(self) -> SQLiteConn:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            raw = connect(self.path)
            with self._reader_lock:
                self._readers.append(raw)
            conn = self._local.conn = SQLiteConn(raw)
        return conn

    def _read_sync(self, op: db.Op[Any]) -> Any:
        conn = self._reader()
        conn.raw.execute("BEGIN")
        try:
            return op(conn)
        finally:
            conn.raw.execute("COMMIT")

    async def read(self, op: db.Op[db.T]) -> db.T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._read_sync, op)

    async def _close_readers(self) -> None:
        self._pool.shutdown(wait=True)
        with self._reader_lock:
            for raw in self._readers:
                raw.close()
            self._readers.clear()
