"""The worker: claims due runs, executes them, keeps leases alive, fires cron ticks.

A worker never executes two copies of one run: its claims leave out the runs it is
still executing or winding down, and a run whose lease it could not renew in time (a
stalled or unreachable database) is stopped here before the lease can expire for
other workers (see ``executor``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from stepline import ids
from stepline.engine import cron
from stepline.engine import executor as executor_mod
from stepline.engine.executor import Executor, Services
from stepline.function import Function
from stepline.outage import OutageLog
from stepline.store import Store
from stepline.store.records import ClaimedRun, HandOff, Lease

log = logging.getLogger("stepline.worker")

CLAIM_BATCH = 100
# Seconds between looks for runs whose lease expired (a crashed worker's), at most; a
# quarter of the lease when that is shorter. Not every claim: it costs a round trip.
RECLAIM_EVERY = 1.0
# Seconds between looks for cancellations where the backend cannot push them to this
# process (SQLite shared by several processes), while runs execute here.
CANCEL_POLL = 0.2


class Worker:
    def __init__(self, services: Services, functions: dict[str, Function], *, concurrency: int) -> None:
        self.id = services.worker_id
        self._services = services
        self._store: Store = services.store
        self._functions = functions
        self._function_ids = sorted(functions)
        self._concurrency = max(1, concurrency)
        self.executor = Executor(services, functions)
        self._running: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._stopping = False
        self._idle = False  # waiting for a wake-up after a claim that found no more ready runs
        self._reserved = 0  # slots promised to offers whose ingest has not committed yet
        self._claiming = 0  # slots the claim in flight may fill
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.poll_interval = services.settings.poll_interval or services.store.poll_interval

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._store.plan_capacity(self._concurrency)
        self._store.add_waker(self._wake_threadsafe)
        self._store.add_listener("cancel", self._cancel_threadsafe)
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name=f"stepline-claim-{self.id}"),
            asyncio.create_task(self._heartbeat_loop(), name=f"stepline-heartbeat-{self.id}"),
            asyncio.create_task(self._upkeep_loop(), name=f"stepline-upkeep-{self.id}"),
        ]
        if self._services.settings.fencing:
            self._tasks.append(asyncio.create_task(self._fence_loop(), name=f"stepline-fence-{self.id}"))
        if not self._store.signals_reach_processes:
            self._tasks.append(asyncio.create_task(self._cancel_poll_loop(), name=f"stepline-cancels-{self.id}"))
        if any(fn.config.triggers and any(hasattr(t, "cron") for t in fn.config.triggers) for fn in self._functions.values()):
            self._tasks.append(asyncio.create_task(self._cron_loop(), name=f"stepline-cron-{self.id}"))

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming; let in-flight runs reach their next rest for ``grace`` s, then release them."""
        self._stopping = True
        self._wake.set()
        self._slot_freed.set()  # a claim loop waiting for a slot sees the stop too
        self._store.remove_waker(self._wake_threadsafe)
        self._store.remove_listener("cancel", self._cancel_threadsafe)
        # A claim in flight has leased its runs: let it come back and hand them back (it starts
        # none now). Cancelled instead, it left them leased to a gone worker until the lease
        # ran out; let run on, it started them after the grace began, to be cut at its end.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace  # one grace for both waits
        claims = [t for t in self._tasks if t.get_name().startswith("stepline-claim-")]
        if claims:
            await asyncio.wait(claims, timeout=grace)
        if self._running:
            await asyncio.wait(set(self._running), timeout=max(0.0, deadline - loop.time()))
        unfinished = self.executor.leases()
        for task in list(self._running):
            task.cancel()
        for held in list(self.executor.active.values()):
            held[1].handed_back = True  # a sync body still waiting for a thread must not start now
            held[0].cancel()
        if self._running:
            await asyncio.wait(set(self._running), timeout=5)
        if unfinished:
            with contextlib.suppress(Exception):
                await self._store.release(unfinished)
        await self._flush_counters()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def set_functions(self, functions: dict[str, Function]) -> None:
        """Serve this set of functions from now on (the executor shares the dict)."""
        self._functions.clear()
        self._functions.update(functions)
        self._function_ids = sorted(functions)
        if self._loop is not None and not self._stopping:
            for task in [t for t in self._tasks if t.get_name().startswith("stepline-cron-")]:
                task.cancel()
                self._tasks.remove(task)
            if any(any(hasattr(t, "cron") for t in fn.config.triggers) for fn in functions.values()):
                self._tasks.append(asyncio.create_task(self._cron_loop(), name=f"stepline-cron-{self.id}"))
        self._wake.set()

    def _wake_threadsafe(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    def _cancel_threadsafe(self, run_id: str) -> None:
        """A run was cancelled from another process: stop it here if this worker holds it."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.executor.cancel_local, run_id)

    def wake(self) -> None:
        self._wake.set()

    # --- runs handed over by an ingest in this process -----------------------------

    def offer(self, events: int | None = None) -> HandOff | None:
        """An offer to take new runs straight from an ingest, or None when this worker has
        no free slot. Unless the worker is idle (its last claim drained the queue and
        nothing woke it since), the ingest first checks that no ready run waits in the
        queue: those go first. An ingest of ``events`` events can start at most one run of
        each function per event, so it holds no more slots than that while it commits:
        concurrent small ingests then each get theirs."""
        if self._stopping or not self._services.settings.handoff:
            return None
        if asyncio.get_running_loop() is not self._loop:
            return None  # sent from another event loop (a thread of the app): runs start on ours only
        free = self._concurrency - len(self._running) - self._reserved - self._claiming
        if free <= 0:
            return None
        limit = min(free, CLAIM_BATCH * 5)
        if events is not None:
            limit = min(limit, events * max(1, len(self._function_ids)))
        self._reserved += limit
        lease_ms = int(self._services.settings.lease * 1000)
        check_queue = not self._idle or self._wake.is_set()
        return HandOff(self.id, frozenset(self._function_ids), limit, lease_ms, check_queue)

    def adopt(self, offer: HandOff, committed: bool) -> None:
        """Execute the runs ``offer`` took, once their ingest ``committed``; give back its slots."""
        self._reserved -= offer.limit
        if committed and self._stopping:  # stopped meanwhile: hand them back to the queue
            asyncio.ensure_future(self._hand_back([self._lease_of(item) for item in offer.taken]))
        elif committed:
            for item in offer.taken:
                self._start(item)
        offer.taken.clear()
        self._slot_freed.set()

    def _lease_of(self, item: ClaimedRun) -> Lease:
        return Lease(item.run_id, self.id, item.epoch if self._services.settings.fencing else None)

    async def _hand_back(self, leases: list[Lease]) -> None:
        if leases:
            with contextlib.suppress(Exception):  # the store may be closing: the leases then run out
                await self._store.release(leases)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    # --- loops -----------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        lease_ms = int(self._services.settings.lease * 1000)
        reclaim_every = min(RECLAIM_EVERY, self._services.settings.lease / 4)
        reclaimed_at = float("-inf")
        loop = asyncio.get_running_loop()
        outage = OutageLog(log, "claiming runs")
        while not self._stopping:
            free = self._concurrency - len(self._running) - self._reserved
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            self._wake.clear()
            want = min(free, CLAIM_BATCH)
            reclaim = loop.time() - reclaimed_at >= reclaim_every
            if reclaim:
                reclaimed_at = loop.time()
            self._claiming = want
            # Never a run still executing or winding down here: one copy of a run per worker.
            exclude = frozenset(self.executor.active) if self._services.settings.fencing else frozenset()
            try:
                claimed, next_due = await self._store.claim(
                    self.id, self._function_ids, want, lease_ms, reclaim_expired=reclaim, exclude=exclude,
                    max_lease_losses=self._services.settings.max_lease_losses,
                )
            except Exception as exc:  # noqa: BLE001 - the database may be restarting; try again shortly
                outage.failed(exc)
                await asyncio.sleep(min(1.0, self.poll_interval * 5))
                continue
            finally:
                self._claiming = 0
            outage.worked()
            if self._stopping:
                await self._hand_back([self._lease_of(item) for item in claimed])
                break
            for item in claimed:
                self._start(item)
            if len(claimed) == want:
                continue
            timeout = self.poll_interval
            if next_due is not None:
                timeout = min(timeout, max(0.0, (next_due - self._store.now_ms()) / 1000))
            self._idle = True  # the queue held no more ready runs for us: offers are fair now
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            finally:
                self._idle = False

    def _start(self, item: ClaimedRun) -> None:
        if item.run_id in self.executor.active and self._services.settings.fencing:
            log.error("run %s was leased again while it still executes here; handing the new lease back", item.run_id)
            asyncio.ensure_future(self._hand_back([self._lease_of(item)]))
            return
        task = asyncio.create_task(self._execute(item), name=f"stepline-run-{item.run_id}")
        self._running.add(task)

    async def _execute(self, item: ClaimedRun) -> None:
        try:
            await self.executor.execute(item)
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - never lose the worker to one run
            log.exception("run %s could not be settled; its lease will expire and it will be retried", item.run_id)
        finally:
            self._running.discard(asyncio.current_task())  # type: ignore[arg-type,unused-ignore]
            self._slot_freed.set()

    async def _heartbeat_loop(self) -> None:
        settings = self._services.settings
        lease_ms = int(settings.lease * 1000)
        wanted = self.executor.renewal_wanted
        outage = OutageLog(log, "the heartbeat")
        loop = asyncio.get_running_loop()
        wait = settings.lease / 4
        while not self._stopping:
            with contextlib.suppress(TimeoutError):  # every quarter lease, or sooner when a run asks
                await asyncio.wait_for(wanted.wait(), wait)
            wanted.clear()
            began = loop.time()
            wait = settings.lease / 4
            try:
                leases = self.executor.leases()
                if leases:
                    renewal = await self._store.heartbeat(self.id, leases, lease_ms)
                    for lease in leases:
                        held = self.executor.active.get(lease.run_id)
                        if held is None:
                            continue  # it ended meanwhile
                        if lease.run_id in renewal.held:
                            held[1].renewed(renewal.since)
                        elif lease.run_id in renewal.busy:
                            wait = settings.lease / 16  # its row was locked a moment: try again soon
                        elif settings.fencing:
                            self.executor.lose(
                                lease.run_id, "its lease was taken over (the run was leased again) or it ended elsewhere", executor_mod.TAKEN_OVER
                            )
                    for run_id in renewal.cancelled:
                        self.executor.cancel_local(run_id)
            except Exception as exc:  # noqa: BLE001
                outage.failed(exc)
            else:
                outage.worked()
            # A quarter lease from this renewal's start, not its end: on a slow link a renewal
            # takes a while, and the fence allows three quarters from one's start to the next's end.
            wait = max(0.0, wait - (loop.time() - began))

    async def _upkeep_loop(self) -> None:
        """What the heartbeat once did after renewing, on the writer: kept apart, so that a
        busy writer never holds up the next renewal."""
        outage = OutageLog(log, "sweeping parked runs")
        while not self._stopping:
            await asyncio.sleep(self._services.settings.lease / 4)
            try:
                # Safety net for concurrency limits: a run parked behind a key whose slots
                # are free (a raised limit, a lost wake-up) is made ready again.
                if await self._store.unpark_sweep():
                    self._wake.set()
            except Exception as exc:  # noqa: BLE001
                outage.failed(exc)
            else:
                outage.worked()
            await self._flush_counters()
            await self._fold_run_counts()

    async def _fold_run_counts(self) -> None:
        """Keep the run counts' pending changes few, so that reading the counts stays short
        (PostgreSQL; a failure leaves them for the next round, the counts exact meanwhile)."""
        try:
            await self._store.fold_run_counts()
        except Exception:  # noqa: BLE001
            log.debug("folding the run counts' changes failed; the next round tries again", exc_info=True)

    async def _flush_counters(self) -> None:
        """Add the lease losses and retries counted here to the totals /metrics reports
        (kept for the next flush when the database cannot take them now)."""
        counted = self._services.counters.take()
        if not counted:
            return
        try:
            await self._store.add_counters(counted)
        except Exception:  # noqa: BLE001 - counts wait for the next heartbeat
            self._services.counters.give_back(counted)
            log.debug("saving counters failed; kept for the next heartbeat", exc_info=True)

    async def _fence_loop(self) -> None:
        """Stop runs whose lease may run out before a renewal commits (the heartbeat's write
        is stuck behind a stalled database): before any other worker may take them."""
        interval = min(0.25, self._services.settings.lease / 8)
        pulse, lease = self._services.pulse, self._services.settings.lease
        while not self._stopping:
            pulse.seen_at = time.monotonic()
            await asyncio.sleep(interval)
            for run_id in self.executor.overdue():
                self.executor.lose(run_id, pulse.not_renewed(lease), executor_mod.NOT_RENEWED)

    async def _cancel_poll_loop(self) -> None:
        """Where a cancellation made in another process cannot be pushed here (SQLite), look
        for one while runs execute, so their in-flight steps stop within a fraction of a second."""
        while not self._stopping:
            await asyncio.sleep(CANCEL_POLL)
            if not self.executor.active:
                continue
            try:
                for run_id in await self._store.cancel_requested(self.id):
                    self.executor.cancel_local(run_id)
            except Exception:  # noqa: BLE001 - the next look catches up
                log.debug("looking for cancelled runs failed", exc_info=True)

    async def _cron_loop(self) -> None:
        cron_ids = [fid for fid, fn in self._functions.items() if any(hasattr(t, "cron") for t in fn.config.triggers)]
        outage = OutageLog(log, "cron scheduling")
        while not self._stopping:
            wait = 1.0
            try:
                now = self._store.now_ms()
                for row in await self._store.cron_schedules(cron_ids):
                    if row["next_tick"] <= now:
                        # Count from now, not from the missed tick: after downtime one catch-up run, no burst.
                        following = cron.next_tick_ms(row["cron"], row["timezone"], max(now, row["next_tick"]))
                        await self._store.fire_cron(row["function_id"], row["position"], row["next_tick"], following)
                        wait = 0.0
                    else:
                        wait = min(wait, (row["next_tick"] - now) / 1000)
            except Exception as exc:  # noqa: BLE001
                outage.failed(exc)
            else:
                outage.worked()
            await asyncio.sleep(max(0.005, wait))


def new_worker_id() -> str:
    return f"w-{ids.new_id()}"
