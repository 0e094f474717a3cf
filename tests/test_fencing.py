"""Fencing: one run is executed by one worker at a time, and a committed step never runs again.

Every lease of a run takes a new epoch and every write names the epoch it holds, so a
worker whose lease was taken over commits nothing more, even when it is the same worker
that took it over. Leases are set on the database's clock when the statement runs, so a
write that waited out a stall does not create a lease that has already expired. A
worker that cannot renew a lease in time stops the run before the lease can expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

import stepline
from stepline.engine import Engine
from stepline.errors import LeaseLost
from stepline.store import Lease, StepResult
from tests.helpers import LongCall, eventually, runs_for_event, send_and_wait, wait_run
from tests.test_crash import REPO
from tests.test_handoff import query


def execute(db_url: str, sql: str, params: tuple[Any, ...] = ()) -> None:
    """One write on the test database from outside the engine."""
    if db_url.startswith("postgresql://"):
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(sql.replace("?", "%s"), params)
        return
    import sqlite3

    conn = sqlite3.connect(db_url, isolation_level=None)
    try:
        conn.execute(sql, params)
    finally:
        conn.close()


_HOLD_SQLITE_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


@contextlib.asynccontextmanager
async def stalled_writes(db_url: str, seconds: float, table: str = "queue") -> AsyncIterator[None]:
    """Hold the database's write lock from elsewhere for ``seconds``: on SQLite from another
    process (``BEGIN EXCLUSIVE``), on PostgreSQL from another session (``LOCK TABLE``, plain
    reads still allowed). Entered once the lock is held; left once it is released."""
    loop = asyncio.get_running_loop()
    if db_url.startswith("postgresql://"):
        locked, done = threading.Event(), threading.Event()

        def hold() -> None:
            with psycopg.connect(db_url) as conn:
                conn.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
                locked.set()
                time.sleep(seconds)
            done.set()

        thread = threading.Thread(target=hold, daemon=True)
        thread.start()
        await loop.run_in_executor(None, locked.wait, 10)
        try:
            yield
        finally:
            await loop.run_in_executor(None, thread.join)
        return
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_SQLITE_LOCK, db_url, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert (await loop.run_in_executor(None, proc.stdout.readline)).strip() == "locked"
    try:
        yield
    finally:
        await loop.run_in_executor(None, proc.wait)


async def _queued_run(make_engine: Any, name: str) -> tuple[Engine, str]:
    app = stepline.App(f"fence-{name}")

    @app.function(id=name, trigger=stepline.TriggerEvent(f"fence/{name}"), retries=0)
    async def fn(ctx: stepline.Context) -> None:
        return None

    engine = await make_engine(app, run_worker=False)
    event_id = await engine.send({"name": f"fence/{name}", "data": {}})
    (run,) = await runs_for_event(engine, event_id)
    return engine, run["id"]


# --- the store: every write is fenced by its lease's epoch ---------------------------


async def test_a_worker_that_lost_its_lease_commits_nothing_even_when_it_took_the_run_over_itself(
    make_engine: Any, db_url: str
) -> None:
    engine, run_id = await _queued_run(make_engine, "own")
    (first,), _ = await engine.store.claim("w-1", ["own"], 1, 60_000)
    execute(db_url, "UPDATE queue SET lease_expires_at = 0 WHERE run_id = ?", (run_id,))  # it stalled past its lease
    (second,), _ = await engine.store.claim("w-1", ["own"], 1, 60_000)
    assert second.run_id == run_id and second.epoch == first.epoch + 1

    stale, current = Lease(run_id, "w-1", first.epoch), Lease(run_id, "w-1", second.epoch)
    step = StepResult("s1", "s1", "run", "completed", '"stale"', None, 1, 1, 2)
    with pytest.raises(LeaseLost):
        await engine.store.checkpoint(stale, step, 1)
    with pytest.raises(LeaseLost):
        await engine.store.finish_run(stale, "completed", '"stale"', None)
    with pytest.raises(LeaseLost):
        await engine.store.publish(stale, "updates", '"stale"')
    with pytest.raises(LeaseLost):
        await engine.store.set_progress(stale, 50, "stale")
    with pytest.raises(LeaseLost):  # an SDK app's wait registered ahead of its suspension
        await engine.store.prepare_wait(stale, "w1", "own/reply", None, 60_000, "reply")
    await engine.store.release([stale])  # not its to release any more
    assert query(db_url, "SELECT lease_owner, lease_epoch FROM queue WHERE run_id = ?", (run_id,)) == [("w-1", second.epoch)]
    assert query(db_url, "SELECT COUNT(*) FROM steps WHERE run_id = ?", (run_id,)) == [(0,)]
    assert query(db_url, "SELECT COUNT(*) FROM waits WHERE run_id = ?", (run_id,)) == [(0,)]

    await engine.store.prepare_wait(current, "w1", "own/reply", None, 60_000, "reply")
    assert query(db_url, "SELECT event_name FROM waits WHERE run_id = ?", (run_id,)) == [("own/reply",)]
    execute(db_url, "DELETE FROM waits WHERE run_id = ?", (run_id,))
    execute(db_url, "DELETE FROM steps WHERE run_id = ?", (run_id,))
    fresh = StepResult("s1", "s1", "run", "completed", '"current"', None, 1, 1, 2)
    assert await engine.store.checkpoint(current, fresh, 1) is False
    await engine.store.finish_run(current, "completed", '"current"', None)
    assert (await engine.get_run(run_id))["output"] == "current"


async def test_without_fencing_the_owner_alone_is_checked(make_engine: Any, db_url: str) -> None:
    """What fencing prevents: by owner alone, the stale copy's write lands."""
    engine, run_id = await _queued_run(make_engine, "unfenced")
    await engine.store.claim("w-1", ["unfenced"], 1, 60_000)
    execute(db_url, "UPDATE queue SET lease_expires_at = 0 WHERE run_id = ?", (run_id,))
    await engine.store.claim("w-1", ["unfenced"], 1, 60_000)
    step = StepResult("s1", "s1", "run", "completed", '"stale"', None, 1, 1, 2)
    assert await engine.store.checkpoint(Lease(run_id, "w-1", None), step, 1) is False
    assert query(db_url, "SELECT output FROM steps WHERE run_id = ?", (run_id,)) == [('"stale"',)]


async def test_a_claim_leaves_out_the_runs_the_worker_still_executes(make_engine: Any, db_url: str) -> None:
    engine, run_id = await _queued_run(make_engine, "excluded")
    (first,), _ = await engine.store.claim("w-1", ["excluded"], 1, 60_000)
    execute(db_url, "UPDATE queue SET lease_expires_at = 0 WHERE run_id = ?", (run_id,))
    taken, _ = await engine.store.claim("w-1", ["excluded"], 1, 60_000, exclude=frozenset({run_id}))
    assert taken == []
    (other,), _ = await engine.store.claim("w-2", ["excluded"], 1, 60_000)  # another worker may take it over
    assert other.epoch == first.epoch + 1


async def test_a_committed_step_is_written_once(make_engine: Any, db_url: str) -> None:
    engine, run_id = await _queued_run(make_engine, "once")
    (claimed,), _ = await engine.store.claim("w-1", ["once"], 1, 60_000)
    lease = Lease(run_id, "w-1", claimed.epoch)
    await engine.store.checkpoint(lease, StepResult("s1", "s1", "run", "completed", '"first"', None, 1, 1, 2), 1)
    await engine.store.checkpoint(lease, StepResult("s1", "s1", "run", "completed", '"second"', None, 2, 3, 4), 1)
    assert query(db_url, "SELECT output, attempts FROM steps WHERE run_id = ?", (run_id,)) == [('"first"', 1)]


async def test_a_heartbeat_reports_a_lease_taken_over(make_engine: Any, db_url: str) -> None:
    engine, run_id = await _queued_run(make_engine, "renew")
    (claimed,), _ = await engine.store.claim("w-1", ["renew"], 1, 60_000)
    lease = Lease(run_id, "w-1", claimed.epoch)
    assert (await engine.store.heartbeat("w-1", [lease], 60_000)).held == {run_id: claimed.epoch}
    execute(db_url, "UPDATE queue SET lease_expires_at = 0 WHERE run_id = ?", (run_id,))
    await engine.store.claim("w-2", ["renew"], 1, 60_000)
    assert (await engine.store.heartbeat("w-1", [lease], 60_000)).held == {}


async def test_a_lease_is_measured_from_the_commit_not_from_when_the_claim_was_queued(
    make_engine: Any, db_url: str
) -> None:
    """A claim queued while another connection holds the write lock for longer than the
    lease commits, once the lock lifts, with a lease that still has its full length."""
    engine, run_id = await _queued_run(make_engine, "stall")
    lease_ms = 1000
    async with stalled_writes(db_url, 2.0):
        claiming = asyncio.ensure_future(engine.store.claim("w-1", ["stall"], 1, lease_ms))
    (claimed,), _ = await claiming
    committed_by = int(time.time() * 1000)
    (expires,) = query(db_url, "SELECT lease_expires_at FROM queue WHERE run_id = ?", (run_id,))[0]
    assert expires > committed_by, "the lease had run out before the claim was even answered"
    taken, _ = await engine.store.claim("w-2", ["stall"], 1, lease_ms)
    assert taken == [], "another worker took over a lease that was just granted"


# --- the engine: stop a run whose lease may be gone; never a second copy ---------------


class Journal:
    """Every execution of every step: (key, execution id, start, end); the step returns its id."""

    def __init__(self) -> None:
        self.executions: dict[str, dict[str, Any]] = {}

    async def step(self, key: str, seconds: float) -> str:
        exec_id = uuid.uuid4().hex
        self.executions[exec_id] = {"key": key, "start": time.monotonic(), "end": None}
        try:
            await asyncio.sleep(seconds)
        finally:
            self.executions[exec_id]["end"] = time.monotonic()
        return exec_id

    def of(self, key: str) -> list[dict[str, Any]]:
        return sorted((e for e in self.executions.values() if e["key"] == key), key=lambda e: e["start"])


def check_exactly_once(journal: Journal, committed: dict[str, str], keys: list[str]) -> None:
    """A committed step never ran again, and no two executions of the run overlapped."""
    for key, later in zip(keys, keys[1:]):
        next_started = journal.executions[committed[later]]["start"]
        reruns = [e for e in journal.of(key) if e["start"] > next_started]
        assert not reruns, f"step {key} ran again after it was committed (and {later} had started)"
    spans = sorted((e["start"], e["end"] or float("inf")) for e in journal.executions.values())
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, "two copies of the run executed at once"
    for key in keys:
        assert committed[key] in journal.executions, f"the committed result of {key} came from no execution"


@pytest.mark.timeout(60)
async def test_a_write_stall_longer_than_the_lease_never_runs_a_committed_step_again(
    make_engine: Any, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal()
    keys = ["s1", "s2", "s3", "s4"]
    in_s2 = asyncio.Event()
    app = stepline.App("fence-stall")

    @app.function(id="stall", trigger=stepline.TriggerEvent("fence/stall"), retries=2)
    async def stall(ctx: stepline.Context) -> dict[str, str]:
        out = {"s1": await ctx.step.run("s1", journal.step, "s1", 0.0)}
        in_s2.set()
        out["s2"] = await ctx.step.run("s2", journal.step, "s2", 0.3)
        out["s3"] = await ctx.step.run("s3", journal.step, "s3", 0.0)
        out["s4"] = await ctx.step.run("s4", journal.step, "s4", 0.0)
        return out

    engine = await make_engine(app, lease=1.0)
    caplog.set_level(logging.WARNING, logger="stepline.executor")
    event_id = await engine.send({"name": "fence/stall", "data": {}})
    await asyncio.wait_for(in_s2.wait(), 10)
    async with stalled_writes(db_url, 2.5):  # s1's checkpoint waits behind the lock; the lease lapses
        pass
    (run,) = await runs_for_event(engine, event_id)
    done = await wait_run(engine, run["id"], timeout=30)
    assert done["status"] == "completed", done
    committed = done["output"]
    check_exactly_once(journal, committed, keys)
    assert len(journal.of("s1")) == 1
    assert any("stops on this worker" in r.getMessage() for r in caplog.records), "the worker never stopped the run"
    assert query(db_url, "SELECT COUNT(*) FROM step_attempts WHERE run_id = ?", (run["id"],)) == [(0,)], (
        "a stall was counted as a failed attempt"
    )


@pytest.mark.timeout(60)
async def test_a_lease_taken_over_stops_the_step_in_flight_and_writes_nothing(make_engine: Any, db_url: str) -> None:
    long_call = LongCall(30)
    app = stepline.App("fence-taken")

    @app.function(id="taken", trigger=stepline.TriggerEvent("fence/taken"), retries=0)
    async def taken(ctx: stepline.Context) -> str:
        return str(await ctx.step.run("call", long_call))

    engine = await make_engine(app, lease=2.0)
    event_id = await engine.send({"name": "fence/taken", "data": {}})
    await long_call.wait_started()
    (run,) = await runs_for_event(engine, event_id)
    # Another worker reclaimed it (as after this one stalled past its lease).
    execute(db_url, "UPDATE queue SET lease_owner = 'w-other', lease_epoch = lease_epoch + 1 WHERE run_id = ?", (run["id"],))
    await long_call.wait_interrupted()  # the next heartbeat finds it out
    await eventually(lambda: _not_active(engine, run["id"]), what="the run to leave the worker")
    assert query(db_url, "SELECT lease_owner FROM queue WHERE run_id = ?", (run["id"],)) == [("w-other",)]
    assert query(db_url, "SELECT COUNT(*) FROM steps WHERE run_id = ?", (run["id"],)) == [(0,)]
    assert (await engine.get_run(run["id"]))["status"] == "running"  # the new holder's, untouched


def answer_claims_late(engine: Any, monkeypatch: pytest.MonkeyPatch, spent: float) -> None:
    """The worker's claims answer as if their commit came ``spent`` seconds into the lease
    (held up behind a stall or a long group commit)."""
    real_claim = engine.store.claim

    async def late(*args: Any, **kwargs: Any) -> Any:
        claimed, next_due = await real_claim(*args, **kwargs)
        return [dataclasses.replace(run, leased_at=run.leased_at - spent) for run in claimed], next_due

    monkeypatch.setattr(engine.store, "claim", late)


@pytest.mark.timeout(60)
async def test_a_step_starts_only_with_lease_ahead_of_it_renewing_first(
    make_engine: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim whose answer comes late (it committed just as a stall lifted) leaves the
    worker little of its lease. A step that cannot be interrupted (sync code in a thread)
    must not start on that: once the worker's fence stopped the run, the step would run on
    beside the next holder's execution. The worker renews the lease first, and the step
    runs once."""
    lease = 2.0
    started: list[float] = []

    def sync_body() -> int:
        started.append(time.monotonic())
        time.sleep(0.6)  # longer than what the late claim left before the fence
        return len(started)

    app = stepline.App("fence-late-claim")

    @app.function(id="late", trigger=stepline.TriggerEvent("fence/late"), retries=0)
    async def late(ctx: stepline.Context) -> int:
        return int(await ctx.step.run("sync", sync_body))

    engine = await make_engine(app, lease=lease)
    sender = await make_engine(app, run_worker=False)  # no hand-off: the worker claims the run
    answer_claims_late(engine, monkeypatch, spent=0.7 * lease)  # most of the lease spent before the answer came
    caplog.set_level(logging.WARNING, logger="stepline.executor")
    event_id = await sender.send({"name": "fence/late", "data": {}})
    (run,) = await runs_for_event(sender, event_id)
    done = await wait_run(sender, run["id"], timeout=20)
    assert done["status"] == "completed", done
    assert len(started) == 1, f"the sync step ran {len(started)} times: it started with its lease nearly spent"
    assert not [r for r in caplog.records if "stops on this worker" in r.getMessage()], "the worker stopped the run mid-step"


async def test_a_lease_that_came_too_late_to_start_on_is_renewed_not_given_up(
    make_engine: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim whose commit came after the worker's own fence deadline (its transaction was
    held up behind a long group commit: a slow link to the database). Nothing of the run
    has started, so the worker renews the lease, which succeeds only if no other worker
    leased the run since, and runs it. Stopped at once instead, the run went back to the
    queue and came back as late, again and again, and never ran."""
    lease = 2.0
    started: list[float] = []
    app = stepline.App("fence-dead-on-arrival")

    @app.function(id="doa", trigger=stepline.TriggerEvent("fence/doa"), retries=0)
    async def doa(ctx: stepline.Context) -> int:
        async def body() -> int:
            started.append(time.monotonic())
            return len(started)

        return int(await ctx.step.run("s1", body))

    engine = await make_engine(app, lease=lease)
    sender = await make_engine(app, run_worker=False)  # no hand-off: the worker claims the run
    answer_claims_late(engine, monkeypatch, spent=0.8 * lease)  # after the fence deadline (three quarters)
    caplog.set_level(logging.WARNING, logger="stepline.executor")
    event_id = await sender.send({"name": "fence/doa", "data": {}})
    (run,) = await runs_for_event(sender, event_id)
    done = await wait_run(sender, run["id"], timeout=20)
    assert done["status"] == "completed", done
    assert len(started) == 1
    assert not [r for r in caplog.records if "stops on this worker" in r.getMessage()], "the worker gave the run up"


async def test_leases_are_renewed_while_the_writer_is_held_up_by_a_long_commit(
    make_pg_engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL: heartbeats commit on a connection of their own. In the writer's queue
    they waited behind whatever it was committing (on a slow link, a group commit of many
    operations takes a round trip each: seconds); the renewal came after the worker's own
    fence deadline and it stopped runs the database was merely slow to take."""
    app = stepline.App("fence-busy-writer")
    calls: list[LongCall] = []

    @app.function(id="busy", trigger=stepline.TriggerEvent("fence/busy"), retries=0)
    async def busy(ctx: stepline.Context) -> str:
        return str(await ctx.step.run("long", calls[ctx.event.data["i"]]))

    engine = await make_pg_engine(app, lease=2.0)
    sender = await make_pg_engine(app, run_worker=False)
    caplog.set_level(logging.WARNING, logger="stepline.executor")
    calls.append(LongCall(seconds=4.0))
    event_id = await sender.send({"name": "fence/busy", "data": {"i": 0}})
    (run,) = await runs_for_event(sender, event_id)
    run_id = run["id"]
    await calls[0].wait_started()
    # A commit of this process that takes twice the lease (the step it waits for runs on).
    await engine.store.db.write(lambda conn: conn.execute("SELECT pg_sleep(4)"))
    done = await wait_run(sender, run_id, timeout=20)
    assert done["status"] == "completed", done
    assert not calls[0].interrupted.is_set()
    assert not [r for r in caplog.records if "stops on this worker" in r.getMessage()], "the worker stopped its run"


async def test_a_run_whose_row_another_transaction_locks_does_not_hold_up_the_other_renewals(
    make_pg_engine: Any, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL: the renewal passes over queue rows another transaction has locked (this
    process's writer saving a step, an operator's session) instead of waiting for them: it
    waited, so one locked row held up every lease of the worker, and it stopped them all."""
    app = stepline.App("fence-locked-row")
    calls: list[LongCall] = []

    @app.function(id="locked", trigger=stepline.TriggerEvent("fence/locked"), retries=0)
    async def locked(ctx: stepline.Context) -> str:
        return str(await ctx.step.run("long", calls[ctx.event.data["i"]]))

    await make_pg_engine(app, lease=2.0)
    sender = await make_pg_engine(app, run_worker=False)
    caplog.set_level(logging.WARNING, logger="stepline.executor")
    calls.extend([LongCall(seconds=4.0), LongCall(seconds=4.0)])
    run_ids = []
    for i in range(2):
        event_id = await sender.send({"name": "fence/locked", "data": {"i": i}})
        (run,) = await runs_for_event(sender, event_id)
        run_ids.append(run["id"])
        await calls[i].wait_started()
    with psycopg.connect(postgres_url) as session:  # one run's row, locked for longer than the lease
        session.execute("SELECT 1 FROM queue WHERE run_id = %s FOR UPDATE", (run_ids[0],))
        await asyncio.sleep(2.5)
    done = await wait_run(sender, run_ids[1], timeout=20)
    assert done["status"] == "completed", done
    assert not calls[1].interrupted.is_set()
    stopped = [r.getMessage() for r in caplog.records if "stops on this worker" in r.getMessage()]
    assert not [m for m in stopped if run_ids[1] in m], stopped
    await wait_run(sender, run_ids[0], timeout=20)


async def test_a_run_stopped_because_this_process_did_not_run_says_so(
    make_engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The fence stops runs whose lease it could not renew in time. When the cause is this
    process itself (frozen by SIGSTOP or a VM pause, or its event loop blocked by code
    that does not await), the log said the database was stalled or unreachable, and an
    operator looked for the fault in the wrong place."""
    lease = 2.0
    blocked: list[int] = []
    app = stepline.App("fence-blocked-loop")

    @app.function(id="blocking", trigger=stepline.TriggerEvent("fence/blocking"), retries=0)
    async def blocking(ctx: stepline.Context) -> str:
        async def body() -> str:
            if not blocked:
                blocked.append(1)
                time.sleep(lease * 1.25)  # a sync call in async code: the loop stops with it
            return "done"

        async def after() -> str:
            return "after"

        return str(await ctx.step.run("s1", body)) + str(await ctx.step.run("s2", after))

    engine = await make_engine(app, lease=lease)
    caplog.set_level(logging.INFO, logger="stepline.executor")
    done = await send_and_wait(engine, {"name": "fence/blocking", "data": {}}, timeout=20)
    assert done["status"] == "completed", done
    stops = [r.getMessage() for r in caplog.records if "could not be renewed in time" in r.getMessage()]
    assert stops, "the run was not stopped"
    assert all("this process did not run" in m for m in stops), stops


class OneThread:
    """An app whose function runs one sync step that records its start and holds its thread
    until ``release``; engines with ``sync_threads=1`` queue the next run's body behind it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started: list[str] = []
        self.app = stepline.App("fence-one-thread")

        def body(name: str) -> str:
            self.started.append(name)
            self.release.wait(20)
            return name

        @self.app.function(id="queued", trigger=stepline.TriggerEvent("fence/queued"), retries=0)
        async def queued(ctx: stepline.Context) -> str:
            return str(await ctx.step.run("sync", body, ctx.event.data["name"]))

    async def second_waits_behind_first(self, engine: Engine) -> tuple[dict[str, Any], dict[str, Any]]:
        """Send "first" (it takes the only thread), then "second" (its body waits for it)."""
        first = (await runs_for_event(engine, await engine.send({"name": "fence/queued", "data": {"name": "first"}})))[0]
        await eventually(lambda: self.started == ["first"], what="the first body to hold the only thread")
        second = (await runs_for_event(engine, await engine.send({"name": "fence/queued", "data": {"name": "second"}})))[0]
        executor = engine.worker.executor  # type: ignore[union-attr]
        await eventually(lambda: second["id"] in executor.active, what="the second run to wait for a thread")
        return first, second


async def test_a_sync_step_waiting_for_a_thread_does_not_start_once_its_run_stopped(make_engine: Any, db_url: str) -> None:
    """A sync body waits for a free thread after its lease was checked. Behind other runs'
    bodies (or a stall) it used to start after its run had stopped on this worker, beside
    the execution of the worker that took the run over, or after that one committed it."""
    one = OneThread()
    engine = await make_engine(one.app, sync_threads=1, lease=2.0)
    first, second = await one.second_waits_behind_first(engine)
    executor = engine.worker.executor  # type: ignore[union-attr]
    # Another worker reclaimed it (as after this one stalled past its lease); the heartbeat finds out.
    execute(db_url, "UPDATE queue SET lease_owner = 'w-other', lease_epoch = lease_epoch + 1 WHERE run_id = ?", (second["id"],))
    await eventually(lambda: executor.active[second["id"]][1].lost is not None, what="the worker to stop the second run")
    one.release.set()
    assert (await wait_run(engine, first["id"]))["output"] == "first"
    await eventually(lambda: second["id"] not in executor.active, what="the second run to leave the worker")
    assert one.started == ["first"], "the second run's body started after its run had stopped on this worker"
    assert query(db_url, "SELECT COUNT(*) FROM steps WHERE run_id = ?", (second["id"],)) == [(0,)]


@pytest.mark.timeout(60)
async def test_a_sync_step_waiting_for_a_thread_does_not_start_once_its_worker_handed_the_run_back(
    make_engine: Any, db_url: str
) -> None:
    """A worker that stops hands back, after the grace, the runs still in flight: a sync body
    still waiting for a thread then started anyway, beside the worker that took the run."""
    one = OneThread()
    engine = await make_engine(one.app, sync_threads=1)
    _, second = await one.second_waits_behind_first(engine)
    stopping = asyncio.ensure_future(engine.stop(grace=0.3))
    await asyncio.sleep(1.0)  # past the grace: both runs are being handed back
    one.release.set()  # the thread frees up
    await asyncio.wait_for(stopping, 30)
    await asyncio.sleep(0.3)
    assert one.started == ["first"], "the second run's body started after its worker had handed the run back"
    assert query(db_url, "SELECT lease_owner FROM queue WHERE run_id = ?", (second["id"],)) == [(None,)]


async def _not_active(engine: Engine, run_id: str) -> bool:
    return run_id not in engine.worker.executor.active  # type: ignore[union-attr]


# --- connection loss is never a failed step -----------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", ["pg_terminate_backend", "pg_cancel_backend"])
async def test_a_connection_cut_mid_pipeline_is_a_lost_connection_not_a_failed_step(
    make_pg_engine: Any, postgres_url: str, fault: str
) -> None:
    """The writer's backend is terminated (or its statement cancelled) while its checkpoint
    waits for a lock. Terminated: the batch runs again on a new connection and no step runs
    twice. Cancelled: the run stops and is taken up again, its uncommitted step once more.
    Either way no attempt is counted against the run."""
    journal = Journal()
    in_s2 = asyncio.Event()
    app = stepline.App("fence-cut")

    @app.function(id="cut", trigger=stepline.TriggerEvent("fence/cut"), retries=3)
    async def cut(ctx: stepline.Context) -> dict[str, str]:
        out = {"s1": await ctx.step.run("s1", journal.step, "s1", 0.0)}
        in_s2.set()
        out["s2"] = await ctx.step.run("s2", journal.step, "s2", 0.0)
        return out

    engine = await make_pg_engine(app)
    dbname = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_url) as locker:
        locker.execute("LOCK TABLE steps IN EXCLUSIVE MODE")  # s1's checkpoint will wait here
        event_id = await engine.send({"name": "fence/cut", "data": {}})
        await asyncio.wait_for(in_s2.wait(), 10)

        def blocked_writer() -> list[Any]:
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                return conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
                    (dbname,),
                ).fetchall()

        async def found() -> list[Any]:
            return await asyncio.get_running_loop().run_in_executor(None, blocked_writer)

        pids = await eventually(found, what="the writer to wait for the lock")
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            for (pid,) in pids:
                admin.execute(f"SELECT {fault}(%s)", (pid,))
        locker.rollback()
    (run,) = await runs_for_event(engine, event_id)
    done = await wait_run(engine, run["id"], timeout=30)
    assert done["status"] == "completed", done
    assert len(journal.of("s1")) == (1 if fault == "pg_terminate_backend" else 2), "s1 ran again after it committed"
    assert len(journal.of("s2")) == 1
    check_exactly_once(journal, done["output"], ["s1", "s2"])
    assert query(postgres_url, "SELECT COUNT(*) FROM step_attempts WHERE run_id = ?", (run["id"],)) == [(0,)]
    assert query(postgres_url, "SELECT MAX(attempts) FROM steps WHERE run_id = ?", (run["id"],)) == [(1,)]
    assert done["attempt"] == 0


# --- on_failure runs exactly once ---------------------------------------------------------


async def test_on_failure_runs_once_even_when_it_raises(make_engine: Any) -> None:
    calls: list[str] = []
    app = stepline.App("fence-onfail")

    async def handler(ctx: stepline.Context) -> None:
        calls.append(ctx.event.data["run_id"])
        raise ValueError("the failure handler itself fails")

    @app.function(id="flaky", trigger=stepline.TriggerEvent("fence/flaky"), retries=2, on_failure=handler)
    async def flaky(ctx: stepline.Context) -> None:
        raise stepline.NonRetriableError("no")

    engine = await make_engine(app)
    run = await _send_and_wait(engine, "fence/flaky")
    assert run["status"] == "failed"

    async def handler_runs() -> list[dict[str, Any]]:
        runs = await engine.list_runs(function_id="flaky-failure")
        return runs if runs and all(r["status"] in ("completed", "failed", "cancelled") for r in runs) else []

    (handled,) = await eventually(handler_runs, what="the on_failure run to end")
    assert handled["status"] == "failed"
    assert calls == [run["id"]]


async def _send_and_wait(engine: Engine, name: str) -> dict[str, Any]:
    event_id = await engine.send({"name": name, "data": {}})
    (run,) = await runs_for_event(engine, event_id)
    return await wait_run(engine, run["id"])


# --- cancel_on stops the step in flight, from any process ------------------------------


_SEND_FROM_ANOTHER_PROCESS = """
import asyncio, sys
from stepline.engine import Engine
from stepline.settings import Settings
from stepline.store import open_store

async def main():
    engine = Engine(open_store(sys.argv[1], migrate_now=False), Settings(db=sys.argv[1]))
    await engine.start(run_worker=False)
    await engine.send({"name": "fence/stop", "data": {"job": "j1"}})
    await engine.stop()

asyncio.run(main())
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sender", ["this process", "another process"])
async def test_cancel_on_stops_the_step_in_flight(make_engine: Any, db_url: str, sender: str) -> None:
    """With a long lease (so no heartbeat comes in time), a cancel event, sent here or from
    another process sharing the database, interrupts the running model call: it never
    finishes, and the run ends cancelled long before the call would have."""
    model_call = LongCall(25)
    app = stepline.App("fence-cancel")

    @app.function(
        id="answer", trigger=stepline.TriggerEvent("fence/answer"), retries=0,
        cancel_on=[stepline.CancelOn("fence/stop", match="data.job")],
    )
    async def answer(ctx: stepline.Context) -> str:
        return str(await ctx.step.run("call-model", model_call))

    engine = await make_engine(app, lease=120.0)
    event_id = await engine.send({"name": "fence/answer", "data": {"job": "j1"}})
    await model_call.wait_started()
    if sender == "this process":
        await engine.send({"name": "fence/stop", "data": {"job": "j1"}})
    else:
        env = {"PYTHONPATH": f"{REPO}/src:{REPO}", "PATH": "/usr/bin:/bin"}
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _SEND_FROM_ANOTHER_PROCESS, db_url, env=env)
        assert await proc.wait() == 0
    await model_call.wait_interrupted()
    (run,) = await runs_for_event(engine, event_id)
    done = await wait_run(engine, run["id"], timeout=10)
    assert done["status"] == "cancelled"
    assert query(db_url, "SELECT COUNT(*) FROM steps WHERE run_id = ? AND status = 'completed'", (run["id"],)) == [(0,)]


@pytest.mark.timeout(60)
async def test_a_lease_lost_at_the_last_checkpoint_ends_the_execution_quietly(make_pg_engine: Any, postgres_url: str) -> None:
    """The function returned while its last step's checkpoint waits; the lease is taken over
    before that checkpoint commits: the execution ends there, with nothing escaping its task."""
    go = asyncio.Event()
    app = stepline.App("fence-last")

    @app.function(id="last", trigger=stepline.TriggerEvent("fence/last"), retries=0)
    async def last(ctx: stepline.Context) -> str:
        await ctx.step.run("s1", lambda: "one")
        await go.wait()
        await ctx.step.run("s2", lambda: "two")
        await asyncio.sleep(0.05)  # s2's checkpoint goes out meanwhile, and waits for the lock below
        return "done"

    escaped: list[BaseException] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: escaped.append(context.get("exception")))
    engine = await make_pg_engine(app)
    event_id = await engine.send({"name": "fence/last", "data": {}})
    (run,) = await runs_for_event(engine, event_id)
    await eventually(lambda: query(postgres_url, "SELECT COUNT(*) FROM steps WHERE run_id = ?", (run["id"],)) == [(1,)], what="s1 saved")
    with psycopg.connect(postgres_url) as locker:
        locker.execute("LOCK TABLE queue IN EXCLUSIVE MODE")  # s2's checkpoint will wait for its lease check
        locker.execute("UPDATE queue SET lease_owner = 'w-other', lease_epoch = lease_epoch + 1 WHERE run_id = %s", (run["id"],))
        go.set()
        await eventually(lambda: engine.worker.executor.active[run["id"]][0].done(), what="the function to return")  # type: ignore[union-attr]
        locker.commit()  # the checkpoint now finds the lease taken over
    await eventually(lambda: _not_active(engine, run["id"]), what="the execution to end")
    await eventually(lambda: not engine.worker._running, what="the run's task to end")  # type: ignore[union-attr]
    gc.collect()
    assert not [e for e in escaped if e is not None], f"escaped the run's task: {escaped}"
    assert query(postgres_url, "SELECT key FROM steps WHERE run_id = ?", (run["id"],)) == [("s1",)]
    assert (await engine.get_run(run["id"]))["status"] == "running"  # the new holder's, untouched
