"""Polling helpers for tests: wait for a state, never for a fixed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from stepline.engine import Engine

T = TypeVar("T")

TERMINAL = ("completed", "failed", "cancelled")


async def eventually(check: Callable[[], Awaitable[T]], *, timeout: float = 15.0, interval: float = 0.02, what: str = "condition") -> T:
    """Poll ``check`` until it returns a truthy value; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def wait_run(engine: Engine, run_id: str, *statuses: str, timeout: float = 15.0) -> dict[str, Any]:
    """The run once its status is one of ``statuses`` (default: any terminal one)."""
    wanted = statuses or TERMINAL

    async def check() -> dict[str, Any] | None:
        run = await engine.get_run(run_id)
        return run if run["status"] in wanted else None

    return await eventually(check, timeout=timeout, what=f"run {run_id} to be {wanted}")


async def runs_for_event(engine: Engine, event_id: str, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
    """The runs an event started, once there are ``count`` of them."""

    async def check() -> list[dict[str, Any]] | None:
        runs = (await engine.store.get_event(event_id))["runs"]
        return runs if len(runs) >= count else None

    return await eventually(check, timeout=timeout, what=f"{count} run(s) for event {event_id}")


async def send_and_wait(engine: Engine, event: dict[str, Any], *statuses: str, timeout: float = 15.0) -> dict[str, Any]:
    """Send one event and wait for the one run it starts to reach ``statuses``."""
    event_id = await engine.send(event)
    run = (await runs_for_event(engine, event_id))[0]
    return await wait_run(engine, run["id"], *statuses, timeout=timeout)
