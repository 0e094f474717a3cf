"""W3 latency: 200 single-step runs, one at a time, on an idle engine.

    python -m bench.w3_latency --backend sqlite|postgres [--runs 200] [--no-handoff]

event→start: from just before ``send`` to the first line of the step body.
event→complete: from just before ``send`` to the return of the run's final commit.
The engine sits idle for 20 ms between runs, so every run finds it waiting, and takes
each new run straight from the ingest (hand-off). ``--no-handoff`` measures the path
through the queue instead (``W3-queue``): the commit wakes the worker, which claims.
"""

from __future__ import annotations

import asyncio
import time

import stepline
from bench import common, harness
from bench.harness import engine_on

IDLE_GAP = 0.02


def make_app(started: dict[int, float]) -> stepline.App:
    app = stepline.App("bench-w3")

    async def mark(i: int) -> None:
        started[i] = time.perf_counter()

    @app.function(id="w3", trigger=stepline.TriggerEvent("bench/w3"), retries=0)
    async def w3(ctx: stepline.Context) -> None:
        await ctx.step.run("only", mark, ctx.event.data["i"])

    return app


async def measure_on(engine, tracker, started: dict[int, float], runs: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """W3 on a started engine whose app is ``make_app(started)``."""
    to_start: list[float] = []
    to_complete: list[float] = []
    await asyncio.sleep(0.3)  # let start-up settle
    for i in range(runs + 10):
        tracker.expect(1)
        t0 = time.perf_counter()
        await engine.send({"name": "bench/w3", "data": {"i": i}})
        await tracker.done.wait()
        t1 = time.perf_counter()
        if i >= 10:  # the first few warm caches and statements
            to_start.append((started[i] - t0) * 1000)
            to_complete.append((t1 - t0) * 1000)
        await asyncio.sleep(IDLE_GAP)
    return {
        "runs": runs,
        "start_p50_ms": round(common.percentile(to_start, 50), 3),
        "start_p99_ms": round(common.percentile(to_start, 99), 3),
        "complete_p50_ms": round(common.percentile(to_complete, 50), 3),
        "complete_p99_ms": round(common.percentile(to_complete, 99), 3),
    }


async def measure(backend: str, runs: int, handoff: bool = True) -> dict[str, float]:
    started: dict[int, float] = {}
    with common.fresh_db(backend, "w3") as url:
        async with engine_on(url, make_app(started), handoff=handoff) as (engine, tracker):
            return await measure_on(engine, tracker, started, runs)


def main() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--no-handoff", action="store_true", help="every run through the queue and a claim")
    args = p.parse_args()
    figures = harness.run(measure(args.backend, args.runs, handoff=not args.no_handoff))
    common.emit("W3-queue" if args.no_handoff else "W3", "stepline", args.backend, **figures)


if __name__ == "__main__":
    main()
