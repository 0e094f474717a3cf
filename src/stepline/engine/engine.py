"""``Engine``: the operations every entry point shares (send, read, cancel, replay),
and the worker for the apps this process serves."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from stepline import errors, ids
from stepline import event as event_mod
from stepline.app import App
from stepline.budgets import Charge, Spend
from stepline.engine import budget_gate, cron, retention
from stepline.engine.executor import Services
from stepline.engine.worker import Worker, new_worker_id
from stepline.function import Function, TriggerCron
from stepline.settings import Settings
from stepline.store import RunView, Store, records

log = logging.getLogger("stepline.engine")


class Engine:
    """One per process. Apps given to it are registered and executed by its worker."""

    def __init__(self, store: Store, settings: Settings | None = None, apps: Sequence[App] = ()) -> None:
        self.store = store
        self.settings = settings or Settings()
        self._limits = event_mod.Limits.of(self.settings)  # what one event may hold, from these settings
        self.apps = list(apps)
        self.worker: Worker | None = None
        self.retention = retention.Sweeper(store, self.settings)  # deletes what retention keeps no longer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[concurrent.futures.ThreadPoolExecutor] = []
        self._publish_listeners: list[Callable[[str], None]] = []
        self._function_sources: list[Callable[[], dict[str, Function]]] = []

    # --- lifecycle -------------------------------------------------------------------

    @property
    def functions(self) -> dict[str, Function]:
        out: dict[str, Function] = {}
        for app in self.apps:
            for fn in app.functions:
                if fn.id in out:
                    raise errors.ConfigError(f"function id {fn.id!r} is declared by two apps; ids must be unique")
                out[fn.id] = fn
        return out

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise errors.SteplineError("the engine is not started")
        return self._loop

    async def start(self, *, run_worker: bool = True, concurrency: int | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await self.store.start()
        self.retention.start()
        functions = self.functions
        if functions:
            await self.register(list(functions.values()))
        for app in self.apps:
            app.attach(self)
        if run_worker and (functions or self._function_sources):
            settings = self.settings
            step_threads = concurrent.futures.ThreadPoolExecutor(settings.sync_threads, thread_name_prefix="stepline-step")
            handler_threads = concurrent.futures.ThreadPoolExecutor(settings.sync_threads, thread_name_prefix="stepline-fn")
            self._threads = [step_threads, handler_threads]
            services = Services(
                store=self.store,
                settings=settings,
                worker_id=new_worker_id(),
                step_threads=step_threads,
                handler_threads=handler_threads,
                validate_event=self._validate,
                on_publish=self._published,
            )
            self.worker = Worker(services, self.served_functions(), concurrency=concurrency or settings.concurrency)
            await self.worker.start()

    async def stop(self, grace: float = 10.0) -> None:
        await self.retention.stop()
        if self.worker is not None:
            await self.worker.stop(grace)
            self.worker = None
        for app in self.apps:
            app.attach(None)
        for pool in self._threads:
            pool.shutdown(wait=False, cancel_futures=True)
        await self.store.close()

    # --- functions defined outside this process's apps (e.g. SDK apps in the store) ---

    def add_function_source(self, source: Callable[[], dict[str, Function]]) -> None:
        """Also serve the functions ``source()`` returns; call ``refresh_functions`` when they change."""
        self._function_sources.append(source)
        self.refresh_functions()

    def served_functions(self) -> dict[str, Function]:
        """The functions this process's worker executes: its apps' and its sources'."""
        out = dict(self.functions)
        for source in self._function_sources:
            for function_id, function in source().items():
                out.setdefault(function_id, function)
        return out

    def refresh_functions(self) -> None:
        if self.worker is not None:
            self.worker.set_functions(self.served_functions())

    async def register(self, functions: list[Function]) -> None:
        now = self.store.now_ms()
        cron_next = {
            (fn.id, pos): cron.next_tick_ms(t.cron, t.timezone, now)
            for fn in functions
            for pos, t in enumerate(fn.config.triggers)
            if isinstance(t, TriggerCron)
        }
        await self.store.register_functions([fn.config.to_dict() for fn in functions], cron_next)

    # --- events ----------------------------------------------------------------------

    def _validate(self, raw: Any, index: int) -> event_mod.Event:
        return event_mod.validate(raw, index=index, limits=self._limits)

    def validate_events(self, raw: Sequence[Any]) -> list[event_mod.Event]:
        """All or nothing: one bad event rejects the request before anything is stored."""
        return [self._validate(item, i) for i, item in enumerate(raw)]

    async def send_many(self, events: Sequence[dict[str, Any] | event_mod.Event]) -> list[str]:
        """Store events and start the runs they trigger; returns ids once committed."""
        return await self.send_validated(self.validate_events(list(events)))

    async def send_validated(self, validated: list[event_mod.Event]) -> list[str]:
        """``send_many`` of events that ``validate_events`` returned (the server validates large
        bodies on a thread)."""
        if not validated:
            return []
        worker = self.worker
        offer = worker.offer(len(validated)) if worker is not None else None
        if worker is None or offer is None:
            return await self.store.ingest(validated)
        committed = False
        try:
            ids = await self.store.ingest(validated, offer)
            committed = True
            return ids
        finally:
            worker.adopt(offer, committed)

    async def send(self, event: dict[str, Any] | event_mod.Event) -> str:
        return (await self.send_many([event]))[0]

    async def call_within_budgets(
        self, app: App, event: Mapping[str, Any], spend: Spend, call: Callable[[], Awaitable[dict[str, Any]]], ttl_s: float
    ) -> dict[str, Any]:
        """A model call outside any run, under ``app``'s budgets for ``event`` (see ``App.call_within_budgets``)."""
        return await budget_gate.DirectGate(self.store, app).call(event, spend, call, ttl_s)

    async def reserve_direct_call(self, event: Mapping[str, Any], spend: Spend, ttl_s: float) -> budget_gate.Ticket:
        """Reserve a model call that a client makes outside any run (a web process's
        ``Router`` with an ``AsyncClient``) under the budgets a run of ``event`` would meet,
        as the registered functions' stored configs declare them; held ``ttl_s`` at most
        unless settled. Raises ``BudgetExceeded`` when a budget has no room."""
        checks = await budget_gate.stored_checks(self.store, event)
        return await budget_gate.reserve_direct(self.store, checks, spend, event_mod.user_id_of(event), ttl_s)

    async def budgets_apply(self, event: Mapping[str, Any]) -> bool:
        """Whether any budget applies to a model call made for ``event`` outside any run."""
        return bool(await budget_gate.stored_checks(self.store, event))

    async def settle_direct_call(
        self, call_id: str, rows: Sequence[tuple[str, str, int]], actual: Charge, user_id: str | None,
        usage: Mapping[str, Any] | None,
    ) -> None:
        """Settle a client's direct call (``reserve_direct_call``) to what it cost, and file
        its ``usage`` in ``llm_usage`` with the user (a failed call: ``usage`` None)."""
        ticket = budget_gate.Ticket(self.store, call_id, budget_gate.DIRECT_FUNCTION, 1, None, None, tuple(rows))
        await budget_gate.settle_direct(ticket, actual, user_id, usage)

    async def set_budget_limit(
        self, budget_id: str, key: str, limit_usd: float | None, limit_tokens: int | None
    ) -> records.BudgetKeyState:
        """Override one budget key's limits (both None: the declared ones again); the runs
        paused on it are made due at once, each reserving again."""
        return await self.store.set_budget_limit(budget_id, key, limit_usd, limit_tokens)

    # --- runs ------------------------------------------------------------------------

    async def cancel(self, run_id: str, reason: str = "cancelled by request") -> str:
        status = await self.store.cancel_run(run_id, reason)
        if status == "cancelling" and self.worker is not None:
            self.worker.executor.cancel_local(run_id)
        return status

    async def replay(self, run_id: str) -> str:
        return await self.store.replay_run(run_id)

    async def get_run(self, run_id: str) -> RunView:
        return await self.store.get_run(run_id)

    async def list_runs(self, **filters: Any) -> list[RunView]:
        return await self.store.list_runs(**filters)

    # --- live messages ---------------------------------------------------------------

    def add_publish_listener(self, callback: Callable[[str], None]) -> None:
        self._publish_listeners.append(callback)

    def _published(self, run_id: str) -> None:
        for callback in list(self._publish_listeners):
            callback(run_id)

    def published(self, run_id: str) -> None:
        """A message for ``run_id`` was stored from outside a worker (an SDK app's realtime
        publish): wake this process's streams of that run."""
        self._published(run_id)

    # --- server operations (the HTTP API and dashboard) ---------------------------------

    async def rerun_from_failed_step(self, run_id: str) -> records.Rerun:
        """A new run that reuses the committed steps of a failed or cancelled run."""
        return await self.store.rerun_from_failed_step(run_id)

    async def bulk_cancel(
        self,
        function_id: str,
        *,
        since_ms: int | None = None,
        until_ms: int | None = None,
        reason: str = "cancelled in bulk",
        limit: int = 1000,
    ) -> list[dict[str, str]]:
        """Cancel the unfinished runs of one function created in [since, until)."""
        results = await self.store.bulk_cancel(function_id, since_ms, until_ms, reason, limit)
        self._stop_held_here(results)
        return results

    async def create_cancellation(
        self,
        app_id: str,
        function_id: str,
        *,
        started_after: int | None,
        started_before: int,
        expression: str | None,
        limit: int = 10_000,
    ) -> tuple[dict[str, Any], list[dict[str, str]]]:
        """A bulk cancel of Inngest's REST API (``POST /v1/cancellations``): the runs of an
        app's function started in [after, before) whose event meets ``expression``, cancelled
        now, and the cancellation kept on record. Returns the record and the runs."""
        record, results = await self.store.create_cancellation(
            cancellation_id=ids.new_id(), app_id=app_id, function_id=function_id, started_after=started_after,
            started_before=started_before, expression=expression, limit=limit,
        )
        self._stop_held_here(results)
        return record, results

    def _stop_held_here(self, results: list[dict[str, str]]) -> None:
        """Runs a worker holds stop at their next step boundary; this process's at once."""
        if self.worker is not None:
            for item in results:
                if item["status"] == "cancelling":
                    self.worker.executor.cancel_local(item["id"])

    # --- functions (the dashboard's function page, `stepline functions`) ------------------

    async def pause_function(self, function_id: str, mode: str = "queue", reason: str | None = None) -> records.PauseResult:
        """Pause a function on every process: ``queue`` holds its runs (new ones, and those
        that come due: a sleep's end, a retry) until it resumes; ``skip`` also starts no
        runs for its events and cron ticks. A run executing now goes on until it suspends."""
        return await self.store.pause_function(function_id, mode, reason)

    async def resume_function(self, function_id: str) -> records.ResumeResult:
        """Resume a paused function; the runs its pause held start in the order they came."""
        return await self.store.resume_function(function_id)

    async def invoke_function(self, function_id: str, data: dict[str, Any]) -> records.InvokeResult:
        """Start a run of one function now with ``data`` (a test from the dashboard), whatever
        its triggers; its flow control and a pause apply, as to an event's run (``skipped``
        says why none started)."""
        return await self.store.invoke_function(function_id, data)

    async def bulk_replay(
        self, function_id: str, *, since_ms: int | None = None, until_ms: int | None = None, limit: int = 1000
    ) -> records.BulkReplay:
        """Replay each run of one function that failed in [since, until) and has no replay yet."""
        return await self.store.bulk_replay(function_id, since_ms, until_ms, limit)

    def remove_publish_listener(self, callback: Callable[[str], None]) -> None:
        if callback in self._publish_listeners:
            self._publish_listeners.remove(callback)
