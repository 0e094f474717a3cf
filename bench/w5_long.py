"""W5 long runs: one run of 1,000 sequential steps.

    python -m bench.w5_long --backend sqlite|postgres [--steps 1000] [--trials 3]

Reports the total, and the median time per step over steps 100–199 (the first
hundred still overlap the engine's start-up) and over the last 100: with continuous
execution (no replay between steps) the two are equal and the total grows linearly
with the number of steps. On a shared 2-core machine a step takes one of two times
(about 0.05 or 0.15 ms on SQLite) depending on whether the event loop and the writer
thread each have a core at that moment, so a single run can compare a fast window
with a slow one; each figure is the median over ``--trials`` runs.
"""

from __future__ import annotations

import time

import stepline
from bench import common, harness
from bench.harness import engine_on

WINDOW = 100


def make_app(stamps: list[float], steps: int) -> stepline.App:
    app = stepline.App("bench-w5")

    async def tick(i: int) -> int:
        stamps.append(time.perf_counter())
        return i

    @app.function(id="w5", trigger=stepline.TriggerEvent("bench/w5"), retries=0)
    async def w5(ctx: stepline.Context) -> int:
        total = 0
        for i in range(steps):
            total += await ctx.step.run("step", tick, i)
        return total

    return app


async def measure(backend: str, steps: int) -> dict[str, float]:
    stamps: list[float] = []
    with common.fresh_db(backend, "w5") as url:
        async with engine_on(url, make_app(stamps, steps)) as (engine, tracker):
            tracker.expect(1)
            t0 = time.perf_counter()
            await engine.send({"name": "bench/w5"})
            await tracker.done.wait()
            total = time.perf_counter() - t0
    # Median step-to-step interval in each window: one stall of the shared machine
    # (another process, a checkpoint) does not pass for a trend.
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    first = common.median(gaps[WINDOW : 2 * WINDOW])  # after the first 100: start-up settles
    last = common.median(gaps[-WINDOW:])
    return {
        "steps": steps,
        "total_s": round(total, 3),
        "first_ms_per_step": round(first * 1000, 3),
        "last_ms_per_step": round(last * 1000, 3),
        "last_vs_first": round(last / first, 2),
    }


def main() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--trials", type=int, default=3)
    args = p.parse_args()
    records = [harness.run(measure(args.backend, args.steps)) for _ in range(args.trials)]
    common.emit("W5", "stepline", args.backend, **common.median_record(records))


if __name__ == "__main__":
    main()
