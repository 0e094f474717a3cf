"""An app for multi-process flow-control tests: each step logs when it ran."""

from __future__ import annotations

import asyncio
import os
import time

import stepline

app = stepline.App("flow")


def log_line(path: str, line: str) -> None:
    with open(path, "a") as fh:
        fh.write(line + "\n")
        fh.flush()


@app.function(
    id="capped",
    trigger=stepline.TriggerEvent("flow/capped"),
    concurrency=stepline.Concurrency(3, key="event.data.key"),
)
async def capped(ctx: stepline.Context) -> str:
    data = ctx.event.data

    async def work() -> str:
        token = f"{ctx.run_id}-{os.getpid()}"
        log_line(data["log"], f"start {data['key']} {token} {time.time():.6f}")
        await asyncio.sleep(float(data.get("seconds", 0.3)))
        log_line(data["log"], f"end {data['key']} {token} {time.time():.6f}")
        return token

    return await ctx.step.run("work", work)


@app.function(
    id="fanned",
    trigger=stepline.TriggerEvent("flow/fanned"),
    concurrency=stepline.Concurrency(3, key="event.data.key"),
)
async def fanned(ctx: stepline.Context) -> list[str]:
    """Three steps at once in one run: each takes a slot of the key's 3."""
    data = ctx.event.data

    async def part(n: int) -> str:
        token = f"{ctx.run_id}.{n}-{os.getpid()}"
        log_line(data["log"], f"start {data['key']} {token} {time.time():.6f}")
        await asyncio.sleep(float(data.get("seconds", 0.3)))
        log_line(data["log"], f"end {data['key']} {token} {time.time():.6f}")
        return f"part-{n}"

    return list(await asyncio.gather(*(ctx.step.run(f"part-{n}", part, n) for n in range(3))))
