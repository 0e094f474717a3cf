"""Polling helpers for tests: wait for a state, never for a fixed time."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from stepline.engine import Engine

T = TypeVar("T")

TERMINAL = ("completed", "failed", "cancelled")


async def eventually(
    check: Callable[[], Awaitable[T] | T], *, timeout: float = 15.0, interval: float = 0.02, what: str = "condition",
    diagnose: Callable[[], str] | None = None,
) -> T:
    """Poll ``check`` (a coroutine function, or a plain one) until it returns a truthy value;
    fail with ``what`` (and ``diagnose()``, e.g. the logs of processes) after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last  # type: ignore[no-any-return]
        await asyncio.sleep(interval)
    raise AssertionError(_timed_out(timeout, what, last, diagnose))


def wait_for(
    check: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.03, what: str = "condition",
    diagnose: Callable[[], str] | None = None,
) -> T:
    """``eventually`` for code outside an event loop (tests that drive processes)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(_timed_out(timeout, what, last, diagnose))


def _timed_out(timeout: float, what: str, last: Any, diagnose: Callable[[], str] | None) -> str:
    message = f"timed out after {timeout}s waiting for {what} (last: {last!r})"
    return f"{message}\n{diagnose()}" if diagnose is not None else message


class LongCall:
    """A step body that runs for ``seconds`` unless cancelled, saying when it started and
    whether it was interrupted (a model call cut off by a cancel, say)."""

    def __init__(self, seconds: float = 60.0) -> None:
        self.seconds = seconds
        self.started = asyncio.Event()
        self.interrupted = asyncio.Event()

    async def __call__(self) -> str:
        self.started.set()
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.interrupted.set()
            raise
        return "finished"

    async def wait_started(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.started.wait(), timeout)

    async def wait_interrupted(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.interrupted.wait(), timeout)


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


@contextlib.contextmanager
def counting_statements() -> Iterator[list[int]]:
    """Count the statements every store connection runs inside the block (``[n]`` once it
    ends): what a transaction costs, whatever the machine's speed."""
    from stepline.store import db

    counted = [0]
    originals = {name: getattr(db.Conn, name) for name in ("execute", "executemany", "all", "rowcount")}

    def counting(real: Callable[..., Any]) -> Callable[..., Any]:
        def run(self: db.Conn, *args: Any) -> Any:
            counted[0] += 1
            return real(self, *args)

        return run

    for name, real in originals.items():
        setattr(db.Conn, name, counting(real))
    try:
        yield counted
    finally:
        for name, real in originals.items():
            setattr(db.Conn, name, real)


@contextlib.contextmanager
def counting_vm_instructions(conn: Any, every: int = 10) -> Iterator[list[int]]:
    """Count SQLite's VM instructions on the raw connection ``conn`` inside the block, to the
    nearest ``every`` below (``[n]`` once it ends): what a read costs whatever the machine's
    speed; an index walked to its end costs as much as a scan."""
    counted = [0]

    def step() -> int:
        counted[0] += every
        return 0

    conn.set_progress_handler(step, every)
    try:
        yield counted
    finally:
        conn.set_progress_handler(None, 0)
