"""``TestEngine``: run your functions in-process on a temporary database, mock steps, skip time.

::

    async with TestEngine(app) as t:
        t.mock_step("summarise", return_value={"text": "short"})
        sent = await t.send({"name": "doc/uploaded", "data": {"doc_id": "d1"}})
        await t.advance("1h")                     # past the run's sleep
        result = await t.wait(sent)

Underneath is the real engine: its worker, executor and store, on a SQLite file
copied from one migrated once per process (or on the database ``db=`` names, such as
a PostgreSQL test database). No server, no HTTP. ``SyncTestEngine`` offers the same
for tests that are not async.

Time. The store's clock (``stepline.clock``) is a ``TestClock`` that stands still
until ``advance`` moves it, and everything the engine schedules is measured on it:
sleeps, ``wait_for_event`` and ``invoke`` timeouts, retry backoffs, run timeouts,
debounce, throttle and rate-limit windows, and the times recorded on runs and steps.
Leases are not. A lease is set and compared on the database's own clock, and the
worker's lease fence and heartbeats run on ``time.monotonic`` (docs/architecture.md,
"Leases and fencing"); neither reads the test clock. So skipping an hour makes every
timer of that hour due at once, while no lease looks expired to another claim and the
worker never stops a run as if its database had stalled: the fencing a test runs
under is production's, unchanged. Because the clock stands still, nothing comes due
on its own while a test runs, however slow the machine: a retry's backoff passes when
the test says so (or set ``Settings(retry_base=0)`` for immediate retries).

Settling. ``send``, ``advance`` and ``cancel`` return once the engine has settled:
no run of the served functions is executing, leased or ready in the queue, so each
has ended or waits for something only the test can bring (a later time, an event).
``wait`` then reads the run and insists that it ended, saying what it waits for if
not. Cron schedules are not driven by ``advance``: their loop polls the clock about
once a second on its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

from stepline import durations, errors
from stepline import event as event_mod
from stepline.app import App
from stepline.engine import Engine
from stepline.function import Function
from stepline.settings import Settings
from stepline.store import Store, open_store
from stepline.store.records import RunStatus, StepStatus
from stepline.testing import database, mocks
from stepline.testing.clock import TestClock
from stepline.testing.results import RunResult, SentEvent

T = TypeVar("T")
Run = str | SentEvent  # a run id, or the event that started one run

SETTLE_TIMEOUT = 10.0  # real seconds a test waits for the engine to settle before it fails
SETTLE_POLL = 0.0005  # seconds between looks while a run's last write or a claim is under way
STOP_GRACE = 0.1  # seconds a step still in flight at the end of a test (one that hangs) gets before it is cancelled


class NotSettled(AssertionError):
    """Runs were still executing when the test stopped waiting for them (a step that hangs?)."""


class RunNotFinished(AssertionError):
    """``wait`` found the run still waiting: for time to pass, an event, or its retry backoff."""


class _ServedApp(App):
    """An app's functions as the test engine serves them; the declared app is the one attached,
    so ``app.send`` in the code under test reaches the test engine."""

    def __init__(self, app: App, functions: list[Function]) -> None:
        super().__init__(app.id)
        self._functions = {f.id: f for f in functions}
        self._declared = app

    def attach(self, runtime: Any) -> None:
        self._declared.attach(runtime)


class TestEngine:
    """The real engine on a temporary database, with a clock the test moves (see the module docs).

    ``apps``: ``App`` objects, or lists of them. ``db``: a database URL or SQLite path to
    use instead of a temporary SQLite file (migrated if it needs to be). ``settings``:
    the engine's settings (defaults otherwise; the environment is not read). ``start``:
    the test clock's first time (default: now). ``timeout``: real seconds to wait for
    the engine to settle.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        *apps: App | Iterable[App],
        db: str | None = None,
        settings: Settings | None = None,
        start: dt.datetime | float | None = None,
        timeout: float = SETTLE_TIMEOUT,
    ) -> None:
        self.apps = _flatten(apps)
        self.clock = TestClock(start)
        # A test's database lives for one test: no retention sweeps (a skipped month would prune it).
        self.settings = settings or Settings(retention_interval=0)
        self.timeout = timeout
        self._db = db
        self._directory: str | None = None
        self._mocks: dict[str, mocks.StepMock] = {}
        self._engine: Engine | None = None

    # --- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> TestEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        store = self._open_store()
        served = [_ServedApp(app, [mocks.serve(f, self._mocks, self._loop) for f in app.functions]) for app in self.apps]
        engine = Engine(store, self.settings.replace(db=store.url), served)
        try:
            await engine.start()
        except BaseException:
            await store.close()
            self._remove_directory()
            raise
        self._engine = engine

    async def stop(self) -> None:
        engine, self._engine = self._engine, None
        try:
            if engine is not None:
                await engine.stop(grace=STOP_GRACE)
        finally:
            self._remove_directory()

    def _open_store(self) -> Store:
        if self._db is not None:
            return open_store(self._db, migrate_now=True, clock=self.clock)
        from stepline.store import sqlite

        self._directory, path = database.create()
        return Store(sqlite.SQLiteDatabase(path), path, self.clock)  # migrated: a copy of the template

    def _remove_directory(self) -> None:
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    @property
    def engine(self) -> Engine:
        """The engine underneath, once started (its store, worker and API, for what the kit does not wrap)."""
        if self._engine is None:
            raise errors.SteplineError("the TestEngine is not started: use `async with TestEngine(app) as t:`")
        return self._engine

    def _loop(self) -> asyncio.AbstractEventLoop:
        return self.engine.loop

    # --- mocks -----------------------------------------------------------------------

    def mock_step(
        self,
        step_id: str,
        *,
        return_value: Any = mocks.UNSET,
        raises: BaseException | type[BaseException] | None = None,
        side_effect: Callable[..., Any] | Iterable[Any] | None = None,
    ) -> mocks.StepMock:
        """Answer every ``ctx.step.run``, ``ctx.step.ai.infer`` or ``ctx.step.invoke`` with this id
        (each repeat too) from now on, instead of running its body; see ``StepMock``."""
        if not isinstance(step_id, str) or not step_id:
            raise errors.ConfigError(f"mock_step: step id must be a non-empty string, got {step_id!r}")
        mock = mocks.StepMock(step_id, return_value=return_value, raises=raises, side_effect=side_effect)
        self._mocks[step_id] = mock
        return mock

    def unmock_step(self, step_id: str) -> None:
        """Run the real body of this step again from now on."""
        self._mocks.pop(step_id, None)

    # --- driving ---------------------------------------------------------------------

    @property
    def now(self) -> dt.datetime:
        """The test clock's time."""
        return self.clock.now()

    async def send(self, event: dict[str, Any] | event_mod.Event) -> SentEvent:
        """Send one event (its ``ts`` on the test clock unless given) and settle; returns
        the event's id and the runs it started."""
        if isinstance(event, dict) and "ts" not in event:
            event = {**event, "ts": self.clock.now_ms()}
        event_id = await self.engine.send(event)
        await self.settle()
        runs = (await self.engine.store.get_event(event_id))["runs"]
        return SentEvent(event_id, tuple(r["id"] for r in runs))

    async def advance(self, duration: durations.Duration) -> None:
        """Move the test clock forward (``"90s"``, ``"1h"``, seconds or a timedelta) and settle:
        every sleep, timeout and backoff that came due runs now."""
        self.clock.advance(durations.parse(duration, field="advance"))
        worker = self.engine.worker
        if worker is not None:
            worker.wake()
        await self.settle()

    async def cancel(self, run: Run) -> RunResult:
        """Cancel a run (as the API does) and settle; returns the run."""
        await self.engine.cancel(_run_id(run))
        await self.settle()
        return await self.result(run)

    async def settle(self, timeout: float | None = None) -> None:
        """Wait until no run of the served functions is executing, leased or ready to start."""
        engine = self.engine
        worker = engine.worker
        if worker is None:
            return
        served = set(engine.served_functions())
        loop = asyncio.get_running_loop()
        limit = self.timeout if timeout is None else timeout
        deadline = loop.time() + limit
        queued = 0
        while True:
            handlers = [task for task, _ in worker.executor.active.values() if not task.done()]
            if handlers:  # functions executing: wait for one to return or suspend
                await asyncio.wait(handlers, timeout=max(0.0, deadline - loop.time()), return_when=asyncio.FIRST_COMPLETED)
            elif worker.in_flight == 0:
                depth = await engine.store.queue_depth()
                queued = sum(row["ready"] + row["leased"] for row in depth if row["function_id"] in served)
                if queued == 0 and worker.in_flight == 0:
                    return
                if queued:
                    worker.wake()
                    await asyncio.sleep(SETTLE_POLL)  # the worker's claim is on its way
            else:
                await asyncio.sleep(SETTLE_POLL)  # a run's last write (its end or suspension) is on its way
            if loop.time() >= deadline:
                executing = sorted(worker.executor.active)
                what = (f"runs {executing} are still executing (a step that never returns?); mock the step, or give "
                        "TestEngine a longer timeout=") if executing else (
                        f"{queued} runs are ready or leased but none starts; is the worker stopped or its concurrency full?")
                raise NotSettled(f"the engine did not settle within {limit} s: {what}")

    # --- reading ---------------------------------------------------------------------

    async def result(self, run: Run) -> RunResult:
        """The run as it is now, ended or not."""
        return RunResult.from_dict(await self.engine.get_run(_run_id(run)))

    async def wait(self, run: Run) -> RunResult:
        """The run, which must have ended once the engine settled; ``RunNotFinished`` says
        what it waits for otherwise."""
        await self.settle()
        result = await self.result(run)
        if not result.ended:
            raise RunNotFinished(describe_waiting(result, self.clock))
        return result

    async def runs(self, function_id: str | None = None) -> list[RunResult]:
        """Every run (of ``function_id``), oldest first: invoked runs, ``on_failure`` runs, ..."""
        rows = await self.engine.list_runs(function_id=function_id, limit=10_000)
        return [await self.result(row["id"]) for row in reversed(rows)]


class SyncTestEngine:
    """``TestEngine`` for tests that are not async: the same methods, blocking.

    ``with SyncTestEngine(app) as t: result = t.wait(t.send({...}))``. The engine's event
    loop runs only inside each call (it has settled by the time a call returns).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, *apps: App | Iterable[App], **options: Any) -> None:
        self.kit = TestEngine(*apps, **options)
        self._runner: asyncio.Runner | None = None

    def __enter__(self) -> SyncTestEngine:
        self._runner = asyncio.Runner()
        try:
            self._call(self.kit.start())
        except BaseException:
            self._runner.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._call(self.kit.stop())
        finally:
            if self._runner is not None:
                self._runner.close()
                self._runner = None

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._runner is None:
            coro.close()
            raise errors.SteplineError("the SyncTestEngine is not started: use `with SyncTestEngine(app) as t:`")
        return self._runner.run(coro)

    @property
    def clock(self) -> TestClock:
        return self.kit.clock

    @property
    def now(self) -> dt.datetime:
        return self.kit.now

    @property
    def engine(self) -> Engine:
        return self.kit.engine

    def mock_step(self, step_id: str, **behaviour: Any) -> mocks.StepMock:
        return self.kit.mock_step(step_id, **behaviour)

    def unmock_step(self, step_id: str) -> None:
        self.kit.unmock_step(step_id)

    def send(self, event: dict[str, Any] | event_mod.Event) -> SentEvent:
        return self._call(self.kit.send(event))

    def advance(self, duration: durations.Duration) -> None:
        self._call(self.kit.advance(duration))

    def cancel(self, run: Run) -> RunResult:
        return self._call(self.kit.cancel(run))

    def settle(self, timeout: float | None = None) -> None:
        self._call(self.kit.settle(timeout))

    def result(self, run: Run) -> RunResult:
        return self._call(self.kit.result(run))

    def wait(self, run: Run) -> RunResult:
        return self._call(self.kit.wait(run))

    def runs(self, function_id: str | None = None) -> list[RunResult]:
        return self._call(self.kit.runs(function_id))


def describe_waiting(result: RunResult, clock: TestClock) -> str:
    """Why a run has not ended, and what the test can do about it."""
    lines = [f"run {result.id} of {result.function_id!r} has not ended: it is {result.status.value} ({result.wait_reason})"]
    for step in result.steps.values():
        if step.status in (StepStatus.SLEEPING, StepStatus.WAITING, StepStatus.INVOKING):
            if step.wake_at is None:
                lines.append(f"step {step.id!r} ({step.kind}) is {step.status.value}, with no timeout")
            else:
                ahead = (step.wake_at - clock.now()).total_seconds()
                lines.append(f"step {step.id!r} ({step.kind}) is {step.status.value} until {step.wake_at.isoformat()}, {_span(ahead)} ahead on the test clock")
        elif step.status == StepStatus.RETRYING:
            last = step.attempt_errors[-1] if step.attempt_errors else None
            failure = f" ({last.name}: {last.message})" if last else ""
            lines.append(f"step {step.id!r} failed attempt {step.attempts}{failure} and waits for its retry backoff")
    if result.status == RunStatus.QUEUED and result.wait_reason == "retry_backoff" and len(lines) == 1:
        error = result.error or (result.function_errors[-1] if result.function_errors else None)
        failure = f" ({error.name}: {error.message})" if error else ""
        lines.append(f"the function failed attempt {result.attempt}{failure} and waits for its retry backoff")
    lines.append("move the test clock past it (await t.advance('1h')), send the event it waits for, or mock the step")
    return "; ".join(lines)


def _span(seconds: float) -> str:
    seconds = max(0, round(seconds))
    parts = [(seconds // 86400, "d"), (seconds // 3600 % 24, "h"), (seconds // 60 % 60, "m"), (seconds % 60, "s")]
    return " ".join(f"{n}{unit}" for n, unit in parts if n) or "0s"


def _run_id(run: Run) -> str:
    if isinstance(run, SentEvent):
        return run.run_id
    if isinstance(run, str):
        return run
    raise errors.ConfigError(f"expected a run id or the SentEvent that started the run, got {run!r}")


def _flatten(apps: Sequence[App | Iterable[App]]) -> list[App]:
    out: list[App] = []
    for item in apps:
        for app in [item] if isinstance(item, App) else list(item):
            if not isinstance(app, App):
                raise errors.ConfigError(f"TestEngine takes stepline.App objects (or lists of them), got {app!r}")
            out.append(app)
    if not out:
        raise errors.ConfigError("TestEngine needs at least one stepline.App whose functions it runs")
    return out
