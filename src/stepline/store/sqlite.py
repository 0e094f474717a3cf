"""SQLite backend: WAL, one writer thread per process, readers in a small pool.

Processes that share the file coordinate through SQLite's write lock
(``BEGIN IMMEDIATE``, which the writer retries while another connection holds the
lock); they find each other's new work by a short poll, while work made due in this
process wakes its workers at once. A write lock held elsewhere for however long
(another process's long transaction) is waited out by checkpoints, finishes and every
other write, never reported as a failed write: the leases of the runs this process holds
lapse meanwhile, and its workers stop those runs themselves. Ingests alone give up after
``store.INGEST_WRITE_LOCK_WAIT_MS`` (``db.Batched.write_lock_wait_ms``): a request is
answered 503 instead of hanging, and nothing of it is stored.

WAL checkpoints run on a thread of their own, never inside a commit: SQLite's
automatic checkpoint (every 1,000 pages) would otherwise stall whichever commit
crosses the threshold by several milliseconds, every thirty-odd runs. A checkpoint
running beside the writer never catches up with it, so the log would never restart
and would grow by the whole write volume; the checkpointer therefore finishes each
large one with a short catch-up under the writer's own lock (see ``_Checkpointer``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

from stepline import errors
from stepline.outage import OutageLog
from stepline.store import db

log = logging.getLogger("stepline.store.sqlite")


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {d[0]: v for d, v in zip(cursor.description, row)}


# Primary result codes that mean the file cannot be written now, not that a statement is wrong.
_UNAVAILABLE = {
    sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PROTOCOL,
}
# Seconds another connection may hold the write lock before the first warning: past any
# transaction of a healthy process, early enough to find the culprit while it still holds it.
LOCK_WARN_FIRST = 2.0
LOCK_WARN_EVERY = 30.0  # seconds between warnings while another connection holds the write lock
LOCK_POLL_FIRST = 0.0005  # the writer's first pause while another connection holds the write lock (s)
LOCK_POLL_MAX = 0.02  # its longest pause: how late it may take a lock just freed (s)


def advice(path: str, exc: BaseException) -> str:
    """What an operator can do about a failure to write ``path`` (empty when nothing)."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    directory = os.path.dirname(os.path.abspath(path))
    if code == sqlite3.SQLITE_FULL:
        return f"The file system holding {directory} is full: free space there"
    if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY):
        name = os.path.basename(path)
        return (
            f"SQLite must be able to write {path} and create {name}-wal and {name}-shm in {directory}: check "
            f"that user id {os.geteuid()} may write both and that the file system is not mounted read-only"
        )
    return ""


def _busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and getattr(exc, "sqlite_errorcode", 0) & 0xFF in (
        sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED
    )


class SQLiteConn(db.Conn):
    dialect = "sqlite"
    clock_ms = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"

    def __init__(self, raw: sqlite3.Connection) -> None:
        super().__init__()
        self.raw = raw
        self.signals: list[tuple[str, str]] = []  # told to this process's listeners after COMMIT

    def indexed_by(self, index: str) -> str:
        return f"INDEXED BY {index}"

    def or_fail(self) -> str:
        return "OR FAIL "

    def signal(self, topic: str, payload: str) -> None:
        # Other processes sharing the file learn it by polling (see Worker); this one at once.
        self.signals.append((topic, payload))

    def _execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        return self.raw.execute(sql, params)

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.raw.executemany(sql, rows)

    def _all(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[db.Row]:
        return self.raw.execute(sql, params).fetchall()

    def _rowcount(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> int:
        return self.raw.execute(sql, params).rowcount


BUSY_TIMEOUT_MS = 30000  # how long a statement waits for a lock before SQLite reports it busy


def connect(path: str) -> sqlite3.Connection:
    raw = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    raw.row_factory = _dict_row
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("PRAGMA synchronous=NORMAL")
    raw.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    raw.execute("PRAGMA foreign_keys=OFF")
    return raw


def missing_indexes(path: str, names: tuple[str, ...]) -> list[str]:
    """Those of the indexes ``names`` that the database file lacks."""
    raw = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        marks = ", ".join("?" for _ in names)
        found = {row[0] for row in raw.execute(f"SELECT name FROM sqlite_master WHERE type = 'index' AND name IN ({marks})", names)}
    finally:
        raw.close()
    return [name for name in names if name not in found]


def prepare_new_file(path: str) -> None:
    """Give a database file that does not exist yet (or is empty) ``auto_vacuum = INCREMENTAL``.

    The mode can only be chosen before the first table is created, so it is set here,
    before the migrations (and yoyo's own tables) create any; switching WAL on writes the
    file's header, which keeps it. Pages that retention frees can then be handed back to
    the file system a few at a time (``incremental_vacuum``) instead of by a full VACUUM.
    """
    if path == ":memory:" or (os.path.exists(path) and os.path.getsize(path) > 0):
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # `stepline dev` on a fresh checkout: ./.stepline/
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("PRAGMA auto_vacuum = INCREMENTAL")
        raw.execute("PRAGMA journal_mode=WAL")
    finally:
        raw.close()


class _Checkpointer:
    """Copies the WAL back into the database file off the commit path (PASSIVE: it never
    waits for, or blocks, the writer or readers).

    SQLite restarts the log from its beginning only when a write begins with every frame
    copied back and no reader inside the log. A checkpoint beside a busy writer copies the
    frames it found while new ones arrive, so it never catches up: the log grew by the whole
    write volume (80 MB/s under one connection's ingests) until the size limit below
    truncated it, holding the write lock for tens of milliseconds each time. So once the
    log holds ``CATCH_UP_FRAMES`` and the unlocked checkpoint has copied most of it, a
    second one copies the few frames that came meanwhile while holding ``writes`` (the
    writer's lock in this process: its writes wait for a millisecond or two, on a lock,
    not by polling); the next write then starts the log over.
    """

    INTERVAL = 0.2  # seconds between checkpoints while commits keep coming
    IDLE = 1.0  # seconds without a commit that wrote before a requested TRUNCATE checkpoint runs
    TRUNCATE_BUSY_MS = 100  # how long that checkpoint may wait for readers (writers wait meanwhile)
    # A PASSIVE checkpoint copies pages back but never restarts the log while a reader still
    # uses it: under steady writes with overlapping reads (an API or dashboard polled) the
    # log never restarted and grew by the whole write volume (1.2 GB in 90 s beside a
    # 380 MB database). Past this size it is truncated as soon as readers let it.
    WAL_LIMIT = 64 * 1024 * 1024
    RESET_BACKOFF_MAX = 30.0  # seconds between tries while a long reader holds the log
    RESET_QUIET = 10.0  # seconds of failed tries before saying so (short reads get out of the way)
    CATCH_UP_FRAMES = 1000  # a log this long (about 4 MiB) is caught up under the writer's lock; SQLite's own default
    CATCH_UP_WAIT = 0.5  # seconds to wait for the writer's lock before leaving the catch-up to the next round

    def __init__(self, path: str, writes: threading.Lock | None = None) -> None:
        self._path = path
        self._writes = writes
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self._truncate = threading.Event()
        self._wrote = threading.Event()  # a commit changed rows (a worker's empty claims do not)
        self._reset_after = 0.0  # time.monotonic() before which an oversized log is left alone
        self._backoff = 0.0
        self._failing_since: float | None = None
        self._oversized = OutageLog(log, f"shrinking the WAL of {path}")
        self._thread = threading.Thread(target=self._loop, name="stepline-sqlite-checkpoint", daemon=True)
        self._thread.start()

    def committed(self, wrote: bool = True) -> None:
        # set() takes the event's lock even when it is set already, once per commit: look first
        # (a clear() racing with the look is the checkpointer's, whose checkpoint comes after it).
        if not self._dirty.is_set():
            self._dirty.set()
        if wrote and not self._wrote.is_set():
            self._wrote.set()

    def truncate_when_idle(self) -> None:
        """Shrink the WAL file to nothing at the next moment no commit comes for ``IDLE`` s."""
        self._truncate.set()
        self._dirty.set()

    def stop(self) -> None:
        self._stopping.set()
        self._dirty.set()
        self._wrote.set()  # not waiting for an idle moment any more
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        conn = connect(self._path)
        try:
            while not self._stopping.is_set():
                self._dirty.wait()
                if self._stopping.wait(self.INTERVAL):
                    break
                self._dirty.clear()
                self._checkpoint(conn)
                self._shrink_if_oversized(conn)
                if self._truncate.is_set():
                    self._wrote.clear()
                    if not self._wrote.wait(self.IDLE):
                        self._truncate_wal(conn)
            self._last_checkpoint(conn)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """A PASSIVE checkpoint, and the catch-up that lets the log restart (see the class doc)."""
        try:
            row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            return  # busy or locked: the next round catches up
        # ``log`` counts the frames there were when it began: those that came meanwhile are not in it.
        if self._writes is None or row is None or row["log"] < self.CATCH_UP_FRAMES:
            return
        with self._holding_writes() as held:
            if held:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    @contextlib.contextmanager
    def _holding_writes(self) -> Iterator[bool]:
        """This process's writer's lock, if it comes within ``CATCH_UP_WAIT`` (else False: the
        next round tries again); True at once where there is no such lock."""
        if self._writes is None:
            yield True
            return
        if not self._writes.acquire(timeout=self.CATCH_UP_WAIT):
            yield False
            return
        try:
            yield True
        finally:
            self._writes.release()

    def _last_checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the log back before the store closes. It may fail (a full disk: the file
        cannot grow to take the log's pages); nothing is lost then, the log keeps every
        commit and the next opening of the file reads it."""
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            log.warning(
                "the last WAL checkpoint of %s failed (%s); nothing is lost: %s-wal keeps every commit "
                "and the next start copies it back. %s", self._path, exc, self._path, advice(self._path, exc)
            )

    def _truncate_wal(self, conn: sqlite3.Connection) -> None:
        """A TRUNCATE checkpoint at an idle moment: a log that grew under load keeps its
        size until then (the WAL is reused, never shrunk)."""
        self._truncate.clear()
        if not self._checkpoint_truncate(conn):
            self._truncate.set()  # readers were in the way: at the next idle moment

    def _shrink_if_oversized(self, conn: sqlite3.Connection) -> None:
        """Truncate a log past ``WAL_LIMIT``, backing off while a reader keeps it in use
        (each try holds writers for up to ``TRUNCATE_BUSY_MS``)."""
        if time.monotonic() < self._reset_after:
            return
        size = _wal_bytes(self._path)
        if size <= self.WAL_LIMIT:
            return
        if self._checkpoint_truncate(conn):
            self._backoff, self._failing_since = 0.0, None
            self._oversized.worked()
            return
        now = time.monotonic()
        self._backoff = min(self.RESET_BACKOFF_MAX, max(self.INTERVAL, self._backoff * 2))
        self._reset_after = now + self._backoff
        if self._failing_since is None:
            self._failing_since = now
        if now - self._failing_since < self.RESET_QUIET:
            return
        self._oversized.failed(errors.StoreError(
            f"the WAL has grown to {size // 2**20} MiB and a reader keeps it in use (a long read "
            "transaction of another process?); it grows until that reader ends"
        ))

    def _checkpoint_truncate(self, conn: sqlite3.Connection) -> bool:
        """A TRUNCATE checkpoint that gives up quickly when readers hold the log; whether it
        went through. It holds the write lock meanwhile, so it holds ``writes`` too: this
        process's writes wait on that lock and go on the moment it is done, instead of
        polling the file's lock with growing sleeps (a 10 ms truncation cost them 30)."""
        with self._holding_writes() as held:
            if not held:
                return False
            try:
                conn.execute(f"PRAGMA busy_timeout={self.TRUNCATE_BUSY_MS}")
                row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                return not (row and row["busy"])
            except sqlite3.Error:
                return False
            finally:
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def _wal_bytes(path: str) -> int:
    try:
        return os.path.getsize(path + "-wal")
    except OSError:
        return 0


class SQLiteDatabase(db.Database):
    dialect = "sqlite"
    poll_interval = 0.1
    commits_inline = True  # a commit is local work (no flush to disk in WAL with synchronous=NORMAL)
    shares_write_lock = True  # one write lock on the file, for every process that opens it

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
        conn.execute("PRAGMA busy_timeout=0")  # ``_begin`` waits for the write lock itself
        if self.path != ":memory:":
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = _Checkpointer(self.path, self._commit_lock)
        return conn

    def truncate_log_when_idle(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.truncate_when_idle()

    def _close_writer(self, conn: sqlite3.Connection) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        conn.close()

    def _unavailable(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and getattr(exc, "sqlite_errorcode", 0) & 0xFF in _UNAVAILABLE

    def advice(self, exc: BaseException) -> str:
        return advice(self.path, exc)

    def _begin(self, conn: sqlite3.Connection) -> None:
        """Take the write lock, however long another connection holds it (see the module doc).

        The writer's connection has no busy timeout: this loop waits for the lock instead, so
        the loop's thread can try it once without waiting (``_begin_now``) at no cost. It
        sleeps like SQLite's own busy handler, a little longer each time, up to 20 ms. While
        it waits, ``_write_lock_wait_since`` says so: queued ingests give up on it, /health
        reports it. It is cleared only once the lock is taken, before any item is."""
        if self._begin_now(conn):
            return
        since = time.monotonic()
        self._write_lock_why = (
            f"another process holds the write lock of {self.path} (a process with the database open in a write "
            "transaction); writes wait for it and events are refused until it lets go"
        )
        self._write_lock_wait_since = since
        try:
            self._wait_for_lock(conn, since)
        finally:
            self._write_lock_wait_since = None

    def _wait_for_lock(self, conn: sqlite3.Connection, since: float) -> None:
        warn_at, warned = since + LOCK_WARN_FIRST, False
        pause = LOCK_POLL_FIRST
        while not self._begin_now(conn):
            if self._closed:
                raise sqlite3.OperationalError("the store closed while waiting for the write lock")
            now = time.monotonic()
            if now >= warn_at:
                warn_at, warned = now + LOCK_WARN_EVERY, True
                log.warning(
                    "another connection has held the write lock of %s for %.0f s; waiting for it. Look for "
                    "another process with this database open in a write transaction (a sqlite3 shell after "
                    "BEGIN, a long script, a process stopped or frozen mid-write); meanwhile events are "
                    "refused (503, nothing stored) and other writes wait",
                    self.path, now - since,
                )
            time.sleep(pause)
            pause = min(pause * 2, LOCK_POLL_MAX)
        if warned:
            log.warning("the write lock of %s is free again after %.0f s", self.path, time.monotonic() - since)

    def _begin_now(self, conn: sqlite3.Connection) -> bool:
        """Take the write lock if it is free at once (another process may hold it)."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                return False
            raise
        return True

    def _run_inline(self, conn: sqlite3.Connection, op: db.Op[Any]) -> tuple[tuple[bool, Any], bool] | None:
        if not self._begin_now(conn):
            return None
        outcomes, woke = self._run_begun(conn, [op], inline=True)
        return outcomes[0], woke

    def _run_batch(self, conn: sqlite3.Connection, ops: list[db.Op[Any]]) -> tuple[list[tuple[bool, Any]], bool]:
        self._begin(conn)
        return self._run_begun(conn, ops)

    def _run_begun(
        self, conn: sqlite3.Connection, ops: list[db.Op[Any]], *, inline: bool = False
    ) -> tuple[list[tuple[bool, Any]], bool]:
        """``ops`` in the transaction just begun, each isolated; committed."""
        wrapped = SQLiteConn(conn)
        wrapped.inline = inline
        outcomes: list[tuple[bool, Any]] = []
        changes = conn.total_changes
        try:
            if len(ops) == 1:
                outcomes.append((True, db.run_op(ops[0], wrapped)))
            else:
                for op in ops:
                    conn.execute("SAVEPOINT op")
                    told = len(wrapped.signals)
                    try:
                        outcomes.append((True, db.run_op(op, wrapped)))
                        conn.execute("RELEASE op")
                    except Exception as exc:  # noqa: BLE001 - this op alone rolls back
                        conn.execute("ROLLBACK TO op")
                        wrapped.rolled_back()
                        del wrapped.signals[told:]
                        conn.execute("RELEASE op")
                        outcomes.append((False, exc))
            conn.execute("COMMIT")
            self._batch_wrote = conn.total_changes != changes
            if self._checkpointer is not None:
                self._checkpointer.committed(wrote=self._batch_wrote)
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if len(ops) == 1:
                return [(False, exc)], False
            raise
        for topic, payload in wrapped.signals:
            self._dispatch(topic, payload)
        return outcomes, wrapped.woke

    def _reader(self) -> sqlite3.Connection:
        raw: sqlite3.Connection | None = getattr(self._local, "raw", None)
        if raw is None:
            raw = self._local.raw = connect(self.path)
            with self._reader_lock:
                self._readers.append(raw)
        return raw

    def _read_sync(self, op: db.Op[Any]) -> Any:
        # A Conn of its own for each read, as each write batch has: its memo (which functions
        # an event name triggers, ...) lives for one transaction. Kept on the thread's
        # connection, it grew with every name a client asked about and went stale.
        conn = SQLiteConn(self._reader())
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
