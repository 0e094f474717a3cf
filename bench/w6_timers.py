"""W6 timers: many runs, each sleeping until an instant of its own.

    python -m bench.w6_timers --backend sqlite|postgres [--runs 100000] [--spread 60] [--lead 20]
    python -m bench.w6_timers --backend sqlite|postgres --backlog [--sleepers 1000000]

Lateness: ``--runs`` runs each sleep (``step.sleep_until``) until its own instant; the
instants are spread evenly over ``--spread`` seconds, starting ``--lead`` seconds after
the first event is sent (time to send the events and let every run reach its sleep;
events go in the order their runs are due). After the sleep a step notes how late it
began against its instant (the step's first line, on the wall clock the instant was
taken from): p50, p99, max. One worker process at default settings; its peak RSS while
the runs sleep and wake. ``setup_s`` says when every run was asleep; a run due before
that point would have been late for a reason other than its timer (``due_before_setup``
counts them).

``--backlog`` (W6-backlog): W3 (200 one-step runs, one at a time, on an idle engine)
with ``--sleepers`` runs asleep in the same database (another function of the same app,
due hours later), against W3 on an empty database, alternating engine by engine: once
with the hand-off (the run taken at ingest) and once through the queue and a claim
(``STEPLINE_HANDOFF=0``). Then both again with the sleepers' function not served by the
W3 engine (``other_`` figures: another app's, whose own worker would wake them), as
when workers serve different functions of one database. The sleepers are made by ingest
in batches of 1,000 events and reach their sleep as any run does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import stepline
from bench import common, harness, w3_latency
from bench.harness import engine_on, send_chunked


def make_app(lateness: list[float]) -> stepline.App:
    app = stepline.App("bench-w6")

    async def woke(at_ms: int) -> None:
        lateness.append(time.time() * 1000 - at_ms)

    @app.function(id="w6", trigger=stepline.TriggerEvent("bench/w6"), retries=0)
    async def timer(ctx: stepline.Context) -> None:
        at_ms = ctx.event.data["at"]
        await ctx.step.sleep_until("nap", dt.datetime.fromtimestamp(at_ms / 1000, dt.UTC))
        await ctx.step.run("woke", woke, at_ms)

    return app


async def asleep(engine, function_id: str, count: int, timeout: float = 1800.0, woke: list[float] | None = None) -> None:  # type: ignore[no-untyped-def]
    """Until ``count`` runs of the function sleep, less those that already ``woke``."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await engine.store.status_counts()
        n = sum(r["count"] for r in rows if r["status"] == "sleeping" and r["function_id"] == function_id)
        if n + len(woke or ()) >= count:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"only {n} of {count} runs were asleep after {timeout:.0f} s")
        await asyncio.sleep(0.2)


async def completed(engine, function_id: str) -> int:  # type: ignore[no-untyped-def]
    rows = await engine.store.status_counts()
    return sum(r["count"] for r in rows if r["status"] == "completed" and r["function_id"] == function_id)


async def lateness_trial(backend: str, runs: int, spread: float, lead: float) -> dict[str, float]:
    lateness: list[float] = []
    with common.fresh_db(backend, "w6") as url:
        async with engine_on(url, make_app(lateness)) as (engine, tracker):
            tracker.expect(runs)
            t0 = time.time() * 1000
            first = t0 + lead * 1000
            events = [{"name": "bench/w6", "data": {"at": int(first + spread * 1000 * i / runs)}} for i in range(runs)]
            await send_chunked(engine, events, chunk=1000)
            await asleep(engine, "w6", runs, woke=lateness)
            setup_done = time.time() * 1000
            peak_rss = 0.0
            while not tracker.done.is_set():
                peak_rss = max(peak_rss, common.rss_mib())
                try:
                    await asyncio.wait_for(tracker.done.wait(), 0.5)
                except TimeoutError:
                    # A finish whose commit was cut off by a lost connection is settled
                    # without the tracker hearing of it: the database has the last word.
                    if await completed(engine, "w6") >= runs:
                        break
    return {
        "runs": runs,
        "spread_s": spread,
        "setup_s": round((setup_done - t0) / 1000, 2),
        "due_before_setup": sum(1 for e in events if e["data"]["at"] < setup_done),  # type: ignore[index]
        "late_p50_ms": round(common.percentile(lateness, 50), 2),
        "late_p99_ms": round(common.percentile(lateness, 99), 2),
        "late_max_ms": round(max(lateness), 2),
        "peak_rss_mib": round(peak_rss, 1),
    }


def make_sleepers_app() -> stepline.App:
    app = stepline.App("bench-w6-sleepers")

    @app.function(id="sleeper", trigger=stepline.TriggerEvent("bench/sleeper"), retries=0)
    async def sleeper(ctx: stepline.Context) -> None:
        await ctx.step.sleep("nap", "6h")

    return app


async def make_sleepers(url: str, count: int) -> float:
    t0 = time.perf_counter()
    async with engine_on(url, make_sleepers_app()) as (engine, _):
        for i in range(0, count, 10_000):
            await send_chunked(engine, [{"name": "bench/sleeper", "data": {"i": j}} for j in range(i, min(count, i + 10_000))], chunk=1000)
        await asleep(engine, "sleeper", count)
    return time.perf_counter() - t0


async def w3_beside(url: str, handoff: bool, runs: int, *, serve_sleepers: bool = True) -> dict[str, float]:
    started: dict[int, float] = {}
    apps = (w3_latency.make_app(started), *([make_sleepers_app()] if serve_sleepers else []))
    async with engine_on(url, *apps, handoff=handoff) as (engine, tracker):
        return await w3_latency.measure_on(engine, tracker, started, runs)


async def backlog(backend: str, sleepers: int, runs: int) -> dict[str, float]:
    out: dict[str, float] = {"sleepers": sleepers}
    with common.fresh_db(backend, "w6b") as large_url, common.fresh_db(backend, "w6e") as empty_url:
        out["setup_s"] = round(await make_sleepers(large_url, sleepers), 1)
        for handoff, served, tag in ((True, True, "handoff"), (False, True, "queue"), (True, False, "other_handoff"), (False, False, "other_queue")):
            empty, full = [], []
            for _ in range(2):  # alternating, so both see the same minutes of the machine
                empty.append(await w3_beside(empty_url, handoff, runs, serve_sleepers=served))
                full.append(await w3_beside(large_url, handoff, runs, serve_sleepers=served))
            for figure in ("start_p50_ms", "start_p99_ms"):
                a = common.median([r[figure] for r in empty])
                b = common.median([r[figure] for r in full])
                out[f"{tag}_{figure}_empty"] = round(a, 3)
                out[f"{tag}_{figure}_sleepers"] = round(b, 3)
            out[f"{tag}_p50_vs_empty"] = round(out[f"{tag}_start_p50_ms_sleepers"] / out[f"{tag}_start_p50_ms_empty"], 2)
    return out


def main() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--runs", type=int, default=100_000)
    p.add_argument("--spread", type=float, default=60.0)
    p.add_argument("--lead", type=float, default=0.0, help="seconds before the first instant (default 30 on SQLite, 150 on PostgreSQL)")
    p.add_argument("--backlog", action="store_true")
    p.add_argument("--sleepers", type=int, default=1_000_000)
    p.add_argument("--w3-runs", type=int, default=200)
    args = p.parse_args()
    if args.backlog:
        common.emit("W6-backlog", "stepline", args.backend, **harness.run(backlog(args.backend, args.sleepers, args.w3_runs)))
        return
    lead = args.lead or (30.0 if args.backend == "sqlite" else 150.0)
    common.emit("W6", "stepline", args.backend, **harness.run(lateness_trial(args.backend, args.runs, args.spread, lead)))


if __name__ == "__main__":
    main()
