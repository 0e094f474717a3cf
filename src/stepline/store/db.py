"""The thin pipe under the store: transactions, group commit, wake-ups.

Domain operations (``store.ops``) are plain functions over a ``Conn`` and are
written once; a backend supplies only how connections are made, how writes are
batched into shared commits, and how other processes are woken.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from stepline import errors
from stepline.outage import OutageLog

T = TypeVar("T")
Row = dict[str, Any]
log = logging.getLogger("stepline.store")


class Conn(abc.ABC):
    """A connection inside one transaction. SQL uses ``?`` placeholders on every backend.

    Writes queued with ``defer`` run before the next statement of any kind (and before
    the operation ends), grouped into one ``executemany`` per statement: a batch of
    events then costs a few round trips in all, not a few per event, and no statement
    can read around a deferred write.
    """

    dialect: str = ""
    # SQL for the database's clock in epoch milliseconds, read when the statement runs (after
    # any lock it waited for): leases are set and compared on this one clock.
    clock_ms: str = ""

    def __init__(self) -> None:
        # Committed on the caller's thread (``Database.write_item_alone``): the event loop
        # waits for it, so work of unbounded size declines (``NotInline``) and goes to the writer.
        self.inline = False
        self.woke = False
        self.wakes = 0  # how many times this transaction made queue items due (caches of readiness key on it)
        # Caches that hold for this transaction (trigger lookups, event names nobody waits for).
        self.memo: dict[str, Any] = {}
        self._deferred: dict[str, list[tuple[Any, ...]]] = {}

    def wake(self) -> None:
        """Mark that this transaction made queue items due: workers are woken after commit."""
        self.woke = True
        self.wakes += 1

    def signal(self, topic: str, payload: str) -> None:
        """Tell ``topic`` listeners ``payload`` if (and once) this transaction commits: in
        every process where the backend can push (``Database.signals_reach_processes``),
        else in this one, the others polling for what they need."""

    def defer(self, sql: str, params: tuple[Any, ...]) -> None:
        """Queue a write to run with the others of the same ``sql`` before the next statement.

        For inserts of new rows. Statements run in the order they were first deferred,
        so a row that another deferred row points at must be deferred first (runs
        before their queue rows).
        """
        self._deferred.setdefault(sql, []).append(params)

    def flush(self) -> None:
        """Run the deferred writes now (every statement, and the end of an operation, does)."""
        if self._deferred:
            pending, self._deferred = self._deferred, {}
            for sql, rows in pending.items():
                if len(rows) == 1:
                    self._execute(sql, rows[0])  # cheaper than a batch of one
                else:
                    self._executemany(sql, rows)

    def rolled_back(self) -> None:
        """The current operation rolled back: drop its deferred writes, and caches it may have filled."""
        self._deferred.clear()
        self.memo.clear()

    def restarted(self) -> None:
        """The whole transaction rolled back, to be run again from its start: nothing of it stands."""
        self.rolled_back()
        self.woke = False
        self.wakes = 0

    def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        self.flush()
        return self._execute(sql, params)

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.flush()
        if rows:
            self._executemany(sql, rows)

    def all(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[Row]:
        self.flush()
        return self._all(sql, params)

    def one(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Row | None:
        rows = self.all(sql, params)
        return rows[0] if rows else None

    def scalar(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        row = self.one(sql, params)
        return None if row is None else next(iter(row.values()))

    def rowcount(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> int:
        """Run a write and return how many rows it touched."""
        self.flush()
        return self._rowcount(sql, params)

    # --- for backends: the statements themselves ---------------------------------

    @abc.abstractmethod
    def _execute(self, sql: str, params: tuple[Any, ...] | list[Any]) -> Any: ...

    @abc.abstractmethod
    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None: ...

    @abc.abstractmethod
    def _all(self, sql: str, params: tuple[Any, ...] | list[Any]) -> list[Row]: ...

    @abc.abstractmethod
    def _rowcount(self, sql: str, params: tuple[Any, ...] | list[Any]) -> int: ...

    def skip_locked(self) -> str:
        """The row-lock clause for claims (``FOR UPDATE SKIP LOCKED`` where supported)."""
        return ""

    def row_lock_skip(self, of: str) -> str:
        """A clause that locks the rows read of table alias ``of`` for an update, passing over
        rows another transaction has locked (empty where one write transaction runs at a time)."""
        return ""

    def or_fail(self) -> str:
        """``OR FAIL `` before the table of an ``INSERT`` or ``UPDATE`` that fires triggers
        (SQLite), empty elsewhere. A statement with triggers that may stop on a constraint
        keeps a statement journal on SQLite, a copy of every page it changes, to undo its own
        rows alone: about 13 µs a row of ``runs`` (eight indexes). ``OR FAIL`` keeps the rows it
        wrote before a failure instead; the operation's savepoint undoes them all the same."""
        return ""

    def indexed_by(self, index: str) -> str:
        """A clause after a table's name (and alias) that makes the planner read it by ``index``,
        where the backend takes such a hint (SQLite, whose planner has no statistics unless
        asked to gather them and ranks indexes by how many terms they match); empty where
        the planner's statistics choose well (PostgreSQL)."""
        return ""

    def row_lock(self, of: str = "") -> str:
        """The clause that locks the rows read (of table alias ``of``) until commit.

        Empty where the backend already runs one write transaction at a time (SQLite).
        """
        return ""

    def lock(self, *key: str) -> None:
        """Serialize transactions that use the same ``key`` until they commit.

        For check-then-insert on rows that may not exist yet (de-dup ids, idempotency keys).
        A no-op where the backend already runs one write transaction at a time (SQLite).
        """

    def lock_many(self, keys: list[tuple[str, ...]]) -> None:
        """``lock`` each of ``keys``, in the order given (sort them to avoid deadlocks)."""
        for key in keys:
            self.lock(*key)

    def limit_lock_waits(self, wait_ms: int | None) -> None:
        """From here to the end of the operation, a lock waited for longer than ``wait_ms``
        fails the statement (SQLSTATE ``LOCK_NOT_AVAILABLE``); None: the usual limit again.
        A no-op where one write transaction runs at a time (SQLite)."""

    def lock_briefly(self, wait_ms: int, *key: str) -> None:
        """``lock``, waiting at most ``wait_ms`` for another transaction that holds it; past
        that the statement fails (SQLSTATE ``LOCK_NOT_AVAILABLE``, raised by the next
        statement whose answer is read)."""
        self.lock(*key)


class NotInline(Exception):  # noqa: N818 - a request, not a failure
    """Raised inside a transaction committed inline (``Conn.inline``) that found more work
    than the event loop should wait for: it rolls back and runs again on the writer thread."""


LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock wait given up (lock_briefly)


Op = Callable[[Conn], T]


def in_list(values: list[Any]) -> tuple[str, tuple[Any, ...]]:
    """Placeholders and parameters for ``IN (...)`` over ``values`` (at least one).

    The list is padded to a power of two by repeating its last value, so the statement
    has few distinct shapes and its prepared form is reused.
    """
    size = 1
    while size < len(values):
        size *= 2
    padded = list(values) + [values[-1]] * (size - len(values))
    return ", ".join("?" * size), tuple(padded)


def run_op(op: Op[T], conn: Conn) -> T:
    """Run one operation of a batch, its deferred writes included (their errors are its own)."""
    result = op(conn)
    conn.flush()
    return result


def relaxed(op: Op[T]) -> Op[T]:
    """Mark an operation whose commit need not wait for the disk flush.

    For claims: if the database crashes before a relaxed commit is flushed, the lease is
    simply lost and the run is claimed again (at least once, as for any in-flight step).
    A later durable commit (a checkpoint) flushes it first, since the log is written in
    order. A batch is relaxed only when every operation in it is.
    """
    op.relaxed_durability = True  # type: ignore[attr-defined]
    return op


def is_relaxed(ops: list[Op[Any]]) -> bool:
    return all(getattr(op, "relaxed_durability", False) for op in ops)


class Batched:
    """An operation many callers share: once per group commit, over all their items.

    ``fn(conn, items)`` returns one result per item, in order; an exception instance
    in that list fails that item's caller alone. Many runs' checkpoints then cost one
    lease check and one multi-row write instead of a few statements each.

    With ``alone_on_error``, a shared operation that raises (its writes are rolled back
    with it) is run again for each of its items alone, in the next commit, so that one
    item's error is its caller's only: for operations that cannot tell in advance which
    item would fail (an ingest).

    With ``busy_message``, an operation that gave up waiting for a lock (see
    ``Conn.limit_lock_waits``) fails with ``errors.BusyError(busy_message)``, which its
    callers may simply try again, instead of as the database failing (``StoreError``); a
    shared one is then run again item by item, so only the item that needs the lock fails.

    With ``write_lock_wait_ms``, an item whose transaction could not begin because another
    process has held the database's one write lock that long (SQLite; see
    ``Database.shares_write_lock``) is withdrawn and fails with
    ``errors.BusyError(write_lock_message)``; never after the writer took it into a
    transaction, so it is either committed or refused, never both.
    """

    __slots__ = ("name", "fn", "alone_on_error", "busy_message", "write_lock_wait_ms", "write_lock_message")

    def __init__(
        self, name: str, fn: Callable[[Conn, list[Any]], list[Any]], *, alone_on_error: bool = False,
        busy_message: str | None = None, write_lock_wait_ms: int | None = None, write_lock_message: str = "",
    ) -> None:
        self.name = name
        self.fn = fn
        self.alone_on_error = alone_on_error
        self.busy_message = busy_message
        self.write_lock_wait_ms = write_lock_wait_ms
        self.write_lock_message = write_lock_message


# A queued item's passage: taken into a transaction by the writer, or withdrawn by its caller
# who gave up waiting for another process's write lock; whichever comes first, under ``_taking``.
_PENDING, _TAKEN, _WITHDRAWN = 0, 1, 2
_taking = threading.Lock()


class _Job:
    __slots__ = ("op", "future", "loop", "kind", "item", "state", "queued_at", "pending")

    def __init__(
        self,
        op: Op[Any] | None,
        future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
        kind: Batched | None = None,
        item: Any = None,
    ) -> None:
        self.op = op
        self.future = future
        self.loop = loop
        self.kind = kind
        self.item = item
        self.state = _PENDING
        self.queued_at = 0.0
        # The jobs its caller may still withdraw (``Database._withdrawable``), while it is there.
        self.pending: dict[_Job, None] | None = None


def _take(jobs: list[_Job]) -> list[bool]:
    """Inside the writer's transaction: mark ``jobs`` taken, unless their callers withdrew
    them first; which ones were taken (a job taken before, in a batch run again, stays so)."""
    with _taking:
        for job in jobs:
            if job.state == _PENDING:
                job.state = _TAKEN
                if job.pending is not None:
                    job.pending.pop(job, None)
        return [job.state == _TAKEN for job in jobs]


def _requeued(job: _Job) -> None:
    """``job`` rolled back, to run again in another transaction: its caller may withdraw it again."""
    with _taking:
        if job.state == _TAKEN:
            job.state = _PENDING
            if job.pending is not None:
                job.pending[job] = None


def _group_op(kind: Batched, items: list[Any], jobs: list[_Job] | None = None) -> Op[list[Any]]:
    def op(conn: Conn) -> list[Any]:
        if jobs is None or kind.write_lock_wait_ms is None:
            return kind.fn(conn, items)
        taken = _take(jobs)
        live = [item for item, ok in zip(items, taken) if ok]
        results = iter(kind.fn(conn, live) if live else [])
        # A withdrawn item's caller has its BusyError already (its future is done).
        return [next(results) if ok else errors.BusyError(kind.write_lock_message) for ok in taken]

    op.busy_message = kind.busy_message  # type: ignore[attr-defined]
    return op


def _alone(kind: Batched, item: Any, job: _Job | None = None) -> Op[Any]:
    """``kind`` for one item as a plain operation: its result, or its own error raised.
    With ``job``, nothing is run if its caller withdrew it meanwhile."""

    def op(conn: Conn) -> Any:
        if job is not None and kind.write_lock_wait_ms is not None and not _take([job])[0]:
            return None  # withdrawn: its caller has its BusyError already
        (result,) = kind.fn(conn, [item])
        if isinstance(result, BaseException):
            raise result
        return result

    op.busy_message = kind.busy_message  # type: ignore[attr-defined]
    return op


def _plan(batch: list[_Job]) -> tuple[list[Op[Any]], list[list[_Job]]]:
    """The batch's operations: one per plain job, one per kind of batched job (at its first place)."""
    ops: list[Op[Any]] = []
    owners: list[list[_Job]] = []
    groups: dict[Batched, list[_Job]] = {}
    for job in batch:
        if job.kind is None:
            ops.append(job.op)  # type: ignore[arg-type]
            owners.append([job])
        elif job.kind in groups:
            groups[job.kind].append(job)
        else:
            groups[job.kind] = [job]
            ops.append(job.op)  # type: ignore[arg-type]  # replaced below, once the group is complete
            owners.append(groups[job.kind])
    for i, jobs in enumerate(owners):
        kind = jobs[0].kind
        if kind is not None:
            ops[i] = _group_op(kind, [j.item for j in jobs], jobs)
    return ops, owners


def _store_error(exc: BaseException, advice: str = "") -> BaseException:
    """A failure of the database itself as a ``StoreError`` (the driver's error kept as its
    cause), so callers tell "not saved, or not known to be" from an operation's own error;
    ``advice`` says what an operator can do about it."""
    if isinstance(exc, errors.StoreError):
        return exc
    wrapped = errors.StoreError(
        f"the database could not be written ({type(exc).__name__}: {exc})" + (f". {advice}" if advice else "")
    )
    wrapped.__cause__ = exc
    return wrapped


def _lock_given_up(exc: BaseException) -> bool:
    return getattr(exc, "sqlstate", None) == LOCK_NOT_AVAILABLE


def _busy(op: Op[Any], exc: BaseException) -> BaseException | None:
    """The ``BusyError`` an operation that gave up waiting for a lock fails with, if its kind says one."""
    message: str | None = getattr(op, "busy_message", None)
    if message is None or not _lock_given_up(exc):
        return None
    busy = errors.BusyError(message)
    busy.__cause__ = exc
    return busy


def _resolve_futures(results: list[tuple[_Job, bool, Any]]) -> None:
    for job, ok, value in results:
        if job.future.done():
            continue
        if ok:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)


class Database(abc.ABC):
    """A backend: runs operations in transactions, batching writes into group commits."""

    dialect: str = ""
    # How often a worker looks for work made due by another process (a safety net
    # where the backend has push wake-ups, the main path where it has none).
    poll_interval: float = 0.5
    max_batch = 256
    # Whether a committed ``Conn.signal`` reaches listeners in other processes (else only
    # this process's; workers elsewhere then poll for cancellations).
    signals_reach_processes = False
    # Whether a lone write may commit on its caller's thread while the writer is idle
    # (``write_item_alone``): for a backend whose commit is quick local work, never a
    # network round trip.
    commits_inline = False
    # Whether the writer may wait for a write lock that another process holds on the whole
    # database (SQLite): items of a ``Batched`` kind with ``write_lock_wait_ms`` then give up.
    shares_write_lock = False

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_conn: Any = None
        # Held by whoever is running a commit on the writer's connection (the writer
        # thread, or a caller committing inline); ``_queued`` counts the jobs put and
        # not yet committed, so an inline commit never overtakes a queued one.
        self._commit_lock = threading.Lock()
        self._queued = 0
        self._queued_lock = threading.Lock()
        self._alone_waiting = 0  # callers of write_item_alone between their yield and their decision
        self._wakers: list[Callable[[], None]] = []
        self._listeners: dict[str, list[Callable[[str], None]]] = {}
        self._closed = False
        # Since when every commit has failed for want of the database (None: the last one
        # went through), and why: health checks report a process that cannot write.
        self._failing_since: float | None = None
        # Whether the writer's last commit wrote anything, as its backend tells: a transaction
        # that only read (a claim that found nothing) commits even on a full disk or a
        # read-only database, and says nothing of whether writes go through.
        self._batch_wrote = True
        self._failed_at = 0.0
        self._failing_why = ""
        self._commit_outage = OutageLog(log, "writing to the database")
        self._wrote_once = False  # a commit has written since the store started
        # Since when the writer has waited for the write lock another process holds (None:
        # it is not waiting); set and cleared by the backend's writer thread.
        self._write_lock_wait_since: float | None = None
        self._write_lock_why = ""
        self._withdrawable: dict[_Job, None] = {}  # in the order queued; guarded by _taking
        self._sweeping: set[asyncio.AbstractEventLoop] = set()  # loops with a sweep armed

    def write_lock_waited(self) -> float:
        """Seconds the writer has been waiting for a write lock another process holds (0: not waiting)."""
        since = self._write_lock_wait_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def write_failure(self, fresh_within: float) -> tuple[float, str] | None:
        """(seconds, why) every commit has failed for the database's sake, the last one in the
        past ``fresh_within`` seconds; None when writes go through (or none was tried lately:
        an idle process knows nothing new)."""
        if self._write_lock_wait_since is not None:  # no write goes through while it lasts
            return self.write_lock_waited(), self._write_lock_why
        since, now = self._failing_since, time.monotonic()
        if since is None or now - self._failed_at > fresh_within:
            return None
        return now - since, self._failing_why

    def _note_commit(self, outcomes: list[tuple[bool, Any]], *, whole: bool = False) -> None:
        """After a commit: whether the database took it (an op's own error says nothing of that).

        The log hears of it too, once per outage: an operation refused inside a commit that
        went through (an ingest on a full disk, whose savepoint could not grow the file) is
        as much the database failing as a commit that failed whole, and a commit that only
        read (a claim finding nothing) says nothing of writes working again."""
        failed = next(
            (v for ok, v in outcomes if not ok and isinstance(v, errors.StoreError) and not isinstance(v, errors.LeaseLost)),
            None,
        )
        if failed is None:
            if self._batch_wrote:
                self._failing_since = None
                self._wrote_once = True
                self._commit_outage.worked()
            return
        if whole or self._wrote_once:
            # An operation refused alone before anything was written (a process starting on
            # a read-only or full database) is its caller's to report: it exits saying so.
            self._commit_outage.failed(failed)
        self._failed_at = time.monotonic()
        if self._failing_since is None:
            self._failing_since, self._failing_why = self._failed_at, str(failed)

    # --- for backends ----------------------------------------------------------

    @abc.abstractmethod
    def _open_writer(self) -> Any:
        """Open the connection the writer thread uses."""

    @abc.abstractmethod
    def _run_batch(self, conn: Any, ops: list[Op[Any]]) -> tuple[list[tuple[bool, Any]], bool]:
        """Run ``ops`` in one transaction, each isolated (a failing op rolls back alone).

        Returns each op's (ok, result-or-exception) and whether any op asked to wake workers.
        """

    @abc.abstractmethod
    def _close_writer(self, conn: Any) -> None: ...

    def _run_inline(self, conn: Any, op: Op[Any]) -> tuple[tuple[bool, Any], bool] | None:
        """Run ``op`` alone in a transaction on the writer's connection, from the caller's
        thread, without waiting for a lock: None when another connection holds it.
        Only for backends with ``commits_inline``."""
        raise NotImplementedError

    @abc.abstractmethod
    async def read(self, op: Op[T]) -> T:
        """Run a read-only operation on a reader connection."""

    def _notify_other_processes(self) -> None:
        """Wake workers in other processes (after a commit that made work due)."""

    def _unavailable(self, exc: BaseException) -> bool:
        """Whether an operation's error means the database could not be used (locked, lost,
        read-only, full), as opposed to an error of the operation itself."""
        return False

    def advice(self, exc: BaseException) -> str:
        """What an operator can do about the database failing with ``exc`` (empty: nothing
        to add to the error's own words)."""
        return ""

    def _store_error(self, exc: BaseException) -> BaseException:
        return _store_error(exc, self.advice(exc))

    def plan_capacity(self, concurrency: int) -> None:
        """Size connection pools for a worker that runs ``concurrency`` runs at once."""

    def truncate_log_when_idle(self) -> None:
        """After a sweep freed much: shrink a write-ahead log file that grew under load, once
        no commit comes for a moment (SQLite; PostgreSQL manages its own)."""

    def note_new_runs(self, count: int) -> None:
        """``count`` runs were just queued; a backend whose planner needs fresh statistics refreshes them."""

    # --- public ----------------------------------------------------------------

    async def start(self) -> None:
        if self._writer is None:
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            loop = asyncio.get_running_loop()
            self._writer = threading.Thread(target=self._write_loop, args=(ready, loop), name=f"stepline-{self.dialect}-writer", daemon=True)
            self._writer.start()
            await ready

    async def write(self, op: Op[T]) -> T:
        """Run ``op`` in a write transaction shared with other pending writes (group commit)."""
        if self._closed:
            raise RuntimeError("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put(_Job(op, future, loop))
        return await future

    async def write_aside(self, op: Op[T]) -> T:
        """Run ``op`` in a transaction of its own, off the group commit where the backend lets
        writers work side by side (PostgreSQL): for background chores such as retention, so
        they never hold up the writer. Elsewhere the same as ``write``."""
        return await self.write(op)

    async def renew(self, op: Op[T]) -> T:
        """Run ``op`` (a renewal of leases) in a transaction of its own where the backend lets
        writers work side by side (PostgreSQL), never queued behind the group commit: a lease
        must not lapse because the process has much else to write. Elsewhere ``write``."""
        return await self.write(op)

    async def write_item(self, kind: Batched, item: Any) -> Any:
        """Add ``item`` to the next group commit's shared ``kind`` operation; returns its result."""
        return await self.submit_item(kind, item)

    def submit_item(self, kind: Batched, item: Any) -> asyncio.Future[Any]:
        """``write_item`` without waiting: the future resolves once the item is committed."""
        if self._closed:
            raise RuntimeError("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        job = _Job(None, future, loop, kind, item)
        if kind.write_lock_wait_ms is not None and self.shares_write_lock:
            self._note_withdrawable(job, kind.write_lock_wait_ms / 1000)
        self._put(job)
        return future

    # --- giving up on another process's write lock (see Batched.write_lock_wait_ms) ----------
    #
    # The jobs their callers may still withdraw are kept by the database until the writer takes
    # them; one sweep per event loop, armed while that loop has such jobs, refuses those that
    # have waited the bound once the writer has too. Not a timer per job: that held every job,
    # its future and its events for the whole bound after it was answered (at 5,000 ingests a
    # second, ten thousand live jobs for the collector to walk: a quarter of the server's
    # throughput).

    def _note_withdrawable(self, job: _Job, bound: float) -> None:
        job.queued_at = time.monotonic()
        with _taking:
            job.pending = self._withdrawable
            self._withdrawable[job] = None
            if job.loop in self._sweeping:
                return
            self._sweeping.add(job.loop)
        job.loop.call_later(bound, self._sweep, job.loop, bound)

    def _sweep(self, loop: asyncio.AbstractEventLoop, bound: float) -> None:
        """On ``loop``: refuse its jobs that waited ``bound`` while the writer waited as long for
        a write lock another process holds (the writer may otherwise be merely busy); again
        while any of its jobs wait."""
        now, waited = time.monotonic(), self.write_lock_waited()
        refused: list[_Job] = []
        with _taking:
            for job in list(self._withdrawable):
                if job.loop is loop and job.future.done():  # answered without being taken (a failed BEGIN, a close)
                    del self._withdrawable[job]
                elif job.loop is loop and waited >= bound and now - job.queued_at >= bound:
                    job.state = _WITHDRAWN
                    del self._withdrawable[job]
                    refused.append(job)
            waiting = any(job.loop is loop for job in self._withdrawable)
            if not waiting:
                self._sweeping.discard(loop)
        for job in refused:
            if not job.future.done():
                assert job.kind is not None
                job.future.set_exception(errors.BusyError(job.kind.write_lock_message))
        if waiting:
            loop.call_later(bound / 4 if waited else bound, self._sweep, loop, bound)

    async def write_item_alone(self, kind: Batched, item: Any) -> Any:
        """``write_item``, committed at once on the caller's thread when nothing else is
        to be written: no other write queued or running, and no other caller of this
        method ready to run on this loop. A lone request then skips two hand-overs
        between threads (about a third of its time); concurrent ones still share the
        writer's group commits.

        The caller yields once first, so that every such write made ready in the same
        turn of the loop (requests that arrived together) is counted before any decides.
        """
        if not self.commits_inline:
            return await self.write_item(kind, item)
        with self._queued_lock:
            self._alone_waiting += 1
        try:
            await asyncio.sleep(0)
        finally:
            with self._queued_lock:
                self._alone_waiting -= 1
        if self._alone_waiting == 0 and not self._queued:
            outcome = self._commit_inline(_group_op(kind, [item]))
            if outcome is not None:
                ok, value = outcome
                if not ok:
                    raise value
                (result,) = value
                if isinstance(result, BaseException):
                    raise result  # the item's own error; the operation committed, as a queued one would
                return result
        return await self.write_item(kind, item)

    def _put(self, job: _Job | None) -> None:
        if job is not None:
            with self._queued_lock:
                self._queued += 1
        self._jobs.put(job)

    def _commit_inline(self, op: Op[Any]) -> tuple[bool, Any] | None:
        """``op`` committed on this thread if the writer is idle with nothing queued; None if not."""
        if self._closed or not self._commit_lock.acquire(blocking=False):
            return None
        try:
            conn = self._writer_conn
            if conn is None or self._queued:
                return None
            try:
                result = self._run_inline(conn, op)
            except Exception as exc:  # noqa: BLE001 - the commit itself failed
                failure = self._store_error(exc)
                self._note_commit([(False, failure)], whole=True)
                return False, failure
            if result is None:
                return None
            (ok, value), woke = result
            if not ok and isinstance(value, NotInline):
                return None  # rolled back: the writer thread runs it
            if not ok:
                value = self._op_error(op, value)
            self._note_commit([(ok, value)])
            if woke:
                self._wake()
            return ok, value
        finally:
            self._commit_lock.release()

    def add_waker(self, callback: Callable[[], None]) -> None:
        """``callback`` runs (on the writer thread) after each commit that made work due."""
        self._wakers.append(callback)

    def remove_waker(self, callback: Callable[[], None]) -> None:
        if callback in self._wakers:
            self._wakers.remove(callback)

    def add_listener(self, topic: str, callback: Callable[[str], None]) -> None:
        """``callback(payload)`` runs (on a backend thread) for each committed ``Conn.signal(topic, ...)``."""
        self._listeners.setdefault(topic, []).append(callback)

    def remove_listener(self, topic: str, callback: Callable[[str], None]) -> None:
        if callback in self._listeners.get(topic, []):
            self._listeners[topic].remove(callback)

    def _dispatch(self, topic: str, payload: str) -> None:
        """Tell this process's ``topic`` listeners ``payload`` (a committed ``Conn.signal``)."""
        for callback in list(self._listeners.get(topic, ())):
            try:
                callback(payload)
            except Exception:
                log.exception("a %r listener failed", topic)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._put(None)
            await asyncio.get_running_loop().run_in_executor(None, self._writer.join)
            self._writer = None
        await self._close_readers()

    async def _close_readers(self) -> None:
        pass

    # --- the writer thread -----------------------------------------------------

    def _write_loop(self, ready: asyncio.Future[None], ready_loop: asyncio.AbstractEventLoop) -> None:
        try:
            conn = self._open_writer()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller of start()
            ready_loop.call_soon_threadsafe(ready.set_exception, exc)
            return
        self._writer_conn = conn
        ready_loop.call_soon_threadsafe(ready.set_result, None)
        try:
            while True:
                first = self._jobs.get()
                if first is None:
                    return
                batch = [first]
                stop = False
                while len(batch) < self.max_batch:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        stop = True
                        break
                    batch.append(job)
                with self._commit_lock:
                    self._commit_batch(conn, batch)
                    with self._queued_lock:
                        self._queued -= len(batch)
                if stop:
                    return
        finally:
            with self._commit_lock:
                self._writer_conn = None
            self._close_writer(conn)

    def _op_error(self, op: Op[Any], exc: BaseException) -> BaseException:
        """An operation's error as its callers get it: a lock given up as ``BusyError`` where
        the operation's kind asks for it, the database failing as ``StoreError``."""
        busy = _busy(op, exc)
        if busy is not None:
            return busy
        return self._store_error(exc) if self._unavailable(exc) else exc

    def _wake(self) -> None:
        """After a commit that made work due: this process's workers, then other processes'."""
        for waker in list(self._wakers):
            try:
                waker()
            except Exception:  # noqa: BLE001
                log.exception("a wake-up callback failed")
        self._notify_other_processes()

    def _commit_batch(self, conn: Any, batch: list[_Job]) -> None:
        ops, owners = _plan(batch)
        try:
            grouped, woke = self._run_batch(conn, ops)
        except BaseException as exc:  # noqa: BLE001 - the whole commit failed; every op learns it
            grouped, woke, whole = [(False, self._store_error(exc))] * len(ops), False, True
        else:
            grouped = [(ok, value if ok else self._op_error(op, value)) for op, (ok, value) in zip(ops, grouped)]
            whole = False
        self._note_commit(grouped, whole=whole)
        batch, outcomes = [], []
        for jobs, (ok, value) in zip(owners, grouped):
            if jobs[0].kind is None:
                batch.append(jobs[0])
                outcomes.append((ok, value))
                continue
            kind = jobs[0].kind
            if not ok and kind.alone_on_error and len(jobs) > 1 and not self._closed and not isinstance(value, errors.StoreError):
                for job in jobs:  # rolled back together: each item again, alone, in the next commit
                    _requeued(job)
                    self._put(_Job(_alone(kind, job.item, job), job.future, job.loop))
                continue
            for i, job in enumerate(jobs):  # a shared operation: each item's own result
                batch.append(job)
                if not ok:
                    outcomes.append((False, value))
                else:
                    outcomes.append((not isinstance(value[i], BaseException), value[i]))
        if woke:
            self._wake()
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, bool, Any]]] = {}
        for job, (ok, value) in zip(batch, outcomes):
            by_loop.setdefault(job.loop, []).append((job, ok, value))
        for loop, results in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve_futures, results)
            except RuntimeError:
                pass  # that loop is closed; nobody is waiting any more
