"""The app the scale-out tests run in real worker processes (``stepline worker``).

Every step execution leaves one file in ``$STEPLINE_SCALE_DIR`` named
``<run id>.<step>.<pid>.<random>``: the test counts them to prove that each
committed step ran exactly once, and sees which process ran it.
"""

from __future__ import annotations

import os
import time
import uuid

import stepline

app = stepline.App("scaleout")


def _directory() -> str:
    directory = os.environ.get("STEPLINE_SCALE_DIR")
    if not directory:
        raise RuntimeError("set STEPLINE_SCALE_DIR to the directory where step executions are recorded")
    return directory


def record(run_id: str, step: str, value: int) -> int:
    """One file per execution, written before the step's result is returned (and checkpointed)."""
    name = f"{run_id}.{step}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    with open(os.path.join(_directory(), name), "w") as fh:
        fh.write(str(time.time()))
    return value


def timed(run_id: str, step: str, value: int) -> int:
    """Record when the step began and ended (in the file), to measure overlap across processes."""
    began = time.time()
    time.sleep(0.03)
    name = f"{run_id}.{step}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    with open(os.path.join(_directory(), name), "w") as fh:
        fh.write(f"{began} {time.time()}")
    return value


def hold(run_id: str, step: str, value: int) -> int:
    """Record, then block until the test drops a ``release`` file (the test kills us meanwhile)."""
    record(run_id, step, value)
    release = os.path.join(_directory(), "release")
    deadline = time.monotonic() + 100
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


@app.function(id="scale-pipeline", trigger=stepline.TriggerEvent("scale/job"), retries=3)
async def pipeline(ctx: stepline.Context) -> dict:
    """Three steps around a short sleep, so most runs resume on whichever worker is free."""
    n = int(ctx.event.data["n"])
    fetched = await ctx.step.run("fetch", record, ctx.run_id, "fetch", n)
    await ctx.step.sleep("pause", 0.02)
    doubled = await ctx.step.run("transform", record, ctx.run_id, "transform", fetched * 2)
    stored = await ctx.step.run("store", record, ctx.run_id, "store", doubled + 1)
    return {"n": n, "result": stored}


@app.function(id="scale-held", trigger=stepline.TriggerEvent("scale/held"), retries=3)
def held(ctx: stepline.SyncContext) -> list:
    """A run whose middle step waits for the test: the worker running it gets SIGKILLed there."""
    return [
        ctx.step.run("before", record, ctx.run_id, "before", 1),
        ctx.step.run("held", hold, ctx.run_id, "held", 2),
        ctx.step.run("after", record, ctx.run_id, "after", 3),
    ]


CAP = 3


@app.function(
    id="scale-capped", trigger=stepline.TriggerEvent("scale/capped"), concurrency=stepline.Concurrency(limit=CAP)
)
async def capped(ctx: stepline.Context) -> int:
    """At most ``CAP`` of these execute steps at once, however many workers there are."""
    first = await ctx.step.run("work-0", timed, ctx.run_id, "work-0", 1)
    return await ctx.step.run("work-1", timed, ctx.run_id, "work-1", first + 1)
