"""Stepline: durable background functions for Python web apps."""

from stepline import llm  # noqa: F401  registers ctx.step.ai
from stepline.app import App
from stepline.client import AsyncClient, Client
from stepline.context import Context, Step, SyncContext
from stepline.errors import (
    BudgetExceeded,
    ConfigError,
    ConflictError,
    EventError,
    ExpressionError,
    LeaseLost,
    LimitError,
    NonRetriableError,
    NotFoundError,
    RetryAfterError,
    StepError,
    SteplineError,
    StoreError,
)
from stepline.event import Event
from stepline.function import (
    Batch,
    Budget,
    CancelOn,
    Concurrency,
    Debounce,
    Function,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    Timeouts,
    TriggerCron,
    TriggerEvent,
)

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncClient",
    "Batch",
    "Budget",
    "BudgetExceeded",
    "CancelOn",
    "Client",
    "Concurrency",
    "ConfigError",
    "ConflictError",
    "Context",
    "Debounce",
    "Event",
    "EventError",
    "ExpressionError",
    "Function",
    "LeaseLost",
    "LimitError",
    "NonRetriableError",
    "NotFoundError",
    "Priority",
    "RateLimit",
    "RetryAfterError",
    "Singleton",
    "Step",
    "StepError",
    "SteplineError",
    "StoreError",
    "SyncContext",
    "Throttle",
    "Timeouts",
    "TriggerCron",
    "TriggerEvent",
    "__version__",
]
