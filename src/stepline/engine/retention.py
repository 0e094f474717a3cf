"""The retention sweeper: deletes what ``STEPLINE_RETENTION`` (and each function's
``retention=``) no longer keeps, in the background of every worker and server process.

One process sweeps at a time: a sweep starts by taking the ``maintenance`` lease, and
only once the last sweep (by any process) finished ``STEPLINE_RETENTION_INTERVAL`` ago.
A sweep is many small transactions (a hundred runs each, with everything that is theirs
alone), each followed by a pause twice as long as it took. On SQLite they go through the
process's writer, so other writes wait at most one small batch (about 2 ms) and the sweep
takes at most a third of the writer's time; on PostgreSQL they run on a connection of
their own (``write_aside``), beside the writer rather than in its way. The policy is read when a sweep starts: a
lowered retention applies to what is already stored.

On SQLite, a sweep ends by handing most of the pages it freed back to the file system
(``incremental_vacuum``, a few hundred pages per transaction), keeping a tenth of the
file free for new rows, and by shrinking the WAL file once the process is idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable
from typing import TypeVar

from stepline import errors, ids
from stepline.settings import Settings
from stepline.store import Store, records
from stepline.store.ops_retention import EXPIRING, KEPT_AS_RUNS, KEPT_AS_USAGE, Batch, SweepLease

log = logging.getLogger("stepline.retention")
T = TypeVar("T")

LEASE_MS = 60_000  # a sweeper that stops extending its lease (each batch does) loses it after this
RUNS_PER_BATCH = 100
ROWS_PER_BATCH = 500
PAUSE_FACTOR = 2.0  # pause after a batch, in multiples of the time it took
MIN_PAUSE = 0.01
VACUUM_PAGES = 256  # pages handed back per transaction (1 MiB at 4 KiB pages)
FREE_PAGES_KEPT = 0.10  # of the file, kept free for new rows rather than given back and regrown
MIN_FREE_PAGES_KEPT = 256
SIZES_TTL = 60.0  # seconds /metrics reuses the table sizes it read


@dataclasses.dataclass(frozen=True)
class Policy:
    """How long finished runs are kept: by default, and per function (ms; None: forever)."""

    default_ms: int | None
    usage_ms: int | None
    functions: dict[str, int]

    def keep_ms(self, function_id: str) -> int | None:
        return self.functions.get(function_id, self.default_ms)


@dataclasses.dataclass
class SweepReport:
    """What a sweep deleted (or, rehearsed, would delete), per table and per function."""

    rehearsal: bool
    started_at: int
    finished_at: int | None = None
    deleted: dict[str, int] = dataclasses.field(default_factory=dict)
    runs_by_function: dict[str, int] = dataclasses.field(default_factory=dict)
    kept_referenced: int = 0  # finished runs past their age that something unfinished still points at
    free_pages_left: int | None = None

    def add(self, batch: Batch, function_id: str | None = None) -> None:
        for table, count in batch.deleted.items():
            self.deleted[table] = self.deleted.get(table, 0) + count
        if function_id is not None and batch.deleted.get("runs"):
            self.runs_by_function[function_id] = self.runs_by_function.get(function_id, 0) + batch.deleted["runs"]
        self.kept_referenced += batch.kept

    def summary(self) -> records.SweepSummary:
        return {
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "deleted": {t: n for t, n in self.deleted.items() if n},
            "kept_referenced": self.kept_referenced,
        }


class SweepBusy(errors.SteplineError):
    """Another process holds the sweep."""


class Sweeper:
    """Sweeps now and then in the background (``start``), or once on demand (``sweep``)."""

    def __init__(self, store: Store, settings: Settings, *, owner: str | None = None) -> None:
        self.store = store
        self.settings = settings
        self.owner = owner or f"sweep-{ids.new_id()}"
        self.last_report: SweepReport | None = None
        self._task: asyncio.Task[None] | None = None
        self._lease: SweepLease | None = None
        self._sizes: tuple[float, list[records.TableSize]] | None = None

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Sweep every ``STEPLINE_RETENTION_INTERVAL`` (never when it is 0)."""
        if self.settings.retention_interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"stepline-retention-{self.owner}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        lease, self._lease = self._lease, None
        if lease is not None:  # stopped mid-sweep: let another process take over at once
            with contextlib.suppress(Exception):
                await self.store.finish_sweep(lease, None)

    async def _loop(self) -> None:
        interval = self.settings.retention_interval
        await asyncio.sleep(interval * random.uniform(0.5, 1.0))  # processes started together spread out
        while True:
            try:
                await self.sweep()
            except errors.LeaseLost as exc:
                log.warning("%s; it goes on there", exc)
            except Exception:  # noqa: BLE001 - the database may be away; the next round tries again
                log.exception("the retention sweep failed; trying again in %.0f s", interval)
            await asyncio.sleep(interval)

    # --- one sweep -------------------------------------------------------------------

    def policy(self, functions: dict[str, float], older_than: float | None = None) -> Policy:
        default = self.settings.retention if older_than is None else older_than
        return Policy(
            default_ms=int(default * 1000) if default > 0 else None,
            usage_ms=int(self.settings.usage_retention * 1000) if self.settings.usage_retention > 0 else None,
            functions={fn: int(seconds * 1000) for fn, seconds in functions.items()},
        )

    async def sweep(self, *, force: bool = False, older_than: float | None = None, rehearse: bool = False) -> SweepReport | None:
        """One sweep now. ``force``: even if the last one finished less than an interval ago;
        ``older_than``: seconds, in place of ``STEPLINE_RETENTION`` (functions with their own
        ``retention=`` keep it); ``rehearse``: count what would go, deleting nothing.

        Returns None when the interval has not passed; raises ``SweepBusy`` when forced
        while another process sweeps.
        """
        gap_ms = 0 if force else int(self.settings.retention_interval * 1000)
        lease = await self.store.acquire_sweep(self.owner, LEASE_MS, gap_ms, rehearsal=rehearse)
        if lease is None:
            if force:
                status = await self.store.sweep_status()
                raise SweepBusy(
                    f"a retention sweep is running in {status['owner']} (its lease ends within "
                    f"{LEASE_MS // 1000} s if that process died); try again once it is done"
                )
            return None
        self._lease = lease
        report = SweepReport(rehearsal=rehearse, started_at=self.store.now_ms())
        done = False
        try:
            await self._sweep(lease, report, older_than)
            report.finished_at = self.store.now_ms()
            done = True
        finally:
            self._lease = None
            with contextlib.suppress(Exception):  # a lost lease, a closing store: it then lapses
                await self.store.finish_sweep(lease, report.summary() if done and not rehearse else None)
        self.last_report = report
        deleted = ", ".join(f"{n} {t}" for t, n in report.deleted.items() if n)
        if deleted and not rehearse:
            log.info("retention sweep deleted %s", deleted)
        return report

    async def _sweep(self, lease: SweepLease, report: SweepReport, older_than: float | None) -> None:
        store, rehearse = self.store, report.rehearsal
        now = report.started_at
        policy = self.policy(await store.retention_policies(), older_than)
        for function_id in await store.finished_functions():
            keep = policy.keep_ms(function_id)
            if keep is None:
                continue
            after: tuple[int, str] | None = None
            while True:
                batch = await self._paced(
                    store.prune_runs(lease, LEASE_MS, function_id, now - keep, after, RUNS_PER_BATCH, rehearse=rehearse)
                )
                report.add(batch, function_id)
                if batch.done:
                    break
                after = batch.after
        if policy.default_ms is not None:
            for prune in (store.prune_events, store.prune_usage):
                after = None
                while True:
                    batch = await self._paced(prune(lease, LEASE_MS, now - policy.default_ms, after, ROWS_PER_BATCH, rehearse=rehearse))
                    report.add(batch)
                    if batch.done:
                        break
                    after = batch.after
        for table in EXPIRING:
            if table in KEPT_AS_USAGE:
                if policy.usage_ms is None:
                    continue
                before = now - policy.usage_ms
            elif table in KEPT_AS_RUNS:
                if policy.default_ms is None:
                    continue
                before = now - policy.default_ms
            else:
                before = now
            while True:
                batch = await self._paced(store.prune_expired(lease, LEASE_MS, table, before, ROWS_PER_BATCH, rehearse=rehearse))
                report.add(batch)
                if batch.done:
                    break
        key: str | None = None
        while True:
            batch = await self._paced(store.prune_flow_state(lease, LEASE_MS, key, ROWS_PER_BATCH, rehearse=rehearse))
            report.add(batch)
            if batch.done or batch.after is None:
                break
            key = batch.after[1]
        if not rehearse and store.dialect == "sqlite":
            report.free_pages_left = await self._give_back_pages()

    async def _give_back_pages(self) -> int | None:
        space = await self.store.file_space()
        if space.get("auto_vacuum") != "incremental":
            return space.get("freelist_count")
        keep = max(MIN_FREE_PAGES_KEPT, int(space["page_count"] * FREE_PAGES_KEPT))
        left = int(space["freelist_count"])
        while left > keep:
            now_left = await self._paced(self.store.incremental_vacuum(VACUUM_PAGES, keep))
            if now_left >= left:
                break
            left = now_left
        self.store.truncate_log_when_idle()
        return left

    async def _paced(self, operation: Awaitable[T]) -> T:
        """Run one batch, then pause in proportion to the time it took."""
        started = time.monotonic()
        result = await operation
        await asyncio.sleep(max(MIN_PAUSE, (time.monotonic() - started) * PAUSE_FACTOR))
        return result

    # --- for /metrics -------------------------------------------------------------------

    async def table_sizes(self) -> list[records.TableSize]:
        """Rows and bytes per table, read at most once a minute (counting rows costs on SQLite)."""
        now = time.monotonic()
        if self._sizes is None or now - self._sizes[0] > SIZES_TTL:
            self._sizes = (now, await self.store.table_sizes(exact=False))
        return self._sizes[1]

