"""Metrics reads beside a history of stored runs: what ``/metrics`` and the dashboard pay.

    python -m bench.metrics_read --backend sqlite|postgres [--runs 1000000] [--functions 20] [--reads 9] [--days 7] [--asleep N | --hour] [--viewers 10] [--watch 10]

Fills a database with ``--runs`` finished runs over ``--functions`` functions (written
straight into ``runs`` in large statements, as an app's history would leave them: ended
evenly over the last ``--days``, one in ten failed), then times each read the metrics make (median of
``--reads``): the runs per function and status (``stepline_runs``), the last hour's
outcomes and durations per function, the dashboard's function list, and the whole
``/metrics`` text, and the dashboard's metrics page (an hour of runs, a week of usage). Reported beside the same reads on a database of 1,000 runs (the
ratio: flat means the history costs the reads nothing).

Then ``--viewers`` dashboards (10) each ask for the function list every second for
``--watch`` seconds (10; through the server's ASGI app, in process): the requests answered,
the database reads they cost, and the share of the time those reads took (``viewer_busy``).

``--hour`` (reported as metrics-read-hour): the runs all ended in the last hour (a busy one),
which the last hour's reads (the function list, ``/metrics``) read one by one.

``--asleep N`` (reported as metrics-read-asleep): the large database also holds ``N``
unfinished runs, asleep until an hour from now with their queue rows (W6's backlog), which
the queue depth and the unfinished part of the runs per status still read one by one.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench import common, harness
from stepline.store import migrate, open_store

HOUR_MS = 3600_000
CHUNK = 50_000


def _fill_sqlite(path: str, runs: int, functions: int, now: int, span_ms: int) -> None:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        for start in range(0, runs, CHUNK):
            conn.executemany(
                "INSERT INTO runs (id, function_id, event_id, status, created_at, started_at, ended_at, updated_at) "
                "VALUES (?, ?, 'e', ?, ?, ?, ?, ?)",
                [_row(i, runs, functions, now, span_ms) for i in range(start, min(runs, start + CHUNK))],
            )
            conn.commit()
    finally:
        conn.close()


def _fill_postgres(url: str, runs: int, functions: int, now: int, span_ms: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for start in range(0, runs, CHUNK):
            conn.execute(
                "INSERT INTO runs (id, function_id, event_id, status, created_at, started_at, ended_at, updated_at) "
                "SELECT 'r' || lpad(i::text, 9, '0'), 'fn' || (i %% %(f)s), 'e', "
                "CASE WHEN i %% 10 = 0 THEN 'failed' ELSE 'completed' END, ended - 5000, ended - 4000, ended, %(now)s "
                "FROM (SELECT i, %(now)s::bigint - i * %(span)s::bigint / %(runs)s::bigint AS ended "
                "FROM generate_series(%(a)s::bigint, %(b)s::bigint) AS i) g",
                {"f": functions, "now": now, "span": span_ms, "runs": runs, "a": start, "b": min(runs, start + CHUNK) - 1},
            )
        conn.execute("ANALYZE runs")


def _row(i: int, runs: int, functions: int, now: int, span_ms: int) -> tuple[Any, ...]:
    """Run ``i`` of ``runs``: every tenth failed, ended ``i / runs`` of the span ago."""
    ended = now - i * span_ms // runs
    return (f"r{i:09d}", f"fn{i % functions}", "failed" if i % 10 == 0 else "completed", ended - 5000, ended - 4000, ended, now)


def _fill_asleep(url: str, backend: str, count: int, functions: int, now: int) -> None:
    """``count`` sleeping runs, each with its queue row, due from an hour from now."""
    rows = [(f"s{i:09d}", f"fn{i % functions}", now + HOUR_MS + i) for i in range(count)]
    runs_sql = "INSERT INTO runs (id, function_id, event_id, status, created_at, updated_at) VALUES ({0}, {0}, 'e', 'sleeping', 1, 1)"
    queue_sql = "INSERT INTO queue (run_id, function_id, due_at) VALUES ({0}, {0}, {0})"
    if backend == "sqlite":
        import sqlite3

        conn = sqlite3.connect(url)
        try:
            conn.executemany(runs_sql.format("?"), [row[:2] for row in rows])
            conn.executemany(queue_sql.format("?"), rows)
            conn.commit()
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor().copy("COPY runs (id, function_id, event_id, status, created_at, updated_at) FROM STDIN") as copy:
            for run_id, function_id, _ in rows:
                copy.write_row((run_id, function_id, "e", "sleeping", 1, 1))
        with conn.cursor().copy("COPY queue (run_id, function_id, due_at) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.execute("ANALYZE")


async def _median_ms(read: Callable[[], Awaitable[Any]], reads: int) -> float:
    times = []
    for _ in range(reads):
        t = time.perf_counter()
        await read()
        times.append((time.perf_counter() - t) * 1000)
    return common.median(times)


async def _viewers(engine: Any, viewers: int, seconds: float) -> dict[str, float]:
    """``viewers`` dashboards polling the function list every second for ``seconds``."""
    import asyncio

    import httpx

    from stepline.server import create_app

    store, real = engine.store, engine.store.functions_overview
    reads, busy = 0, 0.0

    async def counted() -> Any:
        nonlocal reads, busy
        t = time.perf_counter()
        try:
            return await real()
        finally:
            reads, busy = reads + 1, busy + time.perf_counter() - t

    store.functions_overview = counted
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    transport = httpx.ASGITransport(app=create_app(engine))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=300) as client:

        async def viewer(i: int) -> int:
            await asyncio.sleep(i / viewers)  # the tabs were opened at different moments
            answered = 0
            while loop.time() < end:
                response = await client.get("/api/v1/functions")
                assert response.status_code == 200, response.text
                answered += 1
                await asyncio.sleep(1.0)
            return answered

        answered = sum(await asyncio.gather(*(viewer(i) for i in range(viewers))))
    store.functions_overview = real
    return {"viewer_requests": answered, "viewer_reads": reads, "viewer_busy": round(busy / seconds, 3)}


async def _reads(url: str, reads: int, viewers: int = 0, watch: float = 0) -> dict[str, float]:
    from stepline.server.api_metrics import prometheus_text

    store = open_store(url, migrate_now=False)
    now = int(time.time() * 1000)
    try:
        await store.fold_run_counts()  # what any worker's upkeep does within seconds (PostgreSQL)
        async with harness.engine_on(url, run_worker=False) as (engine, _):
            return {
                "status_counts_ms": await _median_ms(store.status_counts, reads),
                "queue_depth_ms": await _median_ms(store.queue_depth, reads),
                "last_hour_ms": await _median_ms(lambda: store.function_stats(since_ms=now - HOUR_MS), reads),
                "function_list_ms": await _median_ms(store.functions_overview, reads),
                "dashboard_ms": await _median_ms(lambda: store.metrics_overview(now - HOUR_MS, now - 7 * 24 * HOUR_MS), reads),
                "metrics_text_ms": await _median_ms(lambda: prometheus_text(engine), reads),
                **(await _viewers(engine, viewers, watch) if viewers else {}),
            }
    finally:
        await store.close()


async def measure(
    backend: str, runs: int, functions: int, reads: int, days: float, asleep: int = 0, viewers: int = 10, watch: float = 10.0
) -> dict[str, float]:
    out: dict[str, float] = {}
    for label, count in (("few", 1000), ("many", runs)):
        with common.fresh_db(backend, "metrics") as url:
            migrate.apply(url)
            now = int(time.time() * 1000)
            t = time.perf_counter()
            (_fill_postgres if backend == "postgres" else _fill_sqlite)(url, count, functions, now, int(days * 24 * HOUR_MS))
            if label == "many" and asleep:
                _fill_asleep(url, backend, asleep, functions, now)
            fill_s = time.perf_counter() - t
            figures = await _reads(url, reads, viewers if label == "many" else 0, watch)
            for name, ms in figures.items():
                out[f"{label}_{name}"] = round(ms, 2)
            if label == "many":
                out["fill_s"] = round(fill_s, 1)
    for name in ("status_counts_ms", "queue_depth_ms", "last_hour_ms", "function_list_ms", "dashboard_ms", "metrics_text_ms"):
        out[f"ratio_{name[:-3]}"] = round(out[f"many_{name}"] / max(out[f"few_{name}"], 0.01), 2)
    return out


def main() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--runs", type=int, default=1_000_000)
    p.add_argument("--functions", type=int, default=20)
    p.add_argument("--reads", type=int, default=9)
    p.add_argument("--days", type=float, default=7.0)
    p.add_argument("--asleep", type=int, default=0)
    p.add_argument("--hour", action="store_true", help="the runs all ended in the last hour")
    p.add_argument("--viewers", type=int, default=10)
    p.add_argument("--watch", type=float, default=10.0)
    args = p.parse_args()
    figures = harness.run(
        measure(args.backend, args.runs, args.functions, args.reads, 0.95 / 24 if args.hour else args.days, args.asleep,
                args.viewers, args.watch)
    )
    name = "metrics-read-asleep" if args.asleep else "metrics-read-hour" if args.hour else "metrics-read"
    common.emit(name, "stepline", args.backend, runs=args.runs, functions=args.functions,
                days=round(0.95 / 24, 4) if args.hour else args.days, asleep=args.asleep, viewers=args.viewers, watch=args.watch,
                **figures)


if __name__ == "__main__":
    main()
