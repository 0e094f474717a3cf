"""W4 backlog: what one claim costs with 100,000 queued runs against 10 queued.

    python -m bench.w4_backlog --backend sqlite|postgres [--backlog 100000] [--keys 1000] [--trials 3] [--elsewhere N]

The runs belong to a function with a keyed concurrency limit (``event.data.k``, over
``--keys`` distinct keys), so claims also pass through concurrency admission. The
engines run without their workers; the benchmark calls the stores' claim directly: take
10 runs, time it, hand them back (release), 50 times on each database in turn (one
with 10 queued, one with the backlog, side by side), and reports each median. Flat
means the 100,000-run figure stays within 2× the 10-run one. On PostgreSQL the
backlog is measured twice: straight after the burst of inserts, and again after
``ANALYZE queue`` (what autovacuum does within about a minute). Each figure is the
median over ``--trials`` pairs of fresh databases: with the same statements, the
claims of one pair can run 1.5× slower on one database's writer thread than on the
other's, by which of the two shared cores each thread lands on.

``--elsewhere N`` (reported as W4-elsewhere): the backlog's database also holds ``N``
ready runs of another app's function, queued before the backlog (a backlog waiting for
workers of its own, which the claims here do not serve).
"""

from __future__ import annotations

import time

import stepline
from bench import common, harness
from bench.harness import engine_on
from stepline.store import Lease

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


async def _claim_once(store, worker: str) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """ms for one claim of BATCH runs (handed back at once), and how many it got."""
    t = time.perf_counter()
    claimed, _next = await store.claim(worker, ["w4"], BATCH, 30_000)
    ms = (time.perf_counter() - t) * 1000
    await store.release([Lease(c.run_id, worker, c.epoch) for c in claimed])
    return ms, len(claimed)


async def _alternating_claims(small, large) -> tuple[float, float, int]:  # type: ignore[no-untyped-def]
    """Median ms per claim on each store, claims taken in turn (small, large, small, …)
    so that both medians come from the same seconds: a claim is a fraction of a
    millisecond whose cost drifts with how the two cores are shared, and two phases
    measured one after the other drifted apart by up to 2×."""
    times: dict[str, list[float]] = {"small": [], "large": []}
    got = BATCH
    for i in range(CLAIMS + 5):
        for name, store in (("small", small), ("large", large)):
            ms, n = await _claim_once(store, "w-bench")
            got = min(got, n)
            if i >= 5:
                times[name].append(ms)
    return common.median(times["small"]), common.median(times["large"]), got


def _analyze(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE queue")


async def _enqueue(engine, count: int, keys: int) -> float:  # type: ignore[no-untyped-def]
    """Seconds to send ``count`` events over ``keys`` concurrency keys."""
    t0 = time.perf_counter()
    events = [{"name": "bench/w4", "data": {"k": f"key-{i % keys}"}} for i in range(count)]
    for i in range(0, count, 1000):
        await engine.send_many(events[i : i + 1000])
    return time.perf_counter() - t0


async def measure(backend: str, backlog: int, keys: int, elsewhere: int = 0) -> dict[str, float]:
    with common.fresh_db(backend, "w4s") as small_url, common.fresh_db(backend, "w4l") as large_url:
        if elsewhere:
            await harness.queue_elsewhere(large_url, elsewhere)
        async with engine_on(small_url, make_app(), run_worker=False) as (small, _), engine_on(
            large_url, make_app(), run_worker=False
        ) as (large, _):
            await _enqueue(small, 10, min(keys, 10))
            enqueue = await _enqueue(large, backlog, keys)
            small_ms, large_ms, got = await _alternating_claims(small.store, large.store)
            extra: dict[str, float] = {}
            if backend == "postgres":
                # Autovacuum refreshes the planner's statistics within about a minute of a
                # burst; until then a plan made for an empty queue may be chosen. Both shown.
                _analyze(large_url)
                small_again, analyzed, _ = await _alternating_claims(small.store, large.store)
                extra = {"claim_ms_backlog_analyzed": round(analyzed, 3), "analyzed_vs_10": round(analyzed / small_again, 2)}
    return {
        "backlog": backlog,
        "keys": keys,
        **({"elsewhere": elsewhere} if elsewhere else {}),
        "claim_ms_10_queued": round(small_ms, 3),
        "claim_ms_backlog": round(large_ms, 3),
        "backlog_vs_10": round(large_ms / small_ms, 2),
        "claimed_per_call": got,
        "enqueue_s": round(enqueue, 1),
        **extra,
    }


def main() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--backlog", type=int, default=100_000)
    p.add_argument("--keys", type=int, default=1000)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--elsewhere", type=int, default=0, help="ready runs of another app queued before the backlog")
    args = p.parse_args()
    records = [harness.run(measure(args.backend, args.backlog, args.keys, args.elsewhere)) for _ in range(args.trials)]
    common.emit("W4-elsewhere" if args.elsewhere else "W4", "stepline", args.backend, **common.median_record(records))


if __name__ == "__main__":
    main()
