"""The apps ``stepline start`` serves in the HTTP benchmarks (loaded as ``bench.http_apps:<name>``).

``ingest``: one function, triggered by another event than the one the benchmark posts,
so every posted event is stored and triggers nothing. ``w1``: W1's function, three
no-op steps per run.
"""

from __future__ import annotations

import stepline

STEPS = 3

ingest = stepline.App("bench-http-ingest")


@ingest.function(id="elsewhere", trigger=stepline.TriggerEvent("bench/other"), retries=0)
async def elsewhere(ctx: stepline.Context) -> None:
    return None


w1 = stepline.App("bench-http-w1")


async def _noop() -> None:
    return None


@w1.function(id="w1", trigger=stepline.TriggerEvent("bench/w1"), retries=0)
async def three_steps(ctx: stepline.Context) -> None:
    for i in range(STEPS):
        await ctx.step.run(f"s{i}", _noop)
