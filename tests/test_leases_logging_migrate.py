"""Heartbeats keep long steps leased; the logger is quiet on replay; migrations gate start-up."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

import pytest

import stepline
from stepline.store import open_store
from tests.helpers import send_and_wait

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def test_a_step_longer_than_the_lease_is_not_taken_over(make_engine) -> None:
    app = stepline.App("t")
    calls = 0

    async def long_step() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(2.5)  # over twice the lease: only heartbeats keep it
        return "done"

    @app.function(id="long", trigger=stepline.TriggerEvent("t/long"))
    async def long(ctx: stepline.Context) -> str:
        return await ctx.step.run("long", long_step)

    engine = await make_engine(app, lease=1.0)
    await make_engine(app, lease=1.0)  # a second worker that would steal an expired lease
    run = await send_and_wait(engine, {"name": "t/long"})
    assert run["status"] == "completed" and run["output"] == "done"
    assert calls == 1


async def test_logger_does_not_repeat_lines_on_replay(make_engine, caplog) -> None:
    app = stepline.App("t")

    @app.function(id="chatty", trigger=stepline.TriggerEvent("t/chatty"))
    async def chatty(ctx: stepline.Context) -> None:
        ctx.logger.info("starting job")
        await ctx.step.run("one", lambda: 1)
        ctx.logger.info("after step one")
        await ctx.step.sleep("nap", 0.05)  # resumes by replaying the journal
        ctx.logger.info("after the nap")
        await ctx.step.sleep("nap-2", 0.05)

    engine = await make_engine(app)
    with caplog.at_level(logging.INFO, logger="stepline.function"):
        await send_and_wait(engine, {"name": "t/chatty"})
    lines = [r.getMessage() for r in caplog.records if r.name == "stepline.function"]
    assert sum("starting job" in line for line in lines) == 1
    assert sum("after step one" in line for line in lines) == 1
    assert sum("after the nap" in line for line in lines) == 1


async def test_saved_steps_the_code_no_longer_reaches_are_reported(make_engine, caplog) -> None:
    app = stepline.App("t")
    version = {"n": 1}

    @app.function(id="evolving", trigger=stepline.TriggerEvent("t/ev"))
    async def evolving(ctx: stepline.Context) -> str:
        if version["n"] == 1:
            await ctx.step.run("old-step", lambda: "old")
            version["n"] = 2
        await ctx.step.sleep("nap", 0.05)
        return "ok"

    engine = await make_engine(app)
    with caplog.at_level(logging.WARNING, logger="stepline.executor"):
        run = await send_and_wait(engine, {"name": "t/ev"})
    assert run["status"] == "completed"
    assert "without reaching saved steps ['old-step']" in caplog.text


def test_migrate_command_and_the_check_at_start(tmp_path) -> None:
    db = str(tmp_path / "fresh.db")
    env = {**os.environ, "PYTHONPATH": REPO}
    with pytest.raises(stepline.StoreError, match="stepline migrate"):
        open_store(db, migrate_now=False)
    refused = subprocess.run(
        [sys.executable, "-m", "stepline.cli", "worker", "tests.apps_http:app", "--db", db],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert refused.returncode != 0 and "stepline migrate" in refused.stderr
    done = subprocess.run([sys.executable, "-m", "stepline.cli", "migrate", "--db", db], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "0001_initial" in done.stdout
    again = subprocess.run([sys.executable, "-m", "stepline.cli", "migrate", "--db", db], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert "none pending" in again.stdout
    open_store(db, migrate_now=False)  # now accepted


async def test_dev_creates_the_database_folder_on_a_fresh_checkout(tmp_path) -> None:
    path = tmp_path / "not-yet" / ".stepline" / "stepline.db"
    store = open_store(str(path))  # dev mode: migrations applied, folders made
    await store.start()
    assert await store.list_runs() == []
    await store.close()
    assert path.exists()
