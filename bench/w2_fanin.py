"""W2 slow I/O fan-in (the LLM case): N runs, each one HTTP call that answers after 1.0 s.

    python -m bench.w2_fanin --backend sqlite|postgres [--runs 500 5000] [--call http|sleep]

One worker process; its concurrency is set to N so every call can be in flight at
once (the default, 500, covers the 500-run case). Events are sent in batches of 100,
as the Procrastinate benchmark defers its jobs. The call is a POST (``bench.http_call``)
from an async step to ``bench.fake_model`` on loopback (its own process). Makespan runs
from the first ``send`` to the last run's final commit; the ideal is the model's
1.0 s plus the time it took to enqueue. The worker's peak RSS is the memory figure
for a worker holding N in-flight runs.

Before each trial the same N calls are made with no engine at all (``W2-N-floor``):
what the client and the model alone take on these two cores, so the engine's own
share is the makespan less that floor. ``--call sleep`` replaces the HTTP call with a
1.0 s ``asyncio.sleep`` (``W2-N-engine``): the engine without the cost of opening and
serving N connections on the same two cores.
"""

from __future__ import annotations

import asyncio
import time

import stepline
from bench import common, harness, http_call
from bench.harness import engine_on, send_chunked

DELAY = 1.0
BATCH = 100  # events per send, as the peers' benchmarks defer theirs


def request(i: int) -> dict[str, object]:
    return {"model": "fake", "messages": [{"role": "user", "content": str(i)}]}


def make_app(url: str | None) -> stepline.App:
    """The W2 function; with no ``url`` its step sleeps for the model's delay instead of calling it."""
    app = stepline.App("bench-w2")

    async def call_model(i: int) -> str:
        if url is None:
            await asyncio.sleep(DELAY)
            return "ok"
        reply = await http_call.post_json(url, request(i))
        return str(reply["choices"][0]["message"]["content"])

    @app.function(id="w2", trigger=stepline.TriggerEvent("bench/w2"), retries=0)
    async def w2(ctx: stepline.Context) -> str:
        return await ctx.step.run("call-model", call_model, ctx.event.data["i"])

    return app


async def trial(backend: str, runs: int, model_url: str | None) -> dict[str, float]:
    if model_url is not None:
        common.model_stats(model_url, reset=True)
    peak_rss = 0.0
    app = make_app(None if model_url is None else f"{model_url}/v1/chat/completions")
    with common.fresh_db(backend, "w2") as url:
        async with engine_on(url, app, concurrency=max(500, runs)) as (engine, tracker):
            tracker.expect(runs)
            t0 = time.perf_counter()
            c0 = common.cpu_seconds()
            await send_chunked(engine, [{"name": "bench/w2", "data": {"i": i}} for i in range(runs)], chunk=BATCH)
            enqueued = time.perf_counter() - t0
            while not tracker.done.is_set():
                peak_rss = max(peak_rss, common.rss_mib())
                try:
                    await asyncio.wait_for(tracker.done.wait(), 0.1)
                except TimeoutError:
                    pass
            makespan = time.perf_counter() - t0
            cpu = common.cpu_seconds() - c0
    stats = common.model_stats(model_url) if model_url is not None else {"peak": runs}
    ideal = DELAY + enqueued
    return {
        "runs": runs,
        "makespan_s": round(makespan, 3),
        "ideal_s": round(ideal, 3),
        "vs_ideal": round(makespan / ideal, 3),
        "over_ideal_s": round(makespan - ideal, 3),
        "peak_in_flight": stats["peak"],
        "peak_rss_mib": round(peak_rss, 1),
        "worker_cpu_s": round(cpu, 3),
    }


async def floor(runs: int, model_url: str) -> dict[str, float]:
    """The same ``runs`` calls at once with no engine: the client's and the model's own time."""
    common.model_stats(model_url, reset=True)
    url = f"{model_url}/v1/chat/completions"
    t0 = time.perf_counter()
    c0 = common.cpu_seconds()
    await asyncio.gather(*(http_call.post_json(url, request(i)) for i in range(runs)))
    makespan = time.perf_counter() - t0
    cpu = common.cpu_seconds() - c0
    return {
        "runs": runs,
        "makespan_s": round(makespan, 3),
        "over_delay_s": round(makespan - DELAY, 3),
        "peak_in_flight": common.model_stats(model_url)["peak"],
        "client_cpu_s": round(cpu, 3),
    }


def main() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--runs", type=int, nargs="+", default=[500, 5000])
    p.add_argument("--call", choices=["http", "sleep"], default="http")
    args = p.parse_args()
    if args.call == "sleep":
        for runs in args.runs:
            record = harness.run(trial(args.backend, runs, None))
            common.emit(f"W2-{runs}-engine", "stepline", args.backend, **record)
        return
    with common.fake_model(DELAY) as model_url:
        for runs in args.runs:
            common.emit(f"W2-{runs}-floor", "harness", args.backend, **harness.run(floor(runs, model_url)))
            record = harness.run(trial(args.backend, runs, model_url))
            common.emit(f"W2-{runs}", "stepline", args.backend, **record)


if __name__ == "__main__":
    main()
