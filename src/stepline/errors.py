"""Stepline's exceptions.

Every error Stepline raises derives from ``SteplineError``. Retry meaning lives on
the class: ``retryable`` says whether the engine retries a step or run that raised it
(an exception from outside this tree, a ``ValueError`` say, is retried).

    SteplineError                         retryable
    ├── ConfigError                       no   a function or app was declared wrongly (raised at import)
    │   └── ExpressionError               no   a CEL expression does not compile
    ├── EventError                        no   an event is malformed or over a limit
    ├── LimitError                        no   a step output or run state is over its size limit
    ├── NotFoundError                     no   no run / event / function with that id
    ├── ConflictError                     no   the run is not in a state that allows the action
    ├── RequestError                      no   a request to the server is malformed (a query value, a field)
    ├── StoreError                        yes  the database is unreachable, not migrated, or could not take a write
    │   └── LeaseLost                     no   the worker writing for a run no longer holds it
    ├── NonRetriableError                 no   raise in a step or function: fail now
    │   ├── BudgetExceeded                no   a model call would pass a cost budget (on_exceeded="fail")
    │   ├── llm.ProviderRejected          no   the provider refused the call (bad key, quota, bad request)
    │   └── inngest.SDKNonRetriableError  no   an SDK app said not to retry
    ├── RetryAfterError                   yes  raise in a step or function: retry after exactly ``delay``
    │   ├── llm.RateLimited               yes  the provider said when to come back
    │   └── inngest.SDKRetryAfterError    yes  an SDK app said when to retry
    ├── StepError                         no   a step failed after its retries; raised into the function
    ├── UnreachableError                  yes  what runs the step could not be reached at all: retried on a longer schedule
    ├── llm.ProviderError                 yes  the provider failed in a way that may pass
    │   └── llm.TruncatedResponse         yes  a stream or body that ended too early
    ├── inngest.SDKRetriableError         yes  an SDK app reported an error that may pass
    │   └── inngest.AppUnreachableError   yes  the app could not be reached (also an UnreachableError)
    └── inngest.RegistrationError         no   an SDK app's registration was refused

``llm.*`` live in ``stepline.llm.errors``, ``inngest.*`` in ``stepline.inngest``. The
server maps these classes to HTTP statuses (``stepline.server.responses``); no error
carries a status of its own. Control flow that user code must not swallow derives
from ``BaseException`` (see ``stepline.engine.signals``), never from this tree.
"""

from __future__ import annotations

import datetime as dt
from typing import Any


class SteplineError(Exception):
    """Base of every Stepline error."""

    retryable: bool = False

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__class__.__doc__ or self.__class__.__name__).strip())

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(SteplineError, ValueError):
    """A function or app was declared wrongly; the message names the field."""


class ExpressionError(ConfigError):
    """A CEL expression does not compile."""


class EventError(SteplineError, ValueError):
    """An event is malformed or over the size limit."""


class LimitError(SteplineError):
    """A step output or the run's state is over its size limit."""


class NotFoundError(SteplineError, LookupError):
    """No such run, event or function."""


class ConflictError(SteplineError):
    """The run (or other resource) is not in a state that allows this action."""


class RequestError(SteplineError):
    """A request to the server is malformed: the message names the query value or field and
    what it takes."""


class BusyError(SteplineError):
    """What a request needs is held by another process right now (an event of the same id
    being stored, or a process that froze while storing it): nothing of it was stored, and
    sending it again is the fix. Not the database failing (``StoreError``)."""


class StoreError(SteplineError):
    """The database cannot be used as it is (unreachable, or its schema is out of date)."""

    retryable = True


class LeaseLost(StoreError):
    """The worker writing for a run no longer holds it: its lease was taken over (the run
    was leased again after this worker stalled past the lease), or the run ended."""

    retryable = False


class NonRetriableError(SteplineError):
    """Raise from a step or function to fail at once, without retries."""

    def __init__(self, message: str | None = None, *, cause: BaseException | None = None) -> None:
        super().__init__(message)
        if cause is not None:
            self.__cause__ = cause


class BudgetExceeded(NonRetriableError):
    """A model call would take a budget past its limit: the step fails at once.

    ``budget`` and ``key`` name the budget and its key value; ``spent_usd`` /
    ``spent_tokens`` are what the period has spent (reserved calls included) and
    ``limit_usd`` / ``limit_tokens`` its limits (None: no limit of that kind).
    """

    def __init__(
        self,
        message: str,
        *,
        budget: str,
        key: str,
        spent_usd: float = 0.0,
        spent_tokens: int = 0,
        limit_usd: float | None = None,
        limit_tokens: int | None = None,
        on_exceeded: str = "fail",
    ) -> None:
        super().__init__(message)
        self.budget = budget
        self.on_exceeded = on_exceeded  # the budget's: a direct call under "pause" may be queued instead
        self.key = key
        self.spent_usd = spent_usd
        self.spent_tokens = spent_tokens
        self.limit_usd = limit_usd
        self.limit_tokens = limit_tokens


class RetryAfterError(SteplineError):
    """Raise from a step or function to be retried after exactly ``delay``.

    ``delay`` is seconds, a ``timedelta``, or an aware ``datetime`` to retry at.
    """

    retryable = True

    def __init__(
        self, message: str | None = None, delay: float | dt.timedelta | dt.datetime = 0.0
    ) -> None:
        super().__init__(message or f"retry after {delay}")
        self.delay = delay

    def delay_seconds(self, now: dt.datetime | None = None) -> float:
        if isinstance(self.delay, dt.datetime):
            now = now or dt.datetime.now(dt.timezone.utc)
            return max(0.0, (self.delay - now).total_seconds())
        if isinstance(self.delay, dt.timedelta):
            return max(0.0, self.delay.total_seconds())
        return max(0.0, float(self.delay))


class UnreachableError(SteplineError):
    """What runs the step (an SDK app) could not be reached at all: refused, no such host,
    connect timeout, or a gateway saying it is down. A restart looks like this, so it is
    retried on ``STEPLINE_UNREACHABLE_BACKOFF`` (minutes), not the ordinary backoff
    (seconds), which a deploy would use up."""

    retryable = True


class StepError(SteplineError):
    """A step failed after all its retries. Catch it in the function to recover.

    ``name`` and ``message`` come from the step's last error; ``step_id`` names the step.
    """

    def __init__(self, step_id: str, name: str, message: str, stack: str | None = None) -> None:
        super().__init__(f"step {step_id!r} failed: {name}: {message}")
        self.step_id = step_id
        self.name = name
        self.error_message = message
        self.stack = stack

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "message": self.error_message, "stack": self.stack}

