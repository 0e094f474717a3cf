"""A concurrency limit caps the steps executing at once, parallel steps of one run
included (as on Inngest, where each parallel step takes a slot of its own): an SDK
app's ``group.parallel`` over real HTTP, and a native ``asyncio.gather``."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import fastapi
import inngest
import inngest.fast_api
import pytest

import stepline
from tests.helpers import runs_for_event, wait_run
from tests.inngest_apps.harness import Server, ThreadServer, free_port, stepline_server

LIMIT = 2
WIDTH = 5  # parallel steps in each run
HOLD = 0.2  # seconds each step stays in flight, so that unlimited steps overlap


class InFlight:
    """Steps executing now, the most seen at once (per key), and how often each ran."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.ran: Counter[str] = Counter()

    async def step(self, key: str, name: str) -> str:
        with self._lock:
            self.now[key] += 1
            self.peak[key] = max(self.peak[key], self.now[key])
            self.ran[name] += 1
        try:
            await asyncio.sleep(HOLD)
        finally:
            with self._lock:
                self.now[key] -= 1
        return name


def sdk_app(flight: InFlight) -> fastapi.FastAPI:
    client = inngest.Inngest(app_id="capped-app")

    @client.create_function(
        fn_id="fan-out",
        trigger=inngest.TriggerEvent(event="capped/fan-out"),
        concurrency=[inngest.Concurrency(limit=LIMIT, key="event.data.user")],
    )
    async def fan_out(ctx: inngest.Context) -> list[str]:
        user, tag = ctx.event.data["user"], ctx.event.data["tag"]

        def part(n: int) -> Any:
            async def body() -> str:
                return await flight.step(str(user), f"{tag}-{n}")

            return lambda: ctx.step.run(f"part-{n}", body)

        return list(await ctx.group.parallel(tuple(part(n) for n in range(WIDTH))))

    app = fastapi.FastAPI()
    inngest.fast_api.serve(app, client, [fan_out])
    return app


@pytest.fixture
async def sdk_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Server, InFlight]]:
    async with stepline_server(db_url) as server:
        monkeypatch.setenv("INNGEST_DEV", server.url)
        flight = InFlight()
        port = free_port()
        with ThreadServer(sdk_app(flight), port):
            await server.sync(f"http://127.0.0.1:{port}/api/inngest")
            yield server, flight


@pytest.mark.timeout(90)
async def test_sdk_parallel_steps_each_take_a_slot(sdk_env: tuple[Server, InFlight]) -> None:
    server, flight = sdk_env
    # Two runs of one user (one key), one of another: the user's key never has more than
    # LIMIT steps in flight, across both runs; each step runs once.
    events = [await server.send("capped/fan-out", {"user": user, "tag": tag}) for user, tag in (("u1", "a"), ("u1", "b"), ("u2", "c"))]
    runs = [await server.finished((await server.run_for(e, "capped-app-fan-out"))["id"], timeout=60) for e in events]
    assert [r["status"] for r in runs] == ["completed"] * 3, runs
    assert runs[0]["output"] == [f"a-{n}" for n in range(WIDTH)]
    assert 1 <= flight.peak["u1"] <= LIMIT and 1 <= flight.peak["u2"] <= LIMIT, dict(flight.peak)
    assert set(flight.ran.values()) == {1} and len(flight.ran) == 3 * WIDTH, dict(flight.ran)


native = stepline.App("capped-native")
native_flight = InFlight()


@native.function(
    id="fan-out",
    trigger=stepline.TriggerEvent("capped/native"),
    concurrency=stepline.Concurrency(LIMIT, key="event.data.user"),
)
async def native_fan_out(ctx: stepline.Context) -> list[str]:
    user, tag = ctx.event.data["user"], ctx.event.data["tag"]
    parts = [ctx.step.run(f"part-{n}", native_flight.step, user, f"{tag}-{n}") for n in range(WIDTH)]
    return list(await asyncio.gather(*parts))


@pytest.mark.timeout(90)
async def test_native_parallel_steps_each_take_a_slot(make_engine) -> None:  # type: ignore[no-untyped-def]
    native_flight.__init__()  # type: ignore[misc]
    engine = await make_engine(native)
    events = [await engine.send({"name": "capped/native", "data": {"user": u, "tag": t}}) for u, t in (("u1", "a"), ("u1", "b"), ("u2", "c"))]
    runs = [await wait_run(engine, (await runs_for_event(engine, e))[0]["id"], "completed", timeout=60) for e in events]
    assert runs[0]["output"] == [f"a-{n}" for n in range(WIDTH)]
    assert 1 <= native_flight.peak["u1"] <= LIMIT and 1 <= native_flight.peak["u2"] <= LIMIT, dict(native_flight.peak)
    assert set(native_flight.ran.values()) == {1} and len(native_flight.ran) == 3 * WIDTH, dict(native_flight.ran)


async def test_step_slots_belong_to_the_lease(make_engine) -> None:  # type: ignore[no-untyped-def]
    """What a killed worker leaves: the slots its run's steps took end with its lease, so
    the run taken over starts with its own slot alone, and the old lease can neither take
    nor give one (a claim counts them meanwhile, like the run's own)."""
    from stepline.errors import LeaseLost
    from stepline.store import Lease

    engine = await make_engine(native, run_worker=False)
    store = engine.store
    await engine.send({"name": "capped/native", "data": {"user": "u9", "tag": "z"}})
    [first], _ = await store.claim("dead", [native_fan_out.id], 1, 300)
    dead = Lease(first.run_id, "dead", first.epoch)
    assert await store.take_step_slot(dead) is True  # its own slot and one more: the limit of 2
    assert await store.take_step_slot(dead) is False
    await engine.send({"name": "capped/native", "data": {"user": "u9", "tag": "y"}})
    assert (await store.claim("other", [native_fan_out.id], 1, 300, reclaim_expired=False))[0] == []  # key full
    await asyncio.sleep(0.4)  # the lease expires: a crashed worker's
    taken, _ = await store.claim("heir", [native_fan_out.id], 2, 30_000)
    heir = next(Lease(c.run_id, "heir", c.epoch) for c in taken if c.run_id == first.run_id)
    with pytest.raises(LeaseLost):
        await store.take_step_slot(dead)
    await store.give_step_slot(dead)  # nothing to give: the heir's count is its own
    assert [c.run_id for c in taken] == [first.run_id]  # the other run of u9 still waits behind the key
    assert await store.take_step_slot(heir) is True  # the dead lease's extra slot is gone: one more is free
    assert await store.take_step_slot(heir) is False
    await store.give_step_slot(heir)
    assert await store.take_step_slot(heir) is True
