"""W4 backlog: what one claim costs with 100,000 queued runs against 10 queued.

    python -m bench.w4_backlog --backend sqlite|postgres [--backlog 100000] [--keys 1000]

The runs belong to a function with a keyed concurrency limit (``event.data.k``, over
``--keys`` distinct keys), so claims also pass through concurrency admission. The
engine runs without its worker; the benchmark calls the store's claim directly: take
10 runs, time it, hand them back (release), 50 times, and reports the median. Flat
means the 100,000-run figure stays within 2× the 10-run one. On PostgreSQL the
backlog is measured twice: straight after the burst of inserts, and again after
``ANALYZE queue`` (what autovacuum does within about a minute).
"""

from __future__ import annotations

import time

import stepline
from bench import common, harness
from bench.harness import engine_on

BATCH = 10
CLAIMS = 50


def make_app() -> stepline.App:
    app = stepline.App("bench-w4")

    @app.function(
        id="w4",
        trigger=stepline.TriggerEvent("bench/w4"),
        retries=0,
        concurrency=[stepline.Concurrency(limit=10, key="event.data.k")],
    )
    async def w4(ctx: stepline.Context) -> None:
        return None

    return app


async def _claims(store, worker: str) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """Median ms of CLAIMS claims of BATCH runs, each handed back at once; runs per claim."""
    times: list[float] = []
    got = 0
    for _ in range(CLAIMS + 5):
        t = time.perf_counter()
        claimed, _next = await store.claim(worker, ["w4"], BATCH, 30_000)
        times.append((time.perf_counter() - t) * 1000)
        got = len(claimed)
        await store.release(worker, [c.run_id for c in claimed])
    return common.median(times[5:]), got


def _analyze(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE queue")


async def claim_cost(backend: str, backlog: int, keys: int) -> tuple[float, float, int, float | None]:
    """(median ms per claim, seconds to enqueue, runs per claim, median ms once PostgreSQL has fresh statistics)."""
    with common.fresh_db(backend, "w4") as url:
        async with engine_on(url, make_app(), run_worker=False) as (engine, _):
            t0 = time.perf_counter()
            events = [{"name": "bench/w4", "data": {"k": f"key-{i % keys}"}} for i in range(backlog)]
            for i in range(0, backlog, 1000):
                await engine.send_many(events[i : i + 1000])
            enqueue = time.perf_counter() - t0
            cost, got = await _claims(engine.store, "w-bench")
            analyzed = None
            if backend == "postgres":
                # Autovacuum refreshes the planner's statistics within about a minute of a
                # burst; until then a plan made for an empty queue may be chosen. Both shown.
                _analyze(url)
                analyzed, _ = await _claims(engine.store, "w-bench")
            return cost, enqueue, got, analyzed


async def measure(backend: str, backlog: int, keys: int) -> dict[str, float]:
    small, _, got_small, _ = await claim_cost(backend, 10, min(keys, 10))
    large, enqueue, got_large, analyzed = await claim_cost(backend, backlog, keys)
    extra = {} if analyzed is None else {"claim_ms_backlog_analyzed": round(analyzed, 3), "analyzed_vs_10": round(analyzed / small, 2)}
    return {
        "backlog": backlog,
        "keys": keys,
        "claim_ms_10_queued": round(small, 3),
        "claim_ms_backlog": round(large, 3),
        "backlog_vs_10": round(large / small, 2),
        "claimed_per_call": min(got_small, got_large),
        "enqueue_s": round(enqueue, 1),
        **extra,
    }


def main() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--backlog", type=int, default=100_000)
    p.add_argument("--keys", type=int, default=1000)
    args = p.parse_args()
    common.emit("W4", "stepline", args.backend, **harness.run(measure(args.backend, args.backlog, args.keys)))


if __name__ == "__main__":
    main()
