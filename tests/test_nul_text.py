"""Text a function hands the engine that the database cannot store (a NUL character,
which PostgreSQL's text cannot hold; a lone surrogate, which is not UTF-8) is refused where
it enters, on both backends alike: it never reaches a checkpoint that the database refuses,
which left the run to lose its lease and run its steps again until it was given up."""

from __future__ import annotations

from typing import Any

import pytest

import stepline
from tests.helpers import send_and_wait

executions: dict[str, int] = {}

app = stepline.App("nul")


def _counted(case: str) -> str:
    executions[case] = executions.get(case, 0) + 1
    return "ran"


@app.function(id="step-id", trigger=stepline.TriggerEvent("nul/step-id"), retries=0)
async def step_id(ctx: stepline.Context) -> Any:
    await ctx.step.run("before", _counted, "step-id/before")
    return await ctx.step.run("a\x00b", _counted, "step-id/nul")


@app.function(id="sleep-id", trigger=stepline.TriggerEvent("nul/sleep-id"), retries=0)
async def sleep_id(ctx: stepline.Context) -> Any:
    await ctx.step.run("before", _counted, "sleep-id/before")
    await ctx.step.sleep("nap\x00", "1s")


@app.function(id="progress", trigger=stepline.TriggerEvent("nul/progress"), retries=0)
async def progress(ctx: stepline.Context) -> Any:
    await ctx.step.run("before", _counted, "progress/before")
    await ctx.set_progress(50, "half\x00way")
    return await ctx.step.run("after", _counted, "progress/after")


@app.function(id="publish", trigger=stepline.TriggerEvent("nul/publish"), retries=0)
async def publish(ctx: stepline.Context) -> Any:
    await ctx.step.run("before", _counted, "publish/before")
    await ctx.publish({"text": "x"}, topic="to\x00pic")
    return await ctx.step.run("after", _counted, "publish/after")


@app.function(id="wait-name", trigger=stepline.TriggerEvent("nul/wait-name"), retries=0)
async def wait_name(ctx: stepline.Context) -> Any:
    await ctx.step.run("before", _counted, "wait-name/before")
    return await ctx.step.wait_for_event("w", event="ev\x00ent", timeout="1s")


@app.function(id="surrogate", trigger=stepline.TriggerEvent("nul/surrogate"), retries=0)
async def surrogate(ctx: stepline.Context) -> Any:
    await ctx.step.run("before", _counted, "surrogate/before")
    return await ctx.step.run("half\ud800", _counted, "surrogate/step")


async def test_a_lone_surrogate_in_a_step_id_fails_its_run_at_once(make_engine: Any) -> None:
    executions.clear()
    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": "nul/surrogate", "data": {}})
    assert run["status"] == "failed", run
    assert "step id 'half\\ud800' contains a lone UTF-16 surrogate" in run["error"]["message"], run["error"]
    assert executions == {"surrogate/before": 1}


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("step-id", "step id 'a\\x00b'"),
        ("sleep-id", "step id 'nap\\x00'"),
        ("progress", "set_progress message 'half\\x00way'"),
        ("publish", "publish topic 'to\\x00pic'"),
        ("wait-name", "wait_for_event event name 'ev\\x00ent'"),
    ],
)
async def test_a_nul_in_what_a_function_hands_over_fails_its_run_at_once(make_engine: Any, case: str, named: str) -> None:
    executions.clear()
    engine = await make_engine(app)
    run = await send_and_wait(engine, {"name": f"nul/{case}", "data": {}})
    assert run["status"] == "failed", run
    assert run["error"]["name"] == "ConfigError", run["error"]
    assert run["error"]["message"].startswith(named + " contains a NUL character"), run["error"]["message"]
    assert executions == {f"{case}/before": 1}  # nothing after it ran, and nothing twice
