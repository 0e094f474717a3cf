"""W1–W3 on DBOS Transact (SQLite or PostgreSQL), with its stock settings.

    bench/.venv-peers/bin/python -m bench.peers.dbos_bench --backend sqlite|postgres --workload w1|w2|w3

Idiomatic DBOS for background jobs: async workflows made of ``@DBOS.step()`` steps,
enqueued on a queue registered with ``DBOS.register_queue`` (no concurrency limit,
the default 1 s polling interval), executed by the same process. Every step is
checkpointed, as in Stepline. A run counts as complete when its workflow body
returns (DBOS then writes the workflow's status; that write is not waited for).
"""

from __future__ import annotations

import asyncio
import logging
import time

from dbos import DBOS, DBOSConfig

from bench import common, http_call

QUEUE = "bench"
STATE: dict[str, object] = {}


def setup(url: str) -> None:
    sys_url = url if url.startswith("postgresql") else f"sqlite:///{url}"
    config: DBOSConfig = {"name": "bench", "system_database_url": sys_url, "log_level": "WARNING"}
    DBOS(config=config)


@DBOS.step()
async def noop() -> None:
    return None


@DBOS.step()
async def mark(i: int) -> None:
    STATE["started"][i] = time.perf_counter()  # type: ignore[index]


@DBOS.step()
async def call_model(i: int) -> str:
    reply = await http_call.post_json(str(STATE["model_url"]), {"model": "fake", "messages": [{"role": "user", "content": str(i)}]})
    return str(reply["choices"][0]["message"]["content"])


def _finished(i: int) -> None:
    STATE["finished"][i] = time.perf_counter()  # type: ignore[index]
    if len(STATE["finished"]) >= STATE["target"]:  # type: ignore[arg-type]
        STATE["done"].set()  # type: ignore[union-attr]


@DBOS.workflow()
async def w1(i: int) -> None:
    for _ in range(3):
        await noop()
    _finished(i)


@DBOS.workflow()
async def w2(i: int) -> str:
    out = await call_model(i)
    _finished(i)
    return out


@DBOS.workflow()
async def w3(i: int) -> None:
    await mark(i)
    _finished(i)


def _reset(target: int) -> None:
    STATE["finished"] = {}
    STATE["started"] = {}
    STATE["target"] = target
    STATE["done"] = asyncio.Event()


async def run_w1(runs: int) -> dict[str, float]:
    _reset(runs)
    clock = common.Clock()
    clock.start()
    for i in range(runs):
        await DBOS.enqueue_workflow_async(QUEUE, w1, i)
    await STATE["done"].wait()  # type: ignore[union-attr]
    wall, cpu = clock.stop()
    return {"runs": runs, "seconds": round(wall, 3), "runs_per_s": round(runs / wall, 1),
            "steps_per_s": round(runs * 3 / wall, 1), "cpu_ms_per_run": round(cpu * 1000 / runs, 3)}


async def run_w2(runs: int, model_url: str) -> dict[str, float]:
    _reset(runs)
    STATE["model_url"] = f"{model_url}/v1/chat/completions"
    common.model_stats(model_url, reset=True)
    t0 = time.perf_counter()
    for i in range(runs):
        await DBOS.enqueue_workflow_async(QUEUE, w2, i)
    enqueued = time.perf_counter() - t0
    await STATE["done"].wait()  # type: ignore[union-attr]
    makespan = time.perf_counter() - t0
    ideal = 1.0 + enqueued
    return {"runs": runs, "makespan_s": round(makespan, 3), "ideal_s": round(ideal, 3),
            "vs_ideal": round(makespan / ideal, 3), "over_ideal_s": round(makespan - ideal, 3),
            "peak_in_flight": common.model_stats(model_url)["peak"]}


async def run_w3(runs: int) -> dict[str, float]:
    to_start, to_complete = [], []
    for i in range(runs):
        _reset(1)
        t0 = time.perf_counter()
        await DBOS.enqueue_workflow_async(QUEUE, w3, i)
        await STATE["done"].wait()  # type: ignore[union-attr]
        to_start.append((STATE["started"][i] - t0) * 1000)  # type: ignore[index]
        to_complete.append((STATE["finished"][i] - t0) * 1000)  # type: ignore[index]
        await asyncio.sleep(0.02)
    return {"runs": runs,
            "start_p50_ms": round(common.percentile(to_start, 50), 3), "start_p99_ms": round(common.percentile(to_start, 99), 3),
            "complete_p50_ms": round(common.percentile(to_complete, 50), 3), "complete_p99_ms": round(common.percentile(to_complete, 99), 3)}


async def main_async(backend: str, workload: str, runs: int, trials: int) -> None:
    with common.fresh_db(backend, "dbos") as url:
        setup(url)
        DBOS.launch()
        await DBOS.register_queue_async(QUEUE)
        logging.getLogger("dbos").setLevel(logging.WARNING)
        try:
            if workload == "w1":
                records = [await run_w1(runs or 2000) for _ in range(trials)]
                common.emit("W1", "dbos", backend, **common.median_record(records))
            elif workload == "w2":
                with common.fake_model(1.0) as model_url:
                    common.emit(f"W2-{runs or 500}", "dbos", backend, **await run_w2(runs or 500, model_url))
            else:
                common.emit("W3", "dbos", backend, **await run_w3(runs or 200))
        finally:
            DBOS.destroy()


def main() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--workload", choices=["w1", "w2", "w3"], required=True)
    p.add_argument("--runs", type=int, default=0)
    p.add_argument("--trials", type=int, default=1)
    args = p.parse_args()
    asyncio.run(main_async(args.backend, args.workload, args.runs, args.trials))


if __name__ == "__main__":
    main()
