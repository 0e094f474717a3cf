"""Step mocks: ``ctx.step.run``, ``ctx.step.ai.infer`` and ``ctx.step.invoke`` answered by the test.

A mocked step is still a real step: the engine journals its result (or failure),
counts its attempts, retries it with backoff and replays it after a sleep, exactly
as it would the real body. Only the body is replaced: the function's own callable,
the model call, or the invoked run.

The test engine serves each function with a handler that swaps ``ctx.step`` for a
``MockingStep`` (the same step API, over the same run) before calling the declared
handler; nothing else in the engine changes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from stepline import durations, errors
from stepline.context import Context, RunDriver, Step, SyncContext, SyncStep
from stepline.function import Function
from stepline.llm.step import usage_meta
from stepline.llm.types import Completion, Usage

UNSET: Any = object()  # return_value not given (None is a result)


@dataclasses.dataclass(frozen=True)
class MockCall:
    """One call of a mocked step body: what the function passed to the step."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class StepMock:
    """What a mocked step does, and the calls it got (one per attempt; none on replay).

    Give one of ``return_value`` (the step's result), ``raises`` (an exception
    instance or class the body raises: retried with backoff unless it is a
    ``NonRetriableError``), or ``side_effect``: a callable given the step's
    arguments (its return value is the result; what it raises, the failure), or a
    list of outcomes, one per call, each a value or an exception to raise.

    The arguments are the step body's for ``step.run``; ``model=``, ``messages=`` and
    the other keywords for ``step.ai.infer``; ``function=`` (the id) and ``data=``
    for ``step.invoke``.
    """

    def __init__(self, step_id: str, *, return_value: Any = UNSET, raises: BaseException | type[BaseException] | None = None,
                 side_effect: Callable[..., Any] | Iterable[Any] | None = None) -> None:
        given = [name for name, value, unset in (("return_value", return_value, UNSET), ("raises", raises, None),
                                                  ("side_effect", side_effect, None)) if value is not unset]
        if len(given) > 1:
            raise errors.ConfigError(f"mock_step({step_id!r}): give one of return_value=, raises= or side_effect=, not {' and '.join(given)}")
        if raises is not None and not _is_exception(raises):
            raise errors.ConfigError(f"mock_step({step_id!r}): raises= takes an exception or exception class, got {raises!r}")
        if side_effect is not None and not callable(side_effect) and not isinstance(side_effect, Iterable):
            raise errors.ConfigError(f"mock_step({step_id!r}): side_effect= takes a callable or a list of outcomes, got {side_effect!r}")
        self.step_id = step_id
        self._return_value = None if return_value is UNSET else return_value
        self._raises = raises
        self._callable = side_effect if callable(side_effect) else None
        self._outcomes: Iterator[Any] | None = None if side_effect is None or callable(side_effect) else iter(list(side_effect))
        self.calls: list[MockCall] = []

    @property
    def call_count(self) -> int:
        return len(self.calls)

    async def call(self, *args: Any, **kwargs: Any) -> Any:
        """The step body: records the call, then answers as configured."""
        self.calls.append(MockCall(args, kwargs))
        if self._callable is not None:
            result = self._callable(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result
        if self._outcomes is not None:
            try:
                outcome = next(self._outcomes)
            except StopIteration:
                raise errors.ConfigError(
                    f"mock_step({self.step_id!r}): called {self.call_count} times, but side_effect lists {self.call_count - 1} outcomes"
                ) from None
            if _is_exception(outcome):
                _raise(outcome)
            return outcome
        if self._raises is not None:
            _raise(self._raises)
        return self._return_value


def _is_exception(value: Any) -> bool:
    return isinstance(value, BaseException) or (isinstance(value, type) and issubclass(value, BaseException))


def _raise(exc: BaseException | type[BaseException]) -> None:
    if isinstance(exc, BaseException):
        raise exc.with_traceback(None)  # the same instance, each attempt afresh
    raise exc()


class InvokedRunFailed(errors.NonRetriableError):
    """A mocked invoke raised: the step fails at once, as it does when an invoked run fails,
    and the function's ``StepError`` names the mock's error, not this wrapper."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause), cause=cause)
        self._cause = cause

    def error_dict(self) -> dict[str, str | None]:
        return {"name": type(self._cause).__name__, "message": str(self._cause), "stack": None}


def completion(reply: Any, model: str, provider: str | None) -> dict[str, Any]:
    """A mocked model reply in ``ai.infer``'s result shape: a string is the text; a dict
    overrides the fields it names (usage in part too); the rest are zero."""
    base = Completion(text="", model=model, provider=provider or "mock", finish_reason="stop", usage=Usage(),
                      cost_usd=0.0, cost_source="mock", latency_ms=0).to_dict()
    if isinstance(reply, str):
        return {**base, "text": reply}
    if not isinstance(reply, Mapping):
        raise errors.ConfigError(f"a mocked ai.infer step returns the reply text or a dict of its fields, got {reply!r}")
    out = {**base, **reply}
    out["usage"] = {**base["usage"], **dict(reply.get("usage") or {})}
    return out


class MockingAI:
    """``ctx.step.ai`` with mocked ids answered without any provider."""

    def __init__(self, step: MockingStep) -> None:
        self._step = step

    def infer(self, step_id: str, *, model: str, messages: Any, provider: str | None = None, **options: Any) -> Any:
        mock = self._step.mocks.get(step_id)
        if mock is None:
            return Step.extensions["ai"](self._step).infer(step_id, model=model, messages=messages, provider=provider, **options)
        return self._mocked(mock, step_id, model, messages, provider, options)

    async def _mocked(self, mock: StepMock, step_id: str, model: str, messages: Any, provider: str | None, options: dict[str, Any]) -> Any:
        async def body() -> dict[str, Any]:
            kwargs = {"model": model, "messages": messages, **({"provider": provider} if provider else {}), **options}
            return completion(await mock.call(**kwargs), model, provider)

        return await self._step.driver.record_step(step_id, "ai.infer", body, usage_meta)


class MockingStep(Step):
    """The step API over the same run, with mocked ids answered by their ``StepMock``."""

    def __init__(self, driver: RunDriver, mocks: Mapping[str, StepMock]) -> None:
        super().__init__(driver)
        self.mocks = mocks

    @property
    def ai(self) -> MockingAI:
        return MockingAI(self)

    async def run(self, step_id: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        mock = self.mocks.get(step_id)
        if mock is None:
            return await super().run(step_id, fn, *args, **kwargs)
        if not callable(fn):
            raise errors.ConfigError(f"step.run({step_id!r}): fn must be callable, got {fn!r}")
        return await super().run(step_id, mock.call, *args, **kwargs)

    async def invoke(self, step_id: str, *, function: Any, data: dict[str, Any] | None = None,
                     timeout: durations.Duration | None = None) -> Any:
        mock = self.mocks.get(step_id)
        if mock is None:
            return await super().invoke(step_id, function=function, data=data, timeout=timeout)
        function_id = function if isinstance(function, str) else getattr(getattr(function, "config", None), "id", function)

        async def body() -> Any:
            try:
                return await mock.call(function=function_id, data=dict(data or {}))
            except Exception as exc:  # noqa: BLE001 - any failure of the mock is the invoked run's
                raise InvokedRunFailed(exc) from exc

        return await self.driver.record_step(step_id, "invoke", body, None)


def serve(function: Function, mocks: Mapping[str, StepMock], loop: Callable[[], asyncio.AbstractEventLoop]) -> Function:
    """``function`` with a handler that gives the declared one a ``ctx.step`` that honours ``mocks``."""
    handler = function.handler
    if function.is_async:

        async def handle_async(ctx: Context) -> Any:
            ctx.step = MockingStep(ctx.step.driver, mocks)
            return await handler(ctx)

        return dataclasses.replace(function, handler=functools.wraps(handler)(handle_async))

    def handle_sync(ctx: SyncContext) -> Any:
        ctx.step = SyncStep(MockingStep(ctx.step.driver, mocks), loop())  # type: ignore[assignment]
        return handler(ctx)

    return dataclasses.replace(function, handler=functools.wraps(handler)(handle_sync))
