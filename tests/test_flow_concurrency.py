"""Concurrency caps across real worker processes sharing one database."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

import stepline
from tests.helpers import eventually, runs_for_event, wait_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_worker(db_url: str, concurrency: int = 10) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": REPO, "STEPLINE_LEASE": "1.5", "STEPLINE_POLL_INTERVAL": "0.05", "STEPLINE_LOG_LEVEL": "WARNING"}
    return subprocess.Popen(
        [sys.executable, "-m", "stepline.cli", "worker", "tests.apps_flow:app", "--db", db_url, "--concurrency", str(concurrency)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def intervals(log: str, killed_at: float | None = None) -> dict[str, list[tuple[float, float, str]]]:
    """Per key, the (start, end, token) of every step execution; a killed one ends at ``killed_at``."""
    starts: dict[str, tuple[str, float]] = {}
    done: dict[str, list[tuple[float, float, str]]] = {}
    for line in open(log).read().splitlines():
        kind, key, token, at = line.split()
        if kind == "start":
            starts[token] = (key, float(at))
        else:
            k, began = starts.pop(token)
            done.setdefault(k, []).append((began, float(at), token))
    for token, (key, began) in starts.items():
        assert killed_at is not None, f"{token} started but never ended"
        done.setdefault(key, []).append((began, killed_at, token))
    return done


async def kill_when_three_steps_run(log: str, victim: subprocess.Popen[bytes]) -> float:
    """Once three steps are in flight (by ``log``), kill ``victim`` with SIGKILL; when it died."""

    async def three_running() -> bool:
        return os.path.exists(log) and open(log).read().count("start") >= 3

    await eventually(three_running, timeout=30, what="three steps in flight")
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    return time.time()


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(15)


def max_overlap(spans: list[tuple[float, float, str]]) -> int:
    edges = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans])
    current = peak = 0
    for _, delta in edges:  # an end sorts before a start at the same instant
        current += delta
        peak = max(peak, current)
    return peak


@pytest.mark.timeout(120)
async def test_cap_holds_across_processes_without_head_of_line_blocking(make_engine, db_url, tmp_path) -> None:
    from tests.apps_flow import app

    log = str(tmp_path / "steps.log")
    sender = await make_engine(app, run_worker=False)
    # Four single-slot processes: a cap of 3 can only hold if the processes respect each other.
    workers = [start_worker(db_url, concurrency=1) for _ in range(4)]
    try:
        a_ids = [await sender.send({"name": "flow/capped", "data": {"key": "A", "log": log}}) for _ in range(15)]
        b_ids = [await sender.send({"name": "flow/capped", "data": {"key": "B", "log": log}}) for _ in range(3)]
        runs = [(await runs_for_event(sender, e))[0]["id"] for e in a_ids + b_ids]
        for run_id in runs:
            assert (await wait_run(sender, run_id, timeout=60))["status"] == "completed"
    finally:
        for proc in workers:
            proc.terminate()
        for proc in workers:
            proc.wait(15)
    spans = intervals(log)
    assert max_overlap(spans["A"]) == 3  # the cap is used in full, never passed
    assert len({token.rsplit("-", 1)[1] for _, _, token in spans["A"]}) >= 3  # by several processes
    last_a_start = max(s for s, _, _ in spans["A"])
    assert max(s for s, _, _ in spans["B"]) < last_a_start  # B never queued behind A's backlog


@pytest.mark.timeout(120)
async def test_cap_holds_after_a_worker_is_killed(make_engine, db_url, tmp_path) -> None:
    from tests.apps_flow import app

    log = str(tmp_path / "steps.log")
    sender = await make_engine(app, run_worker=False)
    first = start_worker(db_url)
    later: list[subprocess.Popen[bytes]] = []
    try:
        ids = [await sender.send({"name": "flow/capped", "data": {"key": "K", "log": log, "seconds": 1.0}}) for _ in range(9)]
        killed_at = await kill_when_three_steps_run(log, first)
        later = [start_worker(db_url), start_worker(db_url)]
        for event_id in ids:
            run = (await runs_for_event(sender, event_id))[0]
            assert (await wait_run(sender, run["id"], timeout=60))["status"] == "completed"
    finally:
        stop_workers([first, *later])
    spans = intervals(log, killed_at=killed_at)
    assert max_overlap(spans["K"]) <= 3  # no over-admission while the dead worker's leases ran out
    assert len(spans["K"]) >= 9 + 3 - 1  # the killed in-flight steps ran again


async def test_wait_reason_says_concurrency_limited(make_engine) -> None:
    app = stepline.App("t")
    release = asyncio.Event()

    @app.function(id="one", trigger=stepline.TriggerEvent("t/one"), concurrency=stepline.Concurrency(1))
    async def one(ctx: stepline.Context) -> None:
        await ctx.step.run("hold", release.wait)

    engine = await make_engine(app)
    first = (await runs_for_event(engine, await engine.send({"name": "t/one"})))[0]
    await wait_run(engine, first["id"], "running")
    second = (await runs_for_event(engine, await engine.send({"name": "t/one"})))[0]

    async def limited() -> bool:
        return (await engine.get_run(second["id"]))["wait_reason"] == "concurrency_limited"

    await eventually(limited, what="the second run to wait for a slot")
    release.set()
    assert (await wait_run(engine, second["id"]))["status"] == "completed"


async def test_sleeping_runs_hold_no_slot_and_env_scope_is_shared(make_engine) -> None:
    app = stepline.App("t")
    running: dict[str, int] = {"now": 0, "peak": 0}

    async def call() -> None:
        running["now"] += 1
        running["peak"] = max(running["peak"], running["now"])
        await asyncio.sleep(0.05)
        running["now"] -= 1

    provider_cap = stepline.Concurrency(2, key='"openai"', scope="env")

    @app.function(id="chat", trigger=stepline.TriggerEvent("t/chat"), concurrency=provider_cap)
    async def chat(ctx: stepline.Context) -> None:
        await ctx.step.run("call", call)
        await ctx.step.sleep("nap", 0.2)  # holds no slot while asleep
        await ctx.step.run("call-2", call)

    @app.function(id="summary", trigger=stepline.TriggerEvent("t/summary"), concurrency=provider_cap)
    async def summary(ctx: stepline.Context) -> None:
        await ctx.step.run("call", call)

    engine = await make_engine(app)
    events = [{"name": "t/chat"}] * 4 + [{"name": "t/summary"}] * 4
    ids = await engine.send_many(events)
    for event_id in ids:
        run = (await runs_for_event(engine, event_id))[0]
        assert (await wait_run(engine, run["id"]))["status"] == "completed"
    assert running["peak"] == 2


async def test_account_and_env_scopes_are_separate_caps_each_shared_across_functions(make_engine) -> None:
    """As on Inngest: functions with an ``account`` cap on a key value share it, and an
    ``env`` cap on the same value is another cap (they were one: an SDK's account scope
    was read as env)."""
    app = stepline.App("t")
    release = asyncio.Event()
    running: set[str] = set()

    async def hold(fn: str) -> None:
        running.add(fn)
        await release.wait()

    account_cap = stepline.Concurrency(1, key='"provider"', scope="account")

    @app.function(id="a1", trigger=stepline.TriggerEvent("t/scopes"), concurrency=account_cap)
    async def a1(ctx: stepline.Context) -> None:
        await ctx.step.run("hold", hold, "a1")

    @app.function(id="a2", trigger=stepline.TriggerEvent("t/scopes"), concurrency=account_cap)
    async def a2(ctx: stepline.Context) -> None:
        await ctx.step.run("hold", hold, "a2")

    @app.function(id="e1", trigger=stepline.TriggerEvent("t/scopes"),
                  concurrency=stepline.Concurrency(1, key='"provider"', scope="env"))
    async def e1(ctx: stepline.Context) -> None:
        await ctx.step.run("hold", hold, "e1")

    engine = await make_engine(app)
    event_id = await engine.send({"name": "t/scopes"})

    async def two_hold() -> bool:
        return len(running) == 2 and "e1" in running

    await eventually(two_hold, what="the env-capped run and one account-capped run to hold a slot")
    runs = {r["function_id"]: r for r in await runs_for_event(engine, event_id)}
    waiting = ({"a1", "a2"} - running).pop()

    async def limited() -> bool:
        return (await engine.get_run(runs[waiting]["id"]))["wait_reason"] == "concurrency_limited"

    await eventually(limited, what="the other account-capped run to wait for the shared slot")
    release.set()
    for run in runs.values():
        assert (await wait_run(engine, run["id"]))["status"] == "completed"


@pytest.mark.timeout(120)
async def test_parallel_steps_take_slots_across_processes_and_after_a_kill(make_engine, db_url, tmp_path) -> None:
    """Runs of 3 parallel steps under a cap of 3 per key, on two processes, one of them
    killed with steps in flight: never more than 3 of the key's steps at once (the dead
    worker's extra slots held until its leases run out, then freed with them), every
    run completes with each step's result."""
    from tests.apps_flow import app

    log = str(tmp_path / "steps.log")
    sender = await make_engine(app, run_worker=False)
    first, second = start_worker(db_url), start_worker(db_url)
    later: list[subprocess.Popen[bytes]] = []
    try:
        ids = [await sender.send({"name": "flow/fanned", "data": {"key": "K", "log": log, "seconds": 0.5}}) for _ in range(4)]
        killed_at = await kill_when_three_steps_run(log, first)
        later = [start_worker(db_url)]
        for event_id in ids:
            run = (await runs_for_event(sender, event_id))[0]
            done = await wait_run(sender, run["id"], timeout=60)
            assert done["status"] == "completed" and done["output"] == ["part-0", "part-1", "part-2"], done
    finally:
        stop_workers([first, second, *later])
    spans = intervals(log, killed_at=killed_at)
    assert max_overlap(spans["K"]) <= 3, spans["K"]  # before: 9 (three runs of 3 steps each)
    assert len(spans["K"]) >= 4 * 3
