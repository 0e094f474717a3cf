"""The app the chaos suite runs in real processes (``stepline worker tests.chaos.app:app``).

Two functions start for every ``chaos/job`` event, one async and one sync, each made of
five strictly sequential steps. Every step execution writes a start and an end line to
the audit log (``tests/chaos/auditlog.py``) and returns its fresh execution id, so the
committed journal says which execution committed. Step durations come from the event;
``hold``, when given, makes the async function's s2 long enough to outlast a stall.
"""

from __future__ import annotations

import asyncio
import time

import stepline
from tests.chaos import auditlog

app = stepline.App("chaos")

EVENT = "chaos/job"
STEPS = ("s1", "s2", "s3", "s4", "s5")
FUNCTIONS = ("chaos-async", "chaos-sync")


async def async_step(run_id: str, step: str, seconds: float) -> str:
    """Can be cancelled mid-way (a worker stopping a run it may no longer hold): the end
    line then says when the cancellation reached it."""
    execution, started = auditlog.begin(run_id, step)
    try:
        await asyncio.sleep(seconds)
    except BaseException:
        auditlog.end(run_id, step, execution, started, stopped=True)
        raise
    return auditlog.end(run_id, step, execution, started)


def sync_step(run_id: str, step: str, seconds: float) -> str:
    """Runs in the worker's step thread pool, where nothing can stop it before it returns."""
    execution, started = auditlog.begin(run_id, step)
    time.sleep(seconds)
    return auditlog.end(run_id, step, execution, started)


@app.function(id="chaos-async", trigger=stepline.TriggerEvent(EVENT), retries=20)
async def pipeline(ctx: stepline.Context) -> dict:
    """Short, long, a sync step in a thread, short, medium."""
    seconds = ctx.event.data["seconds"]
    done = [await ctx.step.run("s1", async_step, ctx.run_id, "s1", seconds[0])]
    done.append(await ctx.step.run("s2", async_step, ctx.run_id, "s2", ctx.event.data.get("hold") or seconds[1]))
    done.append(await ctx.step.run("s3", sync_step, ctx.run_id, "s3", seconds[2]))
    done.append(await ctx.step.run("s4", async_step, ctx.run_id, "s4", seconds[3]))
    done.append(await ctx.step.run("s5", async_step, ctx.run_id, "s5", seconds[4]))
    return {"n": ctx.event.data["n"], "executions": done}


@app.function(id="chaos-sync", trigger=stepline.TriggerEvent(EVENT), retries=20)
def sync_pipeline(ctx: stepline.SyncContext) -> dict:
    """The same five steps from a sync handler (its own thread)."""
    seconds = ctx.event.data["seconds"]
    done = [ctx.step.run(step, sync_step, ctx.run_id, step, seconds[i]) for i, step in enumerate(STEPS)]
    return {"n": ctx.event.data["n"], "executions": done}
