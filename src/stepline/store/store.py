"""``Store``: the engine's one door to the database.

Each method runs one domain operation (``ops_*``) as one transaction; writes go
through the backend's group commit, so many runs' checkpoints share a commit.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

from stepline import clock as clock_mod
from stepline import errors
from stepline import event as event_mod
from stepline.budgets import Charge, Check
from stepline.function import StoredConfig
from stepline.store import (
    clock_align,
    db,
    migrate,
    ops_admin,
    ops_budget,
    ops_counters,
    ops_exec,
    ops_functions,
    ops_ingest,
    ops_maintenance,
    ops_metrics,
    ops_query,
    ops_read,
    ops_retention,
    ops_run_counts,
    ops_runs,
    ops_sdk,
    ops_sessions,
    ops_slots,
)
from stepline.store.records import (
    BudgetHold,
    BudgetKeyState,
    BudgetListing,
    BudgetPauseView,
    BulkReplay,
    ClaimedRun,
    CronSchedule,
    EndedRun,
    EventListItem,
    EventView,
    FileSpace,
    FunctionDetail,
    FunctionOverview,
    FunctionPause,
    FunctionRow,
    FunctionStats,
    HandOff,
    InvokeResult,
    JournalRow,
    Lease,
    MetricsOverview,
    ModelUsage,
    PauseResult,
    QueueDepth,
    Renewal,
    Rerun,
    ResumeResult,
    RunLinks,
    RunLive,
    RunMessage,
    RunSchedule,
    RunView,
    SearchResult,
    StatusCount,
    StepResult,
    StepState,
    StepUsage,
    Suspension,
    SweepStatus,
    SweepSummary,
    TableSize,
    Usage,
    VacuumResult,
)

T = TypeVar("T")

# The most events an ingest may hold and still commit on the event loop's thread (see
# ``Database.write_item_alone``): each event is a few statements of its own.
INLINE_MAX_EVENTS = 16
# Concurrent runs' checkpoints share one lease check and one multi-row write per commit.
# How long an ingest waits for a lock that another process holds (an event id, an idempotency,
# singleton, debounce or concurrency key, a run it cancels or a wait it resumes): other
# servers' transactions end in milliseconds; one that holds on is frozen or stuck.
INGEST_LOCK_WAIT_MS = 200
INGEST_BUSY = (
    "another process holds something this request's events need (an event id, an idempotency, singleton or "
    "debounce key, a run they cancel or a wait they resume) and did not let go within 0.2 s: a server that "
    "stopped in the middle of a write, or heavy contention; nothing of this request was stored: send it again"
)
# How long an ingest waits for SQLite's write lock (one for the whole file) while another
# process holds it: another Stepline process's transactions hold it for milliseconds, a large
# one under load for well under a second; past 2 s it is a process stopped mid-write or a
# shell left in a transaction, and the web app sending the event should hear so (503, send
# again) rather than hang until it lets go. PostgreSQL's row and key locks: INGEST_LOCK_WAIT_MS.
INGEST_WRITE_LOCK_WAIT_MS = 2000
INGEST_WRITE_LOCKED = (
    "another process has held the SQLite database's write lock for over 2 s (a process with the database open "
    "in a write transaction: a sqlite3 shell after BEGIN, a long script, a process stopped or frozen mid-write); "
    "nothing of this request was stored: send it again"
)
CHECKPOINTS = db.Batched("checkpoint", ops_exec.checkpoint_many_txn)
FINISHES = db.Batched("finish", ops_exec.finish_many_txn)


def now_ms() -> int:
    """Now on the system clock; the engine reads its store's (``Store.now_ms``)."""
    return int(time.time() * 1000)


class Store:
    def __init__(self, database: db.Database, url: str, clock: clock_mod.Clock | None = None) -> None:
        self.db = database
        self.url = url
        # Due times, timers and recorded times are read from this clock (leases are on the
        # database's own clock, see ops_exec); bound once, so a read costs one call. Where hosts
        # share the database, the store's own clock is kept on the database's (clock_align).
        shared = clock is None and database.dialect != "sqlite"
        self.clock = clock_mod.Clock() if shared else (clock or clock_mod.SYSTEM)
        self.now_ms: Callable[[], int] = self.clock.now_ms
        self._aligner = clock_align.ClockAligner(database, self.clock) if shared else None
        # Concurrent ingests share one operation per commit; one that fails is run again alone.
        self._ingests = db.Batched(
            "ingest", self._ingest_many, alone_on_error=True, busy_message=INGEST_BUSY,
            write_lock_wait_ms=INGEST_WRITE_LOCK_WAIT_MS, write_lock_message=INGEST_WRITE_LOCKED,
        )
        # Releases of one commit share one operation too (see ``release``).
        self._releases = db.Batched("release", self._release_many)

    def _at_commit(self, op: Callable[..., T], **params: Any) -> Callable[[db.Conn], T]:
        """``op`` with ``now`` read when its transaction runs (see "writes" below)."""
        now = self.now_ms
        return lambda conn: op(conn, now=now(), **params)

    @property
    def dialect(self) -> str:
        return self.db.dialect

    async def start(self) -> None:
        await self.db.start()
        if self._aligner is not None:
            await self._aligner.start()

    async def close(self) -> None:
        if self._aligner is not None:
            await self._aligner.stop()
        await self.db.close()

    # --- what a worker needs of the backend ---------------------------------------------

    @property
    def poll_interval(self) -> float:
        """Seconds between looks for work made due by other processes (the backend's default)."""
        return self.db.poll_interval

    @property
    def signals_reach_processes(self) -> bool:
        """Whether a cancellation committed elsewhere is pushed to this process (else poll)."""
        return self.db.signals_reach_processes

    def plan_capacity(self, concurrency: int) -> None:
        self.db.plan_capacity(concurrency)

    def add_waker(self, callback: Callable[[], None]) -> None:
        """``callback`` runs (on a backend thread) after each commit that made work due."""
        self.db.add_waker(callback)

    def remove_waker(self, callback: Callable[[], None]) -> None:
        self.db.remove_waker(callback)

    def add_listener(self, topic: str, callback: Callable[[str], None]) -> None:
        """``callback(payload)`` runs (on a backend thread) for each committed signal of ``topic``."""
        self.db.add_listener(topic, callback)

    def remove_listener(self, topic: str, callback: Callable[[str], None]) -> None:
        self.db.remove_listener(topic, callback)

    # --- writes --------------------------------------------------------------------
    # Each write reads the time when its transaction runs, not when it was queued: after
    # a stall, a run is not created or claimed with a time (or lease) already long past.

    async def register_functions(self, configs: list[StoredConfig], cron_next: Mapping[tuple[str, int], int]) -> None:
        await self.db.write(self._at_commit(ops_runs.register_functions_txn, configs=configs, cron_next=cron_next))

    async def ingest(self, events: list[event_mod.Event], handoff: HandOff | None = None) -> list[str]:
        # A small ingest with nothing else to write commits on the caller's thread; a
        # large batch keeps the loop free while the writer commits it.
        write = self.db.write_item_alone if len(events) <= INLINE_MAX_EVENTS else self.db.write_item
        ids: list[str] = await write(self._ingests, (events, handoff))
        self.db.note_new_runs(len(events))  # about one run an event
        return ids

    def _ingest_many(self, conn: db.Conn, items: list[tuple[list[event_mod.Event], HandOff | None]]) -> list[list[str]]:
        """The ingests of one commit (a server's concurrent requests) as one operation: each
        its own events and hand-off, in the order they came; their leases stamped together."""
        now = self.now_ms()
        out = []
        # A lock another server holds longer (frozen mid-transaction) fails this ingest alone,
        # as BusyError, instead of holding this process's writer for the usual lock timeout.
        conn.limit_lock_waits(INGEST_LOCK_WAIT_MS)
        for events, handoff in items:
            if handoff is not None:
                handoff.leased_at = time.monotonic()
            out.append(ops_ingest.ingest_txn(conn, events, now, handoff))
        ops_runs.stamp_handoff_leases_txn(conn, [handoff for _, handoff in items if handoff is not None])
        conn.limit_lock_waits(None)
        return out

    async def claim(
        self, worker_id: str, function_ids: list[str], limit: int, lease_ms: int, *, reclaim_expired: bool = True,
        exclude: frozenset[str] = frozenset(), max_lease_losses: int | None = None,
    ) -> tuple[list[ClaimedRun], int | None]:
        claim = self._at_commit(
            ops_exec.claim_txn, worker_id=worker_id, function_ids=function_ids, limit=limit, lease_ms=lease_ms,
            reclaim_expired=reclaim_expired, exclude=exclude, max_lease_losses=max_lease_losses,
        )
        return await self.db.write(db.relaxed(claim))

    async def checkpoint(self, lease: Lease, step: StepResult, seq: int, renew_ms: int | None = None) -> bool:
        """Save a step's outcome; returns whether the run was asked to cancel. With
        ``renew_ms``, the lease is extended that long too (``ops_exec.checkpoint_many_txn``)."""
        return bool(await self.db.write_item(CHECKPOINTS, (lease, step, seq, renew_ms)))

    def checkpoint_soon(self, lease: Lease, step: StepResult, seq: int, renew_ms: int | None = None) -> asyncio.Future[Any]:
        """``checkpoint`` without waiting: the future resolves (to the cancel flag) once committed."""
        return self.db.submit_item(CHECKPOINTS, (lease, step, seq, renew_ms))

    async def send_events_step(self, lease: Lease, step: StepResult, seq: int, events: list[event_mod.Event]) -> list[str]:
        return await self.db.write(self._at_commit(ops_exec.send_events_step_txn, lease=lease, step=step, seq=seq, events=events))

    async def suspend(self, lease: Lease, suspensions: list[Suspension], seq: int) -> None:
        await self.db.write(self._at_commit(ops_exec.suspend_txn, lease=lease, suspensions=suspensions, seq=seq))

    async def retry_run(self, lease: Lease, attempt: int, due_at: int, error: str) -> None:
        await self.db.write(self._at_commit(ops_exec.retry_run_txn, lease=lease, attempt=attempt, due_at=due_at, error=error))

    async def finish_run(
        self,
        lease: Lease,
        status: str,
        output: str | None,
        error: str | None,
        steps: Sequence[tuple[StepResult, int]] = (),
    ) -> None:
        """End a run; ``steps`` (each with its sequence number) are saved in the same transaction first."""
        await self.db.write_item(FINISHES, (lease, status, output, error, self.now_ms(), tuple(steps)))

    async def heartbeat(self, worker_id: str, leases: list[Lease], lease_ms: int) -> Renewal:
        return await self.db.renew(partial(ops_exec.heartbeat_txn, worker_id=worker_id, leases=leases, lease_ms=lease_ms))

    async def release(self, leases: list[Lease]) -> None:
        await self.db.write_item(self._releases, leases)

    def _release_many(self, conn: db.Conn, items: list[list[Lease]]) -> list[None]:
        """The releases of one commit (runs stopped together) as one operation: a few
        statements for all of them, ``now`` read when the transaction runs."""
        ops_exec.release_txn(conn, [lease for leases in items for lease in leases], now=self.now_ms())
        return [None] * len(items)

    async def take_step_slot(self, lease: Lease) -> bool:
        """A concurrency slot (on each of the run's keys) for one more of its steps to
        execute at once, or False when a key is full (``ops_slots``)."""
        return await self.db.write(self._at_commit(ops_slots.take_txn, lease=lease))

    async def give_step_slot(self, lease: Lease) -> None:
        await self.db.write(self._at_commit(ops_slots.give_txn, lease=lease))

    async def cancel_requested(self, worker_id: str) -> list[str]:
        """The runs leased to ``worker_id`` that were asked to cancel."""
        return await self.db.read(partial(ops_exec.cancel_requested_txn, worker_id=worker_id))

    async def set_progress(self, lease: Lease, percent: float, message: str | None) -> None:
        await self.db.write(self._at_commit(ops_exec.set_progress_txn, lease=lease, percent=percent, message=message))

    async def publish(self, lease: Lease, topic: str, data: str) -> int:
        return await self.db.write(self._at_commit(ops_exec.publish_txn, lease=lease, topic=topic, data=data))

    async def publish_from_app(self, run_id: str, topic: str, data: str) -> int:
        """A message an SDK app published for a run it is executing (Inngest realtime)."""
        return await self.db.write(self._at_commit(ops_sdk.publish_from_app_txn, run_id=run_id, topic=topic, data=data))

    # --- cost budgets (ops_budget) ------------------------------------------------------

    async def reserve_budget(
        self, lease: Lease | None, run_id: str, step_key: str, attempt: int, checks: list[Check], need: Charge,
        about: dict[str, Any], expires_at: int | None = None,
    ) -> BudgetHold:
        """Reserve a call's worst case on every budget of ``checks`` (all or none); fenced by
        ``lease`` (None: a direct call, held until ``expires_at``)."""
        return await self.db.write(
            self._at_commit(
                ops_budget.reserve_txn, lease=lease, run_id=run_id, step_key=step_key, attempt=attempt, checks=checks,
                need=need, about=about, expires_at=expires_at,
            )
        )

    async def settle_budget(
        self, run_id: str, step_key: str, attempt: int, owner: str | None, epoch: int | None,
        rows: tuple[tuple[str, str, int], ...], actual: Charge,
    ) -> None:
        """Replace a call attempt's reservations by what it cost."""
        await self.db.write(
            self._at_commit(
                ops_budget.settle_txn, run_id=run_id, step_key=step_key, attempt=attempt, owner=owner, epoch=epoch,
                rows=list(rows), actual=actual,
            )
        )

    async def event_budgets(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The stored budgets a run of ``event`` would meet (those of the registered functions it triggers)."""
        return await self.db.read(partial(ops_budget.event_budgets_txn, event=event))

    async def record_direct_usage(self, call_id: str, function_id: str, user_id: str | None, usage: dict[str, Any]) -> None:
        """File a direct (inline) model call in ``llm_usage``."""
        await self.db.write(
            self._at_commit(
                ops_budget.record_direct_usage_txn, call_id=call_id, function_id=function_id, user_id=user_id, usage=usage
            )
        )

    async def set_budget_limit(self, budget_id: str, key: str, limit_usd: float | None, limit_tokens: int | None) -> BudgetKeyState:
        """Override one key's limits (both None: back to the declared ones); its paused runs resume."""
        return await self.db.write(
            self._at_commit(
                ops_budget.set_limit_txn, budget_id=budget_id, key=key, limit_usd=limit_usd, limit_tokens=limit_tokens
            )
        )

    async def budgets(self, budget_id: str | None = None, limit: int = 500) -> BudgetListing:
        """Declared budgets and each key's spend, reservations and limit in its current period."""
        return await self.db.read(partial(ops_budget.list_txn, now=self.now_ms(), budget_id=budget_id, limit=limit))

    async def budget_key(self, budget_id: str, key: str) -> BudgetKeyState:
        return await self.db.read(partial(ops_budget.key_state_txn, budget_id=budget_id, key=key, now=self.now_ms()))

    async def run_budget_pause(self, run_id: str) -> BudgetPauseView | None:
        """What a run paused on a budget waits for, or None."""
        return await self.db.read(partial(ops_budget.pause_of_txn, run_id=run_id))

    async def cancel_run(self, run_id: str, reason: str) -> str:
        return await self.db.write(self._at_commit(ops_runs.cancel_run_txn, run_id=run_id, reason=reason))

    async def replay_run(self, run_id: str) -> str:
        return await self.db.write(self._at_commit(ops_runs.replay_run_txn, run_id=run_id))

    async def unpark_sweep(self) -> int:
        return await self.db.write(self._at_commit(ops_exec.unpark_sweep_txn))

    async def cron_schedules(self, function_ids: list[str]) -> list[CronSchedule]:
        return await self.db.read(partial(ops_exec.cron_schedules_txn, function_ids=function_ids))

    async def fire_cron(self, function_id: str, position: int, tick: int, next_tick: int) -> str | None:
        return await self.db.write(
            self._at_commit(ops_exec.fire_cron_txn, function_id=function_id, position=position, tick=tick, next_tick=next_tick)
        )

    # --- apps on the Inngest SDKs (ops_sdk) -------------------------------------------

    async def register_sdk_app(
        self, app: str, configs: list[StoredConfig], cron_next: Mapping[tuple[str, int], int]
    ) -> list[str]:
        """Store an SDK app's functions; returns the ids of those its new registration dropped."""
        return await self.db.write(self._at_commit(ops_sdk.register_app_txn, app=app, configs=configs, cron_next=cron_next))

    async def invoke_function(self, function_id: str, data: dict[str, Any]) -> InvokeResult:
        """Invoke one function now, bypassing its triggers, not its flow control or a pause."""
        return await self.db.write(self._at_commit(ops_sdk.invoke_txn, function_id=function_id, data=data))

    async def send_signal(self, signal: event_mod.Event, expression: str) -> str | None:
        return await self.db.write(self._at_commit(ops_sdk.send_signal_txn, signal=signal, expression=expression))

    async def prepare_wait(
        self, lease: Lease, key: str, event_name: str, expression: str | None, timeout_ms: int, name: str | None = None
    ) -> None:
        """Register a wait of a run that still executes (a parallel block), ahead of its
        suspension; raises ``LeaseLost`` when ``lease`` no longer holds the run."""

        def prepare(conn: db.Conn) -> None:
            now = self.now_ms()
            ops_sdk.prepare_wait_txn(
                conn, lease=lease, key=key, event_name=event_name, expression=expression,
                expires_at=now + timeout_ms, now=now, name=name,
            )

        await self.db.write(prepare)

    async def wake_if_wait_done(self, run_id: str, key: str) -> bool:
        return await self.db.write(self._at_commit(ops_sdk.wake_if_wait_done_txn, run_id=run_id, key=key))

    async def sdk_functions(self) -> list[StoredConfig]:
        return await self.db.read(ops_sdk.sdk_functions_txn)

    async def resolve_function_id(self, slug: str) -> str:
        return await self.db.read(partial(ops_sdk.resolve_function_id_txn, slug=slug))

    async def step_row(self, run_id: str, key: str) -> StepState | None:
        return await self.db.read(partial(ops_sdk.step_row_txn, run_id=run_id, key=key))

    async def journal(self, run_id: str) -> list[JournalRow]:
        return await self.db.read(partial(ops_sdk.journal_txn, run_id=run_id))

    async def run_events(self, run_id: str) -> list[dict[str, Any]] | None:
        return await self.db.read(partial(ops_sdk.run_events_txn, run_id=run_id))

    async def batched_runs(self, run_ids: list[str]) -> set[str]:
        return await self.db.read(partial(ops_sdk.batched_runs_txn, run_ids=run_ids))

    # --- dashboard sessions (ops_sessions) ----------------------------------------------

    async def create_session(self, id_hash: str, ttl_ms: int) -> None:
        def create(conn: db.Conn) -> None:
            now = self.now_ms()
            ops_sessions.create_txn(conn, id_hash=id_hash, now=now, expires_at=now + ttl_ms)

        await self.db.write(create)

    async def revoke_session(self, id_hash: str) -> None:
        await self.db.write(partial(ops_sessions.revoke_txn, id_hash=id_hash))

    async def session_is_valid(self, id_hash: str) -> bool:
        return await self.db.read(partial(ops_sessions.is_valid_txn, id_hash=id_hash, now=self.now_ms()))

    # --- reads ---------------------------------------------------------------------

    def write_failure(self, fresh_within: float = 30.0) -> tuple[float, str] | None:
        """(seconds, why) this process's commits have all failed for the database's sake, lately; None if not."""
        return self.db.write_failure(fresh_within)

    async def get_run(self, run_id: str) -> RunView:
        return await self.db.read(partial(ops_read.get_run_txn, run_id=run_id))

    async def list_runs(self, **filters: Any) -> list[RunView]:
        return await self.db.read(partial(ops_read.list_runs_txn, **filters))

    async def get_event(self, event_id: str) -> EventView:
        return await self.db.read(partial(ops_read.get_event_txn, event_id=event_id))


    async def list_functions(self) -> list[FunctionRow]:
        return await self.db.read(ops_read.list_functions_txn)

    async def run_queue(self, run_id: str) -> dict[str, Any] | None:
        return await self.db.read(partial(ops_read.run_queue_txn, run_id=run_id))

    async def run_messages(self, run_id: str, after_seq: int = 0) -> list[RunMessage]:
        return await self.db.read(partial(ops_read.run_messages_txn, run_id=run_id, after_seq=after_seq))

    # --- server queries
    # (reads and operator actions behind the HTTP API and dashboard: ops_query,
    # ops_metrics, ops_admin)

    async def functions_overview(self) -> list[FunctionOverview]:
        return await self.db.read(partial(ops_query.functions_overview_txn, now=self.now_ms()))

    async def event_detail(self, event_id: str) -> EventView:
        return await self.db.read(partial(ops_query.event_detail_txn, event_id=event_id))

    async def list_events(self, **filters: Any) -> list[EventListItem]:
        """Newest first, each with the runs it started."""
        return await self.db.read(partial(ops_query.list_events_txn, **filters))

    async def run_live(self, run_id: str, after_seq: int = 0) -> RunLive | None:
        return await self.db.read(partial(ops_query.run_live_txn, run_id=run_id, after_seq=after_seq))

    async def metrics_overview(self, since_ms: int, usage_since_ms: int) -> MetricsOverview:
        return await self.db.read(
            partial(ops_metrics.overview_txn, now=self.now_ms(), since_ms=since_ms, usage_since_ms=usage_since_ms)
        )

    async def ping(self) -> None:
        """A read whose cost does not grow with the data: the queue table answers. For
        /health, which anyone may call, and often: counting the queue (``queue_depth``)
        cost a scan of every queued run, which a sender of events decides."""
        await self.db.read(ops_metrics.ping_txn)

    async def queue_depth(self) -> list[QueueDepth]:
        """Queue rows per function: ready, scheduled, leased."""
        return await self.db.read(partial(ops_metrics.queue_depth_txn, now=self.now_ms()))

    async def status_counts(self) -> list[StatusCount]:
        return await self.db.read(ops_run_counts.status_counts_txn)

    async def fold_run_counts(self) -> int:
        """Fold the run counts' pending changes (PostgreSQL; nothing to do on SQLite), on a
        connection beside the writer's."""
        if self.db.dialect == "sqlite":
            return 0
        return await self.db.write_aside(ops_run_counts.fold_txn)

    async def function_stats(self, since_ms: int) -> list[FunctionStats]:
        return await self.db.read(partial(ops_metrics.function_stats_txn, since_ms=since_ms))

    async def usage_by_model(self, since_ms: int | None = None) -> list[ModelUsage]:
        return await self.db.read(partial(ops_metrics.usage_by_model_txn, since_ms=since_ms))

    async def run_usage(self, run_id: str) -> Usage:
        """Tokens and cost of one run's model calls."""
        return await self.db.read(partial(ops_metrics.run_usage_txn, run_id=run_id))

    async def rerun_from_failed_step(self, run_id: str) -> Rerun:
        return await self.db.write(self._at_commit(ops_admin.rerun_from_failed_step_txn, run_id=run_id))

    async def bulk_cancel(
        self, function_id: str, since_ms: int | None, until_ms: int | None, reason: str, limit: int
    ) -> list[dict[str, str]]:
        return await self.db.write(
            self._at_commit(
                ops_admin.bulk_cancel_txn, function_id=function_id, since_ms=since_ms, until_ms=until_ms,
                reason=reason, limit=limit,
            )
        )

    async def create_cancellation(self, **params: Any) -> tuple[dict[str, Any], list[dict[str, str]]]:
        """``ops_admin.create_cancellation_txn``: a bulk cancel kept on record."""
        return await self.db.write(self._at_commit(ops_admin.create_cancellation_txn, **params))

    async def list_cancellations(self, limit: int = ops_admin.MAX_LISTED_CANCELLATIONS) -> list[dict[str, Any]]:
        return await self.db.read(partial(ops_admin.list_cancellations_txn, limit=limit))

    async def delete_cancellation(self, cancellation_id: str) -> None:
        await self.db.write(partial(ops_admin.delete_cancellation_txn, cancellation_id=cancellation_id))

    # --- functions as operators see them (ops_functions) ---------------------------------

    async def pause_function(self, function_id: str, mode: str, reason: str | None) -> PauseResult:
        return await self.db.write(self._at_commit(ops_functions.pause_txn, function_id=function_id, mode=mode, reason=reason))

    async def resume_function(self, function_id: str) -> ResumeResult:
        return await self.db.write(self._at_commit(ops_functions.resume_txn, function_id=function_id))

    async def paused_functions(self) -> dict[str, FunctionPause]:
        return await self.db.read(ops_functions.pauses_txn)

    async def function_detail(self, function_id: str, since_ms: int) -> FunctionDetail:
        return await self.db.read(
            partial(ops_functions.function_detail_txn, function_id=function_id, now=self.now_ms(), since_ms=since_ms)
        )

    async def bulk_replay(self, function_id: str, since_ms: int | None, until_ms: int | None, limit: int) -> BulkReplay:
        return await self.db.write(
            self._at_commit(
                ops_functions.bulk_replay_txn, function_id=function_id, since_ms=since_ms, until_ms=until_ms, limit=limit
            )
        )

    async def run_links(self, run_id: str) -> RunLinks:
        return await self.db.read(partial(ops_functions.run_links_txn, run_id=run_id))

    async def step_usage(self, run_id: str) -> dict[str, StepUsage]:
        return await self.db.read(partial(ops_functions.step_usage_txn, run_id=run_id))

    async def run_schedule(self, run_id: str) -> RunSchedule:
        return await self.db.read(partial(ops_functions.run_schedule_txn, run_id=run_id))

    async def runs_cancelled_by(self, event_id: str) -> list[RunView]:
        return await self.db.read(partial(ops_functions.runs_cancelled_by_txn, event_id=event_id))

    async def runs_ended_since(self, after: tuple[int, str], limit: int = 200) -> list[EndedRun]:
        return await self.db.read(partial(ops_functions.runs_ended_since_txn, after=after, limit=limit))

    async def search(self, query: str, limit: int = 20) -> SearchResult:
        return await self.db.read(partial(ops_functions.search_txn, query=query, limit=limit))

    # --- retention and maintenance (ops_retention, ops_maintenance) -----------------------
    # A sweep is many short transactions; ``rehearse`` runs one and rolls it back, so a dry
    # run counts exactly what the real one would delete.

    async def _write_or_rehearse(self, op: Callable[[db.Conn], T], rehearse: bool) -> T:
        if not rehearse:
            return await self.db.write_aside(op)

        def rehearsal(conn: db.Conn) -> T:
            raise _Rehearsed(op(conn))  # an operation that raises is rolled back alone

        try:
            await self.db.write_aside(rehearsal)
        except _Rehearsed as done:
            return done.result  # type: ignore[no-any-return]
        raise AssertionError("unreachable: a rehearsal always raises")

    async def acquire_sweep(
        self, owner: str, lease_ms: int, min_gap_ms: int, rehearsal: bool = False
    ) -> ops_retention.SweepLease | None:
        return await self.db.write_aside(self._at_commit(
            ops_retention.acquire_txn, owner=owner, lease_ms=lease_ms, min_gap_ms=min_gap_ms, rehearsal=rehearsal
        ))

    async def finish_sweep(self, lease: ops_retention.SweepLease, summary: SweepSummary | None) -> None:
        """Give the sweep up; with a ``summary`` it counts as done (others wait an interval)."""
        await self.db.write_aside(self._at_commit(ops_retention.finish_txn, lease=lease, summary=summary))

    async def sweep_status(self) -> SweepStatus:
        return await self.db.read(ops_retention.status_txn)

    async def add_counters(self, deltas: dict[ops_counters.Key, int]) -> None:
        """Add a worker's counts (lease losses, retries) to the totals ``/metrics`` reports."""
        await self.db.write(self._at_commit(ops_counters.add_txn, deltas=deltas))

    async def counters(self) -> dict[ops_counters.Key, int]:
        """The totals of every process: (counter, function id, detail) -> count."""
        return await self.db.read(ops_counters.totals_txn)

    async def retention_policies(self) -> dict[str, float]:
        return await self.db.read(ops_retention.policies_txn)

    async def finished_functions(self) -> list[str]:
        return await self.db.read(ops_retention.finished_functions_txn)

    async def prune_runs(
        self, lease: ops_retention.SweepLease, lease_ms: int, function_id: str, cutoff: int,
        after: tuple[int, str] | None, limit: int, *, rehearse: bool = False,
    ) -> ops_retention.Batch:
        op = partial(
            ops_retention.prune_runs_txn, lease=lease, lease_ms=lease_ms, function_id=function_id, cutoff=cutoff,
            after=after, limit=limit,
        )
        return await self._write_or_rehearse(op, rehearse)

    async def prune_events(
        self, lease: ops_retention.SweepLease, lease_ms: int, cutoff: int, after: tuple[int, str] | None, limit: int,
        *, rehearse: bool = False,
    ) -> ops_retention.Batch:
        op = partial(ops_retention.prune_events_txn, lease=lease, lease_ms=lease_ms, cutoff=cutoff, after=after, limit=limit)
        return await self._write_or_rehearse(op, rehearse)

    async def prune_usage(
        self, lease: ops_retention.SweepLease, lease_ms: int, cutoff: int, after: tuple[int, str] | None, limit: int,
        *, rehearse: bool = False,
    ) -> ops_retention.Batch:
        op = partial(ops_retention.prune_usage_txn, lease=lease, lease_ms=lease_ms, cutoff=cutoff, after=after, limit=limit)
        return await self._write_or_rehearse(op, rehearse)

    async def prune_expired(
        self, lease: ops_retention.SweepLease, lease_ms: int, table: str, before: int, limit: int, *, rehearse: bool = False
    ) -> ops_retention.Batch:
        op = partial(ops_retention.prune_expired_txn, lease=lease, lease_ms=lease_ms, table=table, before=before, limit=limit)
        return await self._write_or_rehearse(op, rehearse)

    async def prune_flow_state(
        self, lease: ops_retention.SweepLease, lease_ms: int, after: str | None, limit: int, *, rehearse: bool = False
    ) -> ops_retention.Batch:
        op = self._at_commit(ops_retention.prune_flow_state_txn, lease=lease, lease_ms=lease_ms, after=after, limit=limit)
        return await self._write_or_rehearse(op, rehearse)

    async def incremental_vacuum(self, pages: int, keep: int) -> int:
        """SQLite: hand up to ``pages`` free pages back to the file system (through the writer);
        returns the free pages left (0 elsewhere)."""
        return await self.db.write(partial(ops_maintenance.incremental_vacuum_txn, pages=pages, keep=keep))

    def truncate_log_when_idle(self) -> None:
        self.db.truncate_log_when_idle()

    async def table_sizes(self, *, exact: bool = False) -> list[TableSize]:
        return await self.db.read(partial(ops_maintenance.table_sizes_txn, exact=exact))

    async def oldest_rows(self) -> dict[str, int | None]:
        return await self.db.read(ops_maintenance.oldest_rows_txn)

    async def file_space(self) -> FileSpace:
        """SQLite: pages, free pages, auto_vacuum mode, and the sizes of the file and its log."""
        space = await self.db.read(ops_maintenance.file_space_txn)
        if space and self.db.dialect == "sqlite":
            path = sqlite_path(self.url)
            space["file_bytes"] = os.path.getsize(path) if os.path.exists(path) else 0
            space["wal_bytes"] = os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0
        return space

    async def backup(self, target: str) -> int:
        """SQLite: a consistent copy at ``target`` while writes go on; returns its size."""
        if is_postgres_url(self.url):
            raise errors.ConfigError(
                "stepline admin backup copies SQLite databases; back PostgreSQL up with its own tools, e.g. "
                f"`pg_dump --format=custom --file=stepline.dump '{migrate.redact(self.url)}'` (consistent while "
                "Stepline runs) and `pg_restore` to bring it back"
            )
        return await asyncio.get_running_loop().run_in_executor(
            None, ops_maintenance.backup_sqlite, sqlite_path(self.url), target
        )

    async def vacuum(self, tables: Sequence[str]) -> VacuumResult:
        loop = asyncio.get_running_loop()
        if is_postgres_url(self.url):
            return await loop.run_in_executor(None, ops_maintenance.vacuum_postgres, self.url, list(tables))
        return await loop.run_in_executor(None, ops_maintenance.vacuum_sqlite, sqlite_path(self.url))


class _Rehearsed(Exception):
    """Carries a rehearsed operation's result out of its rolled-back transaction."""

    def __init__(self, result: Any) -> None:
        super().__init__("rehearsal")
        self.result = result


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def wait_for_database(url: str, seconds: float) -> None:
    """Wait up to ``seconds`` for a PostgreSQL server that does not answer yet (refused,
    cut, starting up, out of connection slots): a process started while its database
    restarts comes up once the database is back, rather than exiting. Errors the server
    gives for good (a wrong password, no such database) are left to the opening that
    follows, at once. Nothing to wait for on SQLite."""
    if is_postgres_url(url) and seconds > 0:
        from stepline.store import postgres

        postgres.wait_until_reachable(url, seconds)


def open_store(url: str, *, migrate_now: bool = True, clock: clock_mod.Clock | None = None) -> Store:
    """A store for ``url`` (a SQLite path, or ``postgresql://...``), its schema checked.

    ``migrate_now`` applies pending migrations (dev); otherwise pending ones are an error
    that names ``stepline migrate``. ``clock``: what due times are measured on (the
    system clock unless a test skips time; see ``stepline.clock``).
    """
    if not is_postgres_url(url):
        directory = os.path.dirname(os.path.abspath(sqlite_path(url)))
        os.makedirs(directory, exist_ok=True)  # `stepline dev` on a fresh checkout: ./.stepline/
    migrate.check(url, auto_apply=migrate_now)
    if is_postgres_url(url):
        from stepline.store import postgres

        return Store(postgres.PostgresDatabase(url), url, clock)
    from stepline.store import sqlite

    missing = [] if sqlite_path(url) == ":memory:" else sqlite.missing_indexes(sqlite_path(url), NAMED_INDEXES)
    if missing:
        statements = " ".join(migrate.index_statement(name) for name in missing)
        raise errors.StoreError(
            f"the database {url} lacks the index(es) {', '.join(missing)}, which this release's queries name (an index "
            "dropped by hand, as going back to an earlier release asks: see docs/deployment.md); build them again with "
            f"the processes stopped: sqlite3 {sqlite_path(url)} '{statements}'"
        )
    return Store(sqlite.SQLiteDatabase(sqlite_path(url)), url, clock)


# The indexes this release's statements name on SQLite (``Conn.indexed_by``), where a
# statement naming a missing index fails: a database lacking one is refused at start.
NAMED_INDEXES = (ops_runs.READY_BY_FUNCTION, ops_runs.UNKEYED_WAITS, ops_exec.CLAIM_ORDER)


def sqlite_path(url: str) -> str:
    """The file path in a SQLite URL (``sqlite:///path``) or a bare path."""
    return url[len("sqlite:///"):] if url.startswith("sqlite:///") else url
