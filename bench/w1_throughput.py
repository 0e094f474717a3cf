"""W1 throughput: 2,000 runs of 3 no-op steps, enqueue to last completion.

    python -m bench.w1_throughput --backend sqlite|postgres [--runs 2000] [--trials 3]

Events go in with ``send_many`` in batches of 100 (one commit per batch); every step
is checkpointed before the next starts. One worker process, default settings
(concurrency 500).
"""

from __future__ import annotations

import stepline
from bench import common, harness
from bench.harness import engine_on, send_chunked

STEPS = 3


def make_app() -> stepline.App:
    app = stepline.App("bench-w1")

    async def noop() -> None:
        return None

    @app.function(id="w1", trigger=stepline.TriggerEvent("bench/w1"), retries=0)
    async def w1(ctx: stepline.Context) -> None:
        for i in range(STEPS):
            await ctx.step.run(f"s{i}", noop)

    return app


async def trial(backend: str, runs: int) -> dict[str, float]:
    with common.fresh_db(backend, "w1") as url:
        async with engine_on(url, make_app()) as (engine, tracker):
            tracker.expect(runs)
            clock = common.Clock()
            clock.start()
            await send_chunked(engine, [{"name": "bench/w1", "data": {"i": i}} for i in range(runs)])
            await tracker.done.wait()
            wall, cpu = clock.stop()
    return {
        "runs": runs,
        "seconds": round(wall, 3),
        "runs_per_s": round(runs / wall, 1),
        "steps_per_s": round(runs * STEPS / wall, 1),
        "cpu_ms_per_run": round(cpu * 1000 / runs, 3),
    }


def main() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--runs", type=int, default=2000)
    p.add_argument("--trials", type=int, default=3)
    args = p.parse_args()
    records = [harness.run(trial(args.backend, args.runs)) for _ in range(args.trials)]
    common.emit("W1", "stepline", args.backend, **common.median_record(records))


if __name__ == "__main__":
    main()
