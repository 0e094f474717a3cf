"""W1 throughput: 2,000 runs of 3 no-op steps, enqueue to last completion.

    python -m bench.w1_throughput --backend sqlite|postgres [--runs 2000] [--trials 3] [--beside N] [--no-handoff]

Events go in with ``send_many`` in batches of 100 (one commit per batch); every step
is checkpointed before the next starts. One worker process, default settings
(concurrency 500).

``--beside N``: each trial also runs W1 on a database holding ``N`` ready runs of another
app's function, queued before W1's (a backlog waiting for a worker of its own, which the
W1 worker does not serve), and reports ``beside_steps_per_s`` and its ratio to W1 alone;
the two alternate, trial by trial. ``--no-handoff``: every run through the queue and a
claim (``STEPLINE_HANDOFF=0``), none taken at ingest.
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


async def trial(backend: str, runs: int, beside: int = 0, handoff: bool = True) -> dict[str, float]:
    with common.fresh_db(backend, "w1") as url:
        if beside:
            await harness.queue_elsewhere(url, beside)
        async with engine_on(url, make_app(), handoff=handoff) as (engine, tracker):
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
    p.add_argument("--beside", type=int, default=0, help="ready runs of another app queued first (see above)")
    p.add_argument("--no-handoff", action="store_true", help="every run through the queue and a claim")
    args = p.parse_args()
    handoff = not args.no_handoff
    records, beside = [], []
    for _ in range(args.trials):
        records.append(harness.run(trial(args.backend, args.runs, handoff=handoff)))
        if args.beside:
            beside.append(harness.run(trial(args.backend, args.runs, args.beside, handoff)))
    figures = common.median_record(records)
    figures["handoff"] = handoff
    if beside:
        figures["beside"] = args.beside
        figures["beside_steps_per_s"] = common.median([r["steps_per_s"] for r in beside])
        figures["beside_vs_alone"] = round(figures["beside_steps_per_s"] / figures["steps_per_s"], 2)
    common.emit("W1", "stepline", args.backend, **figures)


if __name__ == "__main__":
    main()
