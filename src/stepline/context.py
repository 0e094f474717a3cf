"""What a function sees: ``ctx.event``, ``ctx.step``, progress, a replay-aware logger.

The step API here is a thin, validated shell over a ``RunDriver`` that the engine
hands in; the SDK never reaches a database itself. Sync handlers get the same API
through ``SyncStep``, which bridges each call to the event loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, Protocol

from stepline import durations, errors, expressions
from stepline.budgets import Spend
from stepline.event import Event


class RunDriver(Protocol):
    """The engine's side of a run, as the step API needs it."""

    run_id: str
    function_id: str
    attempt: int

    @property
    def replaying(self) -> bool: ...

    def now(self) -> float:
        """Seconds since the epoch on the engine's clock, which sleeps and timeouts are measured on."""
        ...

    async def run_step(self, step_id: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any: ...

    async def sleep_until(self, step_id: str, wake_at: float) -> None: ...

    async def wait_for_event(self, step_id: str, event: str, expression: str | None, timeout: float) -> Event | None: ...

    async def prepare_wait(self, step_id: str, event: str, expression: str | None, timeout: float, name: str | None) -> None:
        """Register a wait before the run suspends on it, so an event that comes meanwhile
        (caused by a step beside it) still matches."""
        ...

    async def invoke(self, step_id: str, function_id: str, data: dict[str, Any], timeout: float | None) -> Any: ...

    async def send_events(self, step_id: str, events: list[dict[str, Any]]) -> list[str]: ...

    async def record_step(
        self,
        step_id: str,
        kind: str,
        compute: Callable[[], Awaitable[Any]],
        meta: Callable[[Any], dict[str, Any]] | None,
        spend: Spend | None = None,
        *,
        executes: bool = True,
    ) -> Any:
        """Run ``compute`` once per attempt and save its result. ``spend``: what an attempt may
        cost, reserved on the function's budgets before it starts and settled after.
        ``executes=False``: ``compute`` only hands over an outcome known already (an SDK app's
        step it ran itself), so it takes no concurrency slot."""
        ...

    async def set_progress(self, percent: float, message: str | None) -> None: ...

    async def publish(self, topic: str, data: Any) -> None: ...

    def name_step(self, step_id: str, name: str) -> None:
        """The name people read for step ``step_id`` when it is not the id itself (an SDK
        app's steps are keyed by hashed ids)."""
        ...

    def journal(self) -> Sequence[Any]:
        """The run's saved steps as its execution began, in the order they were recorded
        (each with ``key``, ``kind``, ``status``, ``output``, ``error``, ``attempts``)."""
        ...

    def check_plan(self, steps: int, step_id: str) -> None:
        """Raise ``LimitError`` if a plan (an SDK app's parallel steps, from ``step_id`` on)
        would bring the run to ``steps`` steps, past the limit: refused before any of them runs."""
        ...


def _function_id(function: Any) -> str:
    if isinstance(function, str):
        return function
    config = getattr(function, "config", None)
    if config is not None and isinstance(getattr(config, "id", None), str):
        return str(config.id)
    raise errors.ConfigError(f"invoke: function= takes a declared function or its id, got {function!r}")


def _step_id(step_id: Any) -> str:
    if not isinstance(step_id, str) or not step_id:
        raise errors.ConfigError(f"step id must be a non-empty string, got {step_id!r}")
    return step_id


class Step:
    """Checkpointed steps. Each result is saved before the next step starts."""

    # Step families added by other packages (``stepline.llm`` adds ``ai``).
    extensions: ClassVar[dict[str, Callable[[Step], Any]]] = {}

    def __init__(self, driver: RunDriver) -> None:
        self._driver = driver

    def __getattr__(self, name: str) -> Any:
        factory = Step.extensions.get(name)
        if factory is None:
            raise AttributeError(f"ctx.step has no {name!r}")
        value = factory(self)
        setattr(self, name, value)
        return value

    @property
    def driver(self) -> RunDriver:
        return self._driver

    async def run(self, step_id: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once; on replay return its saved result.

        ``fn`` may be sync (it runs in a thread) or async. Its result must be JSON data.
        """
        if not callable(fn):
            raise errors.ConfigError(f"step.run({step_id!r}): fn must be callable, got {fn!r}")
        return await self._driver.run_step(_step_id(step_id), fn, args, kwargs)

    async def sleep(self, step_id: str, duration: durations.Duration) -> None:
        """Suspend the run for ``duration``; the worker's slot is freed meanwhile."""
        seconds = durations.parse(duration, field=f"step.sleep({step_id!r})")
        await self._driver.sleep_until(_step_id(step_id), self._driver.now() + seconds)

    async def sleep_until(self, step_id: str, until: dt.datetime) -> None:
        """Suspend the run until ``until`` (an aware datetime)."""
        if not isinstance(until, dt.datetime) or until.tzinfo is None:
            raise errors.ConfigError(
                f"step.sleep_until({step_id!r}): expected a timezone-aware datetime, got {until!r}"
            )
        await self._driver.sleep_until(_step_id(step_id), until.timestamp())

    async def wait_for_event(
        self,
        step_id: str,
        *,
        event: str,
        timeout: durations.Duration,
        if_: str | None = None,
        match: str | None = None,
    ) -> Event | None:
        """Wait for ``event`` (filtered by ``match`` field or CEL ``if_``); None on timeout."""
        if match is not None and if_ is not None:
            raise errors.ConfigError(f"wait_for_event({step_id!r}): give match= or if_=, not both")
        expression = expressions.match_to_expression(match) if match is not None else if_
        if expression is not None:
            expressions.check(expression, field=f"wait_for_event({step_id!r})")
        seconds = durations.parse(timeout, field=f"wait_for_event({step_id!r}).timeout")
        return await self._driver.wait_for_event(_step_id(step_id), event, expression, seconds)

    async def invoke(
        self,
        step_id: str,
        *,
        function: Any,
        data: dict[str, Any] | None = None,
        timeout: durations.Duration | None = None,
    ) -> Any:
        """Start a run of ``function`` with ``data`` and return its output (StepError if it fails)."""
        seconds = None if timeout is None else durations.parse(timeout, field=f"invoke({step_id!r}).timeout")
        return await self._driver.invoke(_step_id(step_id), _function_id(function), dict(data or {}), seconds)

    async def send_event(self, step_id: str, events: dict[str, Any] | Event | Sequence[dict[str, Any] | Event]) -> list[str]:
        """Send events once (not again on replay); returns their ids."""
        items = [events] if isinstance(events, (dict, Event)) else list(events)
        payload = [e.to_dict() if isinstance(e, Event) else dict(e) for e in items]
        return await self._driver.send_events(_step_id(step_id), payload)


class SyncStep:
    """The step API for ``def`` handlers: each call runs on the engine's loop and blocks."""

    def __init__(self, step: Step, loop: asyncio.AbstractEventLoop) -> None:
        self._step = step
        self._loop = loop

    def _call(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._step, name)

    def run(self, step_id: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._call(self._step.run(step_id, fn, *args, **kwargs))

    def sleep(self, step_id: str, duration: durations.Duration) -> None:
        self._call(self._step.sleep(step_id, duration))

    def sleep_until(self, step_id: str, until: dt.datetime) -> None:
        self._call(self._step.sleep_until(step_id, until))

    def wait_for_event(self, step_id: str, **kwargs: Any) -> Event | None:
        return self._call(self._step.wait_for_event(step_id, **kwargs))  # type: ignore[no-any-return]

    def invoke(self, step_id: str, **kwargs: Any) -> Any:
        return self._call(self._step.invoke(step_id, **kwargs))

    def send_event(self, step_id: str, events: Any) -> list[str]:
        return self._call(self._step.send_event(step_id, events))  # type: ignore[no-any-return]


class ReplayAwareLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Drops records while the run replays memoized steps, so lines are not repeated."""

    def __init__(self, logger: logging.Logger, driver: RunDriver) -> None:
        super().__init__(logger, {"run_id": driver.run_id, "function_id": driver.function_id})
        self._driver = driver

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if not self._driver.replaying:
            super().log(level, msg, *args, **kwargs)

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self._driver.function_id} {self._driver.run_id}] {msg}", kwargs


FUNCTION_LOG = logging.getLogger("stepline.function")  # looked up once: getLogger takes a lock
# A progress message is read with every run a listing shows and sent on every stream of the run:
# one built from an event's data is cut to this many characters (the last one an ellipsis).
MAX_PROGRESS_MESSAGE = 1000


class Context:
    """A run's view of itself, handed to ``async def`` handlers."""

    def __init__(self, driver: RunDriver, event: Event, events: list[Event]) -> None:
        self._driver = driver
        self.event = event
        self.events = events
        self.run_id = driver.run_id
        self.function_id = driver.function_id
        self.attempt = driver.attempt
        self.step = Step(driver)
        self.logger = ReplayAwareLogger(FUNCTION_LOG, driver)

    async def set_progress(self, percent: float, message: str | None = None) -> None:
        """Record progress (0-100) and a message; read by the job-status API."""
        if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent <= 100:
            raise errors.ConfigError(f"set_progress: percent must be a number 0..100, got {percent!r}")
        if message is not None and not isinstance(message, str):
            raise errors.ConfigError(
                f"set_progress: message must be text or None, got {type(message).__name__}; pass str(...) to show a value"
            )
        if message is not None and len(message) > MAX_PROGRESS_MESSAGE:
            message = message[: MAX_PROGRESS_MESSAGE - 1] + "…"
        await self._driver.set_progress(float(percent), message)

    async def publish(self, data: Any, *, topic: str = "default") -> None:
        """Send a message to the run's live stream (not checkpointed)."""
        await self._driver.publish(topic, data)


class SyncContext(Context):
    """The context for ``def`` handlers: the same API, blocking."""

    def __init__(self, driver: RunDriver, event: Event, events: list[Event], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(driver, event, events)
        self._loop = loop
        self.step = SyncStep(Step(driver), loop)  # type: ignore[assignment]

    def set_progress(self, percent: float, message: str | None = None) -> None:  # type: ignore[override]
        asyncio.run_coroutine_threadsafe(Context.set_progress(self, percent, message), self._loop).result()

    def publish(self, data: Any, *, topic: str = "default") -> None:  # type: ignore[override]
        asyncio.run_coroutine_threadsafe(Context.publish(self, data, topic=topic), self._loop).result()
