"""Runs handed straight from an ingest to an idle worker in the same process.

The ingest transaction creates such a run already leased to the worker, which then
executes it without a claim. These tests read the database synchronously right after
``send`` returns: the worker cannot have claimed anything by then (its claim loop has
not had the event loop back), so a lease seen there was taken by the hand-off.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sqlite3
import subprocess
import sys
from typing import Any

import httpx
import psycopg
import pytest

import stepline
from stepline.store import Lease
from tests.helpers import eventually, runs_for_event, wait_run
from tests.test_crash import REPO, start_worker
from tests.test_http_cli import free_port


def query(db_url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one read on the test database outside the engine (placeholders: ``?``)."""
    if db_url.startswith("postgresql://"):
        with psycopg.connect(db_url) as conn:
            return conn.execute(sql.replace("?", "%s"), params).fetchall()
    conn = sqlite3.connect(db_url)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def queue_row(db_url: str, run_id: str) -> tuple[Any, ...]:
    rows = query(
        db_url,
        "SELECT q.lease_owner, r.status, r.started_at FROM queue q JOIN runs r ON r.id = q.run_id WHERE q.run_id = ?",
        (run_id,),
    )
    assert rows, f"run {run_id} has no queue row"
    return rows[0]


def run_ids_of(db_url: str, event_id: str) -> list[str]:
    return [r[0] for r in query(db_url, "SELECT id FROM runs WHERE event_id = ? ORDER BY id", (event_id,))]


async def settle(engine: Any) -> None:
    """Let the worker finish its start-up claim, so that it is idle and offers."""

    async def idle() -> bool:
        return bool(engine.worker._idle)

    await eventually(idle, what="the worker to be idle")


async def test_an_idle_worker_takes_a_new_run_at_ingest(make_engine, db_url) -> None:
    app = stepline.App("handoff")
    calls: list[str] = []

    @app.function(id="plain", trigger=stepline.TriggerEvent("handoff/go"), retries=0)
    async def plain(ctx: stepline.Context) -> str:
        return await ctx.step.run("only", lambda: calls.append(ctx.run_id) or "done")

    engine = await make_engine(app)
    await settle(engine)
    event_id = await engine.send({"name": "handoff/go", "data": {}})
    (run_id,) = run_ids_of(db_url, event_id)
    owner, status, started_at = queue_row(db_url, run_id)
    assert (owner, status) == (engine.worker.id, "running")
    assert started_at is not None
    done = await wait_run(engine, run_id)
    assert done["status"] == "completed" and done["output"] == "done"
    assert calls == [run_id]  # executed once, by the worker it was handed to


async def test_runs_that_need_a_concurrency_slot_or_a_window_are_queued(make_engine, db_url) -> None:
    """Neither is taken at ingest. The capped function's one slot is held by an earlier run
    while the event comes, so a claim cannot take its new run either before it is looked at
    (with the slot free, the worker's claim, woken by the same commit, raced the check)."""
    app = stepline.App("handoff-flow")
    release = asyncio.Event()

    @app.function(
        id="capped",
        trigger=[stepline.TriggerEvent("handoff/flow"), stepline.TriggerEvent("handoff/occupy")],
        concurrency=[stepline.Concurrency(limit=1)],
        retries=0,
    )
    async def capped(ctx: stepline.Context) -> str:
        if ctx.event.name == "handoff/occupy":
            await ctx.step.run("hold the slot", release.wait)
        return "capped"

    @app.function(
        id="debounced", trigger=stepline.TriggerEvent("handoff/flow"), debounce=stepline.Debounce(period="0.2s"), retries=0
    )
    async def debounced(ctx: stepline.Context) -> str:
        return "debounced"

    engine = await make_engine(app)
    await settle(engine)
    (holder,) = run_ids_of(db_url, await engine.send({"name": "handoff/occupy", "data": {}}))

    async def holding() -> bool:
        return bool(queue_row(db_url, holder)[0])

    await eventually(holding, what="the first run to hold the capped function's slot")
    event_id = await engine.send({"name": "handoff/flow", "data": {}})
    run_ids = run_ids_of(db_url, event_id)
    assert len(run_ids) == 2
    for run_id in run_ids:
        owner, status, _ = queue_row(db_url, run_id)
        assert owner is None and status == "queued"
    release.set()
    for run_id in [holder, *run_ids]:
        assert (await wait_run(engine, run_id))["status"] == "completed"


async def test_a_worker_with_no_free_slot_offers_nothing(make_engine, db_url) -> None:
    app = stepline.App("handoff-busy")
    release = asyncio.Event()

    @app.function(id="hold", trigger=stepline.TriggerEvent("handoff/hold"), retries=0)
    async def hold(ctx: stepline.Context) -> str:
        await ctx.step.run("wait", release.wait)
        return "held"

    engine = await make_engine(app, concurrency=1)
    await settle(engine)
    first = (await runs_for_event(engine, await engine.send({"name": "handoff/hold", "data": {}})))[0]["id"]
    await wait_run(engine, first, "running")
    second_event = await engine.send({"name": "handoff/hold", "data": {}})
    (second,) = run_ids_of(db_url, second_event)
    owner, status, _ = queue_row(db_url, second)
    assert owner is None and status == "queued"  # left in the queue for the next claim
    release.set()
    for run_id in (first, second):
        assert (await wait_run(engine, run_id))["status"] == "completed"


async def test_a_batch_of_events_is_handed_off_in_one_commit(make_engine, db_url) -> None:
    app = stepline.App("handoff-batch")

    @app.function(id="each", trigger=stepline.TriggerEvent("handoff/each"), retries=0)
    async def each(ctx: stepline.Context) -> int:
        return int(ctx.event.data["i"])

    engine = await make_engine(app, concurrency=5)
    await settle(engine)
    ids = await engine.send_many([{"name": "handoff/each", "data": {"i": i}} for i in range(8)])
    owners = collections.Counter(queue_row(db_url, run_ids_of(db_url, e)[0])[0] for e in ids)
    assert owners == {engine.worker.id: 5, None: 3}  # as many as it has slots; the rest queue
    for i, event_id in enumerate(ids):
        run = (await runs_for_event(engine, event_id))[0]
        done = await wait_run(engine, run["id"])
        assert done["status"] == "completed" and done["output"] == i


async def test_heartbeats_extend_only_the_leases_of_runs_being_executed(make_engine, db_url) -> None:
    """A lease the worker does not know it holds (its answer was lost) must run out."""
    app = stepline.App("handoff-hb")

    @app.function(id="hb", trigger=stepline.TriggerEvent("handoff/hb"), retries=0)
    async def hb(ctx: stepline.Context) -> None:
        return None

    engine = await make_engine(app, run_worker=False)
    await engine.send({"name": "handoff/hb", "data": {}})
    (claimed,), _ = await engine.store.claim("w-lost", ["hb"], 1, 60_000)

    def expiry() -> int:
        return int(query(db_url, "SELECT lease_expires_at FROM queue WHERE run_id = ?", (claimed.run_id,))[0][0])

    before = expiry()
    await engine.store.heartbeat("w-lost", [], 600_000)
    assert expiry() == before
    renewal = await engine.store.heartbeat("w-lost", [Lease(claimed.run_id, "w-lost", claimed.epoch)], 600_000)
    assert expiry() > before + 500_000
    assert renewal.held == {claimed.run_id: claimed.epoch}


@pytest.mark.timeout(90)
def test_a_handed_off_run_survives_a_crash_of_its_process(db_url, tmp_path) -> None:
    """`stepline dev` receives the event and runs it at once; SIGKILL mid-step; a worker
    elsewhere finishes it from its journal once the lease runs out."""
    log, marker = str(tmp_path / "steps.log"), str(tmp_path / "marker")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": REPO, "STEPLINE_LEASE": "1.5", "STEPLINE_LOG_LEVEL": "WARNING"}
    dev = subprocess.Popen(
        [sys.executable, "-m", "stepline.cli", "dev", "tests.apps_crash:app", "--db", db_url, "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    second = None
    try:
        asyncio.run(_until(lambda: _healthy(url), "stepline dev to answer"))
        reply = httpx.post(f"{url}/e/dev", json={"name": "crash/go", "data": {"log": log, "marker": marker}}, timeout=10)
        (event_id,) = reply.json()["ids"]
        (run_id,) = run_ids_of(db_url, event_id)
        asyncio.run(_until(lambda: os.path.exists(log) and "s3" in open(log).read(), "step s3 to start"))
        dev.send_signal(signal.SIGKILL)
        dev.wait(10)
        second = start_worker(db_url)

        def finished() -> bool:
            return query(db_url, "SELECT status FROM runs WHERE id = ?", (run_id,))[0][0] == "completed"

        asyncio.run(_until(finished, "the second worker to finish the run", timeout=45))
    finally:
        for proc in (dev, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
    lines = [line.split() for line in open(log).read().splitlines()]
    assert collections.Counter(name for name, _ in lines) == {"s1": 1, "s2": 1, "s3": 2, "s4": 1, "s5": 1}
    pids = {name: pid for name, pid in lines}
    assert pids["s1"] == str(dev.pid) and pids["s5"] == str(second.pid)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def _until(check: Any, what: str, timeout: float = 30.0) -> None:
    await eventually(check, timeout=timeout, interval=0.05, what=what)


class HeldClaims:
    """Records the runs the worker's claims return; ``held`` makes its next claim wait until
    ``release()``: a worker busy claiming, on cue."""

    def __init__(self, engine: Any, held: bool = True) -> None:
        self.entered = asyncio.Event()
        self.answered = asyncio.Event()  # a held claim came back
        self._release = asyncio.Event()
        if not held:
            self._release.set()
        self.claimed: list[str] = []
        original = engine.store.claim

        async def held_claim(*args: Any, **kwargs: Any) -> Any:
            self.entered.set()
            await self._release.wait()
            runs, next_due = await original(*args, **kwargs)
            self.claimed.extend(run.run_id for run in runs)
            self.answered.set()
            return runs, next_due

        engine.store.claim = held_claim  # type: ignore[method-assign]

    def release(self) -> None:
        self._release.set()


async def test_handoff_can_be_switched_off(make_engine, db_url) -> None:
    app = stepline.App("handoff-off")

    @app.function(id="queued", trigger=stepline.TriggerEvent("handoff/off"), retries=0)
    async def queued(ctx: stepline.Context) -> str:
        return "via the queue"

    engine = await make_engine(app, handoff=False)
    await settle(engine)
    claims = HeldClaims(engine, held=False)
    assert engine.worker.offer() is None
    event_id = await engine.send({"name": "handoff/off", "data": {}})
    (run_id,) = run_ids_of(db_url, event_id)
    assert (await wait_run(engine, run_id))["output"] == "via the queue"
    assert claims.claimed == [run_id]  # it went through the queue and a claim, not straight from the ingest


def test_the_handoff_variable_takes_yes_or_no_and_names_them_otherwise() -> None:
    from stepline import errors, settings

    assert settings.from_env({"STEPLINE_HANDOFF": "off"}).handoff is False
    assert settings.from_env({"STEPLINE_HANDOFF": "1"}).handoff is True
    with pytest.raises(errors.ConfigError, match=r"STEPLINE_HANDOFF='maybe': expected one of 1, true, yes, on, 0"):
        settings.from_env({"STEPLINE_HANDOFF": "maybe"})


async def test_a_send_from_another_event_loop_goes_through_the_queue(make_engine, db_url) -> None:
    """An app may send from its own loop in another thread; the runs must still execute
    on the engine's loop, so the worker offers nothing there."""
    app = stepline.App("handoff-thread")
    loops: list[object] = []

    @app.function(id="where", trigger=stepline.TriggerEvent("handoff/thread"), retries=0)
    async def where(ctx: stepline.Context) -> str:
        loops.append(asyncio.get_running_loop())
        return "ran"

    engine = await make_engine(app)
    await settle(engine)
    worker = engine.worker
    offers: list[Any] = []
    original_offer = worker.offer

    def recording_offer(*events: int) -> Any:
        offer = original_offer(*events)
        offers.append(offer)
        return offer

    worker.offer = recording_offer  # type: ignore[method-assign]

    def send_from_a_thread() -> str:
        return asyncio.run(engine.send({"name": "handoff/thread", "data": {}}))

    event_id = await asyncio.get_running_loop().run_in_executor(None, send_from_a_thread)
    assert offers == [None]  # idle, with free slots, but asked from another loop
    (run_id,) = run_ids_of(db_url, event_id)
    assert (await wait_run(engine, run_id))["output"] == "ran"
    assert loops == [asyncio.get_running_loop()]
    await settle(engine)
    assert recording_offer() is not None  # the same worker offers on its own loop
    worker.adopt(offers[-1], committed=False)


async def test_a_worker_busy_claiming_takes_new_runs_when_the_queue_has_none_waiting(make_engine, db_url) -> None:
    app = stepline.App("handoff-busy-claim")

    @app.function(id="quick", trigger=stepline.TriggerEvent("handoff/busy"), retries=0)
    async def quick(ctx: stepline.Context) -> str:
        return "quick"

    engine = await make_engine(app)
    await settle(engine)
    held = HeldClaims(engine)
    engine.worker.wake()
    await asyncio.wait_for(held.entered.wait(), 10)
    offer = engine.worker.offer()
    assert offer is not None and offer.check_queue  # not idle: the ingest must look at the queue itself
    engine.worker.adopt(offer, committed=False)
    event_id = await engine.send({"name": "handoff/busy", "data": {}})
    (run_id,) = run_ids_of(db_url, event_id)
    owner, status, _ = queue_row(db_url, run_id)
    assert (owner, status) == (engine.worker.id, "running")  # taken at ingest while the claim waits
    assert (await wait_run(engine, run_id))["output"] == "quick"
    held.release()
    await asyncio.wait_for(held.answered.wait(), 10)
    assert run_id not in held.claimed


async def test_a_busy_worker_leaves_new_runs_behind_a_ready_one_in_the_queue(make_engine, db_url) -> None:
    app = stepline.App("handoff-fair")

    @app.function(id="fair", trigger=stepline.TriggerEvent("handoff/fair"), retries=0)
    async def fair(ctx: stepline.Context) -> int:
        return int(ctx.event.data["n"])

    engine = await make_engine(app)
    await settle(engine)
    held = HeldClaims(engine)
    engine.worker.wake()
    await asyncio.wait_for(held.entered.wait(), 10)
    sender = await make_engine(app, run_worker=False)  # another process's ingest: its run waits in the queue
    (older,) = run_ids_of(db_url, await sender.send({"name": "handoff/fair", "data": {"n": 1}}))
    (newer,) = run_ids_of(db_url, await engine.send({"name": "handoff/fair", "data": {"n": 2}}))
    assert queue_row(db_url, newer)[:2] == (None, "queued")  # not taken past the older one
    held.release()
    assert (await wait_run(engine, older))["output"] == 1
    assert (await wait_run(engine, newer))["output"] == 2
    assert held.claimed[:2] == [older, newer]


async def test_a_claim_in_flight_keeps_the_slots_it_may_fill(make_engine, db_url) -> None:
    app = stepline.App("handoff-claiming")

    @app.function(id="slot", trigger=stepline.TriggerEvent("handoff/slot"), retries=0)
    async def slot(ctx: stepline.Context) -> str:
        return "slot"

    engine = await make_engine(app, concurrency=2)
    await settle(engine)
    held = HeldClaims(engine)
    engine.worker.wake()
    await asyncio.wait_for(held.entered.wait(), 10)
    assert engine.worker.offer() is None  # both slots belong to the claim that is under way
    (run_id,) = run_ids_of(db_url, await engine.send({"name": "handoff/slot", "data": {}}))
    assert queue_row(db_url, run_id)[:2] == (None, "queued")
    held.release()
    assert (await wait_run(engine, run_id))["output"] == "slot"


async def test_a_run_cancelled_by_a_later_event_of_its_own_batch_never_starts(make_engine, db_url) -> None:
    app = stepline.App("handoff-cancel")
    started: list[str] = []

    @app.function(
        id="doomed",
        trigger=stepline.TriggerEvent("handoff/start"),
        cancel_on=[stepline.CancelOn("handoff/stop", match="data.job")],
        retries=0,
    )
    async def doomed(ctx: stepline.Context) -> str:
        started.append(ctx.run_id)
        return "ran"

    engine = await make_engine(app)
    await settle(engine)  # idle: the hand-off takes the run in the same transaction that cancels it
    start_id, _ = await engine.send_many(
        [{"name": "handoff/start", "data": {"job": "j"}}, {"name": "handoff/stop", "data": {"job": "j"}}]
    )
    (run_id,) = run_ids_of(db_url, start_id)
    done = await wait_run(engine, run_id)
    assert done["status"] == "cancelled"
    assert "cancel_on" in done["error"]["message"]
    assert run_id not in engine.worker.executor.active  # ended at ingest: never adopted
    assert started == []
