"""PostgreSQL backend: one writer connection per process, readers in a pool, LISTEN/NOTIFY.

Any number of processes on any number of machines share one database:

- Writes go through the group-commit writer of ``db.Database``: one connection, many
  operations per transaction, sent together in pipeline mode; only when one fails is the
  batch run again with each operation isolated by a savepoint.
- A batch whose connection died before COMMIT is retried on a new connection (nothing
  was committed); one that died *during* COMMIT asks the server whether its
  transaction id committed (``pg_xact_status``) and either reports the saved outcomes
  or retries. Only when that cannot be known do callers get a ``StoreError``.
- A transaction that made work due sends ``pg_notify`` before COMMIT (delivered only if
  it commits); a listener thread in every process wakes that process's workers, so the
  worker's poll is only a safety net. ``Conn.signal`` (a run cancelled elsewhere) rides
  a second channel to the listeners registered for its topic.
- Readers come from a psycopg pool sized from the worker's concurrency, each read in a
  read-only REPEATABLE READ transaction (one snapshot, as on SQLite) and retried on a
  fresh connection if its one was lost.
- Concurrent writers in other processes are ordered by row locks (``FOR UPDATE``, and
  ``SKIP LOCKED`` for claims) and transaction-scoped advisory locks (``Conn.lock``); a
  deadlock or serialization failure re-runs the whole uncommitted batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import math
import os
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg.rows import dict_row

from stepline import errors
from stepline.store import db, migrate

log = logging.getLogger("stepline.store.postgres")

CHANNEL = "stepline_wake"  # payload: the sending process's token
SIGNALS = "stepline_signal"  # payload: "<topic>:<payload>" (Conn.signal)
# Seconds the writer keeps trying to reconnect before failing the operations it holds.
RECONNECT_WINDOW = 30.0
# Errors after which re-running the whole (uncommitted) batch is expected to succeed.
TRANSIENT = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure)
# Milliseconds a write waits for a lock another session holds before it fails alone (its
# caller is told the database is unavailable; the rest of its batch goes on): a process
# frozen mid-transaction (a paused VM, SIGSTOP) holding an event id's lock, or a row's,
# once held every write of every other process for as long as it was frozen.
LOCK_TIMEOUT_MS = 5000
LISTEN_CHECK_EVERY = 15.0  # seconds between checks that the LISTEN connection still answers
# A session idle inside a transaction this long (its client froze between statements) is
# ended by the server, which frees its locks; the writer's transactions take milliseconds.
IDLE_IN_TRANSACTION_MS = 60_000
BATCH_TRIES = 5
# Seconds a batch or a read may wait for PostgreSQL's answers before its connection is given
# up (first its statement is cancelled, then its socket shut): an answer lost on the way
# (a failover behind a proxy, packets dropped without a reset) would otherwise hold the
# writer, and every write of the process, or a reader and its request, forever; TCP
# keepalives probe idle connections only.
ANSWER_DEADLINE = 60.0
CLOSING_DEADLINE = 5.0  # the same while the store closes: shutting down must not wait that long
READ_THREADS = 32
# Statistics of the queue table are refreshed once this many runs (and at least as many
# as it held at the last refresh) were added since: see PostgresDatabase.note_new_runs.
# The tables that grow with every run (runs, events, steps) are refreshed when the runs
# table has grown by this many and by half its size at the last refresh.
ANALYZE_AFTER_RUNS = 5000
GROWING_TABLES = "runs, events, steps"
# Connection options: TCP keepalives notice a vanished server on an idle connection, and
# the user timeout one that stopped acknowledging what was sent (a network partition).
CONNECT_KWARGS: dict[str, Any] = {
    "autocommit": True,
    "row_factory": dict_row,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
    "connect_timeout": 5,
    "application_name": "stepline",
}


@functools.lru_cache(maxsize=2048)
def translate(sql: str) -> str:
    """``?`` placeholders to psycopg's ``%s``; a literal ``%`` doubled (psycopg reads it everywhere)."""
    out: list[str] = []
    quote = ""
    for ch in sql:
        if ch == "%":
            out.append("%%")
        elif quote:
            out.append(ch)
            if ch == quote:
                quote = ""
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        else:
            out.append(ch)
    return "".join(out)


# A deferred plain INSERT of at least this many rows goes as one statement that reads
# its rows from a JSON parameter: psycopg's executemany costs about 12 µs of client CPU
# per row (a message and a poll each), the JSON form a tenth of that.
BULK_ROWS = 4
_PLAIN_INSERT = re.compile(r"INSERT INTO (\w+) \(([\w\s,]+)\) VALUES \(([^()']+)\)", re.S)
_LITERAL = re.compile(r"\?|NULL|-?\d+")
_JSON_SCALARS = (str, int, type(None))


@functools.lru_cache(maxsize=256)
def bulk_insert(sql: str) -> tuple[str, tuple[str, ...]] | None:
    """``INSERT INTO t (a, b, c) VALUES (?, ?, 0)`` as one statement over a JSON array of
    rows, and the columns each row object carries; None for any other statement (an
    upsert, an expression among the values)."""
    match = _PLAIN_INSERT.fullmatch(sql.strip())
    if match is None:
        return None
    table, columns = match.group(1), [c.strip() for c in match.group(2).split(",")]
    values = [v.strip() for v in match.group(3).split(",")]
    if len(columns) != len(values) or not all(_LITERAL.fullmatch(v) for v in values):
        return None
    select = ", ".join(f"x.{c}" if v == "?" else v for c, v in zip(columns, values))
    statement = (
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {select} "
        f"FROM json_populate_recordset(NULL::{table}, %s::json) AS x"
    )
    return statement, tuple(c for c, v in zip(columns, values) if v == "?")


def rows_as_json(columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str | None:
    """The rows as a JSON array of objects, or None when a value would not survive the
    trip unchanged (bytes, a bool, a float that is not finite, a nested object)."""
    for row in rows:
        for value in row:
            if not isinstance(value, _JSON_SCALARS) or isinstance(value, bool):
                if not (isinstance(value, float) and math.isfinite(value)):
                    return None
    return orjson.dumps([dict(zip(columns, row)) for row in rows]).decode()


def pool_size_for(concurrency: int) -> int:
    """Reader connections for a worker running ``concurrency`` runs at once (writes share one)."""
    return max(4, min(20, concurrency // 25))


class PostgresConn(db.Conn):
    dialect = "postgres"
    clock_ms = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"  # not now(): that is the transaction's start

    def __init__(self, raw: psycopg.Connection[Any], pipe: psycopg.Pipeline | None = None) -> None:
        super().__init__()
        self.raw = raw
        # The writer's transactions run in pipeline mode: a write is sent without waiting
        # for its answer, which comes (with any error) at the next read or sync.
        self.pipe = pipe
        self._lock_wait_ms = LOCK_TIMEOUT_MS  # the session's lock_timeout in this operation

    def _execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        return self.raw.execute(translate(sql), tuple(params))

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        bulk = bulk_insert(sql) if len(rows) >= BULK_ROWS else None
        payload = None if bulk is None else rows_as_json(bulk[1], rows)
        if bulk is not None and payload is not None:
            self.raw.execute(bulk[0], (payload,))
            return
        with self.raw.cursor() as cursor:
            cursor.executemany(translate(sql), rows)

    def _all(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[db.Row]:
        return self.raw.execute(translate(sql), tuple(params)).fetchall()

    def _rowcount(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> int:
        cursor = self.raw.execute(translate(sql), tuple(params))
        if self.pipe is not None:
            self.pipe.sync()  # the count is known only once the answer is in
        return cursor.rowcount

    def sync(self) -> None:
        """Wait for the answers to every statement sent so far; raises the first error among them."""
        if self.pipe is not None:
            self.pipe.sync()

    def skip_locked(self) -> str:
        return "FOR UPDATE SKIP LOCKED"

    def row_lock_skip(self, of: str) -> str:
        return f"FOR NO KEY UPDATE OF {of} SKIP LOCKED"

    def row_lock(self, of: str = "") -> str:
        return f"FOR UPDATE OF {of}" if of else "FOR UPDATE"

    def signal(self, topic: str, payload: str) -> None:
        # Sent now, delivered at COMMIT; dropped with its savepoint if this op rolls back.
        self.raw.execute("SELECT pg_notify(%s, %s)", (SIGNALS, f"{topic}:{payload}"))

    def lock(self, *key: str) -> None:
        # A transaction-scoped advisory lock: released at COMMIT / ROLLBACK.
        self.raw.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("\x1f".join(key),))

    def limit_lock_waits(self, wait_ms: int | None) -> None:
        # SET LOCAL: undone with the operation's savepoint if it rolls back (see rolled_back).
        self._lock_wait_ms = LOCK_TIMEOUT_MS if wait_ms is None else int(wait_ms)
        self.raw.execute(f"SET LOCAL lock_timeout = {self._lock_wait_ms}")

    def rolled_back(self) -> None:
        super().rolled_back()
        self._lock_wait_ms = LOCK_TIMEOUT_MS  # the rollback undid any SET LOCAL of the operation

    def lock_briefly(self, wait_ms: int, *key: str) -> None:
        # Sent without waiting for answers, as lock: the wait is bounded for this statement alone.
        self.raw.execute(f"SET LOCAL lock_timeout = {int(wait_ms)}")
        self.lock(*key)
        self.raw.execute(f"SET LOCAL lock_timeout = {self._lock_wait_ms}")

    def lock_many(self, keys: list[tuple[str, ...]]) -> None:
        # One statement; a function scan calls the lock in array order.
        if len(keys) == 1:
            self.lock(*keys[0])
        elif keys:
            self.raw.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest(%s::text[]) AS k",
                (["\x1f".join(key) for key in keys],),
            )


# What libpq says when the server did answer, but only for now: a server starting up,
# shutting down or in recovery, or one whose connection slots are all taken.
# "too many connections for database / role": a CONNECTION LIMIT reached (a fleet restarting
# while the old processes' sessions still count) frees up like the server's own slots.
_NOT_YET = (
    "starting up", "shutting down", "in recovery mode", "too many clients", "connection slots are reserved",
    "too many connections",
)
# How often a process waiting for its database says so.
_WAIT_LOG_EVERY = 5.0


def _not_answering_yet(exc: psycopg.OperationalError) -> bool:
    """Whether a failed connection means the server is not there yet (no answer, or an
    answer that says "not now"), not that it refused this client for good."""
    message = str(exc)
    return "FATAL:" not in message or any(phrase in message for phrase in _NOT_YET)


def wait_until_reachable(url: str, seconds: float) -> None:
    """Return once the server takes a connection, once ``seconds`` have passed, or at once
    when it refuses this client for good (see ``store.wait_for_database``)."""
    deadline = time.monotonic() + seconds
    said_at = -math.inf
    while True:
        try:
            psycopg.connect(url, connect_timeout=max(1, min(10, math.ceil(seconds))), application_name="stepline").close()
            if said_at > -math.inf:
                log.warning("PostgreSQL at %s answers again", migrate.redact(url))
            return
        except psycopg.OperationalError as exc:
            left = deadline - time.monotonic()
            if left <= 0 or not _not_answering_yet(exc):
                return  # opening the store reports it, in its own words
            if time.monotonic() - said_at >= _WAIT_LOG_EVERY:
                said_at = time.monotonic()
                log.warning(
                    "PostgreSQL at %s does not answer yet (%s); waiting up to %.0f s more (STEPLINE_CONNECT_WAIT)",
                    migrate.redact(url), _first_line(exc), left,
                )
            time.sleep(min(0.5, left))


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _stale_plan(exc: BaseException) -> bool:
    """A statement psycopg prepared before a migration changed the table's columns."""
    return isinstance(exc, pg_errors.FeatureNotSupported) and "cached plan" in str(exc)


# A statement psycopg believes prepared that the server does not have (lost to a pipeline
# aborted by a cancelled statement): the session cannot go on, a new one can.
_NO_SUCH_STATEMENT = "26000"
_SPOILED_ERRORS = (pg_errors.FeatureNotSupported, pg_errors.InvalidSqlStatementName)
# A write refused because the session is read-only: opened on a demoted primary after a
# failover, or with default_transaction_read_only, it stays so after the server takes
# writes again. The write fails (a StoreError), and the session is replaced after the batch.
_READ_ONLY = "25006"


def _spoiled(exc: BaseException) -> bool:
    """Whether the connection must be replaced before the batch can run again (see above)."""
    return _stale_plan(exc) or getattr(exc, "sqlstate", None) == _NO_SUCH_STATEMENT


def _shut_socket(raw: psycopg.Connection[Any]) -> None:
    """End the connection under whoever waits on it (from another thread: the socket itself,
    not the psycopg object, which its user holds)."""
    with contextlib.suppress(Exception):
        sock = socket.socket(fileno=os.dup(raw.pgconn.socket))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


def _lost(raw: psycopg.Connection[Any] | None) -> bool:
    return raw is None or raw.closed or raw.broken


# SQLSTATEs after which the server closes the session (admin or crash shutdown, cannot
# connect now, idle timeouts): the connection is gone even if libpq has not noticed yet.
_SESSION_ENDED = ("57P01", "57P02", "57P03", "57P05", "25P03")


def _gone(raw: psycopg.Connection[Any] | None, exc: BaseException) -> bool:
    """Whether ``exc`` means the connection is lost (in any form), not that a statement failed."""
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return _lost(raw) or sqlstate.startswith("08") or sqlstate in _SESSION_ENDED


class _RetryBatch(Exception):
    """Nothing of this batch was committed and running it again is expected to work."""


@dataclasses.dataclass(eq=False)
class _Wait:
    """A connection whose user waits on PostgreSQL's answers (see ``_watch_answers``)."""

    raw: psycopg.Connection[Any]
    who: str
    began: float = dataclasses.field(default_factory=time.monotonic)
    cancelled: float | None = None  # when the watchdog cancelled its statement


class _Link:
    """A connection that is reopened, with backoff, after the server went away."""

    def __init__(self, url: str, purpose: str, closing: threading.Event) -> None:
        self.url = url
        self.purpose = purpose
        self.raw: psycopg.Connection[Any] | None = None
        self.read_only = False  # the session was opened read-only (a standby, default_transaction_read_only)
        self._closing = closing
        self._down_since: float | None = None
        # Whether a connection was ever opened: a first connect that is merely slow (a
        # distant server, many round trips) re-establishes nothing.
        self._was_up = False

    def get(self) -> psycopg.Connection[Any]:
        if not _lost(self.raw):
            return self.raw  # type: ignore[return-value]
        self.drop()
        started = self._down_since = self._down_since or time.monotonic()
        delay = 0.05
        while True:
            try:
                self.raw = psycopg.connect(self.url, **CONNECT_KWARGS)
                _set_timeouts(self.raw)
                row = self.raw.execute("SHOW transaction_read_only").fetchone() or {}
                self.read_only = row.get("transaction_read_only") == "on"
            except psycopg.OperationalError as exc:
                if self._closing.is_set() or time.monotonic() - started > RECONNECT_WINDOW:
                    raise errors.StoreError(
                        f"PostgreSQL at {migrate.redact(self.url)} is unreachable ({_first_line(exc)}); "
                        "check that the server is up and the URL is right"
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if self._was_up and time.monotonic() - started > 0.5:
                log.warning("%s connection to PostgreSQL re-established", self.purpose)
            self._down_since, self._was_up = None, True
            return self.raw

    def drop(self) -> None:
        if self.raw is not None:
            with contextlib.suppress(Exception):  # it is already gone
                self.raw.close()
            self.raw = None


class _SideWriter:
    """A connection beside the writer for one kind of write, and the thread that uses it:
    one transaction at a time, never queued behind the group commit."""

    def __init__(self, url: str, purpose: str, closing: threading.Event) -> None:
        self.link = _Link(url, purpose, closing)  # connects at its first write
        self.thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"stepline-pg-{purpose}")


class PostgresDatabase(db.Database):
    dialect = "postgres"
    # LISTEN/NOTIFY wakes workers; polling only catches what a lost notification missed.
    poll_interval = 1.0
    signals_reach_processes = True

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._token = uuid.uuid4().hex[:16]  # marks this process's own notifications
        self._closing = threading.Event()
        self._pool_size = pool_size_for(0)
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._read_threads = concurrent.futures.ThreadPoolExecutor(READ_THREADS, thread_name_prefix="stepline-pg-read")
        # Background chores (retention) write on a connection of their own, one at a time.
        self._aside = _SideWriter(url, "maintenance", self._closing)
        # So do lease renewals: behind the group commit they waited for every ingest and
        # checkpoint queued before them, and on a slow link (a round trip per operation of a
        # commit) came too late, so workers stopped runs the database was merely slow to take.
        self._renewals = _SideWriter(url, "lease", self._closing)
        self._listener: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._waits: dict[int, _Wait] = {}  # by thread: whose answers the watchdog times
        self._closed_all = threading.Event()
        self._listening = threading.Event()
        self._new_runs = 0
        self._runs_at_analyze = 0.0
        self._new_rows = 0  # runs added since the growing tables' last refresh
        self._rows_at_analyze = 0.0
        self._analyzing = False

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        if self._pool is None:
            pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
                self.url,
                min_size=1,
                max_size=self._pool_size,
                kwargs=CONNECT_KWARGS,
                configure=_configure_reader,
                open=False,
                name="stepline-read",
                reconnect_timeout=RECONNECT_WINDOW * 10,
            )
            try:
                await loop.run_in_executor(self._read_threads, functools.partial(pool.open, wait=True, timeout=10.0))
            except psycopg_pool.PoolTimeout as exc:
                raise errors.StoreError(
                    f"cannot open reader connections to PostgreSQL at {migrate.redact(self.url)}; "
                    "check that the server is up and accepts more connections (max_connections)"
                ) from exc
            self._pool = pool
        if self._listener is None:
            self._listener = threading.Thread(target=self._listen_loop, name="stepline-pg-listen", daemon=True)
            self._listener.start()
            # Listening before the first claim means no wake-up is lost at start.
            await loop.run_in_executor(self._read_threads, self._listening.wait, 5.0)
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch_answers, name="stepline-pg-watchdog", daemon=True)
            self._watchdog.start()

    def plan_capacity(self, concurrency: int) -> None:
        # A worker: its renewals' connection opened now, not at the first renewal (on a slow
        # link a session takes a dozen round trips to open, time the first leases lack).
        self._renewals.thread.submit(self._renewals.link.get)
        size = max(self._pool_size, pool_size_for(concurrency))
        self._pool_size = size
        if self._pool is not None:
            self._pool.resize(min_size=1, max_size=size)

    async def close(self) -> None:
        self._closing.set()
        try:
            await super().close()
        finally:
            self._closed_all.set()

    @contextlib.contextmanager
    def _waiting(self, raw: psycopg.Connection[Any], who: str) -> Iterator[_Wait]:
        """Time this thread's wait on ``raw`` for the watchdog."""
        key = threading.get_ident()
        wait = self._waits[key] = _Wait(raw, who)
        try:
            yield wait
        finally:
            if self._waits.get(key) is wait:
                del self._waits[key]

    def _watch_answers(self) -> None:
        """Give up a connection whose user (the writer, a write aside, a reader) has waited
        past ``ANSWER_DEADLINE``: cancel its statement (a lock wait ends at once, the server
        being reachable), and if that does not free it within ``CLOSING_DEADLINE``, shut its
        socket. Its user then sees a lost connection: a batch runs again on a new one (a
        COMMIT whose answer was lost is settled by asking the server, as after any cut), a
        read is retried on another."""
        while not self._closed_all.wait(1.0):
            limit = CLOSING_DEADLINE if self._closing.is_set() else ANSWER_DEADLINE
            for key, wait in list(self._waits.items()):
                now = time.monotonic()
                if wait.raw.closed:
                    continue
                if wait.cancelled is None:
                    if now - wait.began >= limit:
                        log.warning("PostgreSQL has not answered %s for %.0f s; cancelling its statement", wait.who, now - wait.began)
                        wait.cancelled = now
                        with contextlib.suppress(Exception):
                            wait.raw.cancel_safe(timeout=CLOSING_DEADLINE)
                elif now - wait.cancelled >= CLOSING_DEADLINE:
                    log.warning("%s's connection to PostgreSQL still does not answer; closing it to go on with a new one", wait.who)
                    _shut_socket(wait.raw)
                    if self._waits.get(key) is wait:
                        del self._waits[key]  # its user's next try starts its own clock

    async def write_aside(self, op: db.Op[db.T]) -> db.T:
        return await self._write_beside(self._aside, op)

    async def renew(self, op: db.Op[db.T]) -> db.T:
        return await self._write_beside(self._renewals, op)

    async def _write_beside(self, side: _SideWriter, op: db.Op[db.T]) -> db.T:
        if self._closed:
            raise RuntimeError("the store is closed")
        return await asyncio.get_running_loop().run_in_executor(side.thread, self._write_beside_sync, side, op)

    def _write_beside_sync(self, side: _SideWriter, op: db.Op[Any]) -> Any:
        """``op`` alone in a transaction on a side connection, with the writer's handling of
        lost connections, deadlocks and in-doubt commits (``_run_batch``)."""
        ((ok, value),), _ = self._run_batch(side.link, [op])
        if not ok:
            raise self._store_error(value) if self._unavailable(value) else value
        return value

    async def _close_readers(self) -> None:
        loop = asyncio.get_running_loop()
        for side in (self._aside, self._renewals):
            await loop.run_in_executor(side.thread, side.link.drop)
            side.thread.shutdown(wait=False)
        if self._listener is not None:
            await loop.run_in_executor(None, self._listener.join, 5.0)
            self._listener = None
        # Reads still waiting on the server end first (the watchdog gives up a silent one
        # within twice CLOSING_DEADLINE): a thread left on a dead socket would hold the exit.
        await loop.run_in_executor(None, self._until_no_waits, 2 * CLOSING_DEADLINE + 2)
        if self._pool is not None:
            await loop.run_in_executor(None, functools.partial(self._pool.close, timeout=5.0))
            self._pool = None
        self._read_threads.shutdown(wait=False)

    def _until_no_waits(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self._waits and time.monotonic() < deadline:
            time.sleep(0.05)

    # --- the writer ----------------------------------------------------------------

    def _open_writer(self) -> _Link:
        link = _Link(self.url, "writer", self._closing)
        link.get()
        return link

    def _close_writer(self, conn: _Link) -> None:
        conn.drop()

    def _notify_other_processes(self) -> None:
        pass  # sent inside the batch's transaction, so only committed work wakes anyone

    def _unavailable(self, exc: BaseException) -> bool:
        # Operational errors (locks, timeouts, the server going away), a server that cannot
        # take writes now (a read-only standby, a full disk, resources exhausted), and one
        # whose schema or grants are not what this release needs (class 42: a permission
        # revoked, a table missing or renamed): an operator's to fix, never a function's
        # failure (counted as one, a run with no retries failed at the first refusal).
        sqlstate = getattr(exc, "sqlstate", None) or ""
        return (
            isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
            or sqlstate == "25006"
            or sqlstate[:2] in ("42", "53", "57", "58")
        )

    def advice(self, exc: BaseException) -> str:
        sqlstate = getattr(exc, "sqlstate", None) or ""
        if sqlstate == "42501":
            return "Grant the role Stepline connects as the rights on its tables again (docs/deployment.md)"
        if sqlstate[:2] == "42":
            return ("The database's schema is not the one this release expects: run `stepline migrate --db <url>`, "
                    "or undo the change made to its tables by hand")
        return ""

    def _run_batch(self, conn: _Link, ops: list[db.Op[Any]]) -> tuple[list[tuple[bool, Any]], bool]:
        last: BaseException | None = None
        who = "the writer" if conn is self._writer_conn else f"the {conn.purpose} writer"
        for attempt in range(1, BATCH_TRIES + 1):
            raw = conn.get()
            try:
                with self._waiting(raw, who):
                    return self._try_batch(conn, raw, ops, retry_transient=attempt < BATCH_TRIES)
            except _RetryBatch as why:
                last = why.__cause__
                log.info("retrying a batch of %d operations (attempt %d): %s", len(ops), attempt + 1, last)
                time.sleep(random.uniform(0.0, 0.02 * attempt))
        # Every try lost its connection before COMMIT: nothing was saved.
        raise errors.StoreError(
            f"the connection to PostgreSQL failed {BATCH_TRIES} times in a row ({last}); "
            f"{len(ops)} operation(s) were not saved"
        ) from last

    def _try_batch(
        self, link: _Link, raw: psycopg.Connection[Any], ops: list[db.Op[Any]], *, retry_transient: bool
    ) -> tuple[list[tuple[bool, Any]], bool]:
        conn = PostgresConn(raw)
        committing = False  # COMMIT was sent: a connection lost from here leaves the outcome in doubt
        xid: str | None = None
        try:
            try:
                with raw.pipeline() as conn.pipe:
                    outcomes, xid, rolled_back = self._run_ops(raw, conn, ops, retry_transient)
                    if not rolled_back:
                        # Sent in the pipeline: its answer comes with the pipeline's closing sync,
                        # one round trip for both.
                        committing = True
                        raw.execute("COMMIT")
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if not committing or not _gone(raw, exc):
                    raise  # nothing was committed (a COMMIT that answered with an error rolled back)
                log.warning("the writer's connection to PostgreSQL was lost while committing (%s)", _first_line(exc))
                link.drop()
                if xid is None or self._committed(link, xid, exc) is False:
                    raise _RetryBatch() from exc
        except TRANSIENT as exc:  # before OperationalError: these derive from it
            if _gone(raw, exc):
                link.drop()
                raise _RetryBatch() from exc
            self._rollback(raw)
            if not retry_transient:
                raise
            raise _RetryBatch() from exc
        except _SPOILED_ERRORS as exc:
            if not _spoiled(exc):
                self._rollback(raw)
                raise
            # This session cannot go on (its prepared statements are lost, or predate a schema
            # change): a new connection can.
            link.drop()
            if not retry_transient:
                raise  # every op of the batch gets it as a StoreError: not saved, not their fault
            raise _RetryBatch() from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            # Nothing was committed (COMMIT comes later). An error that escapes the
            # operations is never one op's own: the connection was lost, or left in a
            # state nobody can vouch for (pipeline mode that cannot be exited while
            # busy), so it is closed and the batch runs again on a new one.
            log.warning("the writer's connection to PostgreSQL failed (%s); retrying the batch on a new one", _first_line(exc))
            link.drop()
            raise _RetryBatch() from exc
        except BaseException:
            self._rollback(raw)
            raise
        # A session that refused a write as read-only, or was opened so, is not kept: the next
        # batch gets a new one, which may write once the server takes writes.
        read_only = link.read_only or any(not ok and getattr(value, "sqlstate", None) == _READ_ONLY for ok, value in outcomes)
        if rolled_back:
            if read_only:
                link.drop()  # the op is told; the next batch gets a session that may write
            return outcomes, False
        if read_only:
            link.drop()
        if link is self._writer_conn:
            self._batch_wrote = xid is not None
        return outcomes, conn.woke

    def _run_ops(
        self, raw: psycopg.Connection[Any], conn: PostgresConn, ops: list[db.Op[Any]], retry_transient: bool
    ) -> tuple[list[tuple[bool, Any]], str | None, bool]:
        """Run the batch's operations after BEGIN, in pipeline mode: (outcomes, the transaction
        id, whether the transaction was rolled back because its one operation failed).

        Writes are sent without waiting for their answers. Several operations go first all
        together, with no savepoint and no sync between them (``_run_together``); only when
        one of them fails is the batch run again with each operation in a savepoint, its end
        a sync point, so that its error stays its own.
        """
        self._begin(raw, ops)
        if len(ops) == 1:
            try:
                result = db.run_op(ops[0], conn)
                xid = self._transaction_id(raw, conn.woke)  # waits for the op's writes: their errors land here
            except Exception as exc:  # noqa: BLE001 - the op's failure is its caller's
                self._reraise_if_retryable(raw, exc, retry_transient)
                self._drain_pipeline(raw, conn)
                raw.execute("ROLLBACK")
                return [(False, exc)], None, True
            return [(True, result)], xid, False
        together = self._run_together(raw, conn, ops, retry_transient)
        if together is not None:
            return together[0], together[1], False
        self._begin(raw, ops)
        outcomes: list[tuple[bool, Any]] = []
        for op in ops:
            raw.execute("SAVEPOINT op")
            try:
                result = db.run_op(op, conn)
                raw.execute("RELEASE SAVEPOINT op")
                conn.sync()
                outcomes.append((True, result))
            except Exception as exc:  # noqa: BLE001 - this op alone rolls back
                self._reraise_if_retryable(raw, exc, retry_transient)
                self._drain_pipeline(raw, conn)
                raw.execute("ROLLBACK TO SAVEPOINT op")
                conn.rolled_back()
                raw.execute("RELEASE SAVEPOINT op")
                conn.sync()
                outcomes.append((False, exc))
        return outcomes, self._transaction_id(raw, conn.woke), False

    @staticmethod
    def _begin(raw: psycopg.Connection[Any], ops: list[db.Op[Any]]) -> None:
        raw.execute("BEGIN")
        if db.is_relaxed(ops):
            raw.execute("SET LOCAL synchronous_commit TO off")  # see db.relaxed

    def _run_together(
        self, raw: psycopg.Connection[Any], conn: PostgresConn, ops: list[db.Op[Any]], retry_transient: bool
    ) -> tuple[list[tuple[bool, Any]], str | None] | None:
        """Every operation of the batch with no savepoint or sync between them: the answers to
        their writes (and any error among them) come in with the transaction id's read, so a
        batch costs the round trips its operations' reads need and two more, not two more per
        operation (on a link of 100 ms, 20 runs' releases held the writer 13 s, and their
        heartbeats passed over the rows it held until their leases ran out). None when an
        operation failed: the transaction is rolled back whole, to be run again op by op."""
        results: list[tuple[bool, Any]] = []
        try:
            for op in ops:
                results.append((True, db.run_op(op, conn)))
            return results, self._transaction_id(raw, conn.woke)
        except Exception as exc:  # noqa: BLE001 - whose it is, the savepoints will tell
            self._reraise_if_retryable(raw, exc, retry_transient)
            self._drain_pipeline(raw, conn)
            raw.execute("ROLLBACK")
            conn.restarted()
            return None

    def _transaction_id(self, raw: psycopg.Connection[Any], woke: bool) -> str | None:
        """This transaction's id, to learn whether a COMMIT cut short by a lost connection
        took effect (None: it wrote nothing); sends the wake-up first if it made work due."""
        if woke:
            row = raw.execute(
                "SELECT pg_notify(%s, %s), pg_current_xact_id_if_assigned()::text AS xid", (CHANNEL, self._token)
            ).fetchone()
        else:
            row = raw.execute("SELECT pg_current_xact_id_if_assigned()::text AS xid").fetchone()
        return row["xid"] if row else None

    @staticmethod
    def _drain_pipeline(raw: psycopg.Connection[Any], conn: PostgresConn) -> None:
        """After an operation failed: take in the answers still owed, so the rollback that
        follows is not skipped behind an error among them."""
        try:
            conn.sync()
        except psycopg.Error as exc:
            if _gone(raw, exc):
                raise

    @staticmethod
    def _reraise_if_retryable(raw: psycopg.Connection[Any], exc: Exception, retry_transient: bool) -> None:
        """A lost or spoiled connection, or a deadlock, spoils the whole batch, not just this op."""
        if _gone(raw, exc) or _spoiled(exc) or (retry_transient and isinstance(exc, TRANSIENT)):
            raise exc

    @staticmethod
    def _rollback(raw: psycopg.Connection[Any]) -> None:
        if not _lost(raw):
            try:
                raw.execute("ROLLBACK")
            except psycopg.Error:
                pass

    def _committed(self, link: _Link, xid: str, cause: BaseException) -> bool:
        """Whether transaction ``xid`` committed, asked on a new connection after COMMIT was cut off."""
        deadline = time.monotonic() + RECONNECT_WINDOW
        while True:
            try:
                raw = link.get()
                status = raw.execute("SELECT pg_xact_status(%s::xid8) AS status", (xid,)).fetchone()
            except (psycopg.Error, errors.StoreError) as exc:
                link.drop()
                if time.monotonic() > deadline:
                    raise errors.StoreError(
                        "the connection to PostgreSQL was lost while committing and the outcome cannot be "
                        f"checked ({exc}); the operations may or may not have been saved"
                    ) from cause
                time.sleep(0.2)
                continue
            state = status["status"] if status else None
            if state == "in progress" and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            log.warning("a commit was cut off by a lost connection; transaction %s %s", xid, state)
            if state == "committed":
                return True
            if state == "aborted":
                return False
            raise errors.StoreError(
                f"the connection to PostgreSQL was lost while committing and the transaction is {state!r}; "
                "the operations may or may not have been saved"
            ) from cause

    # --- planner statistics --------------------------------------------------------

    def note_new_runs(self, count: int) -> None:
        # Autovacuum refreshes statistics only on its next round (up to a minute away, and
        # never where it is off); until then a claim after a burst is planned for the queue
        # as it was (often empty) and sorts every ready row instead of reading the first few
        # in order. Statements prepared while a table was small keep plans made for its size
        # (a scan of all of steps to read one run's journal) until its statistics change.
        self._new_runs += count
        self._new_rows += count
        if self._analyzing or self._closing.is_set() or self._new_runs < max(ANALYZE_AFTER_RUNS, self._runs_at_analyze):
            return
        self._analyzing = True
        self._new_runs = 0
        growing = self._new_rows >= max(ANALYZE_AFTER_RUNS, self._rows_at_analyze / 2)
        if growing:
            self._new_rows = 0
        self._read_threads.submit(self._analyze, growing)

    def _analyze(self, growing: bool) -> None:
        try:
            with psycopg.connect(self.url, **CONNECT_KWARGS) as raw:
                raw.execute("ANALYZE queue")
                row = raw.execute("SELECT reltuples FROM pg_class WHERE oid = 'queue'::regclass").fetchone()
                self._runs_at_analyze = float(row["reltuples"]) if row else 0.0
                if growing:
                    raw.execute(f"ANALYZE {GROWING_TABLES}")
                    row = raw.execute("SELECT reltuples FROM pg_class WHERE oid = 'runs'::regclass").fetchone()
                    self._rows_at_analyze = max(0.0, float(row["reltuples"])) if row else 0.0
        except psycopg.Error as exc:
            log.info("refreshing the planner's statistics failed (%s); autovacuum will", _first_line(exc))
        finally:
            self._analyzing = False

    # --- readers -------------------------------------------------------------------

    async def read(self, op: db.Op[db.T]) -> db.T:
        if self._pool is None:
            await self.start()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_threads, self._read_sync, op)

    def _read_sync(self, op: Callable[[db.Conn], Any]) -> Any:
        pool = self._pool
        if pool is None:
            raise errors.StoreError("the store is closed")
        deadline = time.monotonic() + RECONNECT_WINDOW
        delay = 0.05
        while True:
            try:
                with pool.connection(timeout=RECONNECT_WINDOW) as raw, self._waiting(raw, "a reader") as wait:
                    try:
                        with raw.transaction():
                            return db.run_op(op, PostgresConn(raw))
                    except _SPOILED_ERRORS as exc:
                        if not _spoiled(exc) or time.monotonic() > deadline:
                            raise
                        raw.close()  # statements it cannot use (see _spoiled); the pool replaces it
                    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                        if isinstance(exc, pg_errors.QueryCanceled) and wait.cancelled is not None:
                            raise errors.StoreError(
                                f"a read from PostgreSQL took over {ANSWER_DEADLINE:.0f} s and was cancelled"
                            ) from exc
                        if not _gone(raw, exc):
                            raise
                        if time.monotonic() > deadline:
                            raise errors.StoreError(
                                f"reading from PostgreSQL at {migrate.redact(self.url)} kept failing on lost "
                                f"connections for {RECONNECT_WINDOW:.0f} s ({_first_line(exc)}); is the server up?"
                            ) from exc
            except psycopg_pool.PoolTimeout as exc:
                raise errors.StoreError(
                    f"no reader connection to PostgreSQL at {migrate.redact(self.url)} within "
                    f"{RECONNECT_WINDOW:.0f} s; is the server up?"
                ) from exc
            # The pool drops the lost connection. Its idle fellows are suspect too (the server
            # restarted, the path to it went silent): they are replaced without being asked,
            # which would wait forever on a silent one.
            pool.drain()
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    # --- wake-ups from other processes ---------------------------------------------

    def _wake_local(self) -> None:
        for waker in list(self._wakers):
            try:
                waker()
            except Exception:
                log.exception("a wake-up callback failed")

    def _listen_loop(self) -> None:
        link = _Link(self.url, "listener", self._closing)
        reconnected = False
        while not self._closing.is_set():
            try:
                raw = link.get()
                raw.execute(f"LISTEN {CHANNEL}")
                raw.execute(f"LISTEN {SIGNALS}")
                self._listening.set()
                if reconnected:
                    self._wake_local()  # notifications sent while we were away are lost
                checked = time.monotonic()
                while not self._closing.is_set():
                    for note in raw.notifies(timeout=0.25):
                        if note.channel == SIGNALS:
                            topic, _, payload = note.payload.partition(":")
                            self._dispatch(topic, payload)
                        elif note.payload != self._token:
                            self._wake_local()
                    if time.monotonic() - checked >= LISTEN_CHECK_EVERY:
                        # A connection gone silent (a dead peer, a black-holed route) delivers
                        # nothing and raises nothing: ask it something, under the watchdog.
                        with self._waiting(raw, "the LISTEN connection"):
                            raw.execute("SELECT 1")
                        checked = time.monotonic()
            except errors.StoreError:
                reconnected = True  # still unreachable: keep trying, calmly, until closed
                self._closing.wait(1.0)
            except psycopg.Error as exc:
                if not self._closing.is_set():
                    log.warning("the LISTEN connection to PostgreSQL was lost (%s); reconnecting", _first_line(exc))
                link.drop()
                reconnected = True
        link.drop()


def _set_timeouts(conn: psycopg.Connection[Any]) -> None:
    """This session's lock wait and idle-in-transaction bounds (see ``LOCK_TIMEOUT_MS``); set
    with SET, not in the connection's options, which would replace the URL's own."""
    conn.execute(f"SET lock_timeout = {int(LOCK_TIMEOUT_MS)}")
    conn.execute(f"SET idle_in_transaction_session_timeout = {int(IDLE_IN_TRANSACTION_MS)}")
    # A database's statement_timeout (set low for people's ad-hoc queries) cancelled the
    # engine's own: a pipeline counts as one statement until its sync, link latency
    # included, so on any but a local link checkpoints and claims failed again and again
    # and runs stopped. Their bounds are the lock timeout and the watchdog (ANSWER_DEADLINE).
    conn.execute("SET statement_timeout = 0")
    if conn.info.server_version >= 170000:
        conn.execute("SET transaction_timeout = 0")  # the same, for a whole transaction
    if conn.info.server_version >= 140000:
        # A database's idle_session_timeout would end the LISTEN session and idle pooled ones
        # every few seconds: a reconnect each time, and wake-ups lost meanwhile.
        conn.execute("SET idle_session_timeout = 0")


def _configure_reader(conn: psycopg.Connection[Any]) -> None:
    # One snapshot per read, as a SQLite read transaction has; and reads never write.
    _set_timeouts(conn)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
