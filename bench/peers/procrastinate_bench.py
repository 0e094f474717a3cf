"""W1–W3 on Procrastinate (PostgreSQL), with its stock settings except concurrency.

    bench/.venv-peers/bin/python -m bench.peers.procrastinate_bench --workload w1|w2|w3

Idiomatic Procrastinate: async tasks deferred with ``batch_defer_async`` (W1, W2, in
batches of 100) or ``defer_async`` (W3), one worker in the same process
(``run_worker_async``, LISTEN/NOTIFY on, the stock polling fallback). Worker
concurrency: 20 for W1, the number of runs for W2 (so every call can be in flight),
the default 1 for W3. A task has no steps: W1's three no-ops are plain calls, not
checkpoints. A job counts as complete when its task body returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import procrastinate

from bench import common, http_call

STATE: dict[str, object] = {}


def _finished(i: int) -> None:
    STATE["finished"][i] = time.perf_counter()  # type: ignore[index]
    if len(STATE["finished"]) >= STATE["target"]:  # type: ignore[arg-type]
        STATE["done"].set()  # type: ignore[union-attr]


def _reset(target: int) -> None:
    STATE["finished"] = {}
    STATE["started"] = {}
    STATE["target"] = target
    STATE["done"] = asyncio.Event()


def make_app(url: str) -> procrastinate.App:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    async def noop() -> None:
        return None

    @app.task(name="w1", queue="bench")
    async def w1(i: int) -> None:
        for _ in range(3):
            await noop()
        _finished(i)

    @app.task(name="w2", queue="bench")
    async def w2(i: int) -> str:
        reply = await http_call.post_json(str(STATE["model_url"]), {"model": "fake", "messages": [{"role": "user", "content": str(i)}]})
        _finished(i)
        return str(reply["choices"][0]["message"]["content"])

    @app.task(name="w3", queue="bench")
    async def w3(i: int) -> None:
        STATE["started"][i] = time.perf_counter()  # type: ignore[index]
        _finished(i)

    return app


async def batch_defer(task: procrastinate.tasks.Task, runs: int) -> None:
    for start in range(0, runs, 100):
        await task.batch_defer_async(*({"i": i} for i in range(start, min(runs, start + 100))))


@contextlib.asynccontextmanager
async def worker(app: procrastinate.App, concurrency: int):  # type: ignore[no-untyped-def]
    task = asyncio.create_task(app.run_worker_async(queues=["bench"], concurrency=concurrency, install_signal_handlers=False))
    await asyncio.sleep(0.5)  # the worker is listening
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, 10)


async def main_async(workload: str, runs: int, trials: int) -> None:
    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    if workload == "w1":
        records = []
        for _ in range(trials):
            with common.fresh_postgres("procr") as url:
                app = make_app(url)
                async with app.open_async():
                    await app.schema_manager.apply_schema_async()
                    async with worker(app, 20):
                        n = runs or 2000
                        _reset(n)
                        clock = common.Clock()
                        clock.start()
                        await batch_defer(app.tasks["w1"], n)
                        await STATE["done"].wait()  # type: ignore[union-attr]
                        wall, cpu = clock.stop()
                        records.append({"runs": n, "seconds": round(wall, 3), "runs_per_s": round(n / wall, 1),
                                        "steps_per_s": round(n * 3 / wall, 1), "cpu_ms_per_run": round(cpu * 1000 / n, 3)})
        common.emit("W1", "procrastinate", "postgres", **common.median_record(records))
        return
    with common.fresh_postgres("procr") as url:
        app = make_app(url)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            if workload == "w2":
                n = runs or 500
                with common.fake_model(1.0) as model_url:
                    STATE["model_url"] = f"{model_url}/v1/chat/completions"
                    common.model_stats(model_url, reset=True)
                    async with worker(app, n):
                        _reset(n)
                        t0 = time.perf_counter()
                        await batch_defer(app.tasks["w2"], n)
                        enqueued = time.perf_counter() - t0
                        await STATE["done"].wait()  # type: ignore[union-attr]
                        makespan = time.perf_counter() - t0
                    ideal = 1.0 + enqueued
                    common.emit(f"W2-{n}", "procrastinate", "postgres", runs=n, makespan_s=round(makespan, 3),
                                ideal_s=round(ideal, 3), vs_ideal=round(makespan / ideal, 3),
                                over_ideal_s=round(makespan - ideal, 3), peak_in_flight=common.model_stats(model_url)["peak"])
                return
            n = runs or 200
            to_start, to_complete = [], []
            async with worker(app, 1):
                for i in range(n):
                    _reset(1)
                    t0 = time.perf_counter()
                    await app.tasks["w3"].defer_async(i=i)
                    await STATE["done"].wait()  # type: ignore[union-attr]
                    to_start.append((STATE["started"][i] - t0) * 1000)  # type: ignore[index]
                    to_complete.append((STATE["finished"][i] - t0) * 1000)  # type: ignore[index]
                    await asyncio.sleep(0.02)
            common.emit("W3", "procrastinate", "postgres", runs=n,
                        start_p50_ms=round(common.percentile(to_start, 50), 3), start_p99_ms=round(common.percentile(to_start, 99), 3),
                        complete_p50_ms=round(common.percentile(to_complete, 50), 3), complete_p99_ms=round(common.percentile(to_complete, 99), 3))


def main() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--workload", choices=["w1", "w2", "w3"], required=True)
    p.add_argument("--runs", type=int, default=0)
    p.add_argument("--trials", type=int, default=1)
    args = p.parse_args()
    asyncio.run(main_async(args.workload, args.runs, args.trials))


if __name__ == "__main__":
    main()
