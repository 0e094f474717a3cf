"""W7 waits at scale: many runs, each waiting for an event with its own match key.

    python -m bench.w7_waits --backend sqlite|postgres [--waiters 10000] [--samples 200]

``--waiters`` runs each reach ``step.wait_for_event("reply", event="bench/w7.reply",
match="data.k")`` with a key of their own, and sleep there. Then:

- **resume**: one matching event at a time (20 ms apart, a random waiter each), from just
  before ``send`` to the first line of the step after the wait; p50 / p99.
- **ingest of events that match nothing**: batches of 100 ``bench/w7.reply`` events whose
  keys no run waits for, sent alternately to this database and to one where only 10 runs
  wait (the same function, the same name), so both medians come from the same seconds;
  µs per event on each, and the ratio.
- **the same for waits that compare a number**: as many more runs each wait with
  ``if_="async.data.price <= event.data.target"`` (a target of their own; no equality to
  key them), against 10 such runs; ``bench/w7.quote`` events priced above every target.

One process: both engines and their workers; completion and resume are seen in the step
bodies.
"""

from __future__ import annotations

import asyncio
import random
import time

import stepline
from bench import common, harness
from bench.harness import engine_on

GAP = 0.02
BATCH = 100


def make_app(resumed: dict[str, float], arrived: dict[str, asyncio.Event]) -> stepline.App:
    app = stepline.App("bench-w7")

    async def mark(key: str) -> None:
        resumed[key] = time.perf_counter()
        signal = arrived.get(key)
        if signal is not None:
            signal.set()

    @app.function(id="w7", trigger=stepline.TriggerEvent("bench/w7.start"), retries=0)
    async def waiter(ctx: stepline.Context) -> None:
        key = ctx.event.data["k"]
        await ctx.step.wait_for_event("reply", event="bench/w7.reply", match="data.k", timeout="6h")
        await ctx.step.run("resumed", mark, key)

    @app.function(id="w7cmp", trigger=stepline.TriggerEvent("bench/w7.bid"), retries=0)
    async def bidder(ctx: stepline.Context) -> None:
        await ctx.step.wait_for_event("quote", event="bench/w7.quote", if_="async.data.price <= event.data.target", timeout="6h")

    return app


async def waiting(engine, count: int, timeout: float = 600.0) -> None:  # type: ignore[no-untyped-def]
    """Until ``count`` runs wait for their event."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await engine.store.status_counts()
        n = sum(r["count"] for r in rows if r["status"] == "waiting")
        if n >= count:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"only {n} of {count} runs reached their wait within {timeout:.0f} s")
        await asyncio.sleep(0.1)


async def start_waiters(engine, count: int, prefix: str) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    events = [{"name": "bench/w7.start", "data": {"k": f"{prefix}{i}"}} for i in range(count)]
    for i in range(0, count, 500):
        await engine.send_many(events[i : i + 500])
    await waiting(engine, count)
    return time.perf_counter() - t0


async def start_bidders(engine, count: int, already: int) -> None:  # type: ignore[no-untyped-def]
    events = [{"name": "bench/w7.bid", "data": {"target": i}} for i in range(count)]
    for i in range(0, count, 500):
        await engine.send_many(events[i : i + 500])
    await waiting(engine, already + count)


def unmatched_reply(b: int, j: int, _above: int) -> dict:
    return {"name": "bench/w7.reply", "data": {"k": f"nobody-{b}-{j}"}}


def unmatched_quote(b: int, j: int, above: int) -> dict:
    return {"name": "bench/w7.quote", "data": {"price": above + b * BATCH + j}}


async def ingest_unmatched(small, large, batches: int, event=unmatched_reply, above: int = 0) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Median µs per event of batches that match nothing, on each engine in turn."""
    times: dict[str, list[float]] = {"small": [], "large": []}
    for b in range(batches + 3):
        for name, engine in (("small", small), ("large", large)):
            events = [event(b, j, above) for j in range(BATCH)]
            t = time.perf_counter()
            await engine.send_many(events)
            if b >= 3:
                times[name].append((time.perf_counter() - t) * 1e6 / BATCH)
    return common.median(times["small"]), common.median(times["large"])


async def measure(backend: str, waiters: int, samples: int, batches: int) -> dict[str, float]:
    resumed: dict[str, float] = {}
    arrived: dict[str, asyncio.Event] = {}
    latencies: list[float] = []
    with common.fresh_db(backend, "w7l") as large_url, common.fresh_db(backend, "w7s") as small_url:
        async with engine_on(large_url, make_app(resumed, arrived)) as (large, _), \
                engine_on(small_url, make_app(resumed, arrived)) as (small, _):
            setup = await start_waiters(large, waiters, "k")
            await start_waiters(small, 10, "s")
            await asyncio.sleep(0.5)
            keys = random.Random(7).sample(range(waiters), min(waiters, samples + 10))
            for n, i in enumerate(keys):
                key = f"k{i}"
                arrived[key] = asyncio.Event()
                t0 = time.perf_counter()
                await large.send({"name": "bench/w7.reply", "data": {"k": key}})
                await asyncio.wait_for(arrived[key].wait(), 30)
                if n >= 10:
                    latencies.append((resumed[key] - t0) * 1000)
                await asyncio.sleep(GAP)
            small_us, large_us = await ingest_unmatched(small, large, batches)
            await start_bidders(large, waiters, waiters - len(keys))
            await start_bidders(small, 10, 10)
            cmp_small_us, cmp_large_us = await ingest_unmatched(small, large, batches, unmatched_quote, waiters)
    return {
        "waiters": waiters,
        "setup_s": round(setup, 2),
        "resume_p50_ms": round(common.percentile(latencies, 50), 3),
        "resume_p99_ms": round(common.percentile(latencies, 99), 3),
        "unmatched_us_10_waiting": round(small_us, 1),
        "unmatched_us_all_waiting": round(large_us, 1),
        "unmatched_vs_10": round(large_us / small_us, 2),
        "compare_unmatched_us_10_waiting": round(cmp_small_us, 1),
        "compare_unmatched_us_all_waiting": round(cmp_large_us, 1),
        "compare_unmatched_vs_10": round(cmp_large_us / cmp_small_us, 2),
    }


def main() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--waiters", type=int, default=10_000)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--batches", type=int, default=30)
    args = p.parse_args()
    common.emit("W7", "stepline", args.backend, **harness.run(measure(args.backend, args.waiters, args.samples, args.batches)))


if __name__ == "__main__":
    main()
