"""Executing one claimed run: the ``RunDriver`` behind ``ctx.step``, and the outcome.

While a worker holds a run its coroutine simply continues from step to step, each
result committed before the next step begins. Replay (feeding the journal's saved
results back) only happens when a run resumes on a worker that did not hold it.

A completed step's result goes back to the function at once; its checkpoint is
submitted on the next turn of the event loop and awaited before the run's next step,
suspension or other write. When the function returns before that turn (its last step),
the checkpoint rides with the finish instead: one commit for both.

Every write names the run's lease (owner and epoch). A run whose lease is lost stops
at once and writes nothing more: when a write finds the run leased again
(``errors.LeaseLost``), when the database cannot take the write (``StoreError``: the outcome
of its in-flight step is then unknown, and the run is left to be claimed again), or
when the lease could not be renewed in time (the worker's own deadline, a little
short of the lease's expiry in the database, so it stops before another worker may
start). None of these is a failed attempt of a step.

What operators see of it (``stepline.observability``): each execution is a
``process <function id>`` span and each step attempt a ``step <step id>`` span under it
(when OpenTelemetry has a tracer provider here); every log line inside a run carries its
run, function, step and attempt; lease losses and retries are counted per function.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from stepline import budgets, durations, errors, jsonutil
from stepline import event as event_mod
from stepline.context import Context, SyncContext
from stepline.engine import budget_gate, retry, step_slots
from stepline.engine.signals import Halt, Suspend
from stepline.function import Function
from stepline.observability import counters, logs, tracing
from stepline.settings import Settings
from stepline.store import (
    FINISH_TIMEOUT,
    ClaimedRun,
    JournalEntry,
    Lease,
    RunStatus,
    StepResult,
    StepStatus,
    Store,
    Suspension,
)

log = logging.getLogger("stepline.executor")

# A worker stops a run once this share of the lease has passed since its last renewal
# began without another one committing: before the lease can expire in the database.
FENCE_AT = 0.75
# A step starts only with at least this share of the lease still ahead of its worker's
# deadline, renewing the lease first when less is left (a claim that committed just as a
# stall lifted, a heartbeat held up behind one). A step whose code cannot be interrupted
# (sync code in a thread) would otherwise run on after its worker stopped the run, beside
# the next holder's execution.
START_MARGIN = 0.25
# Errors of a write that mean the run is no longer this worker's to write (LeaseLost), or
# that nothing can be known of the write: the run stops, nothing is counted against it.
LOST = errors.StoreError

# Why a run stopped on a worker without an outcome (the ``cause`` of a lease loss in /metrics).
TAKEN_OVER = "taken_over"  # the run was leased again (or ended) elsewhere
NOT_RENEWED = "not_renewed"  # the lease could not be extended in time
STORE_ERROR = "store_error"  # the database could not take one of the run's writes


class _LeaseTooShort(Exception):
    """A synchronous step body reached its thread after its run stopped here, or with too
    little lease left to start (see ``RunExecution._start_if_held``)."""


class SaveTime:
    """How long a checkpoint takes to commit here, from its submission: the longest of the
    recent ones, forgotten a tenth at each new one (a slow link is known at once, a stall
    past is forgotten within a few dozen checkpoints). ``None`` until one has committed."""

    def __init__(self) -> None:
        self.seconds: float | None = None

    def observe(self, seconds: float) -> None:
        self.seconds = seconds if self.seconds is None else max(seconds, self.seconds * 0.9)


class Pulse:
    """When the worker's fence loop last ran. A long gap means this process itself did not
    run (frozen by SIGSTOP or a VM pause, or its event loop blocked by code that does not
    await): a lease lost to that says so, not that the database was slow."""

    def __init__(self) -> None:
        self.seen_at = time.monotonic()

    def not_renewed(self, lease: float) -> str:
        """Why a lease could not be renewed in time, as far as this process can tell."""
        gap = time.monotonic() - self.seen_at
        if gap > lease / 4:
            return (
                f"its lease could not be renewed in time: this process did not run for {gap:.1f} s "
                "(frozen or paused, or its event loop blocked by code that does not await)"
            )
        return "its lease could not be renewed in time (the database is stalled or unreachable)"


@dataclasses.dataclass
class Services:
    """What every run's execution shares within a worker."""

    store: Store
    settings: Settings
    worker_id: str
    step_threads: concurrent.futures.ThreadPoolExecutor
    handler_threads: concurrent.futures.ThreadPoolExecutor
    validate_event: Callable[[Any, int], event_mod.Event]
    on_publish: Callable[[str], None]
    # Lease losses and retries counted here, added to the database's totals by the worker.
    counters: counters.Counters = dataclasses.field(default_factory=counters.Counters)
    pulse: Pulse = dataclasses.field(default_factory=Pulse)  # kept by the worker's fence loop
    freed_slots: step_slots.Freed = dataclasses.field(default_factory=step_slots.Freed)  # wakes steps waiting for one
    save_time: SaveTime = dataclasses.field(default_factory=SaveTime)  # kept by the runs' checkpoints


def _over_steps(limit: int) -> str:
    return (
        f", over the limit of {limit} steps a run; do the loop's work inside one step, or fan out (send an event "
        "per item, or invoke a function per item), or raise STEPLINE_MAX_STEPS_PER_RUN"
    )


class RunExecution:
    """One run on this worker: implements ``context.RunDriver``."""

    def __init__(self, services: Services, claimed: ClaimedRun, function: Function, request_renewal: Callable[[], None]) -> None:
        self._services = services
        self._request_renewal = request_renewal  # asks the worker's heartbeat to renew its leases now
        self._store = services.store
        self.function = function
        self.run_id = claimed.run_id
        self.function_id = claimed.function_id
        # The attempt a handler sees: the function's, or the retried step's when that is later.
        self.attempt = max([claimed.attempt] + [e.attempts for e in claimed.journal.values() if e.status == StepStatus.RETRYING])
        self._journal = claimed.journal
        self._event = claimed.event
        self._budget_gate: budget_gate.StepGate | None = None  # made at the first step that may spend
        self._unvisited = {k for k, e in claimed.journal.items() if e.status in (StepStatus.COMPLETED, StepStatus.FAILED)}
        self._counts: dict[str, int] = {}
        self._entered = 0  # steps reached so far, in the code's order, saved ones included
        self._seq = len(claimed.journal)
        self._state_bytes = sum(len(e.output or "") for e in claimed.journal.values())
        self.suspensions: list[Suspension] = []
        self._halted = False
        # A step suspended the run: no other step starts, but a sleep, wait or invoke
        # reached beside it (one parallel block) suspends with it.
        self._suspending = False
        self._step_names: dict[str, str] = {}  # step id -> the name shown (name_step)
        self.cancel_requested = False
        self.task_cancelled = False
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # The function's task (set by the executor): once it is done, unsaved steps go with the finish.
        self.handler: asyncio.Future[Any] | None = None
        self._unsaved: list[tuple[StepResult, int]] = []  # completed, checkpoint not yet submitted
        self._saving: list[asyncio.Future[Any]] = []  # checkpoints submitted, not yet awaited
        self._flush_scheduled = False
        settings = services.settings
        self.lease = Lease(claimed.run_id, services.worker_id, claimed.epoch if settings.fencing else None)
        self._fence_span = settings.lease * FENCE_AT
        # time.monotonic() past which this worker must not be running the run (fencing off: never).
        self.deadline = claimed.leased_at + self._fence_span if settings.fencing else float("inf")
        self._start_margin = settings.lease * START_MARGIN
        self._renewed = asyncio.Event()  # set at each renewal and at a loss: wakes a step waiting for one
        self.lost: str | None = None  # why the run stopped here without an outcome
        self.handed_back = False  # the worker stops and hands the run back: no step body starts
        self.ending = False  # its last write (finish, suspend, retry) is under way
        self.starting = False  # renewing a lease that came too late to start on (see ``renew_to_start``)
        self.outcome: str | None = None  # how this execution ended, for its span
        self.tracer: Any | None = None  # set with ``segment`` when this execution is traced
        self.segment: Any | None = None  # the span of this execution (``process <function id>``)
        # Steps executing at once beyond the first take concurrency slots of their own (step_slots).
        self._slots = None if not function.config.concurrency else step_slots.StepSlots(
            self._take_slot, self._give_slot, services.freed_slots, self._store.poll_interval
        )

    # --- the lease -----------------------------------------------------------------

    def renewed(self, since: float) -> None:
        """A heartbeat that began at ``since`` extended the lease."""
        if self.lease.epoch is not None:
            self.deadline = max(self.deadline, since + self._fence_span)
            self._renewed.set()

    def lose(self, reason: str, cause: str) -> None:
        """The run is no longer this worker's to execute: no step may start, nothing more is written."""
        if self.lost is None:
            self.lost = reason
            self._halted = True
            self._renewed.set()
            self._services.counters.add(counters.LEASE_LOSSES, self.function_id, cause)

    async def _renew_ahead(self) -> None:
        """Wait until the lease has ``START_MARGIN`` of its length ahead of this worker's
        deadline, asking for a renewal now; returns early when the run is lost meanwhile
        (the fence stops it once the deadline passes without a renewal)."""
        while self.lost is None and time.monotonic() + self._start_margin > self.deadline:
            self._renewed.clear()
            self._request_renewal()
            await self._renewed.wait()

    def renewal_due(self, ahead: float = 0.0) -> bool:
        """Whether over a quarter of the lease (the heartbeat's period) will have passed since
        it was granted or last renewed ``ahead`` seconds from now: a run that joins the worker
        so late asks for a renewal at once, a checkpoint that will commit so late renews it."""
        return time.monotonic() + ahead + self._fence_span - self._services.settings.lease / 4 > self.deadline

    def short_of_lease(self) -> bool:
        """Whether less than ``START_MARGIN`` of the lease is left before this worker's deadline."""
        return time.monotonic() + self._start_margin > self.deadline

    async def renew_to_start(self) -> None:
        """Before any of the function's code runs: a lease whose claim or hand-off committed
        with little of it left (a commit held up by a slow link) is renewed first, not given
        up. Nothing runs meanwhile, so the fence need not stop the run; the renewal checks the
        epoch, so it succeeds only if no other worker leased the run since. Given up after a
        lease without a verdict (the database stalled or unreachable)."""
        if not self.short_of_lease():
            return
        self.starting = True
        try:
            await asyncio.wait_for(self._renew_ahead(), self._services.settings.lease)
        except TimeoutError:
            self.lose(self._services.pulse.not_renewed(self._services.settings.lease), NOT_RENEWED)
        finally:
            self.starting = False

    def _check_lease(self) -> None:
        if self.lost is None and time.monotonic() > self.deadline:
            self.lose(self._services.pulse.not_renewed(self._services.settings.lease), NOT_RENEWED)
        if self.lost is not None:
            raise Halt()

    async def write(self, write: Awaitable[Any]) -> Any:
        """A write of this run from inside its execution: a lost lease, or a database that
        cannot take it, stops the run (``Halt``, which user code cannot swallow)."""
        try:
            return await write
        except LOST as exc:
            self.lose(str(exc), lost_cause(exc))
            raise Halt() from exc

    # --- bookkeeping ---------------------------------------------------------------

    @property
    def replaying(self) -> bool:
        return bool(self._unvisited)

    def _enter(self, step_id: str, *, suspends: bool = False) -> tuple[str, Any]:
        self._check_lease()
        storable(step_id, "step id")
        if self._halted or self.cancel_requested or (self._suspending and not suspends):
            raise Halt()
        n = self._counts.get(step_id, 0)
        self._counts[step_id] = n + 1
        key = step_id if n == 0 else f"{step_id}:{n}"
        self._unvisited.discard(key)
        self._entered += 1
        entry = self._journal.get(key)
        if entry is None and self._entered > self._services.settings.max_steps_per_run:
            self._refuse_step_over_limit(step_id)
        return key, entry

    def _refuse_step_over_limit(self, step_id: str) -> NoReturn:
        # Saved steps replay whatever the limit: only a new step past it is refused, so a run
        # looping over steps ends (failed, not retried) instead of growing its journal, and
        # each replay's reads, without bound.
        limit = self._services.settings.max_steps_per_run
        raise errors.LimitError(f"step {self._name(step_id)!r} would be step {self._entered} of run {self.run_id}{_over_steps(limit)}")

    def check_plan(self, steps: int, step_id: str) -> None:
        # As Inngest refuses a parallel plan past its step limit: none of the plan's steps runs
        # (they may send mail, charge a card) only for the run to fail at the limit's step.
        limit = self._services.settings.max_steps_per_run
        if steps > limit:
            raise errors.LimitError(
                f"the steps planned from {self._name(step_id)!r} on would bring run {self.run_id} to {steps} steps"
                f"{_over_steps(limit)}"
            )

    def name_step(self, step_id: str, name: str) -> None:
        """The name people read for step ``step_id`` (an SDK's hashed id); the id stays its key.
        What the database cannot keep (an SDK lets a NUL through) is shown as U+FFFD."""
        self._step_names[step_id] = readable(name)

    def _name(self, step_id: str) -> str:
        return self._step_names.get(step_id, step_id)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _suspend(self, suspension: Suspension) -> NoReturn:
        self.suspensions.append(suspension)
        self._suspending = True
        raise Suspend()

    def unreached_steps(self) -> list[str]:
        return sorted(self._unvisited)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    # --- checkpoints ---------------------------------------------------------------

    def _save_soon(self, step: StepResult) -> None:
        self._unsaved.append((step, self._next_seq()))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_unless_returned)

    def _flush_unless_returned(self) -> None:
        self._flush_scheduled = False
        if self.handler is not None and self.handler.done():
            return  # the function returned right after: the finish carries these steps
        self._submit()

    def _submit(self) -> None:
        if not self._unsaved:
            return
        since = time.monotonic()
        renew_ms = None
        tracked = self.lease.epoch is not None and self._store.dialect == "postgres"
        ahead = self._services.save_time.seconds
        if tracked and (ahead is None or self.renewal_due(ahead)):
            # On PostgreSQL a saved step extends the lease too, when the heartbeat's renewal is
            # due by the time it commits: the heartbeat passes over the rows the writer holds
            # (SKIP LOCKED), and on a slow link it holds them most of the time (the runs stopped,
            # their leases never renewed, while their steps saved). Earlier in a lease the queue
            # row is left alone: that write per step cost W1 about 8 % of its throughput. Until
            # a checkpoint has committed here, how long one takes is unknown: each renews.
            # SQLite's heartbeat takes its turn in the same writer and is never passed over.
            renew_ms = int(self._services.settings.lease * 1000)
        for step, seq in self._unsaved:
            future = self._store.checkpoint_soon(self.lease, step, seq, renew_ms)
            future.add_done_callback(_observe)
            if tracked:
                future.add_done_callback(functools.partial(self._saved, since, renew_ms is not None))
            self._saving.append(future)
        self._unsaved.clear()

    def _saved(self, since: float, renews: bool, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            self._services.save_time.observe(time.monotonic() - since)
            if renews:
                self.renewed(since)

    async def await_checkpoints(self) -> None:
        """Wait until every completed step of this run is committed; raises ``Halt`` when
        they cannot be (the lease is lost, or the database cannot take them)."""
        self._submit()
        await self.write(self._await_saving())

    async def take_unsaved(self) -> list[tuple[StepResult, int]]:
        """For the finish: wait for submitted checkpoints and hand over the rest, to be
        written in the finish's own transaction."""
        await self.write(self._await_saving())
        unsaved, self._unsaved = self._unsaved, []
        return unsaved

    async def _await_saving(self) -> None:
        saving, self._saving = self._saving, []
        first_error: BaseException | None = None
        for future in saving:
            try:
                if await future:
                    self.cancel_requested = True
            except Exception as exc:  # noqa: BLE001 - every future awaited, the first error raised
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def _step_error(self, step_id: str, error_json: str | None) -> errors.StepError:
        error = jsonutil.loads(error_json) or {}
        return errors.StepError(step_id, error.get("name", "Error"), error.get("message", ""), error.get("stack"))

    # --- RunDriver -----------------------------------------------------------------

    def now(self) -> float:
        return self._store.clock.time()

    def journal(self) -> list[JournalEntry]:
        return list(self._journal.values())

    async def run_step(self, step_id: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return await self.record_step(step_id, "run", functools.partial(self._call, fn, args, kwargs), None)

    async def record_step(
        self,
        step_id: str,
        kind: str,
        compute: Callable[[], Awaitable[Any]],
        meta: Callable[[Any], dict[str, Any]] | None,
        spend: budgets.Spend | None = None,
        *,
        executes: bool = True,
    ) -> Any:
        key, entry = self._enter(step_id)
        attempt = 1
        if entry is not None:
            if entry.status == StepStatus.COMPLETED:
                return jsonutil.loads(entry.output)
            if entry.status == StepStatus.FAILED:
                raise self._step_error(step_id, entry.error)
            attempt = entry.attempts + 1
        self._busy += 1
        self._idle.clear()
        try:
            if self._slots is None or not executes:
                return await self._execute(key, step_id, kind, compute, meta, attempt, spend)
            async with self._slots.hold():  # then the lease is checked again, however long that took
                return await self._execute(key, step_id, kind, compute, meta, attempt, spend)
        finally:
            self._busy -= 1
            if self._busy == 0:
                self._idle.set()

    async def _take_slot(self) -> bool:
        self._check_lease()  # a step waiting for a slot stops with its run, as one about to start does
        if self._halted or self.cancel_requested or self._suspending or self.handed_back:
            raise Halt()
        return bool(await self.write(self._store.take_step_slot(self.lease)))

    async def _give_slot(self) -> None:
        await self._store.give_step_slot(self.lease)

    async def _call(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if inspect.iscoroutinefunction(fn):
            return await fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        call = functools.partial(fn, *args, **kwargs)
        while True:
            # The body's thread sees this context: the step's span and log fields.
            body = loop.run_in_executor(self._services.step_threads, self._start_if_held, contextvars.copy_context(), call)
            try:
                result = await asyncio.shield(body)
            except asyncio.CancelledError:
                # A thread cannot be stopped: the run's task ends only once its step body has,
                # so the run is never handed on (released, or claimed again here) while it runs.
                while not body.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait({body})
                raise
            except _LeaseTooShort:
                if self.handed_back:
                    raise Halt() from None
                await self._renew_ahead()  # then try again, as _execute does before a step
                self._check_lease()
                continue
            if inspect.isawaitable(result):
                result = await result
            return result

    def _start_if_held(self, context: contextvars.Context, call: Callable[[], Any]) -> Any:
        """In the step's thread: the body, unless the run stopped here meanwhile or has too
        little lease left. A body waits for a free thread (behind other runs' bodies, or a
        stall) after ``_execute`` checked the lease: it would otherwise start on a run
        another worker had taken over, or whose step had committed there."""
        if self.lost is not None or self.handed_back or time.monotonic() + self._start_margin > self.deadline:
            raise _LeaseTooShort()
        return context.run(call)

    async def _execute(
        self,
        key: str,
        step_id: str,
        kind: str,
        compute: Callable[[], Awaitable[Any]],
        meta: Callable[[Any], dict[str, Any]] | None,
        attempt: int,
        spend: budgets.Spend | None = None,
    ) -> Any:
        if self._unsaved or self._saving:
            await self.await_checkpoints()  # the previous step's result is durable before this one begins
            if self.cancel_requested:
                raise Halt()
        if time.monotonic() + self._start_margin > self.deadline:
            await self._renew_ahead()  # no step starts just before the lease may run out
        self._check_lease()  # nor after
        started = self._store.now_ms()
        ticket: budget_gate.Ticket | None = None
        span = None if self.tracer is None else self._step_span(key, step_id, attempt)
        current = None if span is None else tracing.attach(span)  # what the body traces hangs under it
        in_step = logs.enter_step(key, attempt)
        try:
            if spend is not None and self.function.config.budgets:
                ticket = await self._reserve(key, step_id, attempt, spend)
            result = await compute()
            if ticket is not None and spend is not None:
                await self.write(ticket.settle(spend.actual(result)))
                ticket = None
            output = jsonutil.dumps_checked(result, what=f"step {self._name(step_id)!r}'s result")
            self._check_output_size(step_id, output)
            meta_json = None if meta is None else jsonutil.dumps(meta(result))
        except (Suspend, Halt, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - user code; classified by the retry policy
            if span is not None:
                tracing.failed(span, exc)
            if ticket is not None and spend is not None:
                await self.write(ticket.settle(spend.billed(exc)))  # what the failed attempt was billed
            return await self._step_failed(key, step_id, kind, exc, attempt, started)
        finally:
            logs.leave_step(in_step)
            if span is not None:
                tracing.detach(current)
                span.end()
        step = StepResult(key, self._name(step_id), kind, StepStatus.COMPLETED, output, None, attempt, started, self._store.now_ms(), meta_json)
        self._save_soon(step)
        self._state_bytes += len(output)
        return jsonutil.loads(output)

    def _step_span(self, key: str, step_id: str, attempt: int) -> Any:
        attributes = {
            tracing.RUN_ID: self.run_id, tracing.FUNCTION_ID: self.function_id, tracing.STEP_KEY: key, tracing.STEP_ATTEMPT: attempt,
        }
        if self.lease.epoch is not None:
            attributes[tracing.LEASE_EPOCH] = self.lease.epoch
        return tracing.start_step(self.tracer, self.segment, self._name(step_id), attributes)

    async def _reserve(self, key: str, step_id: str, attempt: int, spend: budgets.Spend) -> budget_gate.Ticket:
        """Reserve an attempt's worst case on the function's budgets (a write fenced by the
        lease): the ticket to settle once its cost is known. Refused, the step fails
        (``BudgetExceeded``) or the run suspends until the budget has room, as it says."""
        if self._budget_gate is None:
            self._budget_gate = budget_gate.StepGate(self._store, self.run_id, self.function, self._event)
        gate = self._budget_gate
        ticket, hold = await self.write(gate.reserve(self.lease, key, attempt, spend))
        if ticket is not None:
            return ticket  # type: ignore[no-any-return]
        refusal = hold.refusal
        if refusal.on_exceeded == "fail":
            raise budget_gate.exceeded(refusal, spend)
        log.info("run %s step %r pauses: budget %r for key %r has no room", self.run_id, self._name(step_id), refusal.budget_id, refusal.key)
        pause = budget_gate.pause(refusal, gate.checks, spend.worst)
        self._suspend(Suspension("budget", key, step_id, refusal.period_end, started_at=self._store.now_ms(), budget=pause))

    def _check_output_size(self, step_id: str, output: str) -> None:
        limit = self._services.settings.max_step_output_bytes
        if len(output) > limit:
            raise errors.LimitError(
                f"step {self._name(step_id)!r} returned {len(output)} bytes, over the step output limit of {limit} bytes; "
                "store large data elsewhere and return a reference, or raise STEPLINE_MAX_STEP_OUTPUT_BYTES"
            )
        state_limit = self._services.settings.max_run_state_bytes
        if self._state_bytes + len(output) > state_limit:
            raise errors.LimitError(
                f"step {self._name(step_id)!r} would bring the run's saved state to {self._state_bytes + len(output)} bytes, "
                f"over the run state limit of {state_limit} bytes; return smaller results or raise "
                "STEPLINE_MAX_RUN_STATE_BYTES"
            )

    async def _step_failed(self, key: str, step_id: str, kind: str, exc: Exception, attempt: int, started: int) -> Any:
        error = retry.error_dict(exc)
        error_json = jsonutil.dumps(error)
        if retry.is_final(exc) or attempt > self.function.config.retries:
            step = StepResult(key, self._name(step_id), kind, StepStatus.FAILED, None, error_json, attempt, started, self._store.now_ms())
            await self.await_checkpoints()
            if await self.write(self._store.checkpoint(self.lease, step, self._next_seq())):
                self.cancel_requested = True
            # .get: an SDK app's error keeps only what the app sent (no stack for `throw undefined`)
            raise errors.StepError(step_id, error.get("name") or "Error", error.get("message") or "", error.get("stack")) from exc
        delay = retry.delay_for(exc, attempt, self._services.settings, now=self._store.clock.time())
        log.info("run %s step %r attempt %d failed (%s); retrying in %.2fs", self.run_id, self._name(step_id), attempt, exc, delay)
        self._suspend(
            Suspension(
                "retry", key, self._name(step_id), self._store.now_ms() + int(delay * 1000), attempt=attempt, error=error_json,
                started_at=started, step_kind=kind,
            )
        )

    async def sleep_until(self, step_id: str, wake_at: float) -> None:
        key, entry = self._enter(step_id, suspends=True)
        if entry is not None:
            if entry.status == StepStatus.COMPLETED:
                return
            self._suspend(Suspension("sleep", key, self._name(step_id), entry.wake_at))
        now = self._store.now_ms()
        durations.check_suspension(wake_at - now / 1000, field=f"step.sleep {self._name(step_id)!r}")
        wake_ms = int(wake_at * 1000)
        if wake_ms <= now:
            step = StepResult(key, self._name(step_id), "sleep", StepStatus.COMPLETED, "null", None, 1, now, now)
            await self.await_checkpoints()
            await self.write(self._store.checkpoint(self.lease, step, self._next_seq()))
            return
        self._suspend(Suspension("sleep", key, self._name(step_id), wake_ms, started_at=now))

    async def prepare_wait(self, step_id: str, event: str, expression: str | None, timeout: float, name: str | None) -> None:
        """Register the wait ``step_id`` ahead of the run's suspension on it (an SDK app's
        parallel block, where a step beside the wait may cause the event), under the lease."""
        storable(step_id, "step id")
        storable(event, "wait_for_event event name")
        durations.check_suspension(timeout, field=f"wait_for_event {name or step_id!r} timeout")
        await self.write(self._store.prepare_wait(self.lease, step_id, event, expression, int(timeout * 1000), name))

    async def wait_for_event(self, step_id: str, event: str, expression: str | None, timeout: float) -> event_mod.Event | None:
        key, entry = self._enter(step_id, suspends=True)
        if entry is not None:
            if entry.status == StepStatus.COMPLETED:
                body = jsonutil.loads(entry.output)
                return None if body is None else event_mod.Event.from_dict(body)
            self._suspend(Suspension("wait", key, self._name(step_id), entry.wake_at))
        storable(event, "wait_for_event event name")
        now = self._store.now_ms()
        durations.check_suspension(timeout, field=f"wait_for_event {self._name(step_id)!r} timeout")
        self._suspend(
            Suspension("wait", key, self._name(step_id), now + int(timeout * 1000), event_name=event, expression=expression, started_at=now)
        )

    async def invoke(self, step_id: str, function_id: str, data: dict[str, Any], timeout: float | None) -> Any:
        key, entry = self._enter(step_id, suspends=True)
        if entry is not None:
            if entry.status == StepStatus.COMPLETED:
                return jsonutil.loads(entry.output)
            if entry.status == StepStatus.FAILED:
                raise self._step_error(step_id, entry.error)
            self._suspend(Suspension("invoke", key, self._name(step_id), entry.wake_at))
        storable(function_id, "invoke function id")
        now = self._store.now_ms()
        if timeout is not None:
            durations.check_suspension(timeout, field=f"invoke {self._name(step_id)!r} timeout")
        jsonutil.dumps_checked(data, what=f"invoke({step_id!r}) data")
        self._suspend(
            Suspension(
                "invoke",
                key,
                self._name(step_id),
                None if timeout is None else now + int(timeout * 1000),
                invoke_function_id=function_id,
                invoke_data=data,
                started_at=now,
            )
        )

    async def send_events(self, step_id: str, events: list[dict[str, Any]]) -> list[str]:
        key, entry = self._enter(step_id)
        if entry is not None and entry.status == StepStatus.COMPLETED:
            return list(jsonutil.loads(entry.output))
        # The events join this run's trace unless they carry a trace of their own (untraced
        # here: the trace this run's event came with, so the chain goes on past this worker).
        limit = self._services.settings.max_events_per_request
        if len(events) > limit:  # one commit holds the writer: as an HTTP request may carry
            raise errors.LimitError(
                f"step {self._name(step_id)!r} sends {len(events)} events, over the limit of {limit} a step; send "
                "them in several send_event steps, or raise STEPLINE_MAX_EVENTS_PER_REQUEST"
            )
        events = tracing.stamp(events, tracing.current_carrier() if self.tracer is not None else self._event.get("trace"))
        validated = [self._services.validate_event(raw, i) for i, raw in enumerate(events)]
        now = self._store.now_ms()
        step = StepResult(key, self._name(step_id), "send_event", StepStatus.COMPLETED, None, None, 1, now, now)
        await self.await_checkpoints()
        self._check_lease()
        return await self.write(self._store.send_events_step(self.lease, step, self._next_seq(), validated))  # type: ignore[no-any-return]

    async def set_progress(self, percent: float, message: str | None) -> None:
        if message is not None:
            storable(message, "set_progress message")
        if not self.replaying:
            await self.await_checkpoints()  # progress never runs ahead of the saved steps
            await self.write(self._store.set_progress(self.lease, percent, message))

    async def publish(self, topic: str, data: Any) -> None:
        storable(topic, "publish topic")
        if self.replaying:  # stored when first published; a replay must not repeat it on the stream
            return
        message = jsonutil.dumps_checked(data, what="published data")
        limit = self._services.settings.max_message_bytes
        size = len(message) if message.isascii() else len(message.encode())
        if size > limit:  # kept with the run and sent to every stream that reads it
            raise errors.LimitError(
                f"a message published on topic {topic!r} is {size} bytes as JSON, over the limit of {limit} "
                "bytes; publish a smaller one (or a reference to the data), or raise STEPLINE_MAX_MESSAGE_BYTES"
            )
        await self.await_checkpoints()  # a message is never published for a step that may run again
        await self.write(self._store.publish(self.lease, topic, message))
        self._services.on_publish(self.run_id)


def storable(text: str, what: str) -> None:
    """Refuse text the database cannot keep before it reaches a checkpoint: refused there,
    a run's steps would run again at every lease until it was given up."""
    problem = jsonutil.text_problem(text)
    if problem is not None:
        raise errors.ConfigError(f"{what} {text!r} {problem}")


def readable(name: str) -> str:
    """A name only shown (an SDK step's): what the database cannot keep becomes U+FFFD."""
    return str(jsonutil.replace_surrogates(name.replace("\x00", "\ufffd")))


def lost_cause(exc: BaseException) -> str:
    """The cause of a lease loss that a write's error revealed."""
    return TAKEN_OVER if isinstance(exc, errors.LeaseLost) else STORE_ERROR


def _observe(future: asyncio.Future[Any]) -> None:
    """Mark a checkpoint's error as seen: the run may end (cancelled, stopped) without awaiting it."""
    if not future.cancelled():
        future.exception()


class Executor:
    """Runs claimed runs to their next resting point: done, failed, suspended, cancelled,
    or stopped here because this worker lost the run."""

    def __init__(self, services: Services, functions: dict[str, Function]) -> None:
        self._services = services
        self._store = services.store
        self._functions = functions
        self.active: dict[str, tuple[asyncio.Future[Any], RunExecution]] = {}
        # Set when a run wants its lease renewed before its next step: the heartbeat then
        # renews every lease at once rather than at its next tick.
        self.renewal_wanted = asyncio.Event()

    def cancel_local(self, run_id: str) -> bool:
        """Stop a run this worker is executing (its in-flight async step is cancelled)."""
        held = self.active.get(run_id)
        if held is None:
            return False
        task, execution = held
        execution.cancel_requested = True
        self._interrupt(task, execution)
        return True

    def lose(self, run_id: str, reason: str, cause: str) -> None:
        """This worker no longer holds the run (or cannot know it does): stop it at once,
        its in-flight step included, writing nothing more for it. ``cause``: TAKEN_OVER,
        NOT_RENEWED or STORE_ERROR, counted per function for /metrics."""
        held = self.active.get(run_id)
        if held is None or held[1].ending:
            return
        task, execution = held
        if execution.lost is None:
            log.warning("run %s stops on this worker: %s", run_id, reason)
        execution.lose(reason, cause)
        self._interrupt(task, execution)

    def overdue(self) -> list[str]:
        """Runs whose lease may have run out without a renewal committed in time."""
        now = time.monotonic()
        return [
            run_id for run_id, (_, ex) in self.active.items()
            if ex.lost is None and not ex.ending and not ex.starting and now > ex.deadline
        ]

    def leases(self) -> list[Lease]:
        """The leases of the runs this worker is executing, for the heartbeat."""
        return [ex.lease for _, ex in self.active.values() if ex.lost is None]

    @staticmethod
    def _interrupt(task: asyncio.Future[Any], execution: RunExecution) -> None:
        if not execution.task_cancelled:  # a second cancel would interrupt the first one's clean-up
            execution.task_cancelled = True
            task.cancel()

    async def execute(self, claimed: ClaimedRun) -> None:
        function = self._functions[claimed.function_id]
        execution = RunExecution(self._services, claimed, function, self.renewal_wanted.set)
        event = event_mod.Event.from_dict(claimed.event)
        if len(claimed.events) == 1 and claimed.events[0] is claimed.event:
            events = [event]  # the usual run of one event: the same object, parsed once
        else:
            events = [event_mod.Event.from_dict(e) for e in claimed.events]
        # The function's task (and its threads) inherit this context: the run's log fields
        # and, when traced, this execution's span as the current one.
        in_run = logs.enter_run(claimed.run_id, claimed.function_id, execution.attempt)
        traced = self._trace(claimed, execution, function)
        loop = asyncio.get_running_loop()
        task: asyncio.Future[Any]
        try:
            if execution.short_of_lease() and not await self._renew_to_start(execution):
                return
            with contextlib.nullcontext() if execution.segment is None else tracing.current(execution.segment):
                if function.is_async:
                    task = asyncio.ensure_future(function.handler(Context(execution, event, events)))
                else:
                    ctx = SyncContext(execution, event, events, loop)
                    task = loop.run_in_executor(self._services.handler_threads, contextvars.copy_context().run, function.handler, ctx)
            execution.handler = task
            self.active[claimed.run_id] = (task, execution)
            if execution.renewal_due():
                # The heartbeat's next turn may be up to a quarter lease away, and on a slow link
                # a renewal takes a second: a hand-off whose ingest took most of one round trip
                # after another ran out before it was renewed.
                self.renewal_wanted.set()
            try:
                await self._await_outcome(claimed, execution, task)
            except LOST as exc:
                execution.lose(str(exc), lost_cause(exc))
            except Halt:
                pass  # a write for the run's end found it lost (``execution.lost`` says why)
            finally:
                self.active.pop(claimed.run_id, None)
            if execution.lost is not None:
                execution.outcome = "lost"
                await self._abandon(execution)
        except Exception as exc:
            if traced:
                tracing.failed(execution.segment, exc)
            raise
        finally:
            logs.leave_run(in_run)
            if traced:
                tracing.end_segment(execution.segment, execution.outcome or "stopped", failed=execution.outcome == RunStatus.FAILED)

    async def _renew_to_start(self, execution: RunExecution) -> bool:
        """Whether the run may start after renewing a lease it got with too little left;
        if not, it is handed back. Held meanwhile, so the heartbeat renews it."""
        waiting = asyncio.ensure_future(execution.renew_to_start())
        self.active[execution.run_id] = (waiting, execution)  # a loss cancels the wait
        try:
            await waiting
        except asyncio.CancelledError:
            if execution.lost is None:  # the worker is stopping: it hands the lease back
                self.active.pop(execution.run_id, None)
                raise
        if execution.lost is None:
            return True
        self.active.pop(execution.run_id, None)
        execution.outcome = "lost"
        await self._abandon(execution)
        return False

    def _trace(self, claimed: ClaimedRun, execution: RunExecution, function: Function) -> bool:
        """Start this execution's span, when a tracer provider would record it."""
        tracer = tracing.tracer()
        if tracer is None:
            return False
        execution.tracer = tracer
        execution.segment = tracing.start_segment(
            tracer,
            function_id=claimed.function_id,
            run_id=claimed.run_id,
            epoch=execution.lease.epoch,
            attempt=claimed.attempt,
            events=claimed.events or [claimed.event],
            link_only=function.config.debounce is not None,
        )
        return True

    async def _abandon(self, execution: RunExecution) -> None:
        """After a run stopped without an outcome: unless another worker holds it now, hand it
        back to the queue at once (it would otherwise wait for its lease to expire)."""
        log.info("run %s left without an outcome (%s); its in-flight step will run again", execution.run_id, execution.lost)
        with contextlib.suppress(Exception):  # the database may still be unusable: the lease then runs out
            await self._store.release([execution.lease])

    async def _await_outcome(self, claimed: ClaimedRun, execution: RunExecution, task: asyncio.Future[Any]) -> None:
        timeout = None
        if claimed.finish_deadline is not None:
            timeout = max(0.0, (claimed.finish_deadline - self._store.now_ms()) / 1000)
        try:
            result = await asyncio.wait_for(task, timeout) if timeout is not None else await task
        except (Suspend, Halt):
            await self._rest(execution)
            return
        except asyncio.CancelledError:
            if not (execution.cancel_requested or execution.lost):
                raise  # the worker is stopping; it releases the lease
            await self._rest(execution)
            return
        except TimeoutError:
            await execution.await_checkpoints()
            await self._end(execution, RunStatus.CANCELLED, None, jsonutil.dumps(FINISH_TIMEOUT))
            return
        except Exception as exc:  # noqa: BLE001 - the function raised; classify it
            await self._function_failed(claimed, execution, exc)
            return
        steps = await execution.take_unsaved()
        try:
            output = jsonutil.dumps_checked(result, what=f"function {claimed.function_id!r}'s return value")
            self._check_return_size(claimed.function_id, output)
        except (errors.NonRetriableError, errors.LimitError) as exc:
            error_json = jsonutil.dumps(retry.error_dict(exc))
            await self._end(execution, RunStatus.FAILED, None, error_json, steps)
            return
        if execution.unreached_steps():
            log.warning(
                "run %s completed without reaching saved steps %s: the function's code changed since they ran",
                claimed.run_id,
                execution.unreached_steps(),
            )
        await self._end(execution, RunStatus.COMPLETED, output, None, steps)

    def _check_return_size(self, function_id: str, output: str) -> None:
        """A return value meets the step output limit: stored as the run's output, it is read
        with the run (the API, the dashboard, the invoker's step, function.finished)."""
        limit = self._services.settings.max_step_output_bytes
        if len(output) > limit:
            raise errors.LimitError(
                f"function {function_id!r} returned {len(output)} bytes, over the output limit of {limit} bytes "
                "that steps and return values share; store large data elsewhere and return a reference, or raise "
                "STEPLINE_MAX_STEP_OUTPUT_BYTES"
            )

    async def _rest(self, execution: RunExecution) -> None:
        """The function stopped short of an outcome (suspended, halted, cancelled): save what
        it reached and record why it stopped, unless the run is no longer this worker's."""
        await execution.wait_idle()
        if execution.lost is None:
            with contextlib.suppress(Halt):  # a lost lease found here: nothing more is written
                await execution.await_checkpoints()
        if execution.lost is not None:
            return
        if execution.cancel_requested:
            error = {"name": "Cancelled", "message": "the run was cancelled"}
            await self._end(execution, RunStatus.CANCELLED, None, jsonutil.dumps(error))
        elif execution.suspensions:
            execution.ending = True
            await self._store.suspend(execution.lease, execution.suspensions, execution._seq + 1)  # the next number: the last went to its last step
            execution.outcome = "suspended"
            for suspension in execution.suspensions:
                if suspension.kind == "retry":
                    self._services.counters.add(counters.RETRIES, execution.function_id, "step")

    async def _end(
        self, execution: RunExecution, status: str, output: str | None, error: str | None,
        steps: list[tuple[StepResult, int]] | None = None,
    ) -> None:
        execution.ending = True
        await self._store.finish_run(execution.lease, status, output, error, steps or ())
        execution.outcome = status

    async def _function_failed(self, claimed: ClaimedRun, execution: RunExecution, exc: Exception) -> None:
        await execution.wait_idle()
        with contextlib.suppress(Halt):
            await execution.await_checkpoints()
        if execution.lost is not None:
            return
        error_json = jsonutil.dumps(retry.error_dict(exc))
        attempt = claimed.attempt + 1
        config = execution.function.config
        if execution.function.runs_once:
            # on_failure runs once per failed run, whatever its own outcome: never retried as a whole.
            log.error("on_failure handler %s failed (it is not retried): %s", config.id, exc)
            await self._end(execution, RunStatus.FAILED, None, error_json)
            return
        if retry.is_final(exc) or attempt > config.retries:
            await self._end(execution, RunStatus.FAILED, None, error_json)
            return
        delay = retry.delay_for(exc, attempt, self._services.settings, now=self._store.clock.time())
        execution.ending = True
        await self._store.retry_run(execution.lease, attempt, self._store.now_ms() + int(delay * 1000), error_json)
        execution.outcome = "retrying"
        self._services.counters.add(counters.RETRIES, execution.function_id, "function")
