"""Stepline under a benchmark: an engine on a fresh database, and completion tracking.

Completion is taken when a run's final commit returns (the store's ``finish_run``),
not when the function body returns, so every figure counts the durable write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import stepline
from stepline import eventloop, gctuning
from stepline import settings as settings_mod
from stepline.engine import Engine
from stepline.settings import Settings
from stepline.store import Lease, open_store

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a benchmark as Stepline's own commands run: the collector tuned, on their loop
    (``STEPLINE_LOOP``; uvloop by default)."""
    gctuning.tune_for_worker()
    return eventloop.run(main, settings_mod.from_env().loop)


class Tracker:
    """Counts finished runs and stamps each one's finish time (``perf_counter``)."""

    def __init__(self) -> None:
        self.finished = 0
        self.finished_at: dict[str, float] = {}
        self.target = 0
        self.done = asyncio.Event()
        self.on_finish: Callable[[str], None] | None = None

    def expect(self, count: int) -> None:
        self.target = self.finished + count
        self.done.clear()
        if self.finished >= self.target:
            self.done.set()

    def wrap(self, finish: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        async def finish_run(lease: Lease, *args: Any, **kwargs: Any) -> None:
            await finish(lease, *args, **kwargs)
            run_id = lease.run_id
            self.finished_at[run_id] = time.perf_counter()
            self.finished += 1
            if self.on_finish is not None:
                self.on_finish(run_id)
            if self.finished >= self.target:
                self.done.set()

        return finish_run


@asynccontextmanager
async def engine_on(url: str, *apps: stepline.App, run_worker: bool = True, **settings: Any) -> AsyncIterator[tuple[Engine, Tracker]]:
    """A started engine on ``url`` (migrated here) with a completion tracker attached."""
    store = open_store(url, migrate_now=True)
    tracker = Tracker()
    store.finish_run = tracker.wrap(store.finish_run)  # type: ignore[method-assign]
    engine = Engine(store, Settings(db=url).replace(**settings), list(apps))
    await engine.start(run_worker=run_worker)
    try:
        yield engine, tracker
    finally:
        await engine.stop(grace=2.0)


async def send_chunked(engine: Engine, events: list[dict[str, Any]], chunk: int = 100) -> None:
    for i in range(0, len(events), chunk):
        await engine.send_many(events[i : i + chunk])


def elsewhere_app() -> stepline.App:
    """Another app's function in the benchmark's database, which its worker does not serve."""
    app = stepline.App("bench-elsewhere")

    @app.function(id="elsewhere", trigger=stepline.TriggerEvent("bench/elsewhere"), retries=0)
    async def elsewhere(ctx: stepline.Context) -> None:
        return None

    return app


async def queue_elsewhere(url: str, count: int) -> None:
    """``count`` ready runs of ``elsewhere_app``'s function (a backlog waiting for its own workers)."""
    async with engine_on(url, elsewhere_app(), run_worker=False) as (engine, _):
        await send_chunked(engine, [{"name": "bench/elsewhere", "data": {"i": i}} for i in range(count)], chunk=1000)
