"""SQLite backend: WAL, one writer thread per process, readers in a small pool.

Processes that share the file coordinate through SQLite's write lock
(``BEGIN IMMEDIATE`` with a busy timeout); they find each other's new work by a
short poll, while work made due in this process wakes its workers at once.

WAL checkpoints run on a thread of their own, never inside a commit: SQLite's
automatic checkpoint (every 1,000 pages) would otherwise stall whichever commit
crosses the threshold by several milliseconds, every thirty-odd runs.
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

    def _execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        return self.raw.execute(sql, params)

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.raw.executemany(sql, rows)

    def _all(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[db.Row]:
        return self.raw.execute(sql, params).fetchall()

    def _rowcount(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> int:
        return self.raw.execute(sql, params).rowcount


def connect(path: str) -> sqlite3.Connection:
    raw = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    raw.row_factory = _dict_row
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("PRAGMA synchronous=NORMAL")
    raw.execute("PRAGMA busy_timeout=30000")
    raw.execute("PRAGMA foreign_keys=OFF")
    return raw


class _Checkpointer:
    """Copies the WAL back into the database file off the commit path (PASSIVE: it never
    waits for, or blocks, the writer or readers)."""

    INTERVAL = 0.2  # seconds between checkpoints while commits keep coming

    def __init__(self, path: str) -> None:
        self._path = path
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stepline-sqlite-checkpoint", daemon=True)
        self._thread.start()

    def committed(self) -> None:
        self._dirty.set()

    def stop(self) -> None:
        self._stopping.set()
        self._dirty.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        conn = connect(self._path)
        try:
            while not self._stopping.is_set():
                self._dirty.wait()
                if self._stopping.wait(self.INTERVAL):
                    break
                self._dirty.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    pass  # busy or locked: the next round catches up
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()


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
        self._checkpointer: _Checkpointer | None = None

    def _open_writer(self) -> sqlite3.Connection:
        conn = connect(self.path)
        if self.path != ":memory:":
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = _Checkpointer(self.path)
        return conn

    def _close_writer(self, conn: sqlite3.Connection) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        conn.close()

    def _run_batch(self, conn: sqlite3.Connection, ops: list[db.Op[Any]]) -> tuple[list[tuple[bool, Any]], bool]:
        wrapped = SQLiteConn(conn)
        outcomes: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            if len(ops) == 1:
                outcomes.append((True, db.run_op(ops[0], wrapped)))
            else:
                for op in ops:
                    conn.execute("SAVEPOINT op")
                    try:
                        outcomes.append((True, db.run_op(op, wrapped)))
                        conn.execute("RELEASE op")
                    except Exception as exc:  # noqa: BLE001 - this op alone rolls back
                        conn.execute("ROLLBACK TO op")
                        wrapped.rolled_back()
                        conn.execute("RELEASE op")
                        outcomes.append((False, exc))
            conn.execute("COMMIT")
            if self._checkpointer is not None:
                self._checkpointer.committed()
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
            return db.run_op(op, conn)
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
