"""What one unit test on the test kit costs: a TestEngine started, one 3-step run, torn down.

    python -m bench.testing_kit [--tests 200] [--sync-steps]

Each test creates a ``TestEngine`` (a temporary SQLite database copied from the
process's migrated template, the worker started), sends one event whose function runs
three ``ctx.step.run`` steps (async bodies; ``--sync-steps``: plain functions, which run
in the step thread pool), waits for the run's result and stops the engine. Prints the
median and p90 of the whole, and the median of each phase. The first test (which
migrates the template) is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import stepline
from stepline.testing import TestEngine


def make_app(sync_steps: bool) -> stepline.App:
    app = stepline.App("bench-kit")

    async def add_one(n: int) -> int:
        return n + 1

    def add_one_sync(n: int) -> int:
        return n + 1

    body = add_one_sync if sync_steps else add_one

    @app.function(id="three-steps", trigger=stepline.TriggerEvent("bench/kit"))
    async def three_steps(ctx: stepline.Context) -> int:
        a = await ctx.step.run("a", body, 0)
        b = await ctx.step.run("b", body, a)
        return int(await ctx.step.run("c", body, b))

    return app


async def one_test(app: stepline.App) -> list[float]:
    marks = [time.perf_counter()]
    t = TestEngine(app)
    await t.start()
    marks.append(time.perf_counter())
    result = await t.wait(await t.send({"name": "bench/kit", "data": {}}))
    marks.append(time.perf_counter())
    await t.stop()
    marks.append(time.perf_counter())
    if result.output != 3:
        raise SystemExit(f"the run ended {result.status} with {result.output!r}, not 3")
    return [b - a for a, b in zip(marks, marks[1:])]


async def main(tests: int, sync_steps: bool) -> None:
    app = make_app(sync_steps)
    await one_test(app)  # migrates the process's template
    phases = [await one_test(app) for _ in range(tests)]
    totals = sorted(sum(p) * 1000 for p in phases)
    print(f"{tests} tests, {'sync' if sync_steps else 'async'} step bodies, load average {os.getloadavg()[0]:.2f}")
    print(f"per test: median {statistics.median(totals):.1f} ms, p90 {totals[int(len(totals) * 0.9)]:.1f} ms")
    for index, name in enumerate(["start", "send + wait", "stop"]):
        print(f"  {name}: median {statistics.median(p[index] for p in phases) * 1000:.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--sync-steps", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.tests, args.sync_steps))
