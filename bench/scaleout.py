"""Scale-out on PostgreSQL: jobs/s and steps/s with 1, 2 and 4 worker processes.

    python -m bench.scaleout [--workers 1 2 4] [--runs 2000]

Worker processes (``--serve URL``) start first and report ready; the parent then
enqueues the W1 workload (runs of 3 no-op steps, ``send_many`` in batches of 100)
from an engine without a worker, and polls the database until every run completed.
Also reports idle event→start latency across processes: one worker process, the
sender in another, LISTEN/NOTIFY carrying the wake-up.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import psycopg

import stepline
from bench import common, harness
from bench.harness import engine_on, send_chunked

STEPS = 3


def make_app() -> stepline.App:
    app = stepline.App("bench-scale")

    async def noop() -> None:
        return None

    async def stamp() -> float:
        return time.time()

    @app.function(id="scale", trigger=stepline.TriggerEvent("bench/scale"), retries=0)
    async def scale(ctx: stepline.Context) -> None:
        for i in range(STEPS):
            await ctx.step.run(f"s{i}", noop)

    @app.function(id="ping", trigger=stepline.TriggerEvent("bench/ping"), retries=0)
    async def ping(ctx: stepline.Context) -> float:
        return await ctx.step.run("stamp", stamp)

    return app


async def serve(url: str) -> None:
    async with engine_on(url, make_app()):
        print("READY", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


def start_workers(url: str, count: int) -> list[subprocess.Popen[str]]:
    procs = [
        subprocess.Popen([sys.executable, "-m", "bench.scaleout", "--serve", url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"a worker process did not start: {line!r}")
    return procs


def stop_workers(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def completed(url: str, function_id: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM runs WHERE function_id = %s AND status = 'completed'", (function_id,)).fetchone()
        return int(row[0]) if row else 0


def finished_output(conn: psycopg.Connection, event_id: str) -> str | None:
    row = conn.execute("SELECT output FROM runs WHERE event_id = %s AND status = 'completed'", (event_id,)).fetchone()
    return None if row is None else str(row[0])


async def throughput(workers: int, runs: int) -> dict[str, float]:
    with common.fresh_postgres("scale") as url:
        async with engine_on(url, make_app(), run_worker=False) as (engine, _):
            procs = start_workers(url, workers)
            try:
                t0 = time.perf_counter()
                await send_chunked(engine, [{"name": "bench/scale", "data": {"i": i}} for i in range(runs)])
                while completed(url, "scale") < runs:
                    await asyncio.sleep(0.02)
                wall = time.perf_counter() - t0
            finally:
                stop_workers(procs)
    return {"workers": workers, "runs": runs, "seconds": round(wall, 3), "runs_per_s": round(runs / wall, 1), "steps_per_s": round(runs * STEPS / wall, 1)}


async def latency(runs: int) -> dict[str, float]:
    """Idle event→start across processes (the step body stamps wall-clock time)."""
    to_start: list[float] = []
    with common.fresh_postgres("scale") as url:
        async with engine_on(url, make_app(), run_worker=False) as (engine, _):
            procs = start_workers(url, 1)
            conn = psycopg.connect(url, autocommit=True)
            try:
                await asyncio.sleep(0.5)
                for i in range(runs + 10):
                    t0 = time.time()
                    [event_id] = await engine.send_many([{"name": "bench/ping", "data": {"i": i}}])
                    while (output := finished_output(conn, event_id)) is None:
                        await asyncio.sleep(0.005)
                    if i >= 10:
                        to_start.append((float(output) - t0) * 1000)
                    await asyncio.sleep(0.02)
            finally:
                conn.close()
                stop_workers(procs)
    return {"runs": runs, "start_p50_ms": round(common.percentile(to_start, 50), 3), "start_p99_ms": round(common.percentile(to_start, 99), 3)}


def main() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--runs", type=int, default=2000)
    p.add_argument("--latency-runs", type=int, default=100)
    p.add_argument("--serve", default="")
    args = p.parse_args()
    if args.serve:
        harness.run(serve(args.serve))
        return
    for count in args.workers:
        common.emit(f"SCALE-{count}", "stepline", "postgres", **harness.run(throughput(count, args.runs)))
    common.emit("SCALE-latency", "stepline", "postgres", **harness.run(latency(args.latency_runs)))


if __name__ == "__main__":
    main()
