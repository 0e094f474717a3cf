"""``stepline.App``: declare functions; send events once the app is running."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from stepline import durations, errors
from stepline import event as events_mod
from stepline import function as fn
from stepline.budgets import Spend
from stepline.event import Event
from stepline.observability import tracing


class Runtime(Protocol):
    """What a running engine offers an app (handed over by the worker or ``stepline dev``)."""

    async def send_many(self, events: Sequence[dict[str, Any] | Event]) -> list[str]: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    async def call_within_budgets(
        self, app: App, event: Mapping[str, Any], spend: Spend, call: Callable[[], Awaitable[dict[str, Any]]], ttl_s: float
    ) -> dict[str, Any]: ...


class App:
    """A named set of functions. Declaring functions never touches a database."""

    def __init__(self, id: str, *, budgets: fn.Budget | Sequence[fn.Budget] | None = None) -> None:
        """``budgets``: cost budgets for every function of the app (app-scoped unless they say otherwise)."""
        if not isinstance(id, str) or not id.strip():
            raise errors.ConfigError(f"App id: expected a non-empty string, got {id!r}")
        self.id = id
        self.budgets: tuple[fn.Budget, ...] = () if budgets is None else fn.one_or_many(budgets, fn.Budget, f"App {id!r}: budgets")
        self._functions: dict[str, fn.Function] = {}
        self._runtime: Runtime | None = None

    @property
    def functions(self) -> list[fn.Function]:
        return list(self._functions.values())

    def function(
        self,
        *,
        id: str,
        trigger: fn.Trigger | Sequence[fn.Trigger],
        name: str | None = None,
        retries: int = 4,
        cancel_on: fn.CancelOn | Sequence[fn.CancelOn] | None = None,
        idempotency: str | None = None,
        timeouts: fn.Timeouts | None = None,
        concurrency: fn.Concurrency | Sequence[fn.Concurrency] | None = None,
        throttle: fn.Throttle | None = None,
        rate_limit: fn.RateLimit | None = None,
        debounce: fn.Debounce | None = None,
        priority: fn.Priority | None = None,
        batch_events: fn.Batch | None = None,
        retention: durations.Duration | None = None,
        singleton: fn.Singleton | None = None,
        budgets: fn.Budget | Sequence[fn.Budget] | None = None,
        on_failure: fn.Handler | None = None,
    ) -> Callable[[fn.Handler], fn.Function]:
        """Declare a function; every option is checked now, so a typo fails at import."""
        config = fn.build_config(
            app_id=self.id,
            id=id,
            name=name,
            trigger=trigger,
            retries=retries,
            cancel_on=cancel_on,
            idempotency=idempotency,
            timeouts=timeouts,
            concurrency=concurrency,
            throttle=throttle,
            rate_limit=rate_limit,
            debounce=debounce,
            priority=priority,
            retention=retention,
            batch_events=batch_events,
            singleton=singleton,
            budgets=budgets,
            app_budgets=self.budgets,
        )
        if id in self._functions:
            raise errors.ConfigError(f"App {self.id!r}: function id {id!r} is declared twice")
        if on_failure is not None and not callable(on_failure):
            raise errors.ConfigError(f"{id}: on_failure: expected a function, got {on_failure!r}")

        def decorate(handler: fn.Handler) -> fn.Function:
            if not callable(handler):
                raise errors.ConfigError(f"{id}: the decorated object is not callable")
            declared = fn.Function(config=config, handler=handler)
            self._functions[id] = declared
            if on_failure is not None:
                self._add_failure_handler(config, on_failure)
            return declared

        return decorate

    def _add_failure_handler(self, config: fn.FunctionConfig, handler: fn.Handler) -> None:
        failure_id = f"{config.id}-failure"
        failure_config = fn.build_config(
            app_id=self.id,
            id=failure_id,
            name=f"{config.name} (on failure)",
            trigger=fn.TriggerEvent(
                events_mod.FUNCTION_FAILED, if_=f"event.data.function_id == {_cel_string(config.id)}"
            ),
            retries=config.retries,
            retention=config.retention,
            cancel_on=None,
            idempotency=None,
            timeouts=None,
            concurrency=None,
            throttle=None,
            rate_limit=None,
            debounce=None,
            priority=None,
            batch_events=None,
            singleton=None,
            failure_handler_for=config.id,
            app_budgets=self.budgets,
        )
        self._functions[failure_id] = fn.Function(config=failure_config, handler=handler, runs_once=True)

    # --- running -------------------------------------------------------------------

    def attach(self, runtime: Runtime | None) -> None:
        """Called by the engine when it starts serving this app (None when it stops)."""
        self._runtime = runtime

    def _require_runtime(self) -> Runtime:
        if self._runtime is None:
            raise errors.SteplineError(
                f"App {self.id!r} is not running, so it cannot send events in-process; start it "
                "with `stepline dev module:app` or a worker, or send over HTTP with stepline.Client"
            )
        return self._runtime

    async def send(self, events: dict[str, Any] | Event | Sequence[dict[str, Any] | Event]) -> list[str]:
        """Send one event or a list; returns the ids once they are durably stored. Sent
        inside a traced request (OpenTelemetry), each event without a ``trace`` of its own
        carries that request's trace context, so the runs it starts join its trace."""
        items = [events] if isinstance(events, (dict, Event)) else list(events)
        return await self._require_runtime().send_many(tracing.stamp(items, tracing.current_carrier()))

    async def call_within_budgets(
        self, event: Mapping[str, Any], spend: Spend, call: Callable[[], Awaitable[dict[str, Any]]], ttl_s: float = 900.0
    ) -> dict[str, Any]:
        """Make a model call outside any run (``Router``'s quick path) under the budgets a run
        of ``event`` would meet (the app's, and those of the functions ``event`` triggers):
        its worst case is reserved, its cost settled and filed in ``llm_usage`` with the
        user. Raises ``BudgetExceeded`` when a budget has no room; ``ttl_s``: how long the
        reservation holds if this process dies before settling it."""
        return await self._require_runtime().call_within_budgets(self, event, spend, call, ttl_s)


def _cel_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
