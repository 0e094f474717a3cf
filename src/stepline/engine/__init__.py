"""The engine: executes runs against the store (executor, worker, ingest, timers)."""

from stepline.engine.engine import Engine

__all__ = ["Engine"]
